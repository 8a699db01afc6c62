"""IMDb-style use, end to end on GLUE SST-2 from ../shared/data: the recipe names the train file as its
source and the dev file as its test set; the packaged MiniLM trains on the train file only and is scored on
the whole dev file, with a golden evaluation set scored on its own.

The registry already holds a champion, planted to be much worse overall but perfect on one class (it answers
"negative" to everything): the new model beats it on the primary metric, reliably, yet the recipe's
per-class recall guard blocks the promotion, and every condition is in the decision and the MLflow tags.
"""

from __future__ import annotations

import json
import textwrap

import mlflow
import numpy as np
import pandas as pd
import pytest

from tunery import pipeline
from tunery.config import load_recipe, resolve_paths
from tunery.data.normalise import normalise
from tunery.layout import RunLayout
from tunery.tracking import client

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


class AlwaysNegative(mlflow.pyfunc.PythonModel):
    """The planted champion: every review is negative (recall 1.0 on negative, macro-F1 about 0.33)."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        n = len(model_input)
        return pd.DataFrame(
            {"label": ["negative"] * n, "prob_negative": np.ones(n), "prob_positive": np.zeros(n)}
        )


def _plant_champion(tracking_uri: str, name: str, experiment: str) -> None:
    mlflow.set_tracking_uri(tracking_uri)
    mlf = mlflow.MlflowClient()
    found = mlf.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlf.create_experiment(experiment)
    # experiment_id= rather than set_experiment: no active experiment leaks into later tests of this worker
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.pyfunc.log_model(name="model", python_model=AlwaysNegative(), registered_model_name=name)
    mlf.set_registered_model_alias(name, "champion", "1")


@pytest.fixture(scope="module")
def sst2_run(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sst2-e2e")
    train = pd.read_csv(shared_data / "sst2" / "train.tsv", sep="\t", dtype=str, keep_default_na=False)
    dev = pd.read_csv(shared_data / "sst2" / "dev.tsv", sep="\t", dtype=str, keep_default_na=False)
    # SST-2's train file holds phrases of its sentences too: whole sentences train better
    sentences = train[train["sentence"].str.split().str.len() >= 8]
    sample = sentences.groupby("label").sample(500, random_state=0)
    leaked = dev.head(4).rename(columns={"content": "sentence"})  # must end in the quarantine
    pd.concat([sample, leaked]).to_csv(folder / "train.tsv", sep="\t", index=False)
    golden = dev.sample(60, random_state=1).rename(columns={"content": "sentence"})
    golden.to_csv(folder / "golden.tsv", sep="\t", index=False)
    tracking = f"sqlite:///{folder}/mlflow.db"
    _plant_champion(tracking, "sst2-held-out", "sst2")
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(
        textwrap.dedent(
            f"""\
            name: sst2-held-out
            data:
              source: train.tsv
              text_columns: [sentence]
              label_column: label
              label_names: {{0: negative, 1: positive}}
              test_source: {{source: {shared_data / "sst2" / "dev.tsv"}, text_columns: [content]}}
            model: {{base: minilm, max_length: 64}}
            training: {{epochs: 1, batch_size: 32, learning_rate: 1.0e-4}}
            evaluation:
              sets: {{golden: golden.tsv}}
              latency_rows: 20
              gate:
                guards:
                  - {{metric: accuracy, set: golden, margin: 0.05}}
                  - {{metric: "recall:negative", margin: 0.0}}
            mlflow: {{experiment: sst2, registered_model: sst2-held-out, tracking_uri: "{tracking}"}}
            workdir: work
            """
        )
    )
    recipe = resolve_paths(load_recipe(recipe_path), folder)
    result = pipeline.run(recipe)
    return {"recipe": recipe, "result": result, "dev": dev, "leaked": leaked, "folder": folder}


def test_trains_on_the_train_file_only_and_reports_on_the_whole_test_file(sst2_run):
    result, dev = sst2_run["result"], sst2_run["dev"]
    layout = RunLayout(result.run_dir)
    test = pd.read_parquet(layout.split("test"))
    assert len(test) == len(dev) == 872
    training = pd.concat([pd.read_parquet(layout.split(s)) for s in ("train", "validation")])
    assert not set(training["text"].map(normalise)) & set(test["text"].map(normalise))
    quarantine = [json.loads(line) for line in layout.quarantine.read_text().splitlines()]
    assert sum(q["reason"] == "leaks_test" for q in quarantine) >= len(sst2_run["leaked"])
    metrics = result.metrics
    predictions = pd.read_parquet(layout.eval_dir / "predictions.parquet")
    assert len(predictions) == 872  # every dev row scored
    assert metrics["model"]["accuracy"] == pytest.approx(predictions["correct"].mean())
    # MiniLM learned from 1,000 sentences in one epoch: well above chance (0.5 +- 0.034 at 872 rows)
    assert metrics["model"]["accuracy"] > 0.6
    assert metrics["sets"]["golden"]["n"] == 60
    assert 0.0 <= metrics["sets"]["golden"]["model"]["accuracy"] <= 1.0
    floor = metrics["baseline_floor"]
    assert floor["baseline"] in ("tfidf_logreg", "linear_probe") and floor["n"] == 872
    assert floor["baseline_value"] == max(floor["candidates"].values())


def test_a_planted_regression_on_a_guard_blocks_promotion_though_the_primary_metric_improves(sst2_run):
    result = sst2_run["result"]
    metrics, registration = result.metrics, result.registration
    assert metrics["champion_version"] == "1" and metrics["champion"]["macro_f1"] < 0.35
    boot = metrics["gate_bootstrap"]
    assert boot["metric"] == "macro_f1" and boot["delta"] > 0.2 and boot["ci_low"] > 0  # primary improves
    figures = {g["guard"]: g for g in metrics["guards"]}
    recall = figures["recall:negative"]
    assert recall["champion"] == 1.0 and recall["candidate"] < 1.0 and recall["ci_high"] <= 0
    assert registration.alias == "challenger"
    # the primary passed, so the reason lists what blocked it: the guard (and the floor too if it failed)
    primary_text, blocked = registration.reason.split(", but blocked by ", 1)
    assert primary_text.startswith("macro_f1") and "guard recall:negative" in blocked
    assert registration.reason.endswith("not promoted")
    tags = client(sst2_run["recipe"]).get_model_version("sst2-held-out", registration.version).tags
    assert tags["tunery.gate.decision"] == "challenger"
    assert tags["tunery.gate.condition.primary"].startswith("pass: macro_f1")
    assert tags["tunery.gate.condition.guard_recall_negative"].startswith("fail: guard recall:negative")
    golden = figures["golden/accuracy"]
    golden_passed = golden["delta"] >= -0.05
    assert tags["tunery.gate.condition.guard_golden/accuracy"].startswith("pass" if golden_passed else "fail")
    # the floor is a condition of its own, decided on its own figures
    floor = metrics["baseline_floor"]
    beats = floor["delta"] > 0 and floor["ci_low"] > 0
    assert tags["tunery.gate.condition.baseline_floor"].startswith("pass" if beats else "fail")
    champion = client(sst2_run["recipe"]).get_model_version_by_alias("sst2-held-out", "champion")
    assert str(champion.version) == "1"
