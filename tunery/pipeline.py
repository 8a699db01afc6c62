"""The pipeline without an orchestrator: ``run(recipe) -> RunResult``, for notebooks and other schedulers.

The stage functions below are the ones the Prefect tasks in ``tasks/`` call, one each; ``run`` calls them in
the order ``flows/finetune.py`` wires them::

    open_run -> ingest -> clean -> split -> publish_data -> train -> evaluate -> register -> close_run

This module never imports Prefect (a test checks it): retries, caching, timeouts and the training slot are
the orchestrator's business, declared on the tasks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunery import registry, tracking
from tunery.config import Recipe, RecipeError
from tunery.data import preflight, stages
from tunery.layout import RunLayout
from tunery.ops import usage

# One line of progress for a person: (stage, message). The CLI shows it; the tasks log it.
Progress = Callable[[str, str], None]


def _silent(stage: str, message: str) -> None:
    """The default progress sink: nothing (a notebook gets the return values instead)."""


@dataclass(frozen=True)
class RunResult:
    """What one pipeline run produced: where its files are, its MLflow run and the registered version."""

    run_dir: Path
    run_id: str
    registration: registry.Registration
    metrics: dict = field(repr=False)

    @property
    def model_uri(self) -> str:
        return self.registration.model_uri


def open_run(recipe: Recipe) -> tuple[RunLayout, str]:
    """Check the base model (config only), then create the run folder and its MLflow run; returns both.

    Raises:
        tunery.models.ModelError: the base model cannot be used (before any folder or run exists).
    """
    started = usage.Meter()
    preflight.check_model(recipe)  # a bad base or max_length fails here, not in training after the data
    layout = RunLayout.create(recipe.workdir, recipe.name)
    run_id = tracking.start_run(recipe, layout.root)
    started.record(layout.usage, "open")
    return layout, run_id


def metered(layout: RunLayout, stage: str):
    """A context around one stage that appends its wall time, CPU time and peak memory to the run's
    ``usage.jsonl`` (:mod:`tunery.ops.usage`); ``tracking.end_run`` prices the lines and logs the cost."""
    return usage.meter(layout.usage, stage)


def clean_summary(layout: RunLayout) -> str:
    """``rows in 600 -> kept 561, quarantined 22 {...}, duplicates 17 (exact 9, near 8)``."""
    stats = json.loads(layout.data_report.read_text(encoding="utf-8"))["clean"]
    return (
        f"rows in {stats['rows_in']} -> kept {stats['kept']}, quarantined {stats['quarantined']} "
        f"{stats['quarantine_reasons']}, duplicates {stats['deduplicated']} "
        f"(exact {stats['exact_duplicates']}, near {stats['near_duplicates']})"
    )


def split_summary(layout: RunLayout) -> str:
    """``split rows: {'train': 392, 'validation': 84, 'test': 85}``."""
    report = json.loads(layout.data_report.read_text(encoding="utf-8"))
    return f"split rows: { {k: v['rows'] for k, v in report['split'].items()} }"


def publish_data(recipe: Recipe, layout: RunLayout, run_id: str) -> dict:
    """Record the run's data in MLflow: data metrics, the report, the quarantine, split lineage.

    Returns:
        The data report (``data/report.json``).
    """
    report = json.loads(layout.data_report.read_text(encoding="utf-8"))
    paths = {name: str(layout.split(name)) for name in report["split"]}
    tracking.MlflowLogger(recipe, run_id).log_metrics(tracking.data_metrics(report))
    files = [layout.data_report, layout.quarantine, *map(Path, report["plots"])]
    tracking.log_files(recipe, run_id, files, "data")
    tracking.log_split_inputs(recipe, run_id, paths, report)
    return report


def train(
    recipe: Recipe,
    layout: RunLayout,
    run_id: str,
    on_line: Callable[[str], None],
    progress: Progress = _silent,
) -> Path:
    """Train as a separate (multi-)process job, then plot its curves from the MLflow run's history.

    The curves are for people: a tracking hiccup while plotting them is reported through ``progress``
    and never fails a finished training job (a retry would train again).

    Returns:
        The exported model folder.
    """
    from tunery.evaluation import artifacts
    from tunery.training.launch import launch_training

    recipe = registry.resolve_start(recipe, layout)  # model.init_from: NAME@champion -> its model folder
    if recipe.model.init_from and layout.parent.exists():
        progress("train", f"training starts from {layout.parent.read_text(encoding='utf-8')}")
    model_dir = launch_training(recipe, layout, run_id, on_line=lambda line: on_line(tracking.redact(line)))
    try:
        history = artifacts.training_history(tracking.client(recipe), run_id)
        curves = artifacts.plot_training_curves(history, layout.train_dir / artifacts.TRAINING_CURVES)
        if curves:
            tracking.log_files(recipe, run_id, [curves], "train")
    except Exception as error:  # noqa: BLE001 - see the docstring
        progress("train", f"warning: training curves not plotted: {error}")
    return model_dir


def train_summary(layout: RunLayout) -> str:
    """``trained 120 steps in 64 s; validation {'loss': 0.41, 'accuracy': 0.93}``."""
    summary = json.loads((layout.train_dir / "metrics.json").read_text(encoding="utf-8"))
    shown = {
        k: round(v, 4) for k, v in summary["validation"].items() if k in ("loss", "accuracy", "macro_f1")
    }
    return (
        f"trained {summary['global_steps']} steps in {summary['train_runtime_s']:.0f} s; validation {shown}"
    )


def evaluate(recipe: Recipe, layout: RunLayout, progress: Progress = _silent) -> dict:
    """Score the model, the baselines and the current champion (if any) on the same test rows.

    Returns:
        ``eval/metrics.json`` as a dict.
    """
    from tunery.evaluation.evaluate import evaluate as evaluate_run

    recipe = registry.resolve_start(recipe, layout)  # the downloaded start model, not the reference
    champion_version = registry.current_champion(recipe)
    if recipe.task == "preference":  # its answers are scored from the model folder, not the pyfunc
        folder = (
            registry.download_model_dir(recipe, champion_version, layout.root / "champion")
            if champion_version
            else None
        )
        path = evaluate_run(recipe, layout, None, champion_version, progress=progress, champion_dir=folder)
        return json.loads(Path(path).read_text(encoding="utf-8"))
    from tunery.evaluation.signoff import needs_champion_folder

    champion = registry.load_predictor(recipe, champion_version) if champion_version else None
    folder = None
    if champion_version and needs_champion_folder(recipe):  # its size and latency, measured like ours
        folder = registry.download_model_dir(recipe, champion_version, layout.root / "champion")
    path = evaluate_run(recipe, layout, champion, champion_version, progress=progress, champion_dir=folder)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def run(
    recipe: Recipe, progress: Progress = _silent, on_line: Callable[[str], None] | None = None
) -> RunResult:
    """Run the whole pipeline in this process (training still runs as its own job) and register the model.

    Args:
        recipe: a validated recipe, its relative paths already resolved (``config.resolve_paths``).
        progress: called with (stage, message) once per stage and during long stages.
        on_line: receives every line of the training job's log (default: dropped; see ``train/``).

    Returns:
        The run's folder, MLflow run id, registration (alias and the gate's reason) and test metrics.
    """
    layout, run_id = open_run(recipe)
    progress("open", f"run folder {layout.root}, MLflow run {run_id}")
    try:
        _data_stages(recipe, layout, run_id, progress)
        with metered(layout, "train"):
            train(recipe, layout, run_id, on_line or (lambda line: None), progress)
        progress("train", train_summary(layout))
        metrics, registration = _evaluate_and_register(recipe, layout, run_id, progress)
    except BaseException:
        tracking.end_run(recipe, run_id, "FAILED")
        raise
    _close(recipe, run_id, progress)
    return RunResult(layout.root, run_id, registration, metrics)


def _data_stages(recipe: Recipe, layout: RunLayout, run_id: str, progress: Progress) -> None:
    with metered(layout, "ingest"):
        stages.ingest_stage(recipe, layout)
    progress("ingest", f"ingested {layout.ingested.name} from {tracking.redact(str(recipe.data.source))}")
    with metered(layout, "clean"):
        stages.clean_stage(recipe, layout)
    progress("clean", clean_summary(layout))
    with metered(layout, "split"):
        stages.split_stage(recipe, layout)
    progress("split", split_summary(layout))
    with metered(layout, "publish-data"):
        report = publish_data(recipe, layout, run_id)
    for warning in report["warnings"]:
        progress("data", f"warning: {warning}")


def _evaluate_and_register(recipe: Recipe, layout: RunLayout, run_id: str, progress: Progress):
    from tunery.evaluation.report import metric_line

    with metered(layout, "evaluate"):
        metrics = evaluate(recipe, layout, progress)
    progress("evaluate", f"test {metric_line(metrics)}")
    with metered(layout, "register"):
        registration = registry.register(recipe, layout, run_id)
    progress("register", f"{registration.model_name} version {registration.version} -> {registration.alias}")
    return metrics, registration


def _close(recipe: Recipe, run_id: str, progress: Progress) -> None:
    cost = tracking.end_run(recipe, run_id, "FINISHED")
    if cost:
        progress("close", f"cost: {usage.text(cost)}")


def search(
    recipe: Recipe, progress: Progress = _silent, on_line: Callable[[str], None] | None = None
) -> RunResult:
    """Run a hyperparameter search (the recipe's ``search`` section) in this process, then evaluate, gate
    and register the best trial's model like a normal run's.

    Trials run one after another here (``search.parallel`` is the Prefect flow's: ``flows/search.py``).
    The study lives in ``search.storage``: calling this again (after a crash, say) resumes it.

    Raises:
        RecipeError: the recipe has no ``search`` section.
        tunery.search.study.SearchError: the stored study is of other data or settings, or no trial
            completed.
    """
    from tunery.search import report as search_report
    from tunery.search import study as studies
    from tunery.search import trial as trials

    if recipe.search is None:
        raise RecipeError("the recipe has no `search` section (docs/search.md)")
    layout, run_id = open_run(recipe)
    progress("open", f"run folder {layout.root}, MLflow run {run_id}")
    try:
        _data_stages(recipe, layout, run_id, progress)
        progress("search", studies.prepare(recipe, layout))
        study, clock = studies.open_study(recipe), studies.Clock.start(recipe.search.timeout_minutes)
        metric = studies.metric(recipe)
        while ids := studies.ask(study, recipe, clock, at_most=1):  # one after another in this process
            for trial_id in ids:
                outcome = trials.run_trial(recipe, layout, run_id, trial_id, on_line or (lambda line: None))
                progress("search", outcome.line(metric))
        best = trials.adopt_best(recipe, layout)
        progress("search", f"best trial's model adopted: {train_summary(layout)}")
        found = search_report.publish(recipe, layout, run_id)
        progress("search", search_report.one_line(found))
        metrics, registration = _evaluate_and_register(best, layout, run_id, progress)
    except BaseException:
        tracking.end_run(recipe, run_id, "FAILED")
        raise
    _close(recipe, run_id, progress)
    return RunResult(layout.root, run_id, registration, metrics)
