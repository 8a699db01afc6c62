"""A search killed in the middle resumes the same study: `tunery search` (the hyperparameter-search flow on
a temporary Prefect server) is SIGKILLed while its second trial trains; started again, it fails that trial,
runs its parameters again, finishes the budget and registers the best model, never repeating the trial
that had completed. Real Optuna storage (SQLite in the workdir), real training jobs, real MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.training.test_loop import sentiment_frame
from tunery.ops.process import alive
from tunery.search import study as studies

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def tunery_search(recipe: Path, folder: Path, log: Path) -> subprocess.Popen:
    """``tunery search`` in its own process, its output into ``log`` (a pipe nobody reads would fill)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tunery.cli", "search", str(recipe)],
        cwd=folder,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PREFECT_HOME": str(folder / "prefect")},
    )


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan that no init process has reaped yet is dead all the same)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return alive(pid)
    return state != "Z"


def study(folder: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{folder / 'work' / 'search' / 'optuna.db'}"
    return optuna.load_study(study_name="resume-search", storage=url)


def wait_for_second_trial_training(folder: Path, proc: subprocess.Popen, timeout_s: float = 400) -> int:
    """Until trial 0 completed and trial 1's training job runs; returns that job's rank-0 PID."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.args
        pids = list((folder / "work" / "runs").glob("*/trials/trial-0001/train/pids/rank0.pid"))
        if pids and (folder / "work" / "search" / "optuna.db").exists():
            trials = study(folder).trials
            if trials[0].state == TrialState.COMPLETE and trials[1].state == TrialState.RUNNING:
                return int(pids[0].read_text())
        time.sleep(0.5)
    pytest.fail("the second trial never started training")


def test_a_sigkilled_search_resumes_its_study_without_repeating_a_finished_trial(tiny_bert, tmp_path):
    from optuna.trial import TrialState

    sentiment_frame(400).to_csv(tmp_path / "reviews.csv", index=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: resume-search
            data: {{source: {tmp_path / "reviews.csv"}}}
            cleaning: {{near_duplicates: false}}
            model: {{base: {tiny_bert}, max_length: 16}}
            training: {{epochs: 20, batch_size: 16, group_by_length: false}}
            evaluation: {{gate: {{baseline_floor: false}}}}
            search:
              sampler: grid
              trials: 3
              metric: loss
              pruner: {{name: none}}
              space:
                training.learning_rate: {{type: choice, choices: [3.0e-3, 1.0e-3, 1.0e-7]}}
            mlflow: {{experiment: resume-search, registered_model: resume-search}}
            workdir: {tmp_path / "work"}
            """
        )
    )
    first = tunery_search(recipe, tmp_path, tmp_path / "first.log")
    try:
        rank0 = wait_for_second_trial_training(tmp_path, first)
        before = study(tmp_path).trials[0]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30  # the guard ends the orphaned training job (tunery.ops.guard)
    while running(rank0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(rank0), "the killed search's training job was stopped"
    assert study(tmp_path).trials[1].state == TrialState.RUNNING, "left running by the dead process"

    second = tunery_search(recipe, tmp_path, tmp_path / "second.log")
    second.wait(timeout=900)
    out = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, out[-6000:]
    assert "registered model resume-search version 1" in out

    trials = study(tmp_path).trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and len(trials) == 4, [(t.number, t.state) for t in trials]
    assert trials[0].state == TrialState.COMPLETE
    assert (trials[0].value, trials[0].datetime_complete) == (before.value, before.datetime_complete), (
        "the completed trial was not run again"
    )
    assert trials[1].state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get(studies.RETRY_OF) == 1)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[1].params
    complete = [t.params["training.learning_rate"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == [1e-7, 1e-3, 3e-3], "each grid point completed exactly once"
    runs = sorted((tmp_path / "work" / "runs").iterdir())
    assert len(runs) == 2
    assert (runs[0] / "trials" / "trial-0000").is_dir() and not (runs[1] / "trials" / "trial-0000").exists()

    from tunery import tracking
    from tunery.config import load_recipe, resolve_paths

    mlf = tracking.client(resolve_paths(load_recipe(recipe), tmp_path))
    experiment = mlf.get_experiment_by_name("resume-search").experiment_id
    killed = mlf.search_runs([experiment], filter_string="attributes.status = 'KILLED'")
    assert killed, "the dead search's MLflow runs were closed as KILLED by the next start"
