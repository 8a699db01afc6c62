"""Model tasks: open the tracking run, train, evaluate, register. They pass folders and run ids."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency

from tasks.retry import retry_unless_bad_input
from tunery import pipeline, registry, tracking
from tunery.config import Recipe
from tunery.evaluation import artifacts, report
from tunery.layout import RunLayout
from tunery.ops import usage
from tunery.ops.console import STAGE


@task(name="open-run", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def open_run(recipe: Recipe) -> tuple[str, str]:
    """Create the run folder and its MLflow run. Returns (run folder, MLflow run id)."""
    layout, run_id = pipeline.open_run(recipe)
    get_run_logger().info("run folder %s, MLflow run %s", layout.root, run_id, extra={STAGE: "open"})
    return str(layout.root), run_id


SECRET_BLOCK_VARIABLE = "TUNERY_MLFLOW_SECRET_BLOCK"


def mlflow_credentials_from_secret() -> None:
    """The flows' first step: MLflow credentials from the Prefect Secret block named by
    ``TUNERY_MLFLOW_SECRET_BLOCK`` (if set), into the variables MLflow reads (the training job inherits
    them). Its value is the password, or ``{"username": ..., "password": ...}`` (docs/security.md)."""
    name = os.environ.get(SECRET_BLOCK_VARIABLE)
    if not name:
        return
    from prefect.blocks.system import Secret

    value = Secret.load(name).get()
    found = value if isinstance(value, dict) else {"password": value}
    for key in ("username", "password"):
        if found.get(key):
            os.environ[f"MLFLOW_TRACKING_{key.upper()}"] = str(found[key])


def training_slot() -> str:
    """The global concurrency limit a training job holds: one per GPU pool, named by the worker's
    ``TUNERY_TRAINING_LIMIT`` (default ``tunery-training``, created with 1 slot by ``tunery stack up``)."""
    return os.environ.get("TUNERY_TRAINING_LIMIT", "tunery-training")


@task(name="train", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_bad_input)
def train_model(recipe: Recipe, run_dir: str, run_id: str, splits: dict[str, str]) -> str:
    """Launch training as its own (multi-)process job; a retry resumes from the last complete checkpoint.

    The job holds a slot of the :func:`training_slot` limit while it runs: extra runs wait in line for it.
    Where that limit does not exist (ephemeral Prefect), training is not limited.
    """
    layout = RunLayout(Path(run_dir))
    logger = get_run_logger()
    slot = training_slot()
    logger.info("waiting for training slot %r", slot)
    with concurrency(slot, occupy=1, timeout_seconds=None, strict=False):
        logger.info("holding training slot %r", slot)
        with pipeline.metered(layout, "train"):  # from the slot on: waiting in line costs nothing
            model_dir = pipeline.train(
                recipe, layout, run_id, logger.info, lambda stage, message: logger.warning(message)
            )
    logger.info(pipeline.train_summary(layout), extra={STAGE: "train"})
    return str(model_dir)


def judge_key_from_secret(recipe: Recipe) -> None:
    """The judge's API key from the Prefect Secret block ``evaluation.judge.secret_block`` (if set), into
    the environment variable the library reads (``evaluation.judge.api_key_env``); never logged."""
    judge = recipe.evaluation.judge
    if judge is None or not judge.secret_block:
        return
    from prefect.blocks.system import Secret

    os.environ[judge.api_key_env] = str(Secret.load(judge.secret_block).get())


@task(name="evaluate", retries=2, retry_delay_seconds=5, timeout_seconds=6 * 3600)
def evaluate_model(recipe: Recipe, run_dir: str, model_dir: str) -> str:
    """Score the model, the baselines and the current champion on the same test rows (and evaluation sets,
    benchmarks and the judge, where the recipe names them)."""
    judge_key_from_secret(recipe)
    logger = get_run_logger()
    layout = RunLayout(Path(run_dir))
    with pipeline.metered(layout, "evaluate"):
        metrics = pipeline.evaluate(
            recipe, layout, lambda stage, message: logger.info(message, extra={STAGE: stage})
        )
    logger.info("test %s", report.metric_line(metrics), extra={STAGE: "evaluate"})
    return str(layout.metrics)


@task(name="register", retries=2, retry_delay_seconds=5, timeout_seconds=3600)
def register_model(recipe: Recipe, run_dir: str, run_id: str, metrics_path: str) -> dict:
    """Log the model, register a new version and alias it champion or challenger by the gate."""
    layout = RunLayout(Path(run_dir))
    with pipeline.metered(layout, "register"):
        result = registry.register(recipe, layout, run_id)
    markdown = artifacts.summary_markdown(
        layout, result, tracking.redact(tracking.tracking_uri(recipe)), tracking.experiment_id(recipe)
    )
    create_markdown_artifact(key="finetune-summary", markdown=markdown, description="tunery run summary")
    create_table_artifact(
        key="finetune-metrics", table=report.metrics_table(layout), description="test metrics per model"
    )
    get_run_logger().info(
        "registered %s version %s as %s: %s",
        result.model_name,
        result.version,
        result.alias,
        result.reason,
        extra={STAGE: "register"},
    )
    return asdict(result)


@task(name="close-run", retries=2, retry_delay_seconds=5)
def close_run(recipe: Recipe, run_id: str, status: str) -> None:
    """Log the run's cost (metrics, ``cost.json``, version tags), then mark it FINISHED or FAILED."""
    cost = tracking.end_run(recipe, run_id, status)
    if cost:
        create_markdown_artifact(key="run-cost", markdown=usage.markdown(cost), description="tunery run cost")
        get_run_logger().info("cost: %s", usage.text(cost), extra={STAGE: "close"})
