"""What a run cost: wall time, CPU-seconds, GPU-seconds, peak memory, energy and money, per stage.

Each stage appends one JSON line to the run's ``usage.jsonl`` (``RunLayout.usage``) when it ends, failed or
not, so a retried stage counts every attempt:

- in the orchestrator's process, :func:`meter` around the stage: wall time, the process's CPU time spent
  meanwhile (user + system, all its threads: torch's evaluation threads too) and the process's peak RSS
  (the high-water mark of the process so far: a process running several stages reports its largest);
- in each training process (every rank), :func:`record_process` as it ends: its CPU time and peak RSS over
  its whole life (imports, model load, training, saving) and, where it trained on a GPU, GPU-seconds as its
  wall time on that device. An attempt killed before its end (SIGKILL, a lost machine) leaves no record:
  the figures count completed attempts only.

:func:`summarise` adds the lines up and prices them (energy and money by the documented formulas below);
rates come from the recipe's ``cost`` section. Stages of one process that run concurrently (two flows in
one Python process) would see each other's CPU time: tunery runs one run's stages one after another.

May import: the standard library only.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Figures summed over stages; peak memory is the largest, not a sum.
SUMMED = ("wall_s", "cpu_s", "gpu_s")


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def append(path: Path, record: Mapping) -> None:
    """Append one record as a line: one ``write`` on an ``O_APPEND`` descriptor, so that the lines of
    several processes (the ranks of one job) never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(dict(record), sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Meter:
    """Wall and CPU time of this process from its creation to :meth:`record` (for a stage whose record
    file is known only at its end: opening the run creates the folder that holds it)."""

    def __init__(self, thread: bool = False) -> None:
        # thread: this thread's CPU time only (a stage run by one of several threads of the process)
        self._who = resource.RUSAGE_THREAD if thread else resource.RUSAGE_SELF
        self._wall, self._cpu = time.monotonic(), _cpu_seconds(self._who)

    def record(self, path: Path, stage: str, failed: bool = False) -> None:
        append(
            path,
            {
                "stage": stage,
                "process": "orchestrator",
                "pid": os.getpid(),
                "wall_s": round(time.monotonic() - self._wall, 3),
                "cpu_s": round(_cpu_seconds(self._who) - self._cpu, 3),
                "gpu_s": 0.0,
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "failed": failed,
            },
        )


@contextmanager
def meter(path: Path, stage: str, thread: bool = False) -> Iterator[None]:
    """Record the wall time, CPU time and peak RSS of ``stage`` in this process (also when it raises);
    ``thread``: the CPU time of this thread only."""
    started = Meter(thread)
    failed = True
    try:
        yield
        failed = False
    finally:
        started.record(path, stage, failed)


def record_process(path: Path, stage: str, started: float, rank: int, gpus: int) -> None:
    """Record a whole process (a training rank) as it ends: CPU time of it and of the children it waited
    for, its peak RSS, and ``gpus`` x its wall time as GPU-seconds.

    Args:
        started: ``time.monotonic()`` taken when the process started its work.
    """
    wall = time.monotonic() - started
    append(
        path,
        {
            "stage": stage,
            "process": f"rank{rank}",
            "pid": os.getpid(),
            "wall_s": round(wall, 3),
            "cpu_s": round(_cpu_seconds() + _cpu_seconds(resource.RUSAGE_CHILDREN), 3),
            "gpu_s": round(wall * gpus, 3),
            "peak_rss_mb": round(max(_peak_rss_mb(), _peak_rss_mb(resource.RUSAGE_CHILDREN)), 1),
            "failed": False,
        },
    )


def read(path: Path) -> list[dict]:
    """The records of a run (none when the file is missing); a torn last line (a killed writer) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict) and "stage" in found:
            records.append(found)
    return records


@dataclass(frozen=True)
class Rates:
    """Prices and power draws that turn usage into money and energy (the recipe's ``cost`` section)."""

    cpu_hour: float = 0.0
    gpu_hour: float = 0.0
    currency: str = "USD"
    cpu_watts: float = 10.0
    gpu_watts: float = 300.0


def summarise(records: list[dict], rates: Rates) -> dict:
    """Per stage and in total: wall, CPU and GPU seconds, peak RSS, energy and money.

    A training stage's own process (the orchestrator waiting for the job) and its ranks are both counted:
    the ranks did the work; the orchestrator's CPU time while it waited is small but real. The train
    stage's wall time is the orchestrator's (the ranks ran inside it), not the sum of the ranks'.

    Formulas: ``energy_kwh = (cpu_s * cpu_watts + gpu_s * gpu_watts) / 3.6e6`` (a CPU-second is one CPU
    busy for a second; ``cpu_watts`` is the draw of one busy CPU, ``gpu_watts`` of one busy GPU);
    ``money = cpu_s / 3600 * cpu_hour + gpu_s / 3600 * gpu_hour``.
    """
    stages: dict[str, dict] = {}
    for record in records:
        stage = stages.setdefault(
            record["stage"], {"wall_s": 0.0, "cpu_s": 0.0, "gpu_s": 0.0, "peak_rss_mb": 0.0, "attempts": 0}
        )
        orchestrator = record.get("process") == "orchestrator"
        if orchestrator:
            stage["wall_s"] += float(record.get("wall_s", 0.0))
            stage["attempts"] += 1
        stage["cpu_s"] += float(record.get("cpu_s", 0.0))
        stage["gpu_s"] += float(record.get("gpu_s", 0.0))
        stage["peak_rss_mb"] = max(stage["peak_rss_mb"], float(record.get("peak_rss_mb", 0.0)))
    total = {key: sum(s[key] for s in stages.values()) for key in SUMMED}
    total["peak_rss_mb"] = max((s["peak_rss_mb"] for s in stages.values()), default=0.0)
    for figures in (*stages.values(), total):
        figures["energy_kwh"] = (
            figures["cpu_s"] * rates.cpu_watts + figures["gpu_s"] * rates.gpu_watts
        ) / 3.6e6
        figures["money"] = figures["cpu_s"] / 3600 * rates.cpu_hour + figures["gpu_s"] / 3600 * rates.gpu_hour
    return {"stages": stages, "total": total, "currency": rates.currency}


def metrics(summary: Mapping) -> dict[str, float]:
    """MLflow metric names and values: ``cost_<figure>`` in total, ``cost_<stage>_<figure>`` per stage."""
    out = {f"cost_{key}": float(value) for key, value in summary["total"].items()}
    for stage, figures in summary["stages"].items():
        name = "".join(c if c.isalnum() else "_" for c in stage)
        out.update({f"cost_{name}_{key}": float(figures[key]) for key in ("wall_s", "cpu_s", "gpu_s")})
    return out


def text(summary: Mapping) -> str:
    """One line for a person, e.g. ``wall 84.2 s, CPU 131.0 s, GPU 0.0 s, peak 1,830 MB, 0.00036 kWh,
    0.0018 USD``."""
    t = summary["total"]
    return (
        f"wall {t['wall_s']:.1f} s, CPU {t['cpu_s']:.1f} s, GPU {t['gpu_s']:.1f} s, "
        f"peak {t['peak_rss_mb']:,.0f} MB, {t['energy_kwh']:.5f} kWh, {t['money']:.4f} {summary['currency']}"
    )


def markdown(summary: Mapping) -> str:
    """A table per stage and the total, for the run's summary (a Prefect artifact)."""
    currency = summary["currency"]
    lines = [
        "## What this run cost",
        "",
        f"| stage | attempts | wall s | CPU s | GPU s | peak MB | kWh | {currency} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, f: Mapping, attempts: str) -> str:
        return (
            f"| {name} | {attempts} | {f['wall_s']:.1f} | {f['cpu_s']:.1f} | {f['gpu_s']:.1f} | "
            f"{f['peak_rss_mb']:,.0f} | {f['energy_kwh']:.6f} | {f['money']:.4f} |"
        )

    for name, figures in summary["stages"].items():
        lines.append(row(name, figures, str(figures.get("attempts", ""))))
    lines.append(row("**total**", summary["total"], ""))
    lines += [
        "",
        "CPU-seconds count every thread of the run's processes and of its training ranks; energy is "
        "CPU-seconds x the recipe's `cost.cpu_watts` plus GPU-seconds x `cost.gpu_watts`; money is CPU-hours "
        "x `cost.cpu_hour` plus GPU-hours x `cost.gpu_hour`. A training attempt killed before its end is "
        "not counted.",
    ]
    return "\n".join(lines)
