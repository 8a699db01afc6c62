"""What the benchmarks that train in worker processes share: running a worker of the script itself and
reading its one-line JSON result, the Trainer step clock, and the worker's peak RSS."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_worker(command: list[str], prefix: str, verbose: bool) -> dict[str, Any]:
    """Run one worker to completion and return the JSON it printed after ``prefix``; fail with its log
    tail otherwise. The worker runs offline (no model hub) with the repository on its path."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if verbose:
        sys.stderr.write(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(prefix)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"worker failed (exit {proc.returncode}): {shlex.join(command)}\n{tail}")
    return json.loads(lines[-1][len(prefix) :])


def run_alternately(
    kinds: tuple[str, ...], repeats: int, command_for, prefix: str, verbose: bool
) -> dict[str, list[dict[str, Any]]]:
    """Each kind's worker ``repeats`` times, the order reversed from one repeat to the next (so that no
    kind always runs first, on a cold or a warm machine); ``command_for(kind, repeat)`` is its command."""
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for repeat in range(repeats):
        for kind in kinds if repeat % 2 == 0 else tuple(reversed(kinds)):
            print(f"repeat {repeat + 1}/{repeats}: {kind} ...", flush=True)
            runs[kind].append(run_worker(command_for(kind, repeat), prefix, verbose))
    return runs


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


def step_clock() -> Any:
    """A Trainer callback that adds up the time spent inside optimiser steps (``.seconds``).

    A step runs from ``on_step_begin`` to ``on_step_end``: forward, backward, clipping and the optimiser
    update. Fetching and collating the batch comes before it, logging, evaluation and checkpoint saves after
    it, so ``wall_s - step_s`` is what the training loop spent outside the steps.
    """
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds = 0.0
            self._began: float | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self._began is not None:
                self.seconds += time.perf_counter() - self._began
                self._began = None

    return StepClock()


def common_arguments(
    parser: argparse.ArgumentParser, data_dir: Path, out: Path, model: str, tuned: str
) -> None:
    """The options every training benchmark takes: the shared data folder, the JSON's path and the model
    (``tuned`` says what it is: "the encoder both sides tune", ...)."""
    parser.add_argument("--data-dir", type=Path, default=data_dir, help="folder of the shared data")
    parser.add_argument("--out", type=Path, default=out, help="where to write the JSON results")
    parser.add_argument(
        "--model",
        default=model,
        help=f"{tuned}: catalogue name, local folder or hub id (default {model})",
    )
