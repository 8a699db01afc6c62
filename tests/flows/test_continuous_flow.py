"""Continuous learning end to end under a real (temporary) Prefect API and a real MLflow server, on real data.

One drop zone, one registered model, one scenario in order (each step builds on the previous one):

1. a first drop of ../shared/data/sms_spam -> watch-drops takes it, continuous-learning trains the first
   champion on dataset version 1 and records its lineage;
2. nothing new -> the next run trains nothing;
3. a drop with flipped labels -> the retrain (warm-started from the champion) forgets the first drop's
   test rows and is not promoted;
4. a drop from another domain with ``drift.action: pause`` -> the run pauses for a decision, a person
   rejects it (resume with input, as the Prefect UI's form does), nothing is trained;
5. the same kind of drop with ``drift.action: block`` -> rejected at once.
"""

from __future__ import annotations

import csv
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import read_sms_spam
from tunery.config import load_recipe, resolve_paths
from tunery.continual.drops import Manifest
from tunery.tracking import client

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def _drop(frame: pd.DataFrame, zone: Path, name: str) -> Path:
    """Write a drop the way the protocol asks: a temporary name, then an atomic rename."""
    part = zone / f"{name}.part"
    frame.to_csv(part, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    return part.rename(zone / name)


@pytest.fixture(scope="module")
def scenario(shared_data, tmp_path_factory, mlflow_server, prefect_harness):
    folder = tmp_path_factory.mktemp("continuous")
    zone = folder / "zone"
    zone.mkdir()
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: sms-drops
            data: {{source: {zone}, text_columns: [SMS], label_column: Label, labels: [ham, spam]}}
            model: {{base: minilm, max_length: 64}}
            training: {{epochs: 1, batch_size: 16, learning_rate: 1.0e-4}}
            continuous: {{settle_seconds: 0, warm_start: champion, forgetting_margin: 0.02}}
            evaluation: {{gate: {{baseline_floor: false}}}}
            mlflow: {{experiment: sms-drops, registered_model: sms-drops, tracking_uri: "{mlflow_server}"}}
            workdir: {folder / "work"}
            """
        )
    )
    full = read_sms_spam(shared_data).sample(frac=1.0, random_state=1).reset_index(drop=True)
    return {"recipe": recipe, "zone": zone, "full": full, "folder": folder}


def _recipe(scenario):
    return resolve_paths(load_recipe(scenario["recipe"]), scenario["folder"])


def _cycle(scenario, overrides: list[str] | None = None) -> tuple[dict, dict]:
    from flows.continuous import continuous_learning, watch_drops

    found = watch_drops(recipe_path=str(scenario["recipe"]), overrides=overrides or [])
    return found, continuous_learning(recipe_path=str(scenario["recipe"]), overrides=overrides or [])


@pytest.fixture(scope="module")
def first(scenario):
    _drop(scenario["full"].iloc[:350], scenario["zone"], "drop-1.tsv")
    (scenario["zone"] / "drop-2.tsv.part").write_text("Label\tSMS\nham\thalf a fi")  # still being written
    return _cycle(scenario)


def test_first_drop_trains_the_first_champion_with_its_lineage(first, scenario, mlflow_server):
    from tunery.continual.lineage import lineage

    found, result = first
    assert [d["uri"] for d in found["new"]] == [str(scenario["zone"] / "drop-1.tsv")]
    assert found["announced"] == [found["new"][0]["id"]]
    assert result["status"] == "retrained" and result["alias"] == "champion"
    assert result["dataset_version"] == 1 and result["committed"] == [found["new"][0]["id"]]
    info = lineage("sms-drops@champion", mlflow_server)
    assert info["version"] == result["version"] and info["dataset_version"] == 1
    assert info["cost"].startswith("wall ") and " CPU " in info["cost"]  # its run's cost, by close-run
    assert [(d["id"], d["sha256"]) for d in info["drops"]] == [
        (found["new"][0]["id"], found["new"][0]["sha256"])
    ]
    manifest = Manifest.of(_recipe(scenario))
    assert [(d.name, d.status, d.version) for d in manifest.drops()] == [("drop-1.tsv", "committed", 1)]


def test_nothing_new_trains_nothing(first, scenario):
    found, result = _cycle(scenario)
    assert found["new"] == [] and found["announced"] == []
    assert result["status"] == "up to date" and result["version"] == 1
    versions = client(_recipe(scenario)).search_model_versions("name='sms-drops'")
    assert len(versions) == 1


@pytest.fixture(scope="module")
def flipped(first, scenario):
    rows = scenario["full"].iloc[350:850].copy()
    rows["Label"] = rows["Label"].map({"ham": "spam", "spam": "ham"})
    _drop(rows, scenario["zone"], "drop-flipped.tsv")
    return _cycle(scenario)


def test_a_drop_that_makes_the_model_forget_is_not_promoted(first, flipped, scenario, mlflow_server):
    from tunery.continual.lineage import lineage

    _, champion = first
    found, result = flipped
    assert result["status"] == "retrained" and result["dataset_version"] == 2
    assert result["alias"] == "challenger", result["reason"]
    assert "forgets earlier data" in result["reason"]
    mlf = client(_recipe(scenario))
    assert mlf.get_model_version_by_alias("sms-drops", "champion").version == champion["version"]
    run_dir = Path(mlf.get_run(result["run_id"]).data.tags["tunery.run_dir"])
    import json

    forgetting = json.loads((run_dir / "eval" / "metrics.json").read_text())["forgetting"]
    first_drop = first[0]["new"][0]["id"]
    assert forgetting["forgotten"] == [first_drop]
    assert forgetting["slices"][first_drop]["ci_high"] < 0
    # warm start: training began from the champion's exported weights
    meta = json.loads((run_dir / "warm_start" / "tunery_model.json").read_text())
    assert meta["labels"] == ["ham", "spam"]
    info = lineage(f"sms-drops@{result['version']}", mlflow_server)
    assert [d["id"] for d in info["drops"]] == [first_drop, found["new"][0]["id"]]
    assert info["new_drops"] == [found["new"][0]["id"]]
    parent = json.loads((run_dir / "parent.json").read_text())  # the champion it was warm-started from
    assert info["parent"] == parent and parent["model"] == "sms-drops"
    assert (
        int(parent["version"]) < int(result["version"])
        and parent["reference"] == f"sms-drops@{parent['version']}"
    )


def _other_domain(shared_data: Path, n: int, seed: int) -> pd.DataFrame:
    news = pd.read_csv(shared_data / "ag_news" / "test.csv", dtype=str, keep_default_na=False)
    news = news.sample(n=n, random_state=seed)
    return pd.DataFrame({"Label": ["ham"] * n, "SMS": (news["title"] + ". " + news["description"]).tolist()})


def _paused_run_id(timeout: float = 120):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as api:
        while time.monotonic() < deadline:
            runs = api.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
            if runs:
                return runs[0].id
            time.sleep(1)
    raise AssertionError(f"no paused flow run within {timeout:.0f} s")


def test_high_drift_pauses_for_a_decision_and_a_rejected_drop_is_not_trained(flipped, scenario, shared_data):
    from prefect.flow_runs import resume_flow_run

    _drop(_other_domain(shared_data, 300, seed=0), scenario["zone"], "drop-news.tsv")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = _cycle(scenario, ["continuous.drift.action=pause"])
        except BaseException as exc:  # surfaced by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        paused = _paused_run_id()
        manifest = Manifest.of(_recipe(scenario))
        held = [d for d in manifest.drops() if d.name == "drop-news.tsv"]
        assert held[0].status == "held" and "two-sample AUC" in held[0].detail
        resume_flow_run(paused, run_input={"approve": False, "note": "news is not SMS"})
    finally:
        worker.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    _, result = outcome["result"]
    assert result["status"] == "up to date" and result["version"] == 2
    assert result["rejected"] == [held[0].id]
    drop = Manifest.of(_recipe(scenario)).get(held[0].id)
    assert drop.status == "rejected" and "news is not SMS" in drop.detail
    assert len(client(_recipe(scenario)).search_model_versions("name='sms-drops'")) == 2


def test_high_drift_with_action_block_is_rejected_at_once(flipped, scenario, shared_data):
    _drop(_other_domain(shared_data, 300, seed=1), scenario["zone"], "drop-news-2.tsv")
    found, result = _cycle(scenario, ["continuous.drift.action=block"])
    assert result["rejected"] == [found["new"][0]["id"]] and result["status"] == "up to date"
    drop = Manifest.of(_recipe(scenario)).get(found["new"][0]["id"])
    assert drop.status == "rejected" and "high drift" in drop.detail


def test_the_half_written_file_was_never_taken(flipped, scenario):
    names = [d.name for d in Manifest.of(_recipe(scenario)).drops()]
    assert "drop-2.tsv.part" not in names and "drop-2.tsv" not in names
