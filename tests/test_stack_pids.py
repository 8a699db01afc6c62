"""`tunery stack down|status` act only on the processes the stack started, not on whatever holds a PID now.

A stack's state.json outlives its processes (a crash, a reboot). The kernel then hands the recorded PIDs to
other processes; signalling them would kill an unrelated program. Each service records its process
identity (boot id + start time) at start-up, and ``down``/``status`` check it. The processes here are real
(``sleep``), started the way the stack starts its services.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tunery import stack

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process identity needs /proc")


@pytest.fixture
def sleeper(tmp_path: Path):
    proc = stack.spawn("sleeper", ["sleep", "120"], tmp_path / "sleeper.log")
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _service(proc, identity: str | None) -> stack.Service:
    return stack.Service("worker", proc.pid, "unused.log", command=["sleep", "120"], identity=identity)


def test_identity_names_one_process_and_differs_between_processes(sleeper) -> None:
    mine = stack.process_identity(sleeper.pid)
    assert mine is not None and mine == stack.process_identity(sleeper.pid)  # stable while it runs
    assert mine != stack.process_identity(os.getpid())  # another process, same boot
    assert mine.split(":")[0] == stack.process_identity(os.getpid()).split(":")[0]  # same boot id


def test_a_reused_pid_is_neither_reported_running_nor_stopped(sleeper, tmp_path: Path) -> None:
    # state.json says "worker" had this PID, but recorded another process's identity: the PID was reused
    stale = _service(sleeper, identity=stack.process_identity(os.getpid()))
    stack.save_state(tmp_path, [stale])
    assert stack.status(tmp_path) == [(stale, False)]
    assert stack.down(tmp_path) == []  # nothing of ours was running
    assert sleeper.poll() is None, "down signalled a process the stack did not start"
    assert stack.services(tmp_path) == []  # the stale record is forgotten


def test_down_stops_the_process_it_started(sleeper, tmp_path: Path) -> None:
    own = _service(sleeper, identity=stack.process_identity(sleeper.pid))
    stack.save_state(tmp_path, [own])
    assert stack.status(tmp_path) == [(own, True)]
    assert stack.down(tmp_path) == ["worker"]
    sleeper.wait(timeout=30)  # raises TimeoutExpired if it still ran
    assert stack.process_identity(sleeper.pid) is None  # SIGTERM to its process group ended it
    assert stack.status(tmp_path) == []


def test_state_written_without_identity_still_works(sleeper, tmp_path: Path) -> None:
    # a state.json from a platform without /proc (identity None): the PID alone is trusted, as before
    legacy = _service(sleeper, identity=None)
    stack.save_state(tmp_path, [legacy])
    assert stack.status(tmp_path) == [(legacy, True)]
    assert stack.down(tmp_path) == ["worker"]
    sleeper.wait(timeout=30)
    assert stack.process_identity(sleeper.pid) is None


def test_identity_of_a_process_that_is_gone_is_none(tmp_path: Path) -> None:
    proc = stack.spawn("short", [sys.executable, "-c", "pass"], tmp_path / "short.log")
    proc.wait(timeout=30)
    assert stack.process_identity(proc.pid) is None
