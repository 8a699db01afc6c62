"""The finetune flow: ingest -> clean -> split -> train -> evaluate -> register.

Wiring only: each stage is one task in tasks/, each task one call into the tunery library.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.data import clean_data, ingest_data, publish_data, split_data
from tasks.model import (
    close_run,
    evaluate_model,
    mlflow_credentials_from_secret,
    open_run,
    register_model,
    train_model,
)
from tunery import tracking
from tunery.config import load_recipe, resolve_paths


@flow(name="finetune")
def finetune(recipe_path: str, overrides: list[str] | None = None) -> dict:
    """Fine-tune a model from a YAML recipe and register it in MLflow.

    Args:
        recipe_path: path of the recipe YAML (relative paths inside it are relative to the working dir).
        overrides: dotted ``key=value`` overrides, e.g. ``["training.epochs=1", "method.name=lora"]``.
    """
    mlflow_credentials_from_secret()
    recipe = resolve_paths(load_recipe(recipe_path, overrides or []), Path.cwd())
    run_dir, run_id = open_run(recipe)
    try:
        ingested = ingest_data(recipe, run_dir)
        cleaned = clean_data(recipe, run_dir, ingested)
        splits = split_data(recipe, run_dir, cleaned)
        splits = publish_data(recipe, run_dir, run_id, ingested, cleaned, splits)
        model_dir = train_model(recipe, run_dir, run_id, splits)
        metrics = evaluate_model(recipe, run_dir, model_dir)
        result = register_model(recipe, run_dir, run_id, metrics)
    except BaseException:
        close_run(recipe, run_id, "FAILED")
        raise
    close_run(recipe, run_id, "FINISHED")
    return result


# Prefect stores a flow run's parameters: an override with `user:password@` is stored as `user:***@` (the
# run itself gets the real one; its recipe moves the credentials into the environment, docs/security.md).
finetune.serialize_parameters = tracking.redacting(finetune.serialize_parameters)
