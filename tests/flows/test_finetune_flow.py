"""The whole finetune flow under a real (temporary) Prefect server, on real data.

A 1,000-row stratified sample of ../shared/data/sms_spam is written to a temporary folder; the packaged
MiniLM encoder is fine-tuned for one epoch; the model is registered in a SQLite MLflow store. A second,
deliberately crippled run must not replace the champion.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pandas as pd
import pytest

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
def spam_recipe(shared_data, tmp_path_factory):
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
            mlflow: {{experiment: sms, registered_model: sms-spam}}
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


def test_data_report_reaches_mlflow_and_prefect(first_run, spam_recipe):
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
    # The store is local: look in the run's artifact folder (MlflowClient.list_artifacts also walks every
    # logged model of the run in MLflow 3, which is slow and adds nothing here).
    artifacts = Path(urlparse(mlf.get_run(first_run["run_id"]).info.artifact_uri).path)
    logged = {p.name for p in (artifacts / "data").iterdir()}
    assert {"report.json", "quarantine.jsonl", "lengths.png", "labels.png"} <= logged

    wanted = ["data-report", "finetune-summary"]
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
