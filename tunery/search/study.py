"""The Optuna study of a recipe's search, kept in an RDB storage so that a search resumes where it stopped.

A study is found by name (``search.study``, default the recipe's name) in ``search.storage`` (default
``sqlite:///<workdir>/search/optuna.db``). Starting a search again (after a crash, a SIGKILL, or to add
trials) loads it: trials that finished stay finished and are never run again; trials a dead process left
RUNNING are failed and queued again with the same parameters (Optuna's retry callback), so the budget
finishes; the sampler learns from every trial in the storage.

The budget counts *finished* trials: complete, pruned, or failed by an error of their own (a bad parameter
combination fails every time; it must not loop forever). A trial failed because its process died does not
count: its retry does.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.config import Recipe, RecipeError
from tunery.config.search import SearchConfig, with_values
from tunery.layout import RunLayout
from tunery.ops.process import process_identity
from tunery.ops.stack import SEARCH_STORAGE_VARIABLE
from tunery.tracking import owner_of_this_process

# Trial user attributes: which process runs it, its folder and MLflow run, why it failed, what it cost.
OWNER = "tunery.owner"
RUN_DIR = "tunery.run_dir"
RUN_ID = "tunery.mlflow_run_id"
ERROR = "tunery.error"
COST = "tunery.cost"
PRUNED_AT = "tunery.pruned_at_evaluation"
RETRY_OF = "tunery.retry_of"  # the dead trial whose parameters this one runs again
DIED = "tunery.died"  # why a trial was failed as dead (its process gone, its heartbeat silent)
DUPLICATE_OF = "tunery.duplicate_of"  # the finished trial whose parameters (and result) this one repeats
# Study user attribute: what the study's trials were trained on (a resumed study must be the same).
FINGERPRINT = "tunery.fingerprint"
FINGERPRINT_PARTS = "tunery.fingerprint_parts"
RETRIES = 3  # how often the parameters of a trial whose process died are queued again


class SearchError(RuntimeError):
    """The search cannot go on as asked (a study of other data, no trial finished, ...)."""


@contextlib.contextmanager
def quiet():
    """Optuna's experimental-API warnings (heartbeats, matplotlib plots) and its INFO log stay out of runs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # tunery records heartbeats itself (trial._Heartbeat) around ask-and-tell, not Study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def storage_url(recipe: Recipe) -> str:
    """``search.storage``, else ``TUNERY_SEARCH_STORAGE`` (``tunery stack up --postgres`` sets it for its
    worker: the stack's PostgreSQL), else the workdir's SQLite file (its folder created)."""
    if recipe.search.storage:
        return recipe.search.storage
    if os.environ.get(SEARCH_STORAGE_VARIABLE):
        return os.environ[SEARCH_STORAGE_VARIABLE]
    folder = Path(recipe.workdir).resolve() / "search"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def study_name(recipe: Recipe) -> str:
    return recipe.search.study or recipe.name


_STORAGES: dict[tuple, Any] = {}
_STORAGES_LOCK = threading.Lock()


def _serialise_sqlite(engine) -> None:
    """SQLite with several threads (parallel trials, heartbeats): WAL, and every transaction takes the write
    lock at its start (``BEGIN IMMEDIATE``), so that writers wait their turn (busy timeout) instead of
    failing at once with "database is locked" when two deferred transactions upgrade their locks."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(connection, record) -> None:
        connection.isolation_level = None  # SQLAlchemy emits BEGIN below, not the sqlite3 module
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA busy_timeout=60000")

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections opened while the tables were created lack the settings above


def storage(recipe: Recipe):
    """The RDB storage of the recipe's search, one per URL and process (one engine, one connection pool),
    with heartbeats on: a running trial records it is alive; one silent too long is taken as dead."""
    import optuna

    url = storage_url(recipe)
    key = (url, recipe.search.heartbeat_seconds, recipe.search.grace_seconds)
    with _STORAGES_LOCK:
        if key in _STORAGES:
            return _STORAGES[key]
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        with quiet():
            store = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=recipe.search.heartbeat_seconds,
                grace_period=recipe.search.grace_seconds,
            )
        if url.startswith("sqlite"):
            _serialise_sqlite(store.engine)
        _STORAGES[key] = store
        return store


@contextlib.contextmanager
def heartbeat(recipe: Recipe, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``search.heartbeat_seconds`` while the block runs (waiting for a
    training slot, training): another search run takes a trial silent for ``grace_seconds`` as dead."""
    store, halt = storage(recipe), threading.Event()
    failures = [0]

    def beat() -> None:
        while True:
            try:
                store.record_heartbeat(trial_id)
                failures[0] = 0
            except Exception as error:  # noqa: BLE001 - a storage hiccup: the next beat tries again
                failures[0] += 1
                if failures[0] == 3:
                    warnings.warn(f"trial {trial_id}: 3 heartbeats in a row failed: {error}", stacklevel=1)
            if halt.wait(recipe.search.heartbeat_seconds):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"search-heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        halt.set()


def metric(recipe: Recipe) -> str:
    return recipe.search.metric_for(recipe.task, recipe.evaluation.gate.metric(recipe.task))


def direction(recipe: Recipe) -> str:
    return "minimize" if metric(recipe) == "loss" else "maximize"


def distributions(config: SearchConfig) -> dict[str, Any]:
    """The space as Optuna distributions (parameter names are the dotted recipe fields)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found: dict[str, Any] = {}
    for key, dim in config.space.items():
        if dim.type == "choice":
            found[key] = CategoricalDistribution(dim.choices)
        elif dim.type == "int":
            found[key] = IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
        else:
            found[key] = FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return found


def _sampler(config: SearchConfig, offset: int):
    """The recipe's sampler, its seed moved on by the trials already in the study: a resumed search must
    not draw its first random points again."""
    import optuna

    seed = config.seed + offset
    if config.sampler == "grid":
        return optuna.samplers.GridSampler({k: d.grid() for k, d in config.space.items()}, seed=config.seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(3, config.trials // 4))  # Optuna's default 10 would make a 12-trial TPE random
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def _pruner(config: SearchConfig):
    import optuna

    p = config.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_evaluations
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


def open_study(recipe: Recipe):
    """Create the recipe's study, or load it (same name in the same storage), with its sampler and pruner."""
    import optuna

    with quiet():
        store = storage(recipe)
        study = optuna.create_study(
            storage=store, study_name=study_name(recipe), direction=direction(recipe), load_if_exists=True
        )
        if study.direction.name.lower() != direction(recipe):
            raise SearchError(
                f"study {study.study_name!r} {study.direction.name.lower()}s its metric; this recipe's "
                f"search {direction(recipe)}s {metric(recipe)}: name a new `search.study`"
            )
        trials = len(study.get_trials(deepcopy=False))
        study.sampler = _sampler(recipe.search, trials)
        study.pruner = _pruner(recipe.search)
    return study


def fingerprint_parts(recipe: Recipe, layout: RunLayout) -> dict[str, str]:
    """What makes trials comparable: the training data (split digests) and every training setting that
    is not searched (the model, method, training, sft and preference sections, the metric)."""
    report = json.loads(layout.data_report.read_text(encoding="utf-8"))
    fixed = with_values(recipe.model_dump(mode="json"), {k: None for k in recipe.search.space})
    settings = {k: fixed[k] for k in ("task", "model", "method", "training", "sft", "preference")}

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]

    return {
        "data": digest({name: report["split"][name]["digest"] for name in ("train", "validation")}),
        "settings": digest(settings),
        "metric": metric(recipe),
    }


def check_same_experiment(study, recipe: Recipe, layout: RunLayout) -> None:
    """Record what the study trains on, or check that a resumed one trains on the same.

    Raises:
        SearchError: the study's trials were trained on other data, other settings or another metric.
    """
    parts = fingerprint_parts(recipe, layout)
    known = study.user_attrs.get(FINGERPRINT_PARTS)
    if known is None:
        study.set_user_attr(FINGERPRINT_PARTS, parts)
        study.set_user_attr(FINGERPRINT, hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16])
        return
    differ = [name for name in parts if known.get(name) != parts[name]]
    if differ:
        what = {"data": "other data (train/validation split)", "settings": "other training settings"}
        said = ", ".join(what.get(d, f"another {d} ({known.get(d)})") for d in differ)
        raise SearchError(
            f"study {study.study_name!r} was run on {said} than this recipe: its trials are not comparable. "
            "Name a new `search.study`, or restore the recipe and data it was run with"
        )


def _gone(owner_value: str) -> bool:
    """True when the owner ran on this host and that process no longer runs."""
    host, _, rest = owner_value.partition("|")
    pid, _, identity = rest.partition("|")
    if host != socket.gethostname() or not pid.isdigit() or not identity:
        return False  # another host (its heartbeat decides), or an identity /proc could not read
    return process_identity(int(pid)) != identity


def _retries(study, number: int) -> int:
    """How many times trial ``number``'s parameters have already been queued again (its retry chain)."""
    chain, trials = 0, {t.number: t for t in study.get_trials(deepcopy=False)}
    while (earlier := trials[number].user_attrs.get(RETRY_OF)) is not None:
        chain, number = chain + 1, earlier
    return chain


def _queue_again(study, trial) -> bool:
    """Queue a dead trial's parameters again (up to :data:`RETRIES` times along its chain); only the
    ``tunery.retry_of`` link is carried over, never its owner, folder, cost or error."""
    import optuna

    if _retries(study, trial.number) >= RETRIES:
        return False
    trial = frozen(study, trial.number)
    study.add_trial(  # as Optuna's retry callback does: the sampler's attributes (the grid point) carried
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={RETRY_OF: trial.number},
            system_attrs=dict(trial.system_attrs),
        )
    )
    return True


def recover(study) -> list[int]:
    """Fail the trials left RUNNING by a dead process of this host, and those whose heartbeat went silent
    for longer than the grace period (any host); mark them dead (the budget does not count them) and queue
    each again with the same parameters.

    Returns:
        The numbers of the trials failed as dead.
    """
    import optuna
    from optuna.trial import TrialState

    dead = []
    with quiet():
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _gone(str(trial.user_attrs.get(OWNER, ""))):
                set_attr(study, trial._trial_id, DIED, "its process is gone")
                if tell(study, trial.number, state=TrialState.FAIL):
                    dead.append(trial)
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        optuna.storages.fail_stale_trials(study)  # no callback on our storage: the retry is queued below
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if trial.number not in before:
                study._storage.set_trial_user_attr(trial._trial_id, DIED, "its heartbeat went silent")
                dead.append(trial)
        for trial in dead:
            _queue_again(study, trial)
    return sorted(t.number for t in dead)


def set_attr(study, trial_id: int, key: str, value: Any) -> bool:
    """Set a trial's user attribute unless the trial has finished meanwhile (another search run took it
    for dead); returns whether it was set."""
    import optuna

    try:
        study._storage.set_trial_user_attr(trial_id, key, value)
        return True
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def tell(study, trial, value: float | None = None, state=None) -> bool:
    """``study.tell`` outside ``Study.optimize``; False when the trial had already finished (another search
    run took it for dead). The grid sampler calls ``study.stop()`` after its last combination, which Optuna
    refuses here (RuntimeError) after storing the trial: the budget stops ours."""
    from optuna.trial import TrialState

    with quiet():
        number = trial if isinstance(trial, int) else trial.number
        if frozen(study, number).state != TrialState.RUNNING:
            return False
        try:
            study.tell(trial, value, state=state, skip_if_finished=True)
        except RuntimeError as error:
            if "Study.stop" not in str(error):
                raise
    return True


def frozen(study, number: int):
    """The stored trial ``number`` (a fresh copy of that one trial, not of the whole study)."""
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return copy.deepcopy(trial)
    raise KeyError(f"study {study.study_name!r} has no trial {number}")


def finished(study) -> int:
    """Trials the budget counts: complete, pruned, or failed for any reason but the death of their process
    (a crash of their own, a bad combination, a metric that is not a number)."""
    from optuna.trial import TrialState

    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and DIED not in t.user_attrs)
    )


def budget(recipe: Recipe) -> int:
    """``search.trials``, capped at the grid's size for the grid sampler (every combination once)."""
    size = recipe.search.grid_size()
    return min(recipe.search.trials, size) if size is not None else recipe.search.trials


@dataclass(frozen=True)
class Clock:
    """The search run's wall-clock budget (``search.timeout_minutes``, from this run's start); a plain value
    that an orchestrator can pass to its tasks."""

    deadline: float | None  # time.time() after which no new trial starts

    @classmethod
    def start(cls, minutes: float | None) -> Clock:
        return cls(None if minutes is None else time.time() + minutes * 60)

    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline


def _twin(study, params: dict[str, Any], number: int):
    """A finished trial (complete, pruned, or failed by its own error) with exactly these parameters."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False):
        if t.number == number or t.params != params:
            continue
        own_failure = t.state == TrialState.FAIL and DIED not in t.user_attrs
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or own_failure:
            return t
    return None


def _settle_as_twin(study, trial, twin) -> None:
    """Finish ``trial`` with its twin's result, without training: a sampler that proposes parameters the
    study has already run (TPE does, in a small discrete space) gets the known answer."""
    from optuna.trial import TrialState

    trial.set_user_attr(DUPLICATE_OF, twin.number)
    if twin.state == TrialState.COMPLETE:
        tell(study, trial.number, twin.value)
    elif twin.state == TrialState.PRUNED:
        for step, value in twin.intermediate_values.items():
            trial.report(value, step)
        tell(study, trial.number, state=TrialState.PRUNED)
    else:
        trial.set_user_attr(ERROR, twin.user_attrs.get(ERROR, f"as trial {twin.number}"))
        tell(study, trial.number, state=TrialState.FAIL)


def ask(study, recipe: Recipe, clock: Clock, at_most: int | None = None) -> list[int]:
    """Start the next trials (up to ``search.parallel``, or ``at_most``, within the budget and the clock);
    returns their ids. Trials of dead processes are recovered first, and queued retries come first. An
    empty list: the search is done.

    A proposal whose parameters equal a finished trial's is never trained again: it is finished at once
    with that trial's result (``tunery.duplicate_of``) and counts towards the budget, at no cost.
    """
    from optuna.trial import TrialState

    space = distributions(recipe.search)
    ids: list[int] = []
    wanted = min(recipe.search.parallel, at_most or recipe.search.parallel)
    recover(study)
    with quiet():
        while not clock.expired():
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if len(ids) >= wanted or budget(recipe) - finished(study) - running <= 0:
                break
            trial = study.ask(space)
            trial.set_user_attr(OWNER, owner_of_this_process())
            storage(recipe).record_heartbeat(trial._trial_id)  # stale from now on if nobody beats for it
            twin = _twin(study, trial.params, trial.number)
            if twin is not None:
                _settle_as_twin(study, trial, twin)
                continue
            ids.append(trial._trial_id)  # Optuna's id of the stored trial: optuna.trial.Trial(study, id)
    return ids


def trial_recipe(recipe: Recipe, params: dict[str, Any]) -> Recipe:
    """The recipe with a trial's parameters set (and no search section: a trial trains once).

    Raises:
        RecipeError: the combination does not validate (e.g. a method that the other values exclude).
    """
    from pydantic import ValidationError

    raw = with_values(recipe.model_dump(mode="json"), params)
    raw["search"] = None
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise RecipeError(f"parameters {params} do not make a valid recipe: {problems}") from None


def ranked(study) -> list:
    """The complete trials, best first (a twin of a trial is left out: it trained no model).

    Raises:
        SearchError: no trial completed.
    """
    best(study)
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if DUPLICATE_OF not in t.user_attrs
    ]
    return sorted(complete, key=lambda t: t.value, reverse=study.direction == StudyDirection.MAXIMIZE)


def best(study):
    """The best complete trial.

    Raises:
        SearchError: no trial completed.
    """
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        errors = [t.user_attrs[ERROR] for t in study.get_trials(deepcopy=False) if ERROR in t.user_attrs]
        hint = f"; first error: {errors[0]}" if errors else ""
        raise SearchError(f"no trial of study {study.study_name!r} completed{hint}")
    return study.best_trial


def prepare(recipe: Recipe, layout: RunLayout) -> str:
    """Open the study for this run: check it is the same experiment, recover trials of dead processes.

    Returns:
        A line for the progress log (study, storage, trials finished, trials queued again).

    Raises:
        SearchError: the stored study was run on other data or settings.
    """
    from tunery.tracking import redact

    study = open_study(recipe)
    check_same_experiment(study, recipe, layout)
    recovered = recover(study)
    line = (
        f"study {study.study_name!r} in {redact(storage_url(recipe))}: {finished(study)} of {budget(recipe)} "
        f"trials finished"
    )
    if recipe.search.grid_size() is not None and recipe.search.trials > budget(recipe):
        line += f" (the grid has {budget(recipe)} combinations)"
    if recovered:
        line += f"; trial(s) {recovered} were left running by a process that is gone: run again"
    return line
