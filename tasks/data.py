"""Data-preparation tasks: ingest, clean, split (cached on content), then publish (always runs).

ingest, clean and split are cached on the content key of their inputs (tunery.data.cache.stage_keys: the
source files' bytes, the recipe sections they read, the data code's version): a re-run with unchanged
inputs shows them as Cached and reuses the earlier run's files; publish then completes this run's data
folder from them and records the data in MLflow and in a Prefect artifact. ``PREFECT_TASKS_REFRESH_CACHE=
true`` forces them to run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from prefect.transactions import get_transaction

from tasks.retry import retry_unless_bad_input
from tunery import pipeline, tracking
from tunery.config import Recipe
from tunery.data import cache, report, stages
from tunery.evaluation import artifacts
from tunery.layout import RunLayout
from tunery.ops.console import STAGE


def _content_key(stage: str):
    """A cache_key_fn: the stage's content key, mapped through the workdir's index of live outputs."""

    def key(context: TaskRunContext, parameters: dict) -> str:
        recipe: Recipe = parameters["recipe"]
        content = cache.stage_keys(recipe)[stage]
        return cache.StageIndex(recipe.workdir).cache_key(stage, content)

    return key


def _remember(recipe: Recipe, stage: str, outputs: list[str]) -> None:
    """Record which cache key produced ``outputs`` (so that it is reused only while they exist)."""
    current = get_transaction()  # Prefect 3 caches a task's result under its transaction's key
    parsed = cache.StageIndex.parse(current.key) if current is not None and current.key else None
    if parsed is not None and parsed[0] == stage:
        cache.StageIndex(recipe.workdir).record(stage, parsed[1], current.key, outputs)


def _data_stage(name: str, retries: int, retry_delay_seconds: int | list[int], timeout_hours: float):
    """The task decorator of a data stage: retried unless the input is bad, cached on its content key
    (the result, a path, is persisted so that later runs and processes can reuse it), with a timeout."""
    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        timeout_seconds=timeout_hours * 3600,
        retry_condition_fn=retry_unless_bad_input,
        cache_key_fn=_content_key(name),
        persist_result=True,
        cache_result_in_memory=False,
        # Never log_prints (the flows do not set it either; this also overrides PREFECT_LOGGING_LOG_PRINTS):
        # datasets fingerprints functions with dill, which finds their globals by printing a bytecode
        # disassembly into a captured stdout; a print turned into a log record escapes the capture and
        # fills the log with LOAD_FAST lines.
        log_prints=False,
    )


@_data_stage("ingest", retries=3, retry_delay_seconds=[2, 10, 30], timeout_hours=2)
def ingest_data(recipe: Recipe, run_dir: str) -> str:
    """Read the data source (files may be remote: transient errors are retried with backoff)."""
    layout = RunLayout(Path(run_dir))
    with pipeline.metered(layout, "ingest"):
        path = stages.ingest_stage(recipe, layout)
    _remember(recipe, "ingest", [str(path)])
    source = tracking.redact(recipe.data.source)  # an fsspec URI may carry user:password@
    get_run_logger().info("ingested %s from %s", path.name, source, extra={STAGE: "ingest"})
    return str(path)


@_data_stage("clean", retries=1, retry_delay_seconds=5, timeout_hours=6)
def clean_data(recipe: Recipe, run_dir: str, ingested: str) -> str:
    """Clean and deduplicate; every row not kept is written to the quarantine file with a reason."""
    layout = RunLayout(Path(run_dir))
    with pipeline.metered(layout, "clean"):
        path = stages.clean_stage(recipe, layout, Path(ingested))
    _remember(recipe, "clean", [str(path), str(layout.quarantine), str(layout.data_report)])
    get_run_logger().info(pipeline.clean_summary(layout), extra={STAGE: "clean"})
    return str(path)


@_data_stage("split", retries=1, retry_delay_seconds=5, timeout_hours=2)
def split_data(recipe: Recipe, run_dir: str, cleaned: str) -> dict[str, str]:
    """Hash-bucket train/validation/test split with a leakage check."""
    layout = RunLayout(Path(run_dir))
    with pipeline.metered(layout, "split"):
        paths = stages.split_stage(recipe, layout, Path(cleaned))
    _remember(recipe, "split", [*paths.values(), str(layout.data_report)])
    return paths


@task(name="publish-data", retries=2, retry_delay_seconds=5)
def publish_data(
    recipe: Recipe, run_dir: str, run_id: str, ingested: str, cleaned: str, splits: dict
) -> dict:
    """Complete the run's data folder from reused stages; log the data report, files and split lineage
    to MLflow and publish the report as a Prefect artifact. Returns this run's split paths."""
    layout = RunLayout(Path(run_dir))
    logger = get_run_logger()
    with pipeline.metered(layout, "publish-data"):
        taken = stages.adopt_data(layout, [Path(ingested), Path(cleaned), *map(Path, splits.values())])
        data_report = pipeline.publish_data(recipe, layout, run_id)
    if taken:
        logger.info("reused %d data file(s) of earlier runs (cached stages): %s", len(taken), taken)
    paths = {name: str(layout.split(name)) for name in splits}
    create_markdown_artifact(
        key="data-report",
        markdown=artifacts.with_plots(report.markdown(data_report), data_report["plots"]),
        description="tunery data",
    )
    logger.info(pipeline.split_summary(layout), extra={STAGE: "split"})
    for warning in data_report["warnings"]:
        logger.warning(warning)
    return paths
