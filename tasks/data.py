"""Data-preparation tasks: ingest, clean, split. Each reads and writes files in the run folder."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks._retry import retry_unless_bad_input
from tunery import tracking
from tunery.config import Recipe
from tunery.data import report, stages
from tunery.layout import RunLayout


@task(name="ingest", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_unless_bad_input)
def ingest_data(recipe: Recipe, run_dir: str) -> str:
    """Read the data source (files may be remote: transient errors are retried with backoff)."""
    path = stages.ingest_stage(recipe, RunLayout(Path(run_dir)))
    get_run_logger().info("ingested %s from %s", path.name, recipe.data.source)
    return str(path)


@task(name="clean", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def clean_data(recipe: Recipe, run_dir: str, ingested: str) -> str:
    """Clean and deduplicate; every row not kept is written to the quarantine file with a reason."""
    layout = RunLayout(Path(run_dir))
    path = stages.clean_stage(recipe, layout)
    stats = json.loads(layout.data_report.read_text())["clean"]
    get_run_logger().info(
        "rows in %d -> kept %d, quarantined %d %s, duplicates %d (exact %d, near %d)",
        stats["rows_in"],
        stats["kept"],
        stats["quarantined"],
        stats["quarantine_reasons"],
        stats["deduplicated"],
        stats["exact_duplicates"],
        stats["near_duplicates"],
    )
    return str(path)


@task(name="split", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def split_data(recipe: Recipe, run_dir: str, run_id: str, cleaned: str) -> dict[str, str]:
    """Hash-bucket train/validation/test split with a leakage check; publishes the data report."""
    layout = RunLayout(Path(run_dir))
    paths = stages.split_stage(recipe, layout)
    data_report = json.loads(layout.data_report.read_text())
    tracking.MlflowLogger(recipe, run_id).log_metrics(tracking.data_metrics(data_report))
    files = [layout.data_report, layout.quarantine, *map(Path, data_report["plots"])]
    tracking.log_files(recipe, run_id, files, "data")
    tracking.log_split_inputs(recipe, run_id, paths, data_report)
    create_markdown_artifact(
        key="data-report", markdown=report.markdown(data_report), description="tunery data"
    )
    logger = get_run_logger()
    logger.info("split rows: %s", {k: v["rows"] for k, v in data_report["split"].items()})
    for warning in data_report["warnings"]:
        logger.warning(warning)
    return paths
