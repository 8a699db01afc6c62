"""The local stack, for real: `tunery stack up` starts a Prefect server, an MLflow server and a process
worker on 127.0.0.1 and deploys prefect.yaml; runs are then started the way the Prefect UI starts them
(``POST /api/deployments/{id}/create_flow_run`` with edited parameters) and by the Prefect scheduler.
`tunery stack down` stops everything by PID at the end.

Runs use the demo recipe with small overrides (few steps, a temporary workdir) to stay cheap.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO
from tunery import stack

pytestmark = [pytest.mark.slow]

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _tunery(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunery.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    # faster loops than production defaults, so that the scheduler and the worker react within seconds
    env.update(
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    ports = [str(stack.free_port()), str(stack.free_port())]
    up = _tunery(
        "stack", "up", "--root", str(root), "--prefect-port", ports[0], "--mlflow-port", ports[1], env=env
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"Prefect UI: http://127.0.0.1:{ports[0]}" in up.stdout
    assert f"MLflow UI:  http://127.0.0.1:{ports[1]}" in up.stdout
    state = stack.load_state(root)
    try:
        yield {**state, "root": root, "env": env}
    finally:
        down = _tunery("stack", "down", "--root", str(root), env=env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped: worker, prefect, mlflow" in down.stdout  # dependants first
        for service in state["services"]:
            with pytest.raises(ProcessLookupError):
                os.kill(service["pid"], 0)


def _api(state: dict) -> httpx.Client:
    return httpx.Client(base_url=state["prefect_api_url"], timeout=30)


def _deployment_id(api: httpx.Client, flow: str, name: str) -> str:
    reply = api.get(f"/deployments/name/{flow}/{name}")
    reply.raise_for_status()
    return reply.json()["id"]


def _wait_final(api: httpx.Client, run_ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    runs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        runs = {rid: api.get(f"/flow_runs/{rid}").json() for rid in run_ids}
        if all(r["state"]["type"] in FINAL for r in runs.values()):
            return runs
        time.sleep(2)
    states = {rid: r["state"]["type"] for rid, r in runs.items()}
    raise AssertionError(f"flow runs not finished in {timeout:.0f} s: {states}")


def _logs(api: httpx.Client, run_id: str) -> list[dict]:
    found, offset = [], 0
    while True:
        body = {
            "logs": {"flow_run_id": {"any_": [run_id]}},
            "sort": "TIMESTAMP_ASC",
            "limit": 200,
            "offset": offset,
        }
        page = api.post("/logs/filter", json=body).json()
        found += page
        if len(page) < 200:
            return found
        offset += 200


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def two_ui_runs(live_stack, tmp_path_factory):
    """Two custom runs of the `finetune` deployment started at once, with edited parameters."""
    workdir = tmp_path_factory.mktemp("stack-runs")
    with _api(live_stack) as api:
        deployment = _deployment_id(api, "finetune", "finetune")
        run_ids = []
        for k in range(2):
            parameters = {
                "recipe_path": "configs/helpdesk.yaml",
                "overrides": [
                    "training.max_steps=6",
                    f"workdir={workdir / f'run{k}'}",
                    "mlflow.registered_model=helpdesk-stack",
                ],
            }
            reply = api.post(f"/deployments/{deployment}/create_flow_run", json={"parameters": parameters})
            assert reply.status_code == 201, reply.text
            run_ids.append(reply.json()["id"])
        runs = _wait_final(api, run_ids, timeout=900)
        logs = {rid: _logs(api, rid) for rid in run_ids}
    return {"ids": run_ids, "runs": runs, "logs": logs}


def test_ui_style_runs_complete_and_register_versions_in_mlflow(live_stack, two_ui_runs):
    import mlflow

    for rid, run in two_ui_runs["runs"].items():
        messages = "\n".join(log["message"] for log in two_ui_runs["logs"][rid])
        assert run["state"]["type"] == "COMPLETED", messages[-3000:]
        assert run["parameters"]["overrides"][0] == "training.max_steps=6"
        assert "trained 6 steps" in messages, "training logs reach the Prefect UI, with the override applied"
    mlf = mlflow.MlflowClient(live_stack["mlflow_url"])
    versions = mlf.search_model_versions("name = 'helpdesk-stack'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    run = mlf.get_run(versions[0].run_id)
    assert run.data.params["training.max_steps"] == "6"
    assert mlf.get_model_version_by_alias("helpdesk-stack", "champion") is not None


def test_second_run_waits_for_the_training_slot(two_ui_runs):
    """One training job at a time: the two runs' training windows (slot held -> trained) do not overlap."""
    windows = []
    for rid in two_ui_runs["ids"]:
        logs = two_ui_runs["logs"][rid]
        held = [_parse(x["timestamp"]) for x in logs if "holding training slot" in x["message"]]
        done = [_parse(x["timestamp"]) for x in logs if x["message"].startswith("trained ")]
        waited = [x for x in logs if "waiting for training slot" in x["message"]]
        assert held and done and waited, [x["message"] for x in logs][-20:]
        windows.append((held[0], done[-1]))
    first, second = sorted(windows)
    assert first[1] <= second[0], f"training windows overlap: {windows}"


def _runs_of(api: httpx.Client, deployment: str) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return api.post("/flow_runs/filter", json=body).json()


def test_scheduler_creates_a_run_that_the_worker_executes(live_stack, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stack-scheduled")
    with _api(live_stack) as api:
        deployment = _deployment_id(api, "finetune", "nightly-retrain")
        # prefect.yaml's nightly cron was deployed and the scheduler planned its runs at 02:00 UTC ...
        schedules = api.get(f"/deployments/{deployment}/schedules").json()
        assert [x["schedule"].get("cron") for x in schedules] == ["0 2 * * *"]
        nightly = [r for r in _runs_of(api, deployment) if r["auto_scheduled"]]
        assert nightly and all(_parse(r["expected_start_time"]).hour == 2 for r in nightly)
        # ... which this test must not execute: deactivate that schedule and drop its planned runs
        reply = api.patch(f"/deployments/{deployment}/schedules/{schedules[0]['id']}", json={"active": False})
        assert reply.status_code == 204, reply.text
        for run in nightly:
            api.delete(f"/flow_runs/{run['id']}")
        anchor = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
        schedule = {
            "schedule": {"interval": 3600, "anchor_date": anchor.isoformat(), "timezone": "UTC"},
            "active": True,
            "parameters": {
                "recipe_path": "configs/helpdesk.yaml",
                "overrides": [
                    "training.max_steps=2",
                    f"workdir={workdir}",
                    "mlflow.registered_model=helpdesk-cron",
                ],
            },
        }
        reply = api.post(f"/deployments/{deployment}/schedules", json=[schedule])
        assert reply.status_code == 201, reply.text
        deadline = time.monotonic() + 120
        scheduled: list[dict] = []
        while not scheduled and time.monotonic() < deadline:
            found = _runs_of(api, deployment)
            scheduled = [r for r in found if r["auto_scheduled"] and str(workdir) in str(r["parameters"])]
            time.sleep(2)
        assert scheduled, "the scheduler created no run in 120 s"
        first = scheduled[0]
        assert abs((_parse(first["expected_start_time"]) - anchor).total_seconds()) < 1
        api.patch(f"/deployments/{deployment}", json={"paused": True})  # no further occurrences
        final = _wait_final(api, [first["id"]], timeout=600)[first["id"]]
    assert final["state"]["type"] == "COMPLETED"
    assert final["work_queue_name"] == "default" and final["infrastructure_pid"]


def test_stack_status_reports_every_service_running(live_stack):
    status = _tunery("stack", "status", "--root", str(live_stack["root"]), env=live_stack["env"])
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("mlflow", "prefect", "worker"):
        assert name in status.stdout
    assert "STOPPED" not in status.stdout


def test_stack_up_refuses_a_second_stack_on_the_same_folder(live_stack):
    again = _tunery("stack", "up", "--root", str(live_stack["root"]), env=live_stack["env"], timeout=60)
    assert again.returncode == 2
    assert "already running" in again.stderr
