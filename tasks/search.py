"""Search tasks: open the study, ask for trials, train a trial (holding a training slot), adopt the best
trial's model, publish the search summary. Each is one call into ``tunery.search``."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from tasks.model import training_slot
from tasks.retry import retry_unless_bad_input
from tunery import pipeline
from tunery.config import Recipe
from tunery.layout import RunLayout
from tunery.ops.console import STAGE
from tunery.search import report
from tunery.search import study as studies
from tunery.search import trial as trials


@task(name="open-study", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def open_study(recipe: Recipe, run_dir: str, splits: dict[str, str]) -> str:
    """Create or resume the recipe's study: same experiment checked, trials of dead processes queued again."""
    line = studies.prepare(recipe, RunLayout(Path(run_dir)))
    get_run_logger().info(line, extra={STAGE: "search"})
    return line


# Never cached: every call asks the study for new trials.
# Never retried: a retry after a storage error would ask new trials next to the ones already asked.
@task(name="ask-trials", cache_policy=NO_CACHE)
def ask_trials(recipe: Recipe, clock: studies.Clock) -> list[int]:
    """The ids of the next trials to run (up to ``search.parallel``); [] when the budget or clock is spent."""
    return studies.ask(studies.open_study(recipe), recipe, clock)


@task(name="train-trial", cache_policy=NO_CACHE)
def train_trial(recipe: Recipe, run_dir: str, run_id: str, trial_id: int) -> dict:
    """Train one trial as its own job while holding a slot of the training limit (N slots: N trials at
    once). A failed trial is the study's record, not this task's failure; a killed one is run again by the
    next search run."""
    logger = get_run_logger()
    slot = training_slot()
    logger.info("trial %s waiting for training slot %r", trial_id, slot)
    with studies.heartbeat(recipe, trial_id), concurrency(slot, occupy=1, timeout_seconds=None, strict=False):
        outcome = trials.run_trial(recipe, RunLayout(Path(run_dir)), run_id, trial_id, logger.info)
    logger.info(outcome.line(studies.metric(recipe)), extra={STAGE: "search"})
    return {
        "number": outcome.number,
        "state": outcome.state,
        "value": outcome.value,
        "params": outcome.params,
    }


@task(name="adopt-best-trial", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def adopt_best_trial(recipe: Recipe, run_dir: str) -> tuple[Recipe, str]:
    """Copy the best trial's model into the run folder; returns its recipe and the model folder."""
    layout = RunLayout(Path(run_dir))
    best = trials.adopt_best(recipe, layout)
    summary = pipeline.train_summary(layout)
    get_run_logger().info("best trial's model adopted: %s", summary, extra={STAGE: "search"})
    return best, str(layout.model_dir)


@task(name="publish-search", retries=2, retry_delay_seconds=5)
def publish_search(recipe: Recipe, run_dir: str, run_id: str) -> dict:
    """The search summary and Optuna's plots into MLflow; a markdown and a table artifact here."""
    found = report.publish(recipe, RunLayout(Path(run_dir)), run_id)
    markdown = report.markdown(found)
    create_markdown_artifact(key="search-summary", markdown=markdown, description="tunery search")
    rows = [
        {
            "trial": t["number"],
            "state": t["state"],
            "value": t["value"],
            **{k: str(v) for k, v in t["params"].items()},
            "cpu_s": (t["cost"] or {}).get("cpu_s"),
            "money": (t["cost"] or {}).get("money"),
        }
        for t in found["trials"]
    ]
    create_table_artifact(key="search-trials", table=rows, description="every trial of the study")
    get_run_logger().info(report.one_line(found), extra={STAGE: "search"})
    return found
