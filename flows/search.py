"""The hyperparameter-search flow: ingest -> clean -> split -> trials -> best trial -> evaluate -> register.

Wiring only: each stage is one task in tasks/, each task one call into the tunery library. Trials are
asked ``search.parallel`` at a time and each trains as its own task run holding a training slot.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.futures import wait

from tasks.data import clean_data, ingest_data, publish_data, split_data
from tasks.model import (
    close_run,
    evaluate_model,
    mlflow_credentials_from_secret,
    open_run,
    register_model,
)
from tasks.search import adopt_best_trial, ask_trials, open_study, publish_search, train_trial
from tunery import tracking
from tunery.config import RecipeError, load_recipe, resolve_paths
from tunery.search.study import Clock


@flow(name="hyperparameter-search")
def hyperparameter_search(recipe_path: str, overrides: list[str] | None = None) -> dict:
    """Search the recipe's `search.space`, then evaluate, gate and register the best trial's model.

    Args:
        recipe_path: path of the recipe YAML (it needs a `search:` section).
        overrides: dotted ``key=value`` overrides, e.g. ``["search.trials=6"]``.
    """
    mlflow_credentials_from_secret()
    recipe = resolve_paths(load_recipe(recipe_path, overrides or []), Path.cwd())
    if recipe.search is None:
        raise RecipeError(f"recipe {recipe_path} has no `search` section (docs/search.md)")
    run_dir, run_id = open_run(recipe)
    try:
        ingested = ingest_data(recipe, run_dir)
        cleaned = clean_data(recipe, run_dir, ingested)
        splits = split_data(recipe, run_dir, cleaned)
        splits = publish_data(recipe, run_dir, run_id, ingested, cleaned, splits)
        open_study(recipe, run_dir, splits)
        clock = Clock.start(recipe.search.timeout_minutes)
        while trial_ids := ask_trials(recipe, clock):
            futures = [train_trial.submit(recipe, run_dir, run_id, trial_id) for trial_id in trial_ids]
            wait(futures)
            for future in futures:
                future.result()  # a trial that failed is recorded; an error here is the search's own
        best, model_dir = adopt_best_trial(recipe, run_dir)
        publish_search(recipe, run_dir, run_id)
        metrics = evaluate_model(best, run_dir, model_dir)
        result = register_model(best, run_dir, run_id, metrics)
    except BaseException:
        close_run(recipe, run_id, "FAILED")
        raise
    close_run(recipe, run_id, "FINISHED")
    return result


# Prefect stores a flow run's parameters: credentials in an override are stored redacted (docs/security.md).
hyperparameter_search.serialize_parameters = tracking.redacting(hyperparameter_search.serialize_parameters)
