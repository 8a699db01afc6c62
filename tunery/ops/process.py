"""Process helpers shared by the training launcher and the local stack: start a command in its own process
group, tell whether a recorded PID is still the same process, stop a whole group, find a free port.

Every child tunery starts runs in a session of its own (``start_new_session=True``), so one signal to its
group reaches the child and everything it started in turn (DeepSpeed ranks, server workers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time>`` of a running process, from /proc (None where /proc cannot tell).

    The start time is field 22 of ``/proc/<pid>/stat`` (clock ticks after boot); with the boot id it names
    one process of one boot, so a PID reused later compares different.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces or ")": split after the last ")"
    fields = stat[stat.rfind(")") + 2 :].split()
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def command_line(pid: int) -> list[str] | None:
    """The argument vector of a running process, from /proc (None where /proc cannot tell)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode("utf-8", errors="replace").rstrip("\0").split("\0")


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# Signals whose *ignored* disposition a child inherits through exec. A non-interactive shell starts a
# background job (`tunery stack up &`, CI scripts) with SIGINT and SIGQUIT ignored; the stack's worker and
# PostgreSQL, which stop on SIGINT, would then ignore `stack down` until the SIGKILL timeout.
STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
# Runs in the child before its command: default dispositions (survive exec, unlike handlers), then exec.
_SIGNAL_NUMBERS = ",".join(str(int(s)) for s in STOP_SIGNALS)
_DEFAULT_SIGNALS_THEN_EXEC = (
    f"import os,signal,sys\nfor s in ({_SIGNAL_NUMBERS}): signal.signal(s, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def ignored_stop_signals() -> list[signal.Signals]:
    """The stop signals this process ignores (and a child it starts would ignore too)."""
    return [s for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_IGN]


def with_default_signals(command: list[str]) -> list[str]:
    """``command``, started so that it does not inherit ignored stop signals from this process."""
    if not ignored_stop_signals():
        return command
    return [sys.executable, "-I", "-S", "-c", _DEFAULT_SIGNALS_THEN_EXEC, *command]


def spawn(name: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in a new session with stdout and stderr appended to ``log``; it answers the stop
    signals by default even where this process ignores them (see :data:`STOP_SIGNALS`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {command}\n".encode())
        out.flush()
        return subprocess.Popen(
            with_default_signals(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier `stack up`)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Signal the process group led by ``pid`` and wait for the leader to exit (SIGKILL after ``timeout``).

    Returns:
        True if the process was running.
    """
    if not alive(pid):
        return False
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    killed = False
    while alive(pid):
        if time.monotonic() > deadline:
            if killed:  # a zombie that is not our child: nothing more to do
                break
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            killed, deadline = True, time.monotonic() + 10
        time.sleep(0.2)
    return True


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the process group led by our child ``proc``, then SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
