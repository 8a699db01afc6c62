"""One trial of a search: the normal training job on the search run's splits, with the trial's parameters.

A trial trains in ``<run>/trials/trial-<n>/`` (its own ``RunLayout``: the run's split files hard-linked
in, its own checkpoints, model, ``usage.jsonl``), logs to a nested MLflow run, reports the validation
metric of every evaluation the job prints (``tunery.training.loop.evaluation_line``) to Optuna, and is
stopped as soon as the pruner says so. While it runs it records a heartbeat in the storage.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery import tracking
from tunery.config import Recipe, RecipeError
from tunery.layout import RunLayout, sub_layout
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
    """The trial's folder, with the search run's split files linked in."""
    return sub_layout(parent, parent.root / TRIALS / f"trial-{number:04d}")


class Pruning:
    """Reads the job's evaluation lines, reports them to the trial, and flags a stop when Optuna prunes."""

    def __init__(self, trial, metric: str, forward: Callable[[str], None]) -> None:
        self.trial, self.metric, self.forward = trial, metric, forward
        self.stop = threading.Event()
        self.at: int | None = None
        self.last: float | None = None

    def __call__(self, line: str) -> None:
        from tunery.training.loop import parse_evaluation_line

        self.forward(line)
        try:
            payload = parse_evaluation_line(line)
            value = payload["metrics"].get(self.metric) if payload else None
            if not isinstance(value, int | float) or not math.isfinite(value) or self.stop.is_set():
                return
            step = int(payload["evaluation"])
            self.trial.report(float(value), step)
            self.last = float(value)
            # the last evaluation (training done, or the final one after it) is the trial's result: no stop
            if int(payload.get("step", 0)) >= int(payload.get("max_steps") or 1 << 62):
                return
            if self.trial.should_prune():
                self.at = step
                self.stop.set()
                self.forward(
                    f"tunery: pruning trial {self.trial.number} after evaluation {step}: {self.metric} "
                    f"{value:.4f} is worse than the median of earlier trials there"
                )
        except Exception as error:  # noqa: BLE001 - pruning is an optimisation: the trial trains on
            self.forward(f"tunery: warning: trial {self.trial.number} could not report to the study: {error}")


def trial_value(layout: RunLayout, metric: str) -> float:
    summary = json.loads((layout.train_dir / "metrics.json").read_text(encoding="utf-8"))
    value = summary.get("validation", {}).get(metric)
    if not isinstance(value, int | float):
        reported = sorted(summary.get("validation", {}))
        raise RuntimeError(f"the training job reported no validation {metric} (it reported {reported})")
    if not math.isfinite(value):  # a diverged trial: its own failure, counted (Optuna would store FAIL)
        raise RuntimeError(f"validation {metric} is {value}: the training diverged")
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

    def note(key: str, value) -> None:  # a no-op once another search run has taken the trial for dead
        studies.set_attr(study, trial_id, key, value)

    note(studies.OWNER, tracking.owner_of_this_process())
    note(studies.RUN_DIR, str(layout.root))
    metric = studies.metric(recipe)
    try:
        chosen = _share_of_the_machine(studies.trial_recipe(recipe, params), recipe.search.parallel)
    except RecipeError as error:
        note(studies.ERROR, str(error)[:2000])
        studies.tell(study, number, state=TrialState.FAIL)
        return TrialOutcome(number, "failed", None, params, None, str(error))
    run_id = tracking.start_trial_run(chosen, layout.root, parent_run_id, number, params)
    note(studies.RUN_ID, run_id)
    pruning = Pruning(trial, metric, lambda line: on_line(tracking.redact(line)))
    state, value, error = "complete", None, None
    with studies.heartbeat(recipe, trial_id):
        try:
            # this thread's CPU only: parallel trials are threads of one process
            with usage.meter(layout.usage, "train", thread=True):
                launch_training(chosen, layout, run_id, on_line=pruning, stop_when=pruning.stop.is_set)
            value = trial_value(layout, metric)
        except TrainingStopped:
            state, value = "pruned", pruning.last
        except Exception as exc:  # noqa: BLE001 - a trial's failure is the study's data, not the search's end
            state, error = "failed", tracking.redact(f"{type(exc).__name__}: {exc}")[-2000:]
    tracking.client(chosen).set_tag(run_id, "tunery.search.state", state)
    cost = _costed(chosen, parent, layout, run_id, "FAILED" if state == "failed" else "FINISHED")
    if cost:
        note(studies.COST, cost["total"])
    if state == "complete":
        studies.tell(study, number, value)
    elif state == "pruned":
        note(studies.PRUNED_AT, pruning.at)
        studies.tell(study, number, state=TrialState.PRUNED)
    else:
        note(studies.ERROR, error)
        studies.tell(study, number, state=TrialState.FAIL)
    return TrialOutcome(number, state, value, params, run_id, error, cost)


def _share_of_the_machine(recipe: Recipe, parallel: int) -> Recipe:
    """With ``parallel`` trials at once on this machine, each job gets its share of the CPUs as torch
    threads (unless the recipe sets ``training.num_threads``), not all of them."""
    if parallel <= 1 or recipe.training.num_threads:
        return recipe
    from tunery.ops.cpus import usable_cpus

    threads = max(1, usable_cpus() // (parallel * recipe.distributed.num_processes))
    return recipe.model_copy(update={"training": recipe.training.model_copy(update={"num_threads": threads})})


def _has_model(trial) -> bool:
    folder = trial.user_attrs.get(studies.RUN_DIR)
    if not folder:
        return False
    source = RunLayout(Path(folder))
    return source.model_dir.is_dir() and (source.train_dir / "metrics.json").is_file()


def adopt_best(recipe: Recipe, layout: RunLayout) -> Recipe:
    """Make the best trial's model the search run's model (``model/`` and ``train/metrics.json``, copied)
    and write ``search/best.json``; returns the recipe with the best trial's parameters.

    The best trial may have been trained by an earlier run of the same study (a resumed search): its
    folder is that run's. Where that folder is gone (removed, or on another machine), the best trial whose
    model is still here is taken, and ``best.json`` says which was better.

    Raises:
        SearchError: no trial completed, or none of them has its model folder here.
    """
    study = studies.open_study(recipe)
    ranked = studies.ranked(study)
    best = next((t for t in ranked if _has_model(t)), None)
    if best is None:
        raise studies.SearchError(
            f"no complete trial of study {study.study_name!r} still has its model folder (the best was "
            f"{ranked[0].user_attrs.get(studies.RUN_DIR)}): were the run folders removed?"
        )
    source = RunLayout(Path(best.user_attrs[studies.RUN_DIR]))
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
        "better_trials_without_their_model": [t.number for t in ranked[: ranked.index(best)]],
    }
    (layout.root / "search").mkdir(exist_ok=True)
    (layout.root / "search" / BEST).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return studies.trial_recipe(recipe, best.params)  # without the machine share: it is not training
