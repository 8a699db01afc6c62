"""What ``tunery run`` shows a person: one line per stage, a training bar with its ETA, warnings, and one
error line; everything the libraries write goes to a log file instead (``--verbose`` shows it all).

Quiet mode replaces ``sys.stdout`` and ``sys.stderr`` with the log file *before* Prefect, MLflow and
transformers are imported, so every console handler they create, every warning and every progress bar
lands in the file. The terminal is reached only through a rich console on the original stderr, fed by a
logging handler that picks out the records meant for people: those carrying ``extra={STAGE: name}``
(the stage summaries the tasks log), training step lines, and warnings and errors from the run loggers.
No Prefect import: loggers are found by name.
"""

from __future__ import annotations

import errno
import logging
import re
import resource
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

STAGE = "tunery_stage"  # the ``extra`` key that marks a record as a stage summary for people
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_STEP = re.compile(r"^step (\d+)/(\d+)\b")
_ETA = re.compile(r"eta (\d+)s")
_TRAINING_START = re.compile(r"^tunery: training (\d+) of (\d+) steps")
_RETRY = re.compile(r"Retry \d+/\d+ will start")  # Prefect's line when a task run is retried


def _short(message: str, limit: int = 200) -> str:
    """The first line of a message and, for a retry, Prefect's "Retry n/m ..." tail."""
    first = message.splitlines()[0]
    retry = _RETRY.search(message)
    head = first if len(first) <= limit else first[: limit - 1] + "…"
    return head if not retry or retry.group(0) in head else f"{head} - {message[retry.start() :].strip()}"


def log_path(workdir: str | Path, name: str) -> Path:
    """``<workdir>/logs/<name>-<UTC timestamp>.log``: where a quiet run writes the full log."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    path = Path(workdir) / "logs" / f"{slug}-{stamp}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class ProgressHandler(logging.Handler):
    """Shows stage summaries, training progress, warnings and errors of a run on a rich console."""

    def __init__(self, stream: IO[str]):
        super().__init__(level=logging.INFO)
        from rich.console import Console

        self.console = Console(file=stream, highlight=False, soft_wrap=True)
        self._bar = None
        self._task = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            stage = getattr(record, STAGE, None)
            if stage:
                self._stop_bar()
                self.console.print(f"[bold cyan]{stage:>9}[/] {message}")
            elif record.levelno >= logging.ERROR:
                return  # the run's one error line says it at the end; the log file has the details
            elif record.levelno >= logging.WARNING:
                self._stop_bar()
                self.console.print(f"[yellow]{'warning':>9}[/] {message.splitlines()[0]}")
            elif _RETRY.search(message):
                self._stop_bar()
                self.console.print(f"[yellow]{'retry':>9}[/] {_short(message)}")
            else:
                self._training(message)
        except Exception:  # a display problem must never fail the run
            self.handleError(record)

    def _training(self, message: str) -> None:
        start = _TRAINING_START.match(message)
        step = _STEP.match(message)
        if start:
            self._start_bar(int(start.group(2)) - int(start.group(1)), int(start.group(2)))
        elif step:
            done, total = int(step.group(1)), int(step.group(2))
            if self._bar is None:
                self._start_bar(0, total)
            eta = _ETA.search(message)
            self._bar.update(
                self._task, completed=done, total=total, eta=f"eta {eta.group(1)}s" if eta else ""
            )

    def _start_bar(self, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._stop_bar()
        self._bar = Progress(
            TextColumn("[bold cyan]    train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
            transient=False,
        )
        self._task = self._bar.add_task("train", total=total, completed=done, eta="")
        self._bar.start()

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def close(self) -> None:
        self._stop_bar()
        super().close()


class RunConsole:
    """The console of one ``tunery run``: quiet (default) or verbose.

    Use as a context manager around the run and call :meth:`attach` once the orchestrator is imported;
    ``log`` is the full log's path in quiet mode (None when verbose).
    """

    def __init__(self, workdir: str | Path, name: str, verbose: bool = False):
        self.verbose = verbose
        self.log: Path | None = None if verbose else log_path(workdir, name)
        self._terminal = sys.stderr
        self._saved: tuple[IO[str], IO[str]] | None = None
        self._file: IO[str] | None = None
        self._handler: ProgressHandler | None = None

    def __enter__(self) -> RunConsole:
        if self.log is None:
            return self
        self._file = open(self.log, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - see __exit__
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = sys.stderr = self._file
        logging.captureWarnings(True)
        self._handler = ProgressHandler(self._terminal)
        return self

    def attach(self) -> None:
        """Start showing the run loggers' records. Call it after the orchestrator has configured logging
        (importing Prefect applies its logging config, which replaces the handlers of those loggers)."""
        if self._handler is not None:
            for name in RUN_LOGGERS:
                logging.getLogger(name).addHandler(self._handler)

    def __exit__(self, *exc) -> None:
        if self._handler is not None:
            for name in RUN_LOGGERS:
                logging.getLogger(name).removeHandler(self._handler)
            self._handler.close()
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
        logging.captureWarnings(False)
        if self._file is not None:
            # Left open: handlers created during the run hold it, and some write at interpreter exit (the
            # ephemeral Prefect server logs its shutdown from an atexit hook).
            self._file.flush()


def error_line(exc: BaseException) -> str:
    """One line for a failure: the first line of the error, and its last line when that differs (a job
    failure carries its log's tail, whose last line is the cause)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = f"{type(exc).__name__}: {lines[0]}"
    return first if len(lines) == 1 else f"{first} ... {lines[-1]}"


# less free than this where a run writes: its failure is reported as a full disk
LOW_SPACE_BYTES = 16 * 1024 * 1024
_DISK_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EFBIG: "File too large"}


def disk_problem(exc: BaseException, folders: list[str | Path]) -> str | None:
    """Name a full disk or a file-size limit behind a failure, whichever process hit it.

    A full disk often surfaces far from its cause: the temporary Prefect server's database write fails
    and the run sees an HTTP 500, or a training rank dies while saving a checkpoint. So besides the
    exception chain (``ENOSPC`` / ``EFBIG``), the folders the run writes to are checked: free space
    under :data:`LOW_SPACE_BYTES`, or a file that reached this process's file-size limit (RLIMIT_FSIZE).
    """
    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            where = f": {current.filename}" if current.filename else ""
            return f"{_DISK_ERRNOS[current.errno]}{where}"
        current = current.__cause__ or current.__context__
    text = str(exc)
    for message in _DISK_ERRNOS.values():
        if message in text:
            return f"{message} (see the full log)"
    for folder in folders:
        found = _low_space(Path(folder)) or _size_limit(Path(folder))
        if found:
            return found
    return None


def _low_space(folder: Path) -> str | None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free < LOW_SPACE_BYTES:
        return f"No space left on device: {folder} has {free / 2**20:.1f} MiB free"
    return None


def _size_limit(folder: Path) -> str | None:
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY or not folder.is_dir():
        return None
    for path in folder.rglob("*"):
        try:
            if path.is_file() and path.stat().st_size >= limit:
                return f"File too large: {path} reached the file-size limit of {limit} bytes (ulimit -f)"
        except OSError:
            continue
    return None
