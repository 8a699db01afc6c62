"""Crash recovery: SIGKILL a real 2-process DeepSpeed ZeRO-2 training job mid-way; the Prefect retry of the
train task must resume from the last complete checkpoint and finish the run."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import flow_run_messages
from tests.training.test_loop import sentiment_frame

pytestmark = pytest.mark.slow

MAX_STEPS, SAVE_STEPS, LOG_STEPS = 40, 8, 4


class Killer(threading.Thread):
    """Waits for the first complete checkpoint, then SIGKILLs every rank of the job (once)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.workdir, self.killed, self.at_step, self.stop = workdir, [], None, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            done = sorted(
                self.workdir.glob("runs/*/train/checkpoints/checkpoint-*/tunery_complete"),
                key=lambda p: int(p.parent.name.split("-")[-1]),
            )
            pids = sorted(self.workdir.glob("runs/*/train/pids/rank*.pid"))
            if done and len(pids) == 2:
                self.at_step = int(done[0].parent.name.split("-")[-1])
                for pid_file in pids:
                    pid = int(pid_file.read_text())
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                return
            time.sleep(0.2)


def finetune_killed_once(recipe: Path, workdir: Path):
    """Run the finetune flow while a :class:`Killer` SIGKILLs both ranks at the first complete checkpoint;
    returns the final state (completed: the retry finished), the killer and the run folder."""
    from flows.finetune import finetune

    killer = Killer(workdir)
    killer.start()
    try:
        state = finetune(recipe_path=str(recipe), return_state=True)
    finally:
        killer.stop.set()
    assert state.is_completed(), state
    assert len(killer.killed) == 2, "both ranks were killed mid-way"
    return state, killer, next((workdir / "runs").iterdir())


def test_sigkilled_job_resumes_from_last_checkpoint_on_retry(tiny_bert, tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    sentiment_frame(400).to_csv(tmp_path / "reviews.csv", index=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: resume
            data: {{source: {tmp_path / "reviews.csv"}}}
            cleaning: {{near_duplicates: false}}
            model: {{base: {tiny_bert}, max_length: 16}}
            training: {{max_steps: {MAX_STEPS}, save_steps: {SAVE_STEPS}, logging_steps: {LOG_STEPS},
                        batch_size: 8, learning_rate: 1.0e-3, group_by_length: false}}
            distributed: {{num_processes: 2, deepspeed: zero2}}
            mlflow: {{registered_model: resume-test}}
            workdir: {tmp_path / "work"}
            """
        )
    )
    state, killer, run_dir = finetune_killed_once(recipe, tmp_path / "work")

    summary = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert summary["global_steps"] == MAX_STEPS
    assert summary["resumed_from"].endswith(f"checkpoint-{killer.at_step}")

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        train_runs = [
            t
            for t in client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
            )
            if t.task_key.startswith("train")
        ]
    assert len(train_runs) == 1 and train_runs[0].run_count == 2, "one retry of the train task"
    messages = flow_run_messages(flow_run_id)
    resumed_at = next(i for i, m in enumerate(messages) if f"resuming from checkpoint-{killer.at_step}" in m)
    # the logging steps (lines with a loss; a start shows steps 1 and 3 of the attempt too, as progress)
    logged = [x for x in messages[resumed_at:] if " loss=" in x]
    steps_after = [int(m[1]) for m in (re.match(r"step (\d+)/", x) for x in logged) if m]
    assert steps_after, "progress lines after the resume"
    assert steps_after[0] == killer.at_step + LOG_STEPS, (
        f"the retry continued at {steps_after[0]}, not from scratch"
    )
    assert steps_after[-1] == MAX_STEPS
