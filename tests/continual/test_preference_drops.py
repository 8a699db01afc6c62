"""Preference drops in the versioned dataset of continuous learning: pairs from LLaMA-Factory's real DPO demo
file arrive in two drops; the second repeats a pair of the first (a duplicate), reverses another (a
contradiction, quarantined) and adds new pairs. A drop of KTO rows for a DPO recipe fails with the reason,
and the version that trains holds no prompt in two splits. The forgetting check of a preference run reads
the scores evaluation stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunery.config import Recipe
from tunery.continual import continuous, drops
from tunery.continual.history import VERDICT, DropDataset
from tunery.data.split import check_leakage
from tunery.evaluation import forgetting
from tunery.layout import SPLITS, RunLayout

pytestmark = pytest.mark.realdata


def _recipe(tmp_path: Path, objective: str = "dpo") -> Recipe:
    zone = tmp_path / "zone"
    zone.mkdir(parents=True, exist_ok=True)
    return Recipe.model_validate(
        {
            "name": "pairs",
            "task": "preference",
            "data": {"source": str(zone)},
            "cleaning": {"max_quarantine_fraction": 0.9},
            "model": {"base": "smollm2", "max_length": 1024},
            "method": {"name": "lora"},
            "preference": {"objective": objective},
            "continuous": {"settle_seconds": 0},
            "mlflow": {"registered_model": "pairs"},
            "workdir": str(tmp_path / "work"),
        }
    )


def _drop(recipe: Recipe, name: str, records: list[dict]) -> str:
    path = Path(drops.zone_uri(recipe)) / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return name


def _update(recipe: Recipe) -> dict:
    drops.scan(recipe)
    return continuous.update_dataset(recipe, "flow-run-1")


def _id_of(recipe: Recipe, name: str) -> str:
    return next(d.id for d in drops.Manifest.of(recipe).drops() if d.name == name)


def _quarantine(dataset: DropDataset, drop_id: str) -> pd.DataFrame:
    return pd.read_json(dataset.drop_dir(drop_id) / "quarantine.jsonl", lines=True, dtype=False)


@pytest.fixture(scope="module")
def demo_pairs(shared_data) -> list[dict]:
    """Pairs of ``dpo_en_demo.json`` (ShareGPT ranking format) whose prompt and answers are all different."""
    rows = json.loads((shared_data / "llama_factory" / "dpo_en_demo.json").read_text(encoding="utf-8"))
    seen, out = set(), []
    for row in rows:
        key = row["conversations"][-1]["value"]
        if key not in seen and row["chosen"]["value"] != row["rejected"]["value"]:
            seen.add(key)
            out.append(row)
    return out


def test_preference_drops_dedup_by_judgement_and_split_by_prompt(tmp_path, demo_pairs):
    recipe = _recipe(tmp_path)
    first, later = demo_pairs[:40], demo_pairs[40:70]
    _drop(recipe, "drop-1.json", first)
    assert _update(recipe)["version"] == 1
    reversed_pair = {**first[1], "chosen": first[1]["rejected"], "rejected": first[1]["chosen"]}
    same_prompt = {**first[2], "chosen": later[0]["chosen"], "rejected": later[0]["rejected"]}  # new answers
    _drop(recipe, "drop-2.json", [first[0], reversed_pair, same_prompt, *later[1:]])
    update = _update(recipe)
    assert update["version"] == 2 and not update["failed"]

    dataset = DropDataset.of(recipe)
    one, two = (_id_of(recipe, name) for name in ("drop-1.json", "drop-2.json"))
    report = json.loads((dataset.drop_dir(two) / "report.json").read_text(encoding="utf-8"))
    assert report["rows_in"] == 32 == report["kept"] + report["quarantined"] + report["deduplicated"]
    assert report["history_duplicates"] == 1 and report["history_conflicts"] == 1
    quarantine = _quarantine(dataset, two)
    by_reason = quarantine.groupby("reason")["detail"].apply(list).to_dict()
    assert by_reason["duplicate"] == [f"a row of drop {one} judges the same answers to this prompt"]
    (conflict,) = by_reason["conflicting_duplicate"]
    assert conflict.startswith(f"a row of drop {one} judges the same answers to this prompt: ")
    assert "answer preferred (this row: the " in conflict
    # what else the second drop quarantined is too long for the model (cleaning's reason, as in a run)
    assert set(by_reason) - {"duplicate", "conflicting_duplicate"} <= {"too_long"}

    rows = dataset.rows(dataset.latest())
    assert {"pair", "prompt", VERDICT}.issubset(rows.columns)
    # a new judgement on an earlier prompt is kept, in the split of that prompt's first pair
    prompt = first[2]["conversations"][-1]["value"]
    of_prompt = rows[rows["prompt"].str.contains(prompt[:60], regex=False)]
    assert list(of_prompt["drop_id"]) == [one, two] and of_prompt["split"].nunique() == 1
    layout = RunLayout.create(tmp_path / "runs", "pairs")
    paths = continuous.materialise(recipe, layout, 2)
    parts = {name: pd.read_parquet(paths[name]) for name in SPLITS}
    check_leakage(parts)  # no prompt (and no pair) in two splits
    assert sum(len(p) for p in parts.values()) == len(rows) and all(VERDICT not in p for p in parts.values())
    assert set(parts["test"]["drop_id"]) <= {one, two}
    assert json.loads(parts["train"]["pair"].iloc[0])["chosen"][0]["role"] == "assistant"


def test_a_drop_of_kto_rows_fails_for_a_dpo_recipe_and_is_taken_by_a_kto_recipe(tmp_path, shared_data):
    kto = json.loads((shared_data / "llama_factory" / "kto_en_demo.json").read_text(encoding="utf-8"))[:20]
    recipe = _recipe(tmp_path / "dpo")
    _drop(recipe, "kto.json", kto)
    update = _update(recipe)
    (reason,) = update["failed"].values()
    assert "preference.objective dpo learns from pairs" in reason and "use objective kto" in reason
    assert update["version"] is None

    recipe = _recipe(tmp_path / "kto", objective="kto")
    _drop(recipe, "kto.json", kto)
    update = _update(recipe)
    assert update["version"] == 1 and not update["failed"]
    rows = DropDataset.of(recipe).rows(DropDataset.of(recipe).latest())
    labels = [json.loads(pair)["label"] for pair in rows["pair"]]
    assert len(rows) >= 10 and len(set(labels)) == 2, "desirable and undesirable answers both kept"
    assert list(rows[VERDICT]) == ["desirable" if label else "undesirable" for label in labels]

    # the same answer labelled the other way round contradicts the history; pairs cannot join KTO rows
    flipped = {**kto[0], "label": not kto[0]["label"]}
    _drop(recipe, "flipped.json", [flipped, *kto[20:25]])
    pairs = json.loads((shared_data / "llama_factory" / "dpo_en_demo.json").read_text(encoding="utf-8"))
    _drop(recipe, "pairs.json", pairs[:5])
    update = _update(recipe)
    (reason,) = update["failed"].values()
    assert "kto takes pairs or unpaired (KTO) rows, not both" in reason and "already holds unpaired" in reason
    dataset = DropDataset.of(recipe)
    quarantine = _quarantine(dataset, _id_of(recipe, "flipped.json"))
    assert list(quarantine["reason"]).count("conflicting_duplicate") == 1
    (conflict,) = quarantine.loc[quarantine["reason"] == "conflicting_duplicate", "detail"]
    assert conflict.endswith(f"(this row: {'desirable' if flipped['label'] else 'undesirable'})")


def _scored_run(
    tmp_path: Path, drop_ids: list[str], model: np.ndarray, champion: np.ndarray, labels=None
) -> RunLayout:
    """A run folder as evaluation leaves it for the forgetting check: the test split's drops and the per-row
    scores evaluation writes (``model``/``champion``: each answer's log-probability, one token per answer;
    pairs: chosen minus rejected; with ``labels``: unpaired rows, the answer's)."""
    from tunery.evaluation.preference import write_scores

    layout = RunLayout.create(tmp_path, "pairs")
    layout.split("test").parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"drop_id": drop_ids}).to_parquet(layout.split("test"), index=False)
    layout.eval_dir.mkdir(parents=True, exist_ok=True)
    n, ones = len(drop_ids), np.ones(len(drop_ids))
    prompt = [{"role": "user", "content": "p"}]
    if labels is None:
        rows = [{"prompt": prompt}] * n
        scores = {
            name: {"chosen": margin, "rejected": np.zeros(n), "chosen_tokens": ones, "rejected_tokens": ones}
            for name, margin in {"model": model, "untuned": np.zeros(n), "champion": champion}.items()
        }
    else:
        rows = [{"prompt": prompt, "label": bool(label)} for label in labels]
        scores = {
            name: {"completion": logp, "completion_tokens": ones}
            for name, logp in {"model": model, "untuned": np.zeros(n), "champion": champion}.items()
        }
    write_scores(layout, rows, scores)
    layout.metrics.write_text(json.dumps({"champion": {"preference_accuracy": 0.5}}), encoding="utf-8")
    lineage = {"drops": [{"id": "old"}, {"id": "new"}], "new_drops": ["new"]}
    (layout.root / "lineage.json").write_text(json.dumps(lineage), encoding="utf-8")
    return layout


def test_the_preference_forgetting_check_compares_stored_scores_on_earlier_drops(tmp_path):
    recipe = _recipe(tmp_path)
    drop_ids = ["old"] * 30 + ["new"] * 10
    champion = np.ones(40)  # the champion prefers every chosen answer
    # the model prefers the rejected answer on 20 of the old drop's 30 pairs: forgotten
    worse = np.where(np.arange(40) < 20, -1.0, 1.0)
    result = forgetting.forgetting_check(recipe, _scored_run(tmp_path / "a", drop_ids, worse, champion))
    block = result["slices"]["old"]
    assert result["metric"] == "preference_accuracy" and result["forgotten"] == ["old"]
    assert block["rows"] == 30 and block["preference_accuracy"] == pytest.approx(10 / 30)
    assert block["champion_preference_accuracy"] == 1.0 and block["ci_high"] < 0
    assert "new" not in result["slices"] and not result["passed"]
    assert "preference_accuracy 0.3333 vs champion 1.0000" in forgetting.describe(result["metric"], block)
    # as good as the champion on the old drop's rows (worse only on the new drop's): nothing forgotten
    same = np.where(np.arange(40) >= 30, -1.0, 1.0)
    result = forgetting.forgetting_check(recipe, _scored_run(tmp_path / "b", drop_ids, same, champion))
    assert result["passed"] and result["slices"]["old"]["delta"] == 0.0


def test_the_kto_forgetting_check_reads_its_auc_and_notes_a_slice_of_one_label(tmp_path):
    recipe = _recipe(tmp_path, objective="kto")
    drop_ids = ["old"] * 20 + ["new"] * 10
    labels = [i % 2 == 0 for i in range(20)] + [True] * 10
    champion = np.where(labels, 0.0, -1.0)  # separates desirable from undesirable answers: AUC 1
    model = -champion  # the other way round: AUC 0 on the old drop's rows
    result = forgetting.forgetting_check(
        recipe, _scored_run(tmp_path / "a", drop_ids, model, champion, labels)
    )
    block = result["slices"]["old"]
    assert (block["preference_accuracy"], block["champion_preference_accuracy"]) == (0.0, 1.0)
    assert result["forgotten"] == ["old"]
    # every test row of the old drop desirable: its AUC is undefined, the slice says so and is not forgotten
    one_label = [True] * 30
    layout = _scored_run(tmp_path / "b", drop_ids, model, champion, one_label)
    result = forgetting.forgetting_check(recipe, layout)
    assert result["slices"]["old"] == {
        "rows": 20,
        "forgotten": False,
        "note": result["slices"]["old"]["note"],
    }
    assert result["passed"] and "undefined" in forgetting.describe(result["metric"], result["slices"]["old"])
