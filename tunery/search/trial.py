"""One trial of a search: the normal training job on the search run's splits, with the trial's parameters.

A trial trains in ``<run>/trials/trial-<n>/`` (its own ``RunLayout``: the run's split files hard-linked
in, its own checkpoints, model, ``usage.jsonl``), logs to a nested MLflow run, reports the validation
metric of every evaluation the job prints (``tunery.training.loop.evaluation_line``) to Optuna, and is
stopped as soon as the pruner says so. While it runs it records a heartbeat in the storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery import tracking
from tunery.config import Recipe, RecipeError
from tunery.layout import SPLITS, RunLayout
from tunery.ops import usage
from tunery.search import study as studies

TRIALS = "trials"
BEST = "best.json"  # <run>/search/best.json: which trial's model the run adopted
SEARCH_STAGE = "search"  # the stage the trials' usage is summed under in the search run's usage.jsonl


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: ``complete`` (value is its metric), ``pruned`` or ``failed`` (error says why)."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_id: str | None
    error: str | None = None
    cost: dict | None = None

    def line(self, metric: str) -> str:
        """``trial 3 complete: accuracy 0.8123 with {...}``, for the progress log."""
        if self.state == "complete":
            return f"trial {self.number} complete: {metric} {self.value:.4f} with {self.params}"
        if self.state == "pruned":
            return f"trial {self.number} pruned ({metric} {self.value:.4f} so far) with {self.params}"
        return f"trial {self.number} failed with {self.params}: {self.error}"


def trial_layout(parent: RunLayout, number: int) -> RunLayout:
    """The trial's folder, with the search run's split files linked in (copied where links fail)."""
    layout = RunLayout(parent.root / TRIALS / f"trial-{number:04d}")
    for name in SPLITS:
        source, target = parent.split(name), layout.split(name)
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(source, target)
    return layout


class _Heartbeat(threading.Thread):
    """Records the trial's heartbeat every ``search.heartbeat_seconds`` until stopped."""

    def __init__(self, recipe: Recipe, trial_id: int) -> None:
        super().__init__(daemon=True, name=f"search-heartbeat-{trial_id}")
        self.storage, self.trial_id = studies.storage(recipe), trial_id
        self.interval, self.halt = recipe.search.heartbeat_seconds, threading.Event()

    def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a storage hiccup: the next beat tries again
                self.storage.record_heartbeat(self.trial_id)
            if self.halt.wait(self.interval):
                return


class _Pruning:
    """Reads the job's evaluation lines, reports them to the trial, and flags a stop when Optuna prunes."""

    def __init__(self, trial, metric: str, forward: Callable[[str], None]) -> None:
        self.trial, self.metric, self.forward = trial, metric, forward
        self.stop = threading.Event()
        self.at: int | None = None
        self.last: float | None = None

    def __call__(self, line: str) -> None:
        from tunery.training.loop import parse_evaluation_line

        self.forward(line)
        payload = parse_evaluation_line(line)
        value = payload["metrics"].get(self.metric) if payload else None
        if not isinstance(value, int | float) or self.stop.is_set():
            return
        step = int(payload["evaluation"])
        try:
            self.trial.report(float(value), step)
            self.last = float(value)
            if self.trial.should_prune():
                self.at = step
                self.stop.set()
                self.forward(
                    f"tunery: pruning trial {self.trial.number} after evaluation {step}: {self.metric} "
                    f"{value:.4f} is worse than the median of earlier trials there"
                )
        except Exception as error:  # noqa: BLE001 - pruning is an optimisation: the trial trains on
            self.forward(f"tunery: warning: trial {self.trial.number} could not report to the study: {error}")


def _value(layout: RunLayout, metric: str) -> float:
    summary = json.loads((layout.train_dir / "metrics.json").read_text(encoding="utf-8"))
    value = summary.get("validation", {}).get(metric)
    if not isinstance(value, int | float):
        reported = sorted(summary.get("validation", {}))
        raise RuntimeError(f"the training job reported no validation {metric} (it reported {reported})")
    return float(value)


def _costed(recipe: Recipe, parent: RunLayout, layout: RunLayout, run_id: str | None, status: str):
    """Close the trial's MLflow run with its cost; add its usage to the search run's, under ``search``."""
    cost = tracking.end_run(recipe, run_id, status) if run_id else None
    for record in usage.read(layout.usage):
        usage.append(parent.usage, {**record, "stage": SEARCH_STAGE, "trial_stage": record.get("stage")})
    return cost


def run_trial(
    recipe: Recipe,
    parent: RunLayout,
    parent_run_id: str,
    trial_id: int,
    on_line: Callable[[str], None] = print,
) -> TrialOutcome:
    """Train one asked trial and tell the study how it ended (complete, pruned or failed).

    A trial that fails (a bad combination, a training error) is recorded as failed with its error and
    returned, never raised: the search goes on. An interrupted trial (the process killed) stays RUNNING in
    the storage, and the next search run fails it and runs its parameters again.
    """
    import optuna
    from optuna.trial import TrialState

    from tunery.training.launch import TrainingStopped, launch_training

    study = studies.open_study(recipe)
    trial = optuna.trial.Trial(study, trial_id)
    number, params = trial.number, dict(trial.params)
    layout = trial_layout(parent, number)
    trial.set_user_attr(studies.OWNER, tracking.owner_of_this_process())
    trial.set_user_attr(studies.RUN_DIR, str(layout.root))
    metric = studies.metric(recipe)
    try:
        chosen = studies.trial_recipe(recipe, params)
    except RecipeError as error:
        trial.set_user_attr(studies.ERROR, str(error)[:2000])
        studies.tell(study, trial, state=TrialState.FAIL)
        return TrialOutcome(number, "failed", None, params, None, str(error))
    run_id = tracking.start_trial_run(chosen, layout.root, parent_run_id, number, params)
    trial.set_user_attr(studies.RUN_ID, run_id)
    heartbeat = _Heartbeat(recipe, trial_id)
    heartbeat.start()
    pruning = _Pruning(trial, metric, lambda line: on_line(tracking.redact(line)))
    state, value, error = "complete", None, None
    try:
        with usage.meter(layout.usage, "train"):
            launch_training(chosen, layout, run_id, on_line=pruning, stop_when=pruning.stop.is_set)
        value = _value(layout, metric)
    except TrainingStopped:
        state, value = "pruned", pruning.last
    except Exception as exc:  # noqa: BLE001 - a trial's failure is the study's data, not the search's end
        state, error = "failed", tracking.redact(f"{type(exc).__name__}: {exc}")[-2000:]
    finally:
        heartbeat.halt.set()
    tracking.client(chosen).set_tag(run_id, "tunery.search.state", state)
    cost = _costed(chosen, parent, layout, run_id, "FAILED" if state == "failed" else "FINISHED")
    if cost:
        trial.set_user_attr(studies.COST, cost["total"])
    if state == "complete":
        studies.tell(study, trial, value)
    elif state == "pruned":
        trial.set_user_attr(studies.PRUNED_AT, pruning.at)
        studies.tell(study, trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr(studies.ERROR, error)
        studies.tell(study, trial, state=TrialState.FAIL)
    return TrialOutcome(number, state, value, params, run_id, error, cost)


def adopt_best(recipe: Recipe, layout: RunLayout) -> Recipe:
    """Make the best trial's model the search run's model (``model/`` and ``train/metrics.json``, copied)
    and write ``search/best.json``; returns the recipe with the best trial's parameters.

    The best trial may have been trained by an earlier run of the same study (a resumed search): its
    folder is that run's.

    Raises:
        SearchError: no trial completed, or the best trial's folder is gone.
    """
    study = studies.open_study(recipe)
    best = studies.best(study)
    source = RunLayout(Path(best.user_attrs.get(studies.RUN_DIR, "")))
    if not (source.model_dir.is_dir() and (source.train_dir / "metrics.json").is_file()):
        raise studies.SearchError(
            f"the best trial ({best.number}) has no model at {source.model_dir}: was its run folder removed?"
        )
    if layout.model_dir.exists():
        shutil.rmtree(layout.model_dir)
    shutil.copytree(source.model_dir, layout.model_dir)
    layout.train_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.train_dir / "metrics.json", layout.train_dir / "metrics.json")
    record = {
        "study": study.study_name,
        "trial": best.number,
        "value": best.value,
        "metric": studies.metric(recipe),
        "params": best.params,
        "run_dir": str(source.root),
        "mlflow_run_id": best.user_attrs.get(studies.RUN_ID),
    }
    (layout.root / "search").mkdir(exist_ok=True)
    (layout.root / "search" / BEST).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return studies.trial_recipe(recipe, best.params)
