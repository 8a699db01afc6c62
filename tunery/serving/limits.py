"""The time budget of one served request, which the model's batch loop checks between batches.

The server (:mod:`tunery.serving.server`) puts a :class:`Budget` in :data:`BUDGET` for each request: a
deadline and a flag set when the client disconnects or the server stops. Work outside a request (batch
scoring, evaluation) has no budget, and :func:`check` does nothing there.
"""

from __future__ import annotations

import contextvars
import threading
import time


class RequestAborted(Exception):
    """The request's work was stopped: its deadline passed or nobody waits for the answer any more."""


class Budget:
    """A deadline (``time.monotonic()`` seconds) and a cancellation flag, shared with worker threads."""

    def __init__(self, timeout_s: float | None) -> None:
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.reason = ""  # why the work was stopped: "timeout", "client_disconnected", "server_stopping"
        self._cancelled = threading.Event()

    def cancel(self, reason: str) -> None:
        if not self._cancelled.is_set():
            self.reason = reason
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.cancel("timeout")
        return self.cancelled


# asyncio.to_thread copies the context into the thread, so the model's predict sees the request's budget.
BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("tunery_request_budget", default=None)


def check() -> None:
    """Raise :class:`RequestAborted` when the current request's deadline passed or it was cancelled."""
    budget = BUDGET.get()
    if budget is not None and budget.expired():
        raise RequestAborted(f"request stopped: {budget.reason}")
