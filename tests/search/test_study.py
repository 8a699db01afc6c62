"""The search's study: the space as the recipe states it, budget, recovery of trials a dead process left
running, the same-experiment check, pruning from the job's evaluation lines, stopping a job. A real Optuna
RDB storage (SQLite file) throughout; no training."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tunery.config import Recipe, RecipeError
from tunery.layout import RunLayout
from tunery.search import study as studies
from tunery.search.trial import Pruning

BASE = {"name": "s", "data": {"source": "a.csv"}, "mlflow": {"registered_model": "m"}}


def recipe(tmp_path, **search) -> Recipe:
    space = search.pop(
        "space",
        {
            "training.learning_rate": {"type": "choice", "choices": [1e-4, 3e-4]},
            "training.batch_size": {"type": "choice", "choices": [8, 16]},
        },
    )
    return Recipe.model_validate(
        {**BASE, "workdir": str(tmp_path / "work"), "search": {"sampler": "grid", "space": space, **search}}
    )


def split_report(tmp_path, digest: str = "abc") -> RunLayout:
    layout = RunLayout(tmp_path / "run")
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    split = {name: {"rows": 10, "digest": f"{digest}-{name}"} for name in ("train", "validation", "test")}
    layout.data_report.write_text(json.dumps({"split": split}))
    return layout


@pytest.mark.parametrize(
    ("space", "said"),
    [
        ({"training.learnin_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}, "no such recipe field"),
        ({"training.learning_rate": {"type": "float", "low": 1e-5, "high": 2.0}}, "less than 1"),
        ({"method.name": {"type": "choice", "choices": ["lora", "fulll"]}}, "method.name"),
        ({"workdir": {"type": "choice", "choices": ["/tmp"]}}, "cannot vary `workdir`"),
        ({"training.epochs": {"type": "int", "low": 3, "high": 1}}, "low <= high"),
        ({"training.learning_rate": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "low > 0"),
    ],
)
def test_a_space_the_recipe_cannot_take_fails_at_load_naming_the_field(space, said):
    with pytest.raises(ValueError, match="search") as caught:
        Recipe.model_validate({**BASE, "search": {"space": space}})
    assert said in str(caught.value)


def test_the_grid_needs_countable_values_and_counts_every_combination(tmp_path):
    with pytest.raises(ValueError, match="grid sampler needs countable values: give training.learning_rate"):
        recipe(tmp_path, space={"training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}})
    r = recipe(
        tmp_path,
        trials=50,
        space={
            "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
            "training.epochs": {"type": "int", "low": 1, "high": 3},
            "method.lora.r": {"type": "int", "low": 4, "high": 16, "step": 4},
        },
    )
    assert r.search.space["training.warmup_ratio"].grid() == [0.0, 0.1, 0.2]
    assert r.search.space["method.lora.r"].grid() == [4, 8, 12, 16]
    assert r.search.grid_size() == 3 * 3 * 4
    assert studies.budget(r) == 36  # 50 asked for, the grid has 36


def test_a_value_the_recipe_refuses_fails_at_load_and_a_bad_combination_at_its_trial(tmp_path):
    methods = {"method.name": {"type": "choice", "choices": ["full", "prompt_tuning"]}}
    with pytest.raises(ValueError, match="value 'prompt_tuning'.*does not support DeepSpeed ZeRO-3"):
        Recipe.model_validate({**BASE, "distributed": {"deepspeed": "zero3"}, "search": {"space": methods}})
    # each value is fine on its own; one combination is not, which only its trial can tell
    space = {**methods, "distributed.deepspeed": {"type": "choice", "choices": ["zero2", "zero3"]}}
    r = Recipe.model_validate({**BASE, "search": {"space": space}})
    chosen = studies.trial_recipe(r, {"method.name": "full", "distributed.deepspeed": "zero3"})
    assert chosen.method.name == "full" and chosen.search is None
    with pytest.raises(RecipeError, match="prompt_tuning.*does not support DeepSpeed ZeRO-3"):
        studies.trial_recipe(r, {"method.name": "prompt_tuning", "distributed.deepspeed": "zero3"})


def dead_owner() -> str:
    """The owner string of a process that ran on this host and has exited."""
    from tunery.ops.process import process_identity

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    identity = process_identity(proc.pid)
    proc.kill()
    proc.wait()
    import socket

    return f"{socket.gethostname()}|{proc.pid}|{identity}"


def test_a_trial_its_dead_process_left_running_is_failed_and_run_again_with_its_parameters(tmp_path):
    import optuna

    r = recipe(tmp_path, trials=4)
    study = studies.open_study(r)
    clock = studies.Clock.start(None)
    studies.ask(study, r, clock)
    studies.tell(study, 0, 0.5)
    (crashed,) = studies.ask(study, r, clock)
    optuna.trial.Trial(study, crashed).set_user_attr(studies.OWNER, dead_owner())
    assert studies.finished(study) == 1

    again = studies.open_study(r)  # a new search run: loads the same study from the file
    assert studies.recover(again) == [1]
    states = {t.number: t.state.name for t in again.trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "WAITING"}, "queued again"
    assert again.trials[2].params == again.trials[1].params
    assert studies.finished(again) == 1, "a trial whose process died does not count"
    # the next ask runs the queued retry first, with the crashed trial's parameters
    (retry,) = studies.ask(again, r, clock)
    retried = next(t for t in again.trials if t._trial_id == retry)
    assert retried.number == 2 and retried.params == again.trials[1].params
    assert retried.user_attrs[studies.RETRY_OF] == 1
    # a trial owned by a living process (this one) is left alone
    (alive,) = studies.ask(again, r, clock)
    assert studies.recover(studies.open_study(r)) == []
    assert studies.frozen(again, 3).state.name == "RUNNING"


def test_the_budget_counts_finished_trials_and_own_errors_not_deaths(tmp_path):
    import optuna
    from optuna.trial import TrialState

    r = recipe(tmp_path, trials=3, parallel=2)
    study = studies.open_study(r)
    clock = studies.Clock.start(None)
    assert len(studies.ask(study, r, clock)) == 2, "search.parallel trials at once"
    assert len(studies.ask(study, r, clock)) == 1, "room left: 3 trials - 2 running"
    assert studies.ask(study, r, clock) == [], "3 running: nothing more to start"
    studies.tell(study, 0, 0.1)
    studies.tell(study, 1, state=TrialState.PRUNED)
    third = optuna.trial.Trial(study, studies.frozen(study, 2)._trial_id)
    third.set_user_attr(studies.ERROR, "bad combination")
    studies.tell(study, 2, state=TrialState.FAIL)  # failed by an error of its own: counts
    assert studies.finished(study) == 3
    assert studies.ask(study, r, clock) == [], "budget spent"
    more = recipe(tmp_path, trials=4)
    assert studies.ask(studies.open_study(more), more, studies.Clock(time.time() - 1)) == [], "clock spent"
    assert len(studies.ask(studies.open_study(more), more, clock)) == 1, "a bigger budget: one more"


def test_the_grid_runs_each_combination_once_and_its_last_tell_does_not_raise(tmp_path):
    r = recipe(tmp_path, trials=10)  # the grid has 4
    study = studies.open_study(r)
    clock = studies.Clock.start(None)
    for _ in range(50):  # a bound: a broken budget fails here instead of hanging
        if not (ids := studies.ask(study, r, clock)):
            break
        for trial_id in ids:
            number = next(t.number for t in study.trials if t._trial_id == trial_id)
            studies.tell(study, number, float(number))
    combos = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(combos) == 4 and len(set(combos)) == 4


def test_a_resumed_study_of_other_data_or_settings_is_refused(tmp_path):
    r = recipe(tmp_path)
    study = studies.open_study(r)
    studies.check_same_experiment(study, r, split_report(tmp_path))
    studies.check_same_experiment(studies.open_study(r), r, split_report(tmp_path))  # same: fine
    with pytest.raises(studies.SearchError, match="other data"):
        studies.check_same_experiment(studies.open_study(r), r, split_report(tmp_path, digest="changed"))
    other = Recipe.model_validate({**r.model_dump(mode="json"), "model": {"base": "bert-base-uncased"}})
    with pytest.raises(studies.SearchError, match="other training settings"):
        studies.check_same_experiment(studies.open_study(other), other, split_report(tmp_path))
    # a searched field differing is what a search does; the budget may change too
    more = recipe(tmp_path, trials=40)
    studies.check_same_experiment(studies.open_study(more), more, split_report(tmp_path))


def test_evaluation_lines_feed_the_pruner_which_stops_a_bad_trial(tmp_path):
    import optuna

    r = recipe(
        tmp_path,
        sampler="random",
        metric="loss",
        pruner={"name": "median", "startup_trials": 1},
        space={"training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
    )
    study = studies.open_study(r)
    clock = studies.Clock.start(None)
    (good,) = studies.ask(study, r, clock)
    for step, loss in enumerate([0.6, 0.4, 0.2], start=1):
        optuna.trial.Trial(study, good).report(loss, step)
    studies.tell(study, 0, 0.2)
    (bad,) = studies.ask(study, r, clock)
    lines: list[str] = []
    pruning = Pruning(optuna.trial.Trial(study, bad), "loss", lines.append)

    def evaluation(n: int, loss: float) -> str:
        payload = {"evaluation": n, "epoch": n, "step": n, "metrics": {"loss": loss}}
        return "tunery-evaluation " + json.dumps(payload)

    pruning("step 3/30 loss=0.7 | 1s elapsed")  # not an evaluation: forwarded only
    pruning("tunery-evaluation {torn")
    pruning(evaluation(1, 0.55))  # better than the good trial at its first evaluation: goes on
    assert not pruning.stop.is_set()
    pruning(evaluation(2, 0.69))  # best so far 0.55 > 0.4 (the median there): pruned
    assert pruning.stop.is_set() and pruning.at == 2 and pruning.last == 0.69
    assert lines[:2] == ["step 3/30 loss=0.7 | 1s elapsed", "tunery-evaluation {torn"]
    assert "pruning trial 1 after evaluation 2" in lines[-1]
    assert studies.frozen(study, 1).intermediate_values == {1: 0.55, 2: 0.69}


def test_a_job_asked_to_stop_is_stopped_with_its_whole_group(tmp_path):
    from tunery.training.launch import TrainingStopped, run_job

    child = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time, pathlib; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"pathlib.Path({str(child)!r}).write_text(str(p.pid)); print('started', flush=True); time.sleep(60)"
    )
    seen: list[str] = []
    started = time.monotonic()
    with pytest.raises(TrainingStopped, match="stopped on request"):
        command = [sys.executable, "-c", code]
        run_job(command, {"PATH": "/usr/bin:/bin"}, 120, seen.append, lambda: "started" in seen)
    assert time.monotonic() - started < 30
    from tunery.ops.process import alive

    pid = int(child.read_text())
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), "the job's own child was stopped too"


def test_a_proposal_of_finished_parameters_takes_their_result_without_training(tmp_path):
    from optuna.trial import TrialState

    r = recipe(
        tmp_path,
        sampler="random",
        trials=12,
        space={"training.batch_size": {"type": "choice", "choices": [8, 16]}},  # 2 points, 12 trials
    )
    study = studies.open_study(r)
    clock = studies.Clock.start(None)
    trained = []
    for _ in range(50):  # a bound: a broken budget fails here instead of hanging
        if not (ids := studies.ask(study, r, clock)):
            break
        for trial_id in ids:
            trial = next(t for t in study.get_trials(deepcopy=False) if t._trial_id == trial_id)
            trained.append(trial.params["training.batch_size"])
            studies.tell(study, trial.number, float(trial.params["training.batch_size"]))
    assert sorted(trained) == [8, 16], "each combination trained once"
    assert studies.finished(study) == 12 and len(study.trials) == 12
    twins = [t for t in study.trials if studies.DUPLICATE_OF in t.user_attrs]
    assert len(twins) == 10
    for t in twins:
        original = studies.frozen(study, t.user_attrs[studies.DUPLICATE_OF])
        assert t.state == TrialState.COMPLETE and t.params == original.params and t.value == original.value


def test_a_diverged_trial_is_its_own_failure_and_counts_while_a_dead_one_does_not(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from tunery.search.trial import trial_value

    layout = RunLayout(tmp_path / "trial")
    layout.train_dir.mkdir(parents=True)
    (layout.train_dir / "metrics.json").write_text(json.dumps({"validation": {"loss": float("nan")}}))
    with pytest.raises(RuntimeError, match="validation loss is nan: the training diverged"):
        trial_value(layout, "loss")
    r = recipe(tmp_path, trials=5, sampler="random")
    study = studies.open_study(r)
    clock = studies.Clock.start(None)
    (diverged,) = studies.ask(study, r, clock)
    optuna.trial.Trial(study, diverged).set_user_attr(studies.ERROR, "validation loss is nan")
    studies.tell(study, 0, state=TrialState.FAIL)
    (crashed,) = studies.ask(study, r, clock)
    optuna.trial.Trial(study, crashed).set_user_attr(studies.OWNER, dead_owner())
    assert studies.recover(study) == [1]
    assert studies.finished(study) == 1, "the diverged trial counts, the dead one does not"
    assert studies.frozen(study, 1).user_attrs[studies.DIED] == "its process is gone"
    queued = studies.frozen(study, 2)
    assert queued.state == TrialState.WAITING and queued.user_attrs == {studies.RETRY_OF: 1}
    assert studies.tell(study, 1, 0.3) is False, "a trial failed as dead cannot be told again"


def test_a_dead_trials_parameters_are_queued_again_at_most_three_times(tmp_path):
    import optuna

    r = recipe(tmp_path, trials=10, sampler="random")
    study = studies.open_study(r)
    clock = studies.Clock.start(None)
    deaths = 0
    for _ in range(6):
        ids = studies.ask(study, r, clock, at_most=1)
        optuna.trial.Trial(study, ids[0]).set_user_attr(studies.OWNER, dead_owner())
        deaths += len(studies.recover(study))
    chain = [t for t in study.trials if t.params == study.trials[0].params]
    assert len(chain) == 4, "the first trial and its three retries"
    assert deaths == 6 and studies.finished(study) == 0
