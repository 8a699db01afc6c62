"""Entry point of one training process: ``python -m tunery.training.worker JOB_SPEC.json``.

Started by the DeepSpeed launcher (one process per GPU, or per CPU slot over gloo) or directly for a single
process. Only rank 0 logs at INFO and reports metrics; every rank records its PID so that operators (and the
crash-recovery test) can find the processes of a job.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m tunery.training.worker JOB_SPEC.json", file=sys.stderr)
        return 2
    started = time.monotonic()

    # SIGTERM (a timeout, or a search pruning this trial, stops the job's whole group) becomes an orderly
    # exit, so that the `finally` below still records what the attempt cost.
    # The launcher relays the group's SIGTERM a second time: ignored from the first one on, so that a second
    # SystemExit cannot land inside that `finally`.
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    spec = json.loads(Path(args[0]).read_text())
    # Started directly (one process, no DeepSpeed), there is no RANK: the Trainer then runs without a
    # process group and without a DDP wrapper, which a world of one does not need.
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    import datasets
    import transformers

    # Progress is Progress's one line per log event; tqdm bars ("Loading weights", "Map") are noise in a
    # streamed log.
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if rank != 0:
        transformers.logging.set_verbosity_error()  # one voice in the log: rank 0's

    from tunery.config import Recipe
    from tunery.layout import RunLayout
    from tunery.tracking import MlflowLogger, NullLogger
    from tunery.training.loop import train

    recipe = Recipe.model_validate(spec["recipe"])
    layout = RunLayout(Path(spec["run_dir"]))
    pid_dir = layout.train_dir / "pids"
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    logger = MlflowLogger(recipe, spec["run_id"]) if spec.get("run_id") and rank == 0 else NullLogger()
    try:
        train(
            recipe,
            layout,
            logger,
            resume_from=spec.get("resume_from"),
            deepspeed_config=spec.get("deepspeed_config"),
            distillation=spec.get("distillation"),
        )
    finally:  # a failed attempt cost as much as it ran (a killed one leaves no record: tunery.ops.usage)
        import torch

        from tunery.ops.usage import record_process

        record_process(layout.usage, "train", started, rank, gpus=1 if torch.cuda.is_available() else 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
