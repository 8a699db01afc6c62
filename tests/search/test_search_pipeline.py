"""pipeline.search on a real (tiny) model: a 4-trial grid with the median pruner. Trials are nested MLflow
runs with their cost, a bad trial is stopped early, the best trial's model is evaluated and registered,
the search run's cost includes every trial, and a second run of the same study trains nothing again."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from tests.training.test_loop import sentiment_frame
from tunery import pipeline
from tunery.config import load_recipe, resolve_paths
from tunery.search import study as studies

pytestmark = pytest.mark.slow

# Two learning rates, one that learns in an epoch and one that cannot (1e-7), times two warmups: with the
# median pruner (1 start-up trial), a 1e-7 trial run after a good one is worse at its first evaluations.
# 20 short epochs: the job of a pruned trial is still running when it is stopped.
RECIPE = """\
name: search-pipeline
data: {{source: {data}}}
cleaning: {{near_duplicates: false}}
model: {{base: {model}, max_length: 16}}
training: {{epochs: 20, batch_size: 16, learning_rate: 1.0e-3, group_by_length: false}}
evaluation: {{gate: {{baseline_floor: false}}}}
cost: {{cpu_hour: 0.5, currency: EUR}}
search:
  sampler: grid
  trials: 4
  metric: loss
  seed: 1
  pruner: {{name: median, startup_trials: 1}}
  space:
    training.learning_rate: {{type: choice, choices: [3.0e-3, 1.0e-7]}}
    training.warmup_ratio: {{type: choice, choices: [0.0, 0.1]}}
mlflow: {{experiment: search-pipeline, registered_model: search-pipeline}}
workdir: {work}
"""


@pytest.fixture(scope="module")
def searched(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    sentiment_frame(400).to_csv(folder / "reviews.csv", index=False)
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.format(data=folder / "reviews.csv", model=tiny_bert, work=folder / "work"))
    recipe = resolve_paths(load_recipe(path), folder)
    seen: list[tuple[str, str]] = []
    result = pipeline.search(recipe, progress=lambda stage, message: seen.append((stage, message)))
    return recipe, result, seen


def client(recipe):
    from tunery import tracking

    return tracking.client(recipe)


def test_every_trial_is_a_nested_mlflow_run_with_its_parameters_and_cost(searched):
    recipe, result, _ = searched
    mlf = client(recipe)
    experiment = mlf.get_experiment_by_name("search-pipeline").experiment_id
    nested = mlf.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(nested) == 4
    combos = set()
    for run in nested:
        assert run.info.status == "FINISHED"
        combos.add((run.data.params["training.learning_rate"], run.data.params["training.warmup_ratio"]))
        assert run.data.metrics["cost_cpu_s"] > 0 and run.data.metrics["cost_money"] > 0
        assert run.data.tags["tunery.search.state"] in ("complete", "pruned")
        assert "eval_loss" in run.data.metrics, "the training job logged its curves into the trial's run"
    assert len(combos) == 4, "each grid point once"


def test_a_bad_trial_is_pruned_and_its_job_stopped_early(searched):
    recipe, result, _ = searched
    summary = json.loads((result.run_dir / "search" / "summary.json").read_text())
    pruned = [t for t in summary["trials"] if t["state"] == "pruned"]
    assert pruned, summary["trials"]
    for trial in pruned:
        folder = result.run_dir / "trials" / f"trial-{trial['number']:04d}"
        assert not (folder / "train" / "metrics.json").exists(), "stopped before the job finished"
        assert trial["pruned_at_evaluation"] <= 3, "at one of its first evaluations (of 20)"
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert summary["best"]["value"] == min(t["value"] for t in complete)
    assert summary["best"]["params"]["training.learning_rate"] == 3e-3


def test_the_best_trial_is_evaluated_gated_and_registered_with_the_search_on_its_run(searched):
    recipe, result, seen = searched
    assert result.registration.version == "1" and result.registration.alias == "champion"
    best = json.loads((result.run_dir / "search" / "best.json").read_text())
    trial_model = Path(best["run_dir"]) / "model"
    assert (result.run_dir / "model" / "model.safetensors").read_bytes() == (
        trial_model / "model.safetensors"
    ).read_bytes()
    run = client(recipe).get_run(result.run_id)
    assert run.data.params["search.best.trial"] == str(best["trial"])
    assert float(run.data.params["search.best.training.learning_rate"]) == 3e-3
    assert run.data.metrics["search_trials_finished"] == 4
    artifacts = {a.path for a in client(recipe).list_artifacts(result.run_id, "search")}
    assert {"search/summary.json", "search/optimization_history.png"} <= artifacts
    stages = [stage for stage, _ in seen]
    assert stages.index("search") < stages.index("evaluate") < stages.index("register")


def test_the_search_run_costs_every_trial_and_the_summary_adds_them_up(searched):
    recipe, result, _ = searched
    mlf = client(recipe)
    experiment = mlf.get_experiment_by_name("search-pipeline").experiment_id
    nested = mlf.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    trials_cpu = sum(r.data.metrics["cost_cpu_s"] for r in nested)
    summary = json.loads((result.run_dir / "search" / "summary.json").read_text())
    assert summary["cost"]["cpu_s"] == pytest.approx(trials_cpu, rel=1e-6)
    assert summary["cost"]["money"] == pytest.approx(trials_cpu / 3600 * 0.5, rel=1e-6)
    parent = mlf.get_run(result.run_id).data.metrics
    assert parent["search_cost_cpu_s"] == pytest.approx(trials_cpu, rel=1e-6)
    assert parent["cost_search_cpu_s"] == pytest.approx(trials_cpu, rel=1e-6), "the trials' stage"
    assert parent["cost_cpu_s"] > trials_cpu, "and the run's own stages on top"


def test_running_the_same_study_again_trains_no_trial_twice(searched):
    recipe, first, _ = searched
    seen: list[tuple[str, str]] = []
    again = pipeline.search(recipe, progress=lambda stage, message: seen.append((stage, message)))
    assert not (again.run_dir / "trials").exists(), "no trial trained in the second run"
    assert any("4 of 4 trials finished" in message for _, message in seen)
    study = studies.open_study(recipe)
    assert len(study.trials) == 4
    assert json.loads((again.run_dir / "search" / "best.json").read_text())["run_dir"].startswith(
        str(first.run_dir)
    ), "the best model is the first run's trial"
    assert again.registration.version == "2"
    mlflow.set_tracking_uri(None)
