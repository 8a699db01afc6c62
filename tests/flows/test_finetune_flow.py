"""The whole finetune flow under a real (temporary) Prefect server and a real MLflow server, on real data.

A 1,000-row stratified sample of ../shared/data/sms_spam is written to a temporary folder; the packaged
MiniLM encoder is fine-tuned for one epoch; the model is registered through a real ``mlflow server`` on
127.0.0.1 (SQLite backend store, artifacts proxied by the server). A second, deliberately crippled run
must not replace the champion.
"""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import flow_run_messages
from tunery.config import load_recipe
from tunery.tracking import client

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

NEW_MESSAGES = {
    "WINNER!! You have been selected to receive a £900 prize reward! To claim call 09061701461 now": "spam",
    "FREE entry in 2 a weekly comp to win FA Cup final tkts. Text FA to 87121 to receive entry": "spam",
    "Are we still meeting for lunch tomorrow at noon? Let me know": "ham",
    "Sorry, I'll call you later, I'm in a meeting right now": "ham",
}


@pytest.fixture(scope="module")
def spam_recipe(shared_data, tmp_path_factory, mlflow_server):
    folder = tmp_path_factory.mktemp("sms")
    full = pd.read_csv(
        shared_data / "sms_spam" / "SMSSpamCollection", sep="\t", dtype=str, keep_default_na=False
    )
    share = 1000 / len(full)
    sample = full.groupby("Label").sample(frac=share, random_state=0)
    assert len(sample) == 1000
    sample.to_csv(folder / "sms_sample.tsv", sep="\t", index=False)
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: sms-spam
            data:
              source: {folder / "sms_sample.tsv"}
              text_columns: [SMS]
              label_column: Label
              labels: [ham, spam]
            model: {{base: minilm, max_length: 64}}
            training: {{epochs: 1, batch_size: 16, learning_rate: 1.0e-4}}
            evaluation: {{gate: {{baseline_floor: false}}}}
            mlflow: {{experiment: sms, registered_model: sms-spam, tracking_uri: "{mlflow_server}"}}
            workdir: {folder / "work"}
            """
        )
    )
    return recipe


@pytest.fixture(scope="module")
def first_run(spam_recipe, prefect_harness):
    from flows.finetune import finetune

    state = finetune(recipe_path=str(spam_recipe), return_state=True)
    return {**state.result(), "flow_run_id": state.state_details.flow_run_id}


def test_flow_registers_a_champion_that_beats_the_baseline(first_run, spam_recipe):
    recipe = load_recipe(spam_recipe)
    mlf = client(recipe)
    assert first_run["alias"] == "champion" and first_run["version"] == "1"

    run = mlf.get_run(first_run["run_id"])
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["test_macro_f1"] > m["baseline_majority_macro_f1"]
    assert m["test_macro_f1"] > 0.8
    assert "train/loss" in m
    assert run.data.params["method.name"] == "full"

    version = mlf.get_model_version_by_alias("sms-spam", "champion")
    assert str(version.version) == "1" and version.run_id == first_run["run_id"]


def test_champion_loaded_from_registry_classifies_raw_new_messages(first_run, spam_recipe):
    client(load_recipe(spam_recipe))
    model = mlflow.pyfunc.load_model("models:/sms-spam@champion")
    texts = list(NEW_MESSAGES)
    raw = [f"<p>{t}</p>\u200b " for t in texts]  # uncleaned input: the pyfunc applies training's cleaning
    out = model.predict(pd.DataFrame({"text": raw}))
    assert out["label"].tolist() == list(NEW_MESSAGES.values())
    assert ((out["prob_ham"] + out["prob_spam"]) - 1).abs().max() < 1e-5


def test_crippled_challenger_is_not_promoted(first_run, spam_recipe):
    from flows.finetune import finetune

    second = finetune(
        recipe_path=str(spam_recipe),
        overrides=["training.max_steps=2", "training.learning_rate=1.0e-7"],
    )
    assert second["version"] == "2"
    assert second["alias"] == "challenger", second["reason"]
    mlf = client(load_recipe(spam_recipe))
    assert str(mlf.get_model_version_by_alias("sms-spam", "champion").version) == "1"
    tags = mlf.get_model_version("sms-spam", "2").tags
    assert tags["tunery.gate.decision"] == "challenger"
    assert tags["tunery.gate.compared_with"] == "1"
    assert "does not beat champion" in tags["tunery.gate.reason"]


def test_data_report_reaches_mlflow_and_prefect(first_run, spam_recipe, mlflow_server):
    import json as jsonlib

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    mlf = client(load_recipe(spam_recipe))
    metrics = mlf.get_run(first_run["run_id"]).data.metrics
    assert metrics["data/rows_in"] == 1000
    assert metrics["data/kept"] + metrics["data/quarantined"] + metrics["data/deduplicated"] == 1000
    assert (
        metrics["data/train_rows"] + metrics["data/validation_rows"] + metrics["data/test_rows"]
        == metrics["data/kept"]
    )
    # Through the server's artifact proxy; only the data folder (listing the root would also walk every
    # logged model of the run in MLflow 3, which is slow and adds nothing here).
    logged = {Path(f.path).name for f in mlf.list_artifacts(first_run["run_id"], "data")}
    assert {"report.json", "quarantine.jsonl", "lengths.png", "labels.png"} <= logged

    wanted = ["data-report", "finetune-summary", "finetune-metrics", "run-cost"]
    by_key: dict = {}
    deadline = time.monotonic() + 15  # artifacts are written by the tasks; allow the API a moment
    while set(by_key) != set(wanted) and time.monotonic() < deadline:
        with get_client(sync_client=True) as prefect:
            found = prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=wanted),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[first_run["flow_run_id"]]),
                )
            )
        by_key = {a.key: a for a in found}
        time.sleep(0.5)
    assert set(by_key) == set(wanted), f"artifacts found: {sorted(by_key)}"
    assert "rows in **1000**" in by_key["data-report"].data, by_key["data-report"].data[:300]
    assert f"version {first_run['version']}" in by_key["finetune-summary"].data
    # links into the MLflow server's UI for the run and the model version
    assert f"{mlflow_server}/#/experiments/" in by_key["finetune-summary"].data
    assert f"/runs/{first_run['run_id']})" in by_key["finetune-summary"].data
    assert f"#/models/sms-spam/versions/{first_run['version']})" in by_key["finetune-summary"].data
    # every task of the flow is costed, the training job's own process included (close-run prices them)
    cost_rows = [line.split("|")[1].strip() for line in by_key["run-cost"].data.splitlines() if "|" in line]
    assert cost_rows[2:] == [
        "open",
        "ingest",
        "clean",
        "split",
        "publish-data",
        "train",
        "evaluate",
        "register",
        "**total**",
    ]
    assert metrics["cost_train_cpu_s"] > metrics["cost_open_cpu_s"] > 0 and metrics["cost_wall_s"] > 0
    table = by_key["finetune-metrics"].data
    table = jsonlib.loads(table) if isinstance(table, str) else table
    models = [row["model"] for row in table]
    assert models[0] == "this run" and "baseline: majority" in models
    assert all(0.0 <= row["macro_f1"] <= 1.0 for row in table)


def test_registered_version_records_lineage_signature_and_provenance(first_run, spam_recipe):
    """The version's run holds the three splits as MLflow dataset inputs, with the data report's digests."""
    import json

    from mlflow.models import get_model_info

    recipe = load_recipe(spam_recipe)
    mlf = client(recipe)
    run = mlf.get_run(first_run["run_id"])
    report = json.loads(
        (Path(run.data.tags["tunery.run_dir"]) / "data" / "report.json").read_text(encoding="utf-8")
    )
    inputs = {{t.key: t.value for t in d.tags}["mlflow.data.context"]: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test"}
    for name, found in inputs.items():
        tags = {t.key: t.value for t in found.tags}
        assert found.dataset.digest == report["split"][name]["digest"][:32]
        assert tags["tunery.sha256"] == report["split"][name]["digest"]
        assert int(tags["tunery.rows"]) == report["split"][name]["rows"]
        assert json.loads(found.dataset.source)["uri"].endswith(f"{name}.parquet")
    assert len({d.dataset.digest for d in inputs.values()}) == 3, "each split has its own digest"

    version = mlf.get_model_version("sms-spam", first_run["version"])
    assert version.tags["tunery.recipe_digest"] == recipe.digest()
    assert version.tags["tunery.git_commit"] == run.data.tags["mlflow.source.git.commit"]
    assert version.tags["tunery.data.test_digest"] == report["split"]["test"]["digest"]
    info = get_model_info(f"models:/sms-spam/{first_run['version']}")
    assert [c.name for c in info.signature.inputs.inputs] == ["text"]
    assert {"label", "prob_ham", "prob_spam"} <= {c.name for c in info.signature.outputs.inputs}
    assert info.saved_input_example_info is not None
    logged_recipe = mlflow.artifacts.load_text(f"runs:/{first_run['run_id']}/recipe.yaml")
    assert "name: sms-spam" in logged_recipe


def test_batch_score_flow_writes_rows_with_predictions(first_run, spam_recipe, tmp_path):
    from flows.score import batch_score
    from tunery.tracking import tracking_uri

    recipe = load_recipe(spam_recipe)
    (tmp_path / "new.tsv").write_text(
        "id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(NEW_MESSAGES))
    )
    out = batch_score(
        model="sms-spam",
        input_path=str(tmp_path / "new.tsv"),
        output_path=str(tmp_path / "scored.parquet"),
        tracking_uri=tracking_uri(recipe),
    )
    scored = pd.read_parquet(out)
    assert scored["id"].tolist() == [str(i) for i in range(len(NEW_MESSAGES))], "input rows kept, in order"
    assert scored["label"].tolist() == list(NEW_MESSAGES.values())
    assert {"prob_ham", "prob_spam"} <= set(scored.columns)


def test_served_champion_answers_raw_text(first_run, spam_recipe):
    """`tunery serve` starts MLflow's real scoring server on 127.0.0.1; stopped by its PID."""
    import json as jsonlib
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from tunery.tracking import tracking_uri

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    recipe = load_recipe(spam_recipe)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunery.cli",
            "serve",
            "sms-spam@champion",
            "--port",
            str(port),
            "--tracking-uri",
            tracking_uri(recipe),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "the scoring server exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the scoring server did not come up in 120 s"
                time.sleep(1)
        raw = [f"<html><body><p>{t}</p></body></html>" for t in NEW_MESSAGES]
        body = jsonlib.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in raw]}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = jsonlib.loads(reply.read())["predictions"]
        assert [p["label"] for p in predictions] == list(NEW_MESSAGES.values())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)


def test_serving_benchmark_runs_against_the_champion(first_run, mlflow_server, tmp_path):
    """Smoke test of benchmarks/serving_latency.py (short phases): JSON of the documented shape, 0 errors.

    No latency is asserted (it depends on the machine); only consistency, and that every reply was right.
    """
    import json as jsonlib
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "serving.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "serving_latency.py"),
        "--model",
        "sms-spam@champion",
    ]
    command += ["--tracking-uri", mlflow_server, "--duration", "3", "--baseline-duration", "2"]
    command += ["--warmup", "1", "--clients", "1,4", "--out", str(out)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    doc = jsonlib.loads(out.read_text(encoding="utf-8"))
    assert doc["benchmark"] == "serving_latency" and doc["settings"]["clients"] == [1, 4]
    assert [p["clients"] for p in doc["served"]] == [1, 4]
    for phase in doc["served"]:
        assert phase["errors"] == 0, phase["error_examples"]
        assert phase["requests"] > 0 and phase["throughput_rps"] > 0
        assert 0 < phase["p50_ms"] <= phase["p90_ms"] <= phase["p99_ms"] <= phase["max_ms"]
    assert doc["baseline_in_process"]["requests"] > 0
    assert doc["targets"]["zero_errors"] == {"errors": 0, "met": True}


def test_the_run_log_reads_like_a_report(first_run):
    """No bytecode, no library noise, each training step once, one final evaluation, stage summaries."""
    messages = flow_run_messages(first_run["flow_run_id"])
    text = "\n".join(messages)
    for noise in (
        "LOAD_FAST",
        "LOAD_GLOBAL",
        "LOAD REPORT",
        "find_unused_parameters",
        "Loading weights",
        "Map:",
    ):
        assert noise not in text, noise
    assert not [m for m in messages if m.lstrip().startswith("{'loss'")], "steps printed a second time"
    steps = [m for m in messages if re.match(r"step \d+/\d+ ", m)]
    assert steps and len(steps) == len(set(steps)), "no step line twice"
    evals = [m for m in messages if "eval_runtime" in m]
    assert len(evals) == 1, f"one epoch: one evaluation, reused as the final one ({len(evals)} seen)"
    assert any(m.startswith("rows in 1000 -> kept") for m in messages)
    assert any(m.startswith("trained ") and "validation" in m for m in messages)
    assert any(m.startswith("[1] scoring the model on") for m in messages), "evaluation reports its steps"
    assert any(m.startswith("tunery: training ") for m in messages), "training says what it starts"
