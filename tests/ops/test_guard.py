"""Nothing outlives the command that started it: the descendant guard with real processes and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tunery.ops.guard import descendants, end_processes
from tunery.ops.process import process_identity

# A stand-in for `tunery run`: it starts the guard, then a child in its own session (like the training job)
# that starts a grandchild (like a rank), and a plain child (like the Prefect server); then it waits.
COMMAND = textwrap.dedent(
    """
    import subprocess, sys, time
    from tunery.ops.guard import guard_descendants
    guard_descendants()
    job = subprocess.Popen(
        ["bash", "-c", "sleep 300 & wait"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    server = subprocess.Popen(["sleep", "300"])
    print(job.pid, server.pid, flush=True)
    time.sleep(300)
    """
)


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_descendants_end_with_the_guarded_process(sig):
    parent = subprocess.Popen([sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, text=True)
    try:
        job_pid, server_pid = map(int, parent.stdout.readline().split())
        time.sleep(1.5)  # the guard records descendants every half second
        tree = {pid: process_identity(pid) for pid in descendants(parent.pid)}
        rank = [pid for pid in descendants(job_pid)]
        assert {job_pid, server_pid} <= set(tree) and rank, "the stand-in started its processes"
        os.kill(parent.pid, sig)
        parent.wait(timeout=10)
        survivors = lambda: [p for p in (job_pid, server_pid, *rank) if process_identity(p) == tree.get(p)]  # noqa: E731
        assert wait_for(lambda: not survivors(), timeout=20), f"still running: {survivors()}"
    finally:
        parent.kill()
        end_processes({pid: identity for pid, identity in tree.items() if identity}, grace_s=1)


def test_a_reused_pid_is_never_signalled():
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        wrong = {bystander.pid: "another-boot:12345"}  # recorded identity of a process long gone
        assert end_processes(wrong, grace_s=0.5) == []
        assert bystander.poll() is None, "a process that merely reuses a recorded PID keeps running"
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_tunery_run_leaves_nothing_running(sig, tmp_path):
    """A real `tunery run` of the demo, killed once its training job runs: the temporary Prefect server,
    the training job and the guard itself are gone shortly after."""
    from tests.conftest import REPO

    run = subprocess.Popen(
        [sys.executable, "-m", "tunery.cli", "run", "configs/helpdesk.yaml", f"workdir={tmp_path}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # like a shell job; the test's own process group is never signalled
    )
    tree: dict[int, str | None] = {}
    try:

        def training_started() -> bool:
            for pid in descendants(run.pid):
                tree.setdefault(pid, process_identity(pid))
            return any("tunery.training.worker" in " ".join(command_of(pid)) for pid in tree)

        assert wait_for(training_started, timeout=240), "the training job never started"
        time.sleep(1.0)
        tree.update({pid: process_identity(pid) for pid in descendants(run.pid)})
        os.kill(run.pid, sig)
        run.wait(timeout=60)
        survivors = lambda: [p for p, ident in tree.items() if ident and process_identity(p) == ident]  # noqa: E731
        assert wait_for(lambda: not survivors(), timeout=40), [command_of(p) for p in survivors()]
    finally:
        if run.poll() is None:
            run.kill()
        end_processes({pid: identity for pid, identity in tree.items() if identity}, grace_s=1)


def command_of(pid: int) -> list[str]:
    from tunery.ops.process import command_line

    return command_line(pid) or []
