"""`tunery stack down|status` act only on the processes the stack started, not on whatever holds a PID now.

A stack's state.json outlives its processes (a crash, a reboot). The kernel then hands the recorded PIDs to
other processes; signalling them would kill an unrelated program. Each service records its process
identity (boot id + start time) at start-up, and ``down``/``status`` check it. The processes here are real
(``sleep``), started the way the stack starts its services.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tunery.ops import process, stack

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process identity needs /proc")


def _running_its_command(proc, command: list[str]) -> None:
    """Wait until ``proc`` runs ``command``: where this process ignores SIGINT (a background job), spawn
    starts a small shim that resets it and then execs the command."""
    for _ in range(200):
        if process.command_line(proc.pid) == command:
            return
        time.sleep(0.05)
    raise AssertionError(f"the service runs {process.command_line(proc.pid)}, not {command}")


@pytest.fixture
def sleeper(tmp_path: Path):
    proc = process.spawn("sleeper", ["sleep", "120"], tmp_path / "sleeper.log")
    _running_its_command(proc, ["sleep", "120"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _service(proc, identity: str | None) -> stack.Service:
    return stack.Service("worker", proc.pid, "unused.log", command=["sleep", "120"], identity=identity)


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def test_identity_is_the_boot_and_the_start_time_of_the_process(tmp_path: Path) -> None:
    before = _uptime()
    proc = process.spawn("sleeper", ["sleep", "120"], tmp_path / "s.log")
    try:
        after = _uptime()
        boot, ticks = process.process_identity(proc.pid).split(":")
        assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        started = int(ticks) / os.sysconf("SC_CLK_TCK")  # seconds after boot
        assert before - 0.1 <= started <= after + 0.1, (before, started, after)
        assert process.process_identity(proc.pid) == f"{boot}:{ticks}"  # stable while it runs
        assert process.process_identity(os.getpid()) != f"{boot}:{ticks}"  # another process
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_reused_pid_is_neither_reported_running_nor_stopped(sleeper, tmp_path: Path) -> None:
    # state.json says "worker" had this PID, but recorded another process's identity: the PID was reused
    stale = _service(sleeper, identity=process.process_identity(os.getpid()))
    stack.save_state(tmp_path, [stale])
    assert stack.status(tmp_path) == [(stale, False)]
    assert stack.down(tmp_path) == []  # nothing of ours was running
    assert sleeper.poll() is None, "down signalled a process the stack did not start"
    assert stack.services(tmp_path) == []  # the stale record is forgotten


def test_down_stops_the_process_it_started(sleeper, tmp_path: Path) -> None:
    own = _service(sleeper, identity=process.process_identity(sleeper.pid))
    stack.save_state(tmp_path, [own])
    assert stack.status(tmp_path) == [(own, True)]
    assert stack.down(tmp_path) == ["worker"]
    sleeper.wait(timeout=30)  # raises TimeoutExpired if it still ran
    assert process.process_identity(sleeper.pid) is None  # SIGTERM to its process group ended it
    assert stack.status(tmp_path) == []


def test_state_without_identity_falls_back_to_the_command_line(sleeper, tmp_path: Path) -> None:
    # a state.json from an older tunery (no identity): the PID counts as ours only if it runs our command
    foreign = stack.Service("prefect", sleeper.pid, "unused.log", command=["prefect", "server", "start"])
    stack.save_state(tmp_path, [foreign])
    assert stack.status(tmp_path) == [(foreign, False)]
    assert stack.down(tmp_path) == [] and sleeper.poll() is None
    legacy = _service(sleeper, identity=None)  # command ["sleep", "120"]: what that PID runs
    stack.save_state(tmp_path, [legacy])
    assert stack.status(tmp_path) == [(legacy, True)]
    assert stack.down(tmp_path) == ["worker"]
    sleeper.wait(timeout=30)
    assert process.process_identity(sleeper.pid) is None


def test_identity_of_a_process_that_is_gone_is_none(tmp_path: Path) -> None:
    proc = process.spawn("short", [sys.executable, "-c", "pass"], tmp_path / "short.log")
    proc.wait(timeout=30)
    assert process.process_identity(proc.pid) is None


def _ignored_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)


def test_a_service_started_from_a_background_job_still_stops_on_sigint(tmp_path: Path) -> None:
    """`tunery stack up &` in a script: the shell starts it with SIGINT and SIGQUIT ignored, which exec
    passes on. The worker (stopped by SIGINT) must not inherit that, or `stack down` waits for SIGKILL."""
    import signal

    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    try:
        proc = process.spawn("worker", ["sleep", "120"], tmp_path / "w.log")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        _running_its_command(proc, ["sleep", "120"])  # the shim set default dispositions, then exec'd
        ignored = _ignored_signals(proc.pid)
        assert not ignored & (1 << (signal.SIGINT - 1)) and not ignored & (1 << (signal.SIGQUIT - 1))
        os.killpg(proc.pid, signal.SIGINT)  # what `stack down` sends a worker
        assert proc.wait(timeout=30) == -signal.SIGINT, "SIGINT ended it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
