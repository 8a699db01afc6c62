"""Held-out evaluation sets (data.test_source, data.validation_source, evaluation.sets) through the real data
stages on GLUE SST-2 from ../shared/data: the train file is split into train and validation only, the dev
file is the whole test split (cleaned, never deduplicated), and training rows that repeat a test row are
quarantined as leaks_test, never silently dropped."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunery.config import Recipe, RecipeError, load_recipe, resolve_paths
from tunery.data import stages
from tunery.data.normalise import normalise
from tunery.layout import RunLayout

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def sst2(shared_data, tmp_path_factory):
    """400 SST-2 training sentences plus 3 dev sentences copied verbatim, 2 with a word changed (leaks)."""
    folder = tmp_path_factory.mktemp("sst2")
    train = pd.read_csv(shared_data / "sst2" / "train.tsv", sep="\t", dtype=str, keep_default_na=False)
    dev = pd.read_csv(shared_data / "sst2" / "dev.tsv", sep="\t", dtype=str, keep_default_na=False)
    sample = train[train["sentence"].str.split().str.len() > 12].sample(400, random_state=0)
    long_dev = dev[dev["content"].str.split().str.len() > 20]
    exact = long_dev.head(3).rename(columns={"content": "sentence"})
    near = long_dev.iloc[3:5].rename(columns={"content": "sentence"})
    near = near.assign(sentence=near["sentence"] + " indeed")
    pd.concat([sample, exact, near]).to_csv(folder / "train.tsv", sep="\t", index=False)
    return {"folder": folder, "dev": dev, "exact": exact, "near": near, "train_rows": 405}


def _recipe(sst2, shared_data, **evaluation) -> Recipe:
    raw = {
        "name": "sst2-held-out",
        "data": {
            "source": str(sst2["folder"] / "train.tsv"),
            "text_columns": ["sentence"],
            "label_column": "label",
            "label_names": {"0": "negative", "1": "positive"},
            # GLUE's dev file names its text column `content`
            "test_source": {"source": str(shared_data / "sst2" / "dev.tsv"), "text_columns": ["content"]},
        },
        "model": {"base": "minilm", "max_length": 64},
        "evaluation": evaluation,
        "mlflow": {"experiment": "x", "registered_model": "x", "tracking_uri": "sqlite:///x.db"},
        "workdir": str(sst2["folder"] / "work"),
    }
    return Recipe.model_validate(raw)


def _run_stages(recipe: Recipe) -> RunLayout:
    layout = RunLayout.create(recipe.workdir, recipe.name)
    stages.ingest_stage(recipe, layout)
    stages.clean_stage(recipe, layout)
    stages.split_stage(recipe, layout)
    return layout


@pytest.fixture(scope="module")
def run(sst2, shared_data):
    recipe = _recipe(sst2, shared_data)
    return recipe, _run_stages(recipe)


def test_the_whole_test_file_is_the_test_split_and_the_train_file_fills_train_and_validation(sst2, run):
    recipe, layout = run
    test = pd.read_parquet(layout.split("test"))
    dev = sst2["dev"]
    # every dev row is scored: SST-2 dev has no empty or bad row, and duplicates are never removed there
    assert len(test) == len(dev) == 872
    assert sorted(test["text"].map(normalise)) == sorted(dev["content"].map(normalise))
    assert set(test["label"]) == {"negative", "positive"}
    train = pd.read_parquet(layout.split("train"))
    validation = pd.read_parquet(layout.split("validation"))
    assert len(validation) > 0 and len(train) > 3 * len(validation)  # 70:15 of the train file, no test share
    report = json.loads(layout.data_report.read_text())
    assert report["split"]["test"]["rows"] == 872
    assert report["held_out"]["test"]["clean"]["rows_in"] == 872


def test_training_rows_that_repeat_a_test_row_are_quarantined_as_leaks_test(sst2, run):
    recipe, layout = run
    train = pd.read_parquet(layout.split("train"))
    validation = pd.read_parquet(layout.split("validation"))
    test_keys = set(pd.read_parquet(layout.split("test"))["text"].map(normalise))
    training_keys = set(pd.concat([train, validation])["text"].map(normalise))
    assert not training_keys & test_keys
    quarantine = [json.loads(line) for line in layout.quarantine.read_text().splitlines()]
    leaks = [q for q in quarantine if q["reason"] == "leaks_test"]
    leaked_texts = {normalise(q["raw_text"]) for q in leaks}
    planted_exact = set(sst2["exact"]["sentence"].map(normalise))
    planted_near = set(sst2["near"]["sentence"].map(normalise))
    assert planted_exact <= leaked_texts and planted_near <= leaked_texts
    assert all(
        q["detail"].startswith(("repeats held-out set test row", "near-duplicate of held-out set test"))
        for q in leaks
    )
    assert any(q["detail"].startswith("near-duplicate") for q in leaks)
    report = json.loads(layout.data_report.read_text())
    assert report["leaks_test"]["rows"] == len(leaks) >= 5
    assert report["leaks_test"]["by_set"] == {"test": len(leaks)}
    # nothing lost: every kept row of the train file is in train, validation or the leak quarantine
    assert report["clean"]["kept"] == len(train) + len(validation) + len(leaks)
    assert any("leaks_test" in w for w in report["warnings"])


def test_a_retried_split_writes_the_same_quarantine(sst2, run):
    recipe, layout = run
    before = layout.quarantine.read_text()
    stages.split_stage(recipe, layout)
    assert layout.quarantine.read_text() == before


def test_named_evaluation_sets_are_cleaned_on_their_own_and_their_repeats_leave_training(sst2, shared_data):
    folder = sst2["folder"]
    golden = sst2["dev"].head(40).rename(columns={"content": "sentence"})
    # a golden set with a duplicate row and an empty one: the duplicate stays, the empty row is
    # quarantined in the set's own quarantine file
    golden = pd.concat([golden, golden.head(1), pd.DataFrame({"label": ["1"], "sentence": ["   "]})])
    golden.to_csv(folder / "golden.tsv", sep="\t", index=False)
    recipe = _recipe(sst2, shared_data, sets={"golden": str(folder / "golden.tsv")})
    layout = _run_stages(recipe)
    held = layout.held_out("golden")
    kept = pd.read_parquet(held.cleaned)
    assert len(kept) == 41  # 40 + its duplicate
    bad = [json.loads(line) for line in held.quarantine.read_text().splitlines()]
    assert [b["reason"] for b in bad] == ["empty_text"]
    report = json.loads(layout.data_report.read_text())
    assert report["held_out"]["golden"]["clean"]["quarantined"] == 1
    # the golden rows are dev rows: the planted training copies leak into test first (its order)
    assert report["leaks_test"]["held_out_rows"] == {"test": 872, "golden": 41}


def test_held_out_settings_fail_fast(sst2, shared_data, tmp_path):
    with pytest.raises(ValueError, match="evaluation set name 'test'"):
        _recipe(sst2, shared_data, sets={"test": "x.tsv"})
    with pytest.raises(ValueError, match="set 'missing' is not in `evaluation.sets`"):
        _recipe(sst2, shared_data, gate={"guards": [{"metric": "accuracy", "set": "missing"}]})
    with pytest.raises(ValueError, match="unknown guard 'acuracy'"):
        _recipe(sst2, shared_data, gate={"guards": [{"metric": "acuracy"}]})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\ndata: {source: a.tsv, test_source: held/test.tsv}\nevaluation: {sets: {golden: g.tsv}}\n"
        "mlflow: {experiment: x, registered_model: x}\n"
    )
    resolved = resolve_paths(load_recipe(recipe), tmp_path)
    assert resolved.data.test_source == str(tmp_path / "held" / "test.tsv")
    assert resolved.evaluation.sets == {"golden": str(tmp_path / "g.tsv")}
    recipe.write_text(
        "name: r\ndata: {source: a.tsv, test_source: {sorce: t.tsv}}\nmlflow: {experiment: x}\n"
    )
    with pytest.raises(RecipeError, match="test_source"):
        load_recipe(recipe)
