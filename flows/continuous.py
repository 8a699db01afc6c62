"""Continuous learning: the ``watch-drops`` flow (on a short schedule) and the ``continuous-learning`` flow
(started by the ``tunery.drop.arrived`` event through the deployment trigger in prefect.yaml).

watch-drops:          scan the drop zone -> announce pending drops
continuous-learning:  update the dataset (stage drops, drift check) -> [drift decision] -> retrain needed?
                      -> open run -> materialise version -> warm start -> train -> evaluate
                      -> forgetting check -> register (gate) -> close run
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field

from tasks.continuous import (
    announce_drops,
    check_forgetting,
    materialise_dataset,
    plan_retrain,
    resolve_held_drops,
    scan_drop_zone,
    update_dataset,
    warm_start,
)
from tasks.model import (
    close_run,
    evaluate_model,
    mlflow_credentials_from_secret,
    open_run,
    register_model,
    train_model,
)
from tunery import tracking
from tunery.config import Recipe, RecipeError, load_recipe, resolve_paths
from tunery.continual import continuous


class DriftDecision(RunInput):
    """The form the Prefect UI shows when a drifted drop waits for a person (drift.action: pause)."""

    approve: bool = Field(False, description="Train on the drifted drop(s). Leave unticked to reject them.")
    note: str = Field("", description="Why (kept in the drop manifest).")


def _recipe(recipe_path: str, overrides: list[str] | None) -> Recipe:
    mlflow_credentials_from_secret()
    recipe = resolve_paths(load_recipe(recipe_path, overrides or []), Path.cwd())
    if recipe.continuous is None:
        raise RecipeError(f"recipe {recipe_path} has no `continuous` section (drop zone, drift, warm start)")
    return recipe


@flow(name="watch-drops")
def watch_drops(recipe_path: str, overrides: list[str] | None = None) -> dict:
    """Take the drop zone's new complete files into the manifest and announce them (a Prefect event)."""
    recipe = _recipe(recipe_path, overrides)
    found = scan_drop_zone(recipe)
    announced = announce_drops(recipe, recipe_path)
    return {**found, "announced": announced}


def _drift_decision(recipe: Recipe, update: dict) -> dict:
    """Pause for a person's decision on drops held for drift; no decision in time rejects them."""
    logger = get_run_logger()
    logger.warning(
        "high drift in drop(s) %s: waiting for a decision (resume this run in the Prefect UI)", update["held"]
    )
    minutes = recipe.continuous.drift.pause_timeout_minutes
    try:
        decision = pause_flow_run(
            wait_for_input=DriftDecision, timeout=int(minutes * 60), key="drift-decision"
        )
    except FlowPauseTimeout:
        # the server fails a run whose pause expired and lets none of its tasks start: call the library
        continuous.resolve_held(recipe, str(flow_run.id), False, f"no decision within {minutes:g} minutes")
        raise
    resolved = resolve_held_drops(recipe, str(flow_run.id), decision.approve, decision.note)
    return {
        **update,
        "version": resolved["version"],
        "committed": resolved["committed"],
        "rejected": update["rejected"] + resolved["rejected"],
        "held": [],
    }


@flow(name="continuous-learning")
def continuous_learning(recipe_path: str, overrides: list[str] | None = None) -> dict:
    """Fold new drops into the versioned dataset and retrain from the champion when the data changed.

    Args:
        recipe_path: a recipe with a ``continuous`` section.
        overrides: dotted ``key=value`` overrides.
    """
    recipe = _recipe(recipe_path, overrides)
    update = update_dataset(recipe)
    if update["held"]:
        update = _drift_decision(recipe, update)
    if not plan_retrain(recipe, update["version"]):
        return {"status": "up to date", **update}
    run_dir, run_id = open_run(recipe)
    try:
        splits = materialise_dataset(recipe, run_dir, run_id, update["version"], update["drift_dir"])
        start = warm_start(recipe, run_dir)
        model_dir = train_model(start, run_dir, run_id, splits)
        metrics = evaluate_model(start, run_dir, model_dir)
        check_forgetting(recipe, run_dir)
        result = register_model(recipe, run_dir, run_id, metrics)
    except BaseException:
        close_run(recipe, run_id, "FAILED")
        raise
    close_run(recipe, run_id, "FINISHED")
    dataset = {k: v for k, v in update.items() if k != "version"}
    return {"status": "retrained", "dataset_version": update["version"], **dataset, **result}


# Stored flow-run parameters hold no password (an override's `user:password@` is stored as `user:***@`).
for _flow in (watch_drops, continuous_learning):
    _flow.serialize_parameters = tracking.redacting(_flow.serialize_parameters)
