"""Continuous learning for a preference recipe, under a real (temporary) Prefect API and a real MLflow
server: two drops of LLaMA-Factory's real DPO pairs each go through watch-drops and continuous-learning
(LoRA DPO, the adapter-disabled model as reference). The second drop repeats a pair of the first (removed as
a duplicate of the history), is warm-started from the champion and checked for forgetting on the first
drop's test pairs by preference accuracy, from the scores evaluation stored. Two registered versions, each
with its drops.

A tiny Llama with the real SmolLM2 tokenizer and chat template keeps it fast: what is under test is the
wiring, not what so few steps learn.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tunery.config import load_recipe, resolve_paths
from tunery.continual.drops import Manifest
from tunery.tracking import client

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.fixture(scope="module")
def pair_zone(shared_data, tiny_llama, tmp_path_factory, mlflow_server, prefect_harness):
    folder = tmp_path_factory.mktemp("continuous-pairs")
    zone = folder / "zone"
    zone.mkdir()
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: pair-drops
            task: preference
            data: {{source: {zone}}}
            cleaning: {{max_quarantine_fraction: 0.6}}  # long real answers: some are too_long
            split: {{train: 0.6, validation: 0.1, test: 0.3}}
            model: {{base: {tiny_llama}, max_length: 1024}}
            method: {{name: lora, lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}}}
            training: {{max_steps: 2, batch_size: 2, eval_batch_size: 8, learning_rate: 5.0e-3}}
            preference: {{objective: dpo}}
            sft: {{generation_max_new_tokens: 4}}
            evaluation: {{generation_samples: 2, gate: {{baseline_floor: false}}}}
            continuous: {{settle_seconds: 0, warm_start: champion, forgetting_margin: 0.02,
                          drift: {{action: warn}}}}
            mlflow: {{experiment: pair-drops, registered_model: pair-drops, tracking_uri: "{mlflow_server}"}}
            workdir: {folder / "work"}
            """
        )
    )
    rows = json.loads((shared_data / "llama_factory" / "dpo_en_demo.json").read_text())
    return {"recipe": recipe, "zone": zone, "folder": folder, "rows": rows}


def _drop(zone: Path, name: str, records: list[dict]) -> None:
    """The writer's side of the protocol: a temporary name, then an atomic rename."""
    part = zone / f"{name}.part"
    part.write_text(json.dumps(records), encoding="utf-8")
    part.rename(zone / name)


def _cycle(pair_zone) -> tuple[dict, dict]:
    from flows.continuous import continuous_learning, watch_drops

    found = watch_drops(recipe_path=str(pair_zone["recipe"]))
    return found, continuous_learning(recipe_path=str(pair_zone["recipe"]))


def _recipe(pair_zone):
    return resolve_paths(load_recipe(pair_zone["recipe"]), pair_zone["folder"])


def _run_dir(pair_zone, run_id: str) -> Path:
    return Path(client(_recipe(pair_zone)).get_run(run_id).data.tags["tunery.run_dir"])


@pytest.fixture(scope="module")
def two_drops(pair_zone):
    rows = pair_zone["rows"]
    _drop(pair_zone["zone"], "pairs-1.json", rows[:50])
    first = _cycle(pair_zone)
    _drop(pair_zone["zone"], "pairs-2.json", [rows[0], *rows[50:100]])  # rows[0] again
    second = _cycle(pair_zone)
    return first, second


def test_each_preference_drop_registers_a_version_with_its_drops(pair_zone, two_drops, mlflow_server):
    from tunery.continual.lineage import lineage

    (found1, first), (found2, second) = two_drops
    assert first["status"] == "retrained" and first["dataset_version"] == 1 and first["alias"] == "champion"
    assert second["status"] == "retrained" and second["dataset_version"] == 2
    ids = [found1["new"][0]["id"], found2["new"][0]["id"]]
    versions = client(_recipe(pair_zone)).search_model_versions("name='pair-drops'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    info = lineage(f"pair-drops@{second['version']}", mlflow_server)
    assert [d["id"] for d in info["drops"]] == ids and info["new_drops"] == ids[1:]
    run_one = client(_recipe(pair_zone)).get_model_version("pair-drops", "1").run_id
    assert info["parent"] == {  # warm-started from the champion of the first drop
        "reference": "pair-drops@1",
        "model": "pair-drops",
        "version": "1",
        "run_id": run_one,
    }
    assert [(d.name, d.status) for d in Manifest.of(_recipe(pair_zone)).drops()] == [
        ("pairs-1.json", "committed"),
        ("pairs-2.json", "committed"),
    ]
    report = json.loads((_run_dir(pair_zone, second["run_id"]) / "data" / "report.json").read_text())
    clean = report["clean"]
    assert clean["rows_in"] == 101 == clean["kept"] + clean["quarantined"] + clean["deduplicated"]
    assert clean["exact_duplicates"] >= 1, "the repeated pair of the second drop"


def test_the_second_drop_is_checked_for_forgetting_by_preference_accuracy(pair_zone, two_drops):
    import pandas as pd

    (found1, _), (_, second) = two_drops
    run_dir = _run_dir(pair_zone, second["run_id"])
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["primary_metric"] == "preference_accuracy" and metrics["champion"] is not None
    forgetting = metrics["forgetting"]
    assert forgetting["metric"] == "preference_accuracy" and forgetting["margin"] == 0.02
    block = forgetting["slices"][found1["new"][0]["id"]]
    test = pd.read_parquet(run_dir / "data" / "splits" / "test.parquet")
    assert block["rows"] == int((test["drop_id"] == found1["new"][0]["id"]).sum()) >= 2
    assert 0 <= block["preference_accuracy"] <= 1 and 0 <= block["champion_preference_accuracy"] <= 1
    assert block["ci_low"] <= block["delta"] <= block["ci_high"]
    assert forgetting["passed"] == (not block["forgotten"])
    scores = pd.read_parquet(run_dir / "eval" / "preference_scores.parquet")
    assert {"model_chosen", "untuned_chosen", "champion_chosen"} <= set(scores.columns)
    meta = json.loads((run_dir / "warm_start" / "tunery_model.json").read_text())
    assert meta["task"] == "preference", "training began from the champion's exported model"
    splits = {s: pd.read_parquet(run_dir / "data" / "splits" / f"{s}.parquet") for s in ("train", "test")}
    assert not set(splits["train"]["prompt"]) & set(splits["test"]["prompt"])
    drift = json.loads((run_dir / "drift" / "drift.json").read_text())
    assert drift["rows"]["history"] > 0 and drift["rows"]["new"] > 0 and "label" not in drift
    if block["forgotten"]:
        assert second["alias"] == "challenger" and "forgets earlier data" in second["reason"]
