"""Nothing a command started outlives it: a watchdog process that ends every descendant of a process once
that process is gone, however it ended (SIGKILL included).

``tunery run`` starts an ephemeral Prefect server and a training job; ``tunery serve`` a scoring server
with its workers. A signal the command can catch (SIGTERM, SIGINT, SIGHUP) is turned into an orderly exit
by :func:`exit_on_termination`; SIGKILL cannot be caught, so :func:`guard_descendants` starts a small
watchdog (``python -m tunery.ops.guard PID``) in its own session. Every half second it records the
guarded process's descendants (walking ``/proc``'s parent links) with their identity (boot id and start
time, so that a reused PID is never signalled); when the guarded process has exited, it sends SIGTERM to
each recorded descendant still alive, waits, then SIGKILL to what is left, and exits.

Linux only (``/proc``); elsewhere the guard does nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunery.ops.process import alive, process_identity

POLL_S = 0.5
GRACE_S = 10.0


def children_map() -> dict[int, list[int]]:
    """Parent PID -> child PIDs of every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree (children first)."""
    tree, found, queue = children_map(), [], [pid]
    while queue:
        for child in tree.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def end_processes(recorded: dict[int, str], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM each recorded process that is still the same process, SIGKILL it after ``grace_s``.

    Returns:
        The PIDs that were signalled.
    """
    live = [pid for pid, identity in recorded.items() if process_identity(pid) == identity]
    signalled = list(live)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline and any(process_identity(p) == recorded[p] for p in live):
            time.sleep(0.1)
        live = [pid for pid in live if process_identity(pid) == recorded[pid]]
        if not live:
            break
    return signalled


def watch(pid: int, identity: str, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
    """The watchdog's loop: record ``pid``'s descendants while it lives, end them once it is gone."""
    recorded: dict[int, str] = {}
    me = os.getpid()
    while process_identity(pid) == identity:
        for child in descendants(pid):
            if child != me and child not in recorded and (found := process_identity(child)):
                recorded[child] = found
        time.sleep(poll_s)
    recorded.update(
        {child: found for child in _orphans(recorded) if child != me and (found := process_identity(child))}
    )
    end_processes(recorded, grace_s)


def _orphans(recorded: dict[int, str]) -> list[int]:
    """Descendants of recorded processes that appeared after the last poll (the parent died meanwhile)."""
    return [d for pid in list(recorded) if alive(pid) for d in descendants(pid)]


def guard_descendants(pid: int | None = None) -> subprocess.Popen | None:
    """Start the watchdog for ``pid`` (default: this process). None where /proc is not available.

    The watchdog runs in its own session, so that signals to the guarded command's process group (Ctrl+C in
    a terminal) do not stop it; it exits by itself once its work is done.
    """
    pid = pid or os.getpid()
    identity = process_identity(pid)
    if identity is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "tunery.ops.guard", str(pid), identity],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def exit_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, like Ctrl+C, so that ``finally`` blocks, context
    managers and atexit hooks (the ephemeral Prefect server's shutdown) run on ``kill PID`` too."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
