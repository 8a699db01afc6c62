"""Continuous-learning tasks: watch the drop zone, fold drops into the dataset, warm-start, check forgetting.

Each task is one call into tunery.drops / tunery.continuous; they pass ids, version numbers and paths.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run

from tasks.retry import retry_unless_bad_input
from tunery import pipeline, registry, tracking
from tunery.config import Recipe
from tunery.continual import continuous, drift, drops
from tunery.data.report import markdown as data_markdown
from tunery.evaluation import artifacts, forgetting
from tunery.layout import RunLayout


@task(name="scan-drop-zone", retries=2, retry_delay_seconds=[5, 30], timeout_seconds=3600)
def scan_drop_zone(recipe: Recipe) -> dict:
    """Register the zone's complete, unseen files in the manifest (each hashed once)."""
    found = drops.scan(recipe)
    logger = get_run_logger()
    for entry in found.new:
        logger.info(
            "new drop %s: %s (sha256 %s)", entry["id"], drops.shown(entry["uri"]), entry["sha256"][:12]
        )
    for entry in found.duplicates:
        logger.warning(
            "%s has the content of drop %s: not taken again", drops.shown(entry["uri"]), entry["id"]
        )
    for entry in found.rejected:  # each is reported once, the first scan that meets it
        logger.warning(
            "refused unread: %s (%s: %s)", drops.shown(entry.name), entry.reason, drops.shown(entry.detail)
        )
    return found.as_dict()


@task(name="announce-drops", retries=2, retry_delay_seconds=5)
def announce_drops(recipe: Recipe, recipe_path: str) -> list[str]:
    """Emit ``tunery.drop.arrived`` for pending drops not announced yet (or announced long ago: a retrain
    that an event should have started did not take them)."""
    manifest = drops.Manifest.of(recipe)
    due = manifest.to_announce(recipe.continuous.reannounce_seconds)
    for drop in due:
        emit_event(
            event=drops.EVENT,
            resource={"prefect.resource.id": drops.resource_id(recipe), "prefect.resource.name": recipe.name},
            related=[
                {
                    "prefect.resource.id": f"tunery.drop.{drop.id}",
                    "prefect.resource.role": "drop",
                    "prefect.resource.name": drop.name,
                }
            ],
            payload={
                "recipe_path": recipe_path,
                "drop_id": drop.id,
                "sha256": drop.sha256,
                "uri": tracking.redact(drop.uri),  # events are stored: never a credential
            },
        )
    manifest.mark_announced([d.id for d in due])
    if due:
        get_run_logger().info("announced %d drop(s): %s", len(due), [d.id for d in due])
    return [d.id for d in due]


@task(
    name="update-dataset",
    retries=1,
    retry_delay_seconds=10,
    timeout_seconds=6 * 3600,
    retry_condition_fn=retry_unless_bad_input,
)
def update_dataset(recipe: Recipe) -> dict:
    """Stage pending drops (ingest, clean, dedup against the history), check drift, commit/hold/reject."""
    result = continuous.update_dataset(recipe, owner=str(flow_run.id))
    logger = get_run_logger()
    for drop_id, reason in result["failed"].items():
        logger.error("drop %s failed: %s", drop_id, reason)
    if result["drift"] is not None:
        create_markdown_artifact(
            key="drift-report",
            markdown=artifacts.with_plots(
                drift.drift_markdown(result["drift"]), result["drift"].get("plots")
            ),
            description="tunery drift",
        )
        for line in result["drift"]["high"]:
            logger.warning("drift: %s (action: %s)", line, recipe.continuous.drift.action)
    logger.info(
        "dataset version %s; committed %s, held %s, rejected %s",
        result["version"],
        result["committed"],
        result["held"],
        result["rejected"],
    )
    return {k: v for k, v in result.items() if k != "drift"} | {
        "drifted": bool(result["drift"] and result["drift"]["drifted"])
    }


@task(name="resolve-held-drops", retries=2, retry_delay_seconds=5)
def resolve_held_drops(recipe: Recipe, owner: str, approve: bool, note: str) -> dict:
    """Commit (approved) or reject the drops this run held for a drift decision."""
    result = continuous.resolve_held(recipe, owner, approve, note)
    get_run_logger().info(
        "drift decision %s: committed %s, rejected %s",
        "approve" if approve else "reject",
        result["committed"],
        result["rejected"],
    )
    return result


@task(name="plan-retrain", retries=2, retry_delay_seconds=5)
def plan_retrain(recipe: Recipe, version: int | None) -> bool:
    """Whether the dataset version still needs a model (none registered for it yet)."""
    needed = continuous.needs_training(recipe, version)
    get_run_logger().info(
        "dataset version %s: %s", version, "retrain" if needed else "a model was already trained on it"
    )
    return needed


@task(name="materialise-dataset", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def materialise_dataset(
    recipe: Recipe, run_dir: str, run_id: str, version: int, drift_dir: str | None
) -> dict:
    """Write the version's splits, data report, drift files and lineage into the run; log them to MLflow."""
    layout = RunLayout(Path(run_dir))
    with pipeline.metered(layout, "materialise-dataset"):
        paths = continuous.materialise(recipe, layout, version, drift_dir)
    data_report = json.loads(layout.data_report.read_text(encoding="utf-8"))
    tracking.MlflowLogger(recipe, run_id).log_metrics(tracking.data_metrics(data_report))
    tracking.log_files(
        recipe, run_id, [layout.data_report, layout.quarantine, *map(Path, data_report["plots"])], "data"
    )
    tracking.log_files(recipe, run_id, sorted((layout.root / "drift").glob("*")), "drift")
    tracking.log_files(recipe, run_id, [layout.root / "lineage.json"], "lineage")
    tracking.log_split_inputs(recipe, run_id, paths, data_report)
    create_markdown_artifact(
        key="data-report",
        markdown=artifacts.with_plots(data_markdown(data_report), data_report.get("plots")),
        description="tunery data",
    )
    get_run_logger().info(
        "dataset version %d: split rows %s", version, {k: v["rows"] for k, v in data_report["split"].items()}
    )
    return paths


@task(name="warm-start", retries=2, retry_delay_seconds=5)
def warm_start(recipe: Recipe, run_dir: str) -> Recipe:
    """The recipe to train with: starting from the champion's weights when asked and possible."""
    start, why = registry.warm_start(recipe, RunLayout(Path(run_dir)))
    get_run_logger().info(why)
    return start


@task(name="check-forgetting", retries=1, retry_delay_seconds=5)
def check_forgetting(recipe: Recipe, run_dir: str) -> dict:
    """Compare the model with the champion on each earlier drop's test rows (the gate reads the result)."""
    layout = RunLayout(Path(run_dir))
    with pipeline.metered(layout, "check-forgetting"):
        # sft scores the champion's own weights (perplexity, replies); classification its stored predictions
        champion_dir = registry.evaluated_champion_dir(recipe, layout) if recipe.task == "sft" else None
        result = forgetting.forgetting_check(recipe, layout, champion_dir)
    logger = get_run_logger()
    for drop_id, block in result["slices"].items():
        logger.info("drop %s: %s", drop_id, forgetting.describe(result["metric"], block))
    if result["forgotten"]:
        logger.warning("the model forgot earlier drop(s) %s: it will not be promoted", result["forgotten"])
    return result
