"""Work-pool base job templates in infra/: well-formed, self-consistent, and rendered the way a worker does.

Docker and Kubernetes cannot run here, so the templates are checked with Prefect's own templating
(``prefect.utilities.templating``: the functions workers use to fill a job configuration) and JSON Schema,
not by starting containers.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from prefect.utilities.templating import apply_values, find_placeholders

from tests.conftest import REPO

TEMPLATES = ["process-pool.json", "docker-pool.json", "kubernetes-pool.json"]


def _load(name: str) -> dict:
    return json.loads((REPO / "infra" / name).read_text(encoding="utf-8"))


def _defaults(template: dict) -> dict:
    return {k: v.get("default") for k, v in template["variables"]["properties"].items()}


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_placeholder_is_a_declared_variable_with_a_valid_default(name):
    template = _load(name)
    declared = template["variables"]["properties"]
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used, "a template without placeholders cannot be configured"
    assert used <= set(declared), f"undeclared: {used - set(declared)}"
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    for key, schema in declared.items():
        if "default" in schema:
            jsonschema.validate(schema["default"], schema)  # the UI's default form validates
        assert schema.get("title"), f"{key} has no title for the UI form"


@pytest.mark.parametrize("name", TEMPLATES)
def test_tunery_environment_is_in_the_defaults(name):
    env = _load(name)["variables"]["properties"]["env"]["default"]
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "tunery"


def test_kubernetes_job_requests_gpus_and_mounts_the_shared_cache():
    template = _load("kubernetes-pool.json")
    values = {**_defaults(template), "gpus": 4, "cache_pvc": "team-cache", "name": "finetune-abc"}
    job = apply_values(template["job_configuration"], values)
    manifest = job["job_manifest"]
    assert manifest["kind"] == "Job" and manifest["metadata"]["generateName"] == "finetune-abc-"
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["cache"] == "team-cache"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["cache"] == "/cache" and mounts["dshm"] == "/dev/shm"
    assert container["env"]["HF_HOME"].startswith("/cache/")  # caches live on the shared volume
    assert pod["restartPolicy"] == "Never" and manifest["spec"]["backoffLimit"] == 0  # Prefect retries


def test_docker_container_gets_gpus_shared_memory_and_the_cache_volume():
    template = _load("docker-pool.json")
    values = {**_defaults(template), "gpus": 2, "cache_volume": "shared-cache"}
    job = apply_values(template["job_configuration"], values)
    request = job["container_create_kwargs"]["device_requests"][0]
    assert request["Count"] == 2 and request["Capabilities"] == [["gpu"]]
    assert "shared-cache:/cache" in job["volumes"]
    assert job["shm_size"] == "16g"
    assert job["env"]["TUNERY_CACHE"].startswith("/cache/")


def test_process_template_runs_from_the_project_checkout():
    template = _load("process-pool.json")
    job = apply_values(template["job_configuration"], _defaults(template))
    assert set(job) >= {"command", "env", "working_dir", "stream_output"}
