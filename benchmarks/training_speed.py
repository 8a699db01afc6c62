"""Training speed: tunery's training engine against a plain HF Trainer script written like HF's run_glue.py.

Fine-tuning the packaged MiniLM (all-MiniLM-L6-v2) on SST-2 sentiment, CPU only:

* baseline: the way HF's text-classification example (``run_glue.py``) does it: the tokenizer pads every
  example to ``max_length`` (128) with truncation, ``default_data_collator``, no length grouping (the
  Trainer's default random sampler), ``AutoModelForSequenceClassification``, logging off, no checkpoints.
* tunery: ``tunery.training.train`` on a run folder whose splits hold the same sample (train) and the dev
  set (validation and test), for ``method.name`` ``full`` and ``lora`` (r=8 on query/value, with a higher
  learning rate, as usual for adapters): dynamic padding (``DataCollatorWithPadding``), the batch sampler of
  tunery's default recipe (``training.group_by_length``, off by default; ``--tunery-sampling`` overrides
  it), with its default per-epoch validation and checkpoints. ``full_grouped`` and ``full_random`` are
  tunery full with length-grouped batches and with random batches whatever the default.

Both get the same seeded sample of ``--train-samples`` training rows, the same epochs, batch size, learning
rate (full), weight decay, warmup and seed, and are evaluated on the SST-2 dev set (872 rows). Each
configuration runs in a fresh worker process of this script (``--worker KIND``), one after
the other (alternately when ``--repeats`` > 1), so that each worker's peak RSS is that method's alone.
Repeat ``i`` uses seed ``--seed + i`` (sample and training) for every configuration, so that the accuracy
comparison is paired per seed and averaged over seeds: one seed's dev accuracy moves by about a point.
Inside its worker tunery trains in-process (``train()`` is called directly, not through
``tunery.launch.launch_training``), so the comparison measures the training loop, not process start-up.

A budget run then trains tunery ``full`` on the whole SST-2 training set (67,349 rows) for
``--budget-minutes``: ``training.max_steps = floor(budget_s * samples_per_s / batch_size)`` with the
samples/s measured for tunery ``full`` above (tunery's recipe has no wall-clock stop), and records the
training time it really took and the dev accuracy it reached (target >= 0.88).

Usage::

    python benchmarks/training_speed.py          # 4,000 samples, 1 epoch, 1 repeat, 10-min budget (~25 min)
    python benchmarks/training_speed.py --repeats 3 --budget-minutes 0   # 3 seeds, no budget run (~30 min)
    python benchmarks/training_speed.py --quick  # 256 samples, 200 dev rows, no budget run (smoke test)

Results go to ``benchmarks/results/training_speed.json`` (``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hostinfo
import workers
from workers import step_clock

if TYPE_CHECKING:
    import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "training_speed.json"
MODEL = "minilm"
MAX_LENGTH = 128
BATCH_SIZE = 16
EVAL_BATCH_SIZE = 64
LORA_R = 8
LORA_ALPHA = 16
LORA_TARGETS = ("query", "value")
TARGET_RATIO = 2.0
TARGET_BUDGET_ACCURACY = 0.88
DEFAULT_TRAIN_SAMPLES = 4000
QUICK_TRAIN_SAMPLES = 256
QUICK_DEV_ROWS = 200
RESULT_PREFIX = "TRAINING_SPEED_RESULT "
WORKERS = ("baseline", "full", "full_grouped", "full_random", "lora")
DEFAULT_WORKERS = ("baseline", "full", "full_grouped", "lora")  # full_random = full while grouping is off
CONFIG_NAMES = {
    "baseline": "baseline",
    "full": "tunery_full",
    "full_grouped": "tunery_full_grouped",
    "full_random": "tunery_full_random",
    "lora": "tunery_lora",
}
TUNERY_CONFIGS = tuple(CONFIG_NAMES[k] for k in WORKERS if k != "baseline")


# --------------------------------------------------------------------------------------------------------
# Data: the same seeded sample in every worker
# --------------------------------------------------------------------------------------------------------


def read_sst2(path: Path) -> pd.DataFrame:
    """One SST-2 TSV file as a frame with columns ``sentence`` and ``label`` (0/1).

    The header is ``label<TAB>sentence`` in train.tsv but ``label<TAB>content`` in dev.tsv: the text is
    whichever column is not ``label``.
    """
    import pandas as pd

    frame = pd.read_csv(
        path,
        sep="\t",
        quoting=csv.QUOTE_NONE,  # sentences contain quote characters; no field is quoted
        keep_default_na=False,
        dtype=str,
    )
    text = [c for c in frame.columns if c != "label"]
    if "label" not in frame.columns or len(text) != 1:
        raise ValueError(f"{path}: expected columns label and one text column, got {list(frame.columns)}")
    return pd.DataFrame({"sentence": frame[text[0]], "label": frame["label"].astype(int)})


def load_data(data_dir: Path, train_samples: int, dev_rows: int | None, seed: int) -> dict[str, pd.DataFrame]:
    """The training sample and the dev rows, identical for a given (sizes, seed) in every process.

    Args:
        data_dir: the shared data folder (holding ``sst2/train.tsv`` and ``sst2/dev.tsv``).
        train_samples: rows drawn from the training set without replacement; 0 or more than there are
            means all of them (in file order).
        dev_rows: rows drawn from the dev set (kept in file order); None means the whole dev set.
        seed: the seed of both draws.

    Returns:
        ``{"train": ..., "dev": ...}``, each with columns ``sentence`` and ``label`` (0/1).
    """
    folder = data_dir / "sst2"
    train, dev = read_sst2(folder / "train.tsv"), read_sst2(folder / "dev.tsv")
    if 0 < train_samples < len(train):
        train = train.sample(n=train_samples, random_state=seed).reset_index(drop=True)
    if dev_rows is not None and dev_rows < len(dev):
        dev = dev.sample(n=dev_rows, random_state=seed).sort_index().reset_index(drop=True)
    return {"train": train, "dev": dev}


# --------------------------------------------------------------------------------------------------------
# Workers: one configuration per process
# --------------------------------------------------------------------------------------------------------


def _trained_samples(rows: int, epochs: float, max_steps: int, batch_size: int) -> float:
    """How many examples the schedule feeds to the model (what the wall-clock samples/s divides)."""
    return max_steps * batch_size if max_steps > 0 else rows * epochs


def _step_figures(clock: Any, trained: float, wall: float) -> dict[str, float | None]:
    """Step time, samples/s within the steps, and the loop time outside them (None without a clock)."""
    if clock is None or clock.seconds <= 0:
        return {"step_s": None, "step_samples_per_s": None, "outside_steps_s": None}
    return {
        "step_s": round(clock.seconds, 3),
        "step_samples_per_s": round(trained / clock.seconds, 3),
        "outside_steps_s": round(wall - clock.seconds, 3),
    }


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the way HF's run_glue.py does (pad to 128, default collator, random sampler); measure it."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from tunery.models import resolve_model

    data = load_data(args.data_dir, args.train_samples, args.dev_rows, args.seed)
    started = time.perf_counter()
    set_seed(args.seed)  # before the model, as run_glue.py does: the classifier head is initialised here
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def preprocess(examples: dict[str, list]) -> dict[str, list]:
        return tokenizer(examples["sentence"], padding="max_length", max_length=MAX_LENGTH, truncation=True)

    train_set = Dataset.from_pandas(data["train"], preserve_index=False).map(preprocess, batched=True)
    dev_set = Dataset.from_pandas(data["dev"], preserve_index=False).map(preprocess, batched=True)

    def accuracy(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    out_dir = Path(tempfile.mkdtemp(prefix="baseline-", dir=args.workdir))
    clock = step_clock()
    training_args = TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio (as tunery passes it)
        seed=args.seed,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=dev_set,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=accuracy,
        callbacks=[clock],
    )
    train_started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - train_started
    dev = trainer.evaluate()
    total = time.perf_counter() - started
    shutil.rmtree(out_dir, ignore_errors=True)
    trained = _trained_samples(len(train_set), args.epochs, args.max_steps, BATCH_SIZE)
    return {
        "train_rows": len(train_set),
        "dev_rows": len(dev_set),
        "steps": result.global_step,
        "samples_per_s": result.metrics["train_samples_per_second"],
        "wall_s": round(wall, 3),
        "samples_per_s_wall": round(trained / wall, 3),
        **_step_figures(clock, trained, wall),
        "total_s": round(total, 3),
        "dev_accuracy": dev["eval_accuracy"],
        "train_loss": result.training_loss,
        "learning_rate": args.learning_rate,
        "padding": f"max_length {MAX_LENGTH}",
        "sampling": "random",
        "torch_threads": torch.get_num_threads(),
        "model_dtype": str(next(model.parameters()).dtype),
    }


def sampling_override(args: argparse.Namespace, kind: str) -> dict[str, bool]:
    """``training.group_by_length`` for a worker: ``full_random`` always samples at random (the baseline's
    sampler), ``full_grouped`` always groups by length; ``full`` and ``lora`` follow ``--tunery-sampling``
    (nothing: the recipe's default)."""
    if kind in ("full_random", "full_grouped"):
        return {"group_by_length": kind == "full_grouped"}
    if args.tunery_sampling == "default":
        return {}
    return {"group_by_length": args.tunery_sampling == "group_by_length"}


def tunery_recipe(args: argparse.Namespace, kind: str, workdir: Path) -> Any:
    """The recipe of a tunery worker (``full``, ``full_grouped``, ``full_random`` or ``lora``): tunery's
    defaults except the settings shared with the baseline."""
    from tunery.config import Recipe

    method = "lora" if kind == "lora" else "full"
    lr = args.lora_learning_rate if method == "lora" else args.learning_rate
    return Recipe.model_validate(
        {
            "name": f"training-speed-{kind.replace('_', '-')}",
            "data": {"source": "unused.tsv"},  # train() reads the prepared splits, never the source
            "model": {"base": args.model, "max_length": MAX_LENGTH},
            "method": {
                "name": method,
                "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "target_modules": list(LORA_TARGETS)},
            },
            "training": {
                "epochs": args.epochs,
                "max_steps": args.max_steps,
                "batch_size": BATCH_SIZE,
                "eval_batch_size": EVAL_BATCH_SIZE,
                "learning_rate": lr,
                "weight_decay": args.weight_decay,
                "warmup_ratio": args.warmup_ratio,
                "seed": args.seed,
                **sampling_override(args, kind),
            },
            "mlflow": {"registered_model": "training-speed"},
            "workdir": str(workdir),
        }
    )


def run_tunery(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Write the sample to a run folder's splits, call ``tunery.training.train`` in-process; measure it."""
    import torch

    import tunery.training.loop
    from tunery.layout import SPLITS, RunLayout

    data = load_data(args.data_dir, args.train_samples, args.dev_rows, args.seed)
    layout = RunLayout.create(args.workdir, f"bench-{kind.replace('_', '-')}")
    frames = {"train": data["train"], "validation": data["dev"], "test": data["dev"]}
    for name in SPLITS:
        frame = frames[name]
        split = layout.split(name)
        split.parent.mkdir(parents=True, exist_ok=True)
        frame.assign(text=frame["sentence"], label=frame["label"].astype(str))[["text", "label"]].to_parquet(
            split, index=False
        )
    recipe = tunery_recipe(args, kind, Path(args.workdir))
    clock = step_clock()
    started = time.perf_counter()
    tunery.training.loop.train(recipe, layout, callbacks=[clock])
    total = time.perf_counter() - started
    metrics = json.loads((layout.train_dir / "metrics.json").read_text(encoding="utf-8"))
    shutil.rmtree(layout.root, ignore_errors=True)  # checkpoints and the export: hundreds of MB
    rows = len(data["train"])
    wall = metrics["train_runtime_s"]
    trained = _trained_samples(rows, args.epochs, args.max_steps, BATCH_SIZE)
    return {
        "train_rows": rows,
        "dev_rows": len(data["dev"]),
        "steps": metrics["global_steps"],
        "samples_per_s": metrics["train_samples_per_second"],
        "wall_s": round(wall, 3),
        "samples_per_s_wall": round(trained / wall, 3),
        **_step_figures(clock, trained, wall),
        "total_s": round(total, 3),
        "dev_accuracy": metrics["validation"]["accuracy"],
        "train_loss": metrics["train_loss"],
        "learning_rate": recipe.training.learning_rate,
        "padding": "dynamic",
        "sampling": "group_by_length" if recipe.training.group_by_length else "random",
        "export_format": metrics["export"]["format"],
        "trainable_parameters": metrics["trainable_parameters"],
        "torch_threads": torch.get_num_threads(),
    }


def worker_main(args: argparse.Namespace) -> None:
    """``--worker``: run one configuration and print its result as one JSON line (after the training log)."""
    # imported before any clock starts, so that neither side is charged for imports
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import tunery.training.loop  # noqa: F401

    result = run_baseline(args) if args.worker == "baseline" else run_tunery(args, args.worker)
    result["peak_rss_mb"] = workers.peak_rss_mb()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------------
# Parent: run the workers, summarise, write the JSON
# --------------------------------------------------------------------------------------------------------


def worker_command(args: argparse.Namespace, kind: str, workdir: Path, **overrides: Any) -> list[str]:
    """The command line of one worker process (the parent's settings, plus ``overrides``)."""
    settings = {
        "data_dir": args.data_dir,
        "model": args.model,
        "train_samples": args.train_samples,
        "dev_rows": args.dev_rows,
        "epochs": args.epochs,
        "max_steps": -1,
        "learning_rate": args.learning_rate,
        "lora_learning_rate": args.lora_learning_rate,
        "weight_decay": args.weight_decay,
        "warmup_ratio": args.warmup_ratio,
        "seed": args.seed,
        "tunery_sampling": args.tunery_sampling,
        "workdir": workdir,
        **overrides,
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for key, value in settings.items():
        if value is not None:
            command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def run_worker(command: list[str], verbose: bool) -> dict[str, Any]:
    """Run one worker to completion and return the JSON it printed."""
    return workers.run_worker(command, RESULT_PREFIX, verbose)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Timings: medians over the repeats; dev accuracy and train loss: means over the repeats' seeds (an
    average over seeds, the quantity the accuracy target is about); peak RSS: the largest. The single runs
    (with their seeds) are kept under ``runs``."""
    timed = (
        "samples_per_s",
        "wall_s",
        "samples_per_s_wall",
        "step_s",
        "step_samples_per_s",
        "outside_steps_s",
        "total_s",
    )
    averaged = ("dev_accuracy", "train_loss")
    per_run = (*timed, *averaged)
    summary = {k: v for k, v in runs[0].items() if k not in per_run and k not in ("peak_rss_mb", "seed")}
    for key in timed:
        values = [r[key] for r in runs if r.get(key) is not None]
        summary[key] = round(statistics.median(values), 4) if values else None
    for key in averaged:
        values = [r[key] for r in runs if r.get(key) is not None]
        summary[key] = round(statistics.fmean(values), 4) if values else None
    summary["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    summary["runs"] = [{k: r.get(k) for k in ("seed", *per_run, "peak_rss_mb")} for r in runs]
    return summary


def paired_deltas(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Dev-accuracy differences paired by seed (tunery - baseline): per seed, mean, SD and a 95 % CI.

    The CI is Student's t interval of the mean paired difference (n - 1 degrees of freedom); with one seed
    there is no spread to estimate and SD and CI are None.
    """
    by_seed = {r["seed"]: r["dev_accuracy"] for r in theirs}
    deltas = {str(r["seed"]): r["dev_accuracy"] - by_seed[r["seed"]] for r in mine if r["seed"] in by_seed}
    values = list(deltas.values())
    mean = statistics.fmean(values) if values else None
    result: dict[str, Any] = {
        "per_seed": {k: round(v, 4) for k, v in deltas.items()},
        "n": len(values),
        "mean": round(mean, 4) if mean is not None else None,
        "sd": None,
        "ci95": None,
    }
    if len(values) >= 2:
        from scipy.stats import t

        sd = statistics.stdev(values)
        half = t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
        result.update(sd=round(sd, 4), ci95=[round(mean - half, 4), round(mean + half, 4)])
    return result


def compare(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios of samples/s and accuracy deltas (paired by seed) of each tunery configuration against the
    baseline."""
    base = configs["baseline"]
    result = {}
    for name in (n for n in TUNERY_CONFIGS if n in configs):
        c = configs[name]
        paired = paired_deltas(c["runs"], base["runs"])
        result[f"{name}_vs_baseline"] = {
            "samples_per_s_ratio": round(c["samples_per_s"] / base["samples_per_s"], 3),
            "samples_per_s_wall_ratio": round(c["samples_per_s_wall"] / base["samples_per_s_wall"], 3),
            "step_samples_per_s_ratio": (
                round(c["step_samples_per_s"] / base["step_samples_per_s"], 3)
                if c["step_samples_per_s"] and base["step_samples_per_s"]
                else None
            ),
            "dev_accuracy_delta": paired["mean"],
            "dev_accuracy_delta_n": paired["n"],
            "dev_accuracy_delta_per_seed": paired["per_seed"],
            "dev_accuracy_delta_sd": paired["sd"],
            "dev_accuracy_delta_ci95": paired["ci95"],
            "peak_rss_ratio": round(c["peak_rss_mb"] / base["peak_rss_mb"], 3),
        }
    return result


def speed_target(comparison: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The "at least 2x the samples/s at equal or better dev accuracy" check for one tunery configuration:
    met when the median ratio is >= 2 and the mean paired accuracy delta is >= 0."""
    c = comparison.get(f"{name}_vs_baseline")
    if c is None:
        return None
    return {
        "configuration": name,
        "target_ratio": TARGET_RATIO,
        "samples_per_s_ratio": c["samples_per_s_ratio"],
        "dev_accuracy_delta": c["dev_accuracy_delta"],
        "dev_accuracy_delta_ci95": c["dev_accuracy_delta_ci95"],
        "met": c["samples_per_s_ratio"] >= TARGET_RATIO and c["dev_accuracy_delta"] >= 0,
    }


def budget_steps(budget_s: float, samples_per_s: float, batch_size: int) -> int:
    """The max_steps that fit a training-time budget at a measured throughput.

    ``floor(budget_s * samples_per_s / batch_size)``, at least 1.
    """
    return max(1, math.floor(budget_s * samples_per_s / batch_size))


def run_budget(args: argparse.Namespace, workdir: Path, samples_per_s: float) -> dict[str, Any]:
    """tunery ``full`` on the whole training set, max_steps chosen to fit ``--budget-minutes``."""
    budget_s = args.budget_minutes * 60
    steps = budget_steps(budget_s, samples_per_s, BATCH_SIZE)
    print(f"budget run: tunery full, all training rows, max_steps={steps} ({args.budget_minutes} min) ...")
    result = run_worker(
        worker_command(args, "full", workdir, train_samples=0, max_steps=steps, dev_rows=None), args.verbose
    )
    return {
        "budget_minutes": args.budget_minutes,
        "budget_s": budget_s,
        "planning_samples_per_s": samples_per_s,
        "max_steps": steps,
        "planned_samples": steps * BATCH_SIZE,
        "epochs_covered": round(steps * BATCH_SIZE / result["train_rows"], 3),
        "within_budget": result["wall_s"] <= budget_s,
        **result,
    }


def machine_info() -> dict[str, Any]:
    """The machine and the versions of the packages that do the work in this benchmark."""
    return hostinfo.machine_info(
        ("torch", "transformers", "peft", "datasets", "accelerate", "pandas", "tunery")
    )


def print_table(configs: dict[str, dict[str, Any]], comparison: dict[str, Any], doc: dict[str, Any]) -> None:
    """A compact fixed-width table of the per-configuration figures, the ratio and the target checks."""
    header = (
        f"{'configuration':<20}{'rows':>7}{'steps':>7}{'samples/s':>11}{'train s':>9}{'in steps s':>12}"
        f"{'total s':>9}{'dev acc':>9}{'peak MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    rows = dict(configs)
    if "train_rows" in doc["budget"]:
        rows["budget_full"] = doc["budget"]
    for name, r in rows.items():
        step_s = f"{r['step_s']:.1f}" if r.get("step_s") is not None else "-"
        print(
            f"{name:<20}{r['train_rows']:>7}{r['steps']:>7}{r['samples_per_s']:>11.2f}{r['wall_s']:>9.1f}"
            f"{step_s:>12}{r['total_s']:>9.1f}{r['dev_accuracy']:>9.4f}{r['peak_rss_mb']:>10.0f}"
        )
    for name in (n for n in TUNERY_CONFIGS if n in configs):
        c = comparison[f"{name}_vs_baseline"]
        ci = c["dev_accuracy_delta_ci95"]
        spread = f" (95% CI {100 * ci[0]:+.2f} to {100 * ci[1]:+.2f})" if ci else ""
        print(
            f"{name} / baseline: {c['samples_per_s_ratio']:.2f}x samples/s "
            f"({_times(c['step_samples_per_s_ratio'])} within the optimiser steps), "
            f"dev accuracy {100 * c['dev_accuracy_delta']:+.2f} points{spread}"
        )
    for key in ("speedup", "speedup_length_grouped", "speedup_random_batches"):
        speed = doc["targets"].get(key)
        if speed:
            print(
                f"target >= {speed['target_ratio']:.0f}x at equal or better accuracy "
                f"({speed['configuration']}): {speed['met']}"
            )
    budget = doc["targets"]["budget_accuracy"]
    print(f"target budget dev accuracy >= {budget['target']}: {budget['met']}")


def _times(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    workers.common_arguments(parser, DEFAULT_DATA_DIR, DEFAULT_OUT, MODEL, "the encoder both sides tune")
    parser.add_argument(
        "--train-samples",
        type=int,
        default=None,
        help=f"seeded sample of training rows (default {DEFAULT_TRAIN_SAMPLES:,}; 0: all)",
    )
    parser.add_argument("--dev-rows", type=int, default=None, help="dev rows to evaluate on (default: all)")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs (all configurations)")
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="baseline and tunery full")
    parser.add_argument("--lora-learning-rate", type=float, default=5e-4, help="tunery lora")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=42, help="seed of the samples and of training")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each configuration, alternately; repeat i: seed+i"
    )
    parser.add_argument(
        "--tunery-sampling",
        choices=("default", "group_by_length", "random"),
        default="default",
        help="tunery's batch sampler: its recipe default, length-grouped, or random like the baseline",
    )
    parser.add_argument(
        "--configurations",
        default=",".join(DEFAULT_WORKERS),
        help=f"comma-separated workers out of {','.join(WORKERS)}, baseline included "
        f"(default: {','.join(DEFAULT_WORKERS)})",
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=10.0, help="budget run's training time (0: skip it)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_TRAIN_SAMPLES} samples and {QUICK_DEV_ROWS} dev rows unless given, "
        "1 repeat, no budget run",
    )
    parser.add_argument("--verbose", action="store_true", help="echo each worker's training log to stderr")
    # internal: one configuration in this process (started by the parent)
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.worker and args.workdir is None:
        parser.error("--worker needs --workdir")
    # in the order given, each once
    args.configurations = tuple(dict.fromkeys(k.strip() for k in args.configurations.split(",") if k.strip()))
    unknown = sorted(set(args.configurations) - set(WORKERS))
    if unknown or "baseline" not in args.configurations or len(args.configurations) < 2:
        parser.error(f"--configurations: baseline and at least one of {WORKERS[1:]} (unknown: {unknown})")
    if args.quick:  # explicit --train-samples / --dev-rows still win (a smaller smoke test)
        args.repeats, args.budget_minutes = 1, 0.0
        args.train_samples = QUICK_TRAIN_SAMPLES if args.train_samples is None else args.train_samples
        args.dev_rows = QUICK_DEV_ROWS if args.dev_rows is None else args.dev_rows
    elif args.train_samples is None:
        args.train_samples = DEFAULT_TRAIN_SAMPLES
    if args.budget_minutes > 0 and "full" not in args.configurations:
        parser.error("--budget-minutes > 0 needs the full worker (its speed plans the budget run)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or, with ``--worker``, one configuration); write the JSON and print the table."""
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return None
    machine = machine_info()  # before the work, so the load average shows what else was running
    kinds = [k for k in WORKERS if k in args.configurations]
    runs: dict[str, list[dict[str, Any]]] = {CONFIG_NAMES[k]: [] for k in kinds}
    partial = args.out.with_name(args.out.stem + ".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tunery-training-speed-") as tmp:
        workdir = Path(tmp)
        for repeat in range(args.repeats):
            for kind in kinds:
                name = CONFIG_NAMES[kind]
                print(f"repeat {repeat + 1}/{args.repeats}: {name} ...", flush=True)
                command = worker_command(args, kind, workdir, seed=args.seed + repeat)
                runs[name].append({"seed": args.seed + repeat, **run_worker(command, args.verbose)})
                # a long multi-seed run keeps what it measured if it is stopped part-way
                partial.write_text(json.dumps({"command": sys.argv, "runs": runs}, indent=2) + "\n")
        configs = {name: summarise(r) for name, r in runs.items()}
        comparison = compare(configs)
        reason = "--quick" if args.quick else "--budget-minutes 0"
        budget: dict[str, Any] = {"skipped": True, "reason": reason}
        if args.budget_minutes > 0:
            budget = run_budget(args, workdir, configs["tunery_full"]["samples_per_s"])
    dev_rows = configs["baseline"]["dev_rows"]
    dev_se = 100 * math.sqrt(0.85 * 0.15 / dev_rows)
    budget_met = budget["dev_accuracy"] >= TARGET_BUDGET_ACCURACY if "dev_accuracy" in budget else None
    doc = {
        "benchmark": "training_speed",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "quick": args.quick,
            "repeats": args.repeats,
            "statistic": "timings: median over repeats; dev_accuracy, train_loss: mean over the repeats' "
            "seeds; peak_rss_mb: max",
            "seeds": [args.seed + i for i in range(args.repeats)],
            "tunery_sampling": args.tunery_sampling,
            "dataset": "sst2",
            "train_samples": args.train_samples,
            "dev_rows": args.dev_rows,
            "epochs": args.epochs,
            "batch_size": BATCH_SIZE,
            "eval_batch_size": EVAL_BATCH_SIZE,
            "max_length": MAX_LENGTH,
            "learning_rate": args.learning_rate,
            "lora_learning_rate": args.lora_learning_rate,
            "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "target_modules": list(LORA_TARGETS)},
            "weight_decay": args.weight_decay,
            "warmup_ratio": args.warmup_ratio,
            "seed": args.seed,
            "configurations": kinds,
            "model": args.model,
            "budget_minutes": args.budget_minutes,
        },
        "configurations": configs,
        "comparison": comparison,
        "budget": budget,
        "targets": {
            "speedup": speed_target(comparison, "tunery_full"),
            "speedup_length_grouped": speed_target(comparison, "tunery_full_grouped"),
            "speedup_random_batches": speed_target(comparison, "tunery_full_random"),
            "budget_accuracy": {
                "target": TARGET_BUDGET_ACCURACY,
                "dev_accuracy": budget.get("dev_accuracy"),
                "met": budget_met,
            },
        },
        "notes": [
            "baseline = a plain HF Trainer script written like transformers' run_glue.py: "
            f"padding='max_length' (max_length {MAX_LENGTH}, truncation), default_data_collator, "
            "random sampler (no length grouping), logging off, save_strategy 'no', use_cpu",
            "tunery = tunery.training.train on prepared splits: dynamic padding (DataCollatorWithPadding), "
            "its recipe defaults otherwise (random batches unless --tunery-sampling says otherwise: "
            "training.group_by_length is off by default; validation at each epoch end, a checkpoint every "
            "200 steps, export of the trained model after training); tunery_full_grouped / "
            "tunery_full_random = tunery full with training.group_by_length true / false whatever the "
            "default (random: the baseline's sampler, so that dynamic padding is the only change)",
            "accuracy deltas are paired by seed (repeat i: seed + i for the sample and for training on every "
            "side); dev_accuracy_delta = their mean, with Student's t 95 % CI over seeds when repeats > 1; "
            "a speed target is met when the ratio is >= 2 and the mean delta is >= 0 (the point estimate; "
            "the CI shows how far seed noise leaves it from 0)",
            "each configuration runs in its own fresh worker process; tunery's train() is called in-process "
            "there (not through launch_training), so process start-up and imports are not timed on either "
            "side; the configurations run one after the other (alternately when repeats > 1)",
            "samples_per_s = the Trainer's train_samples_per_second (same definition on both sides); for "
            "tunery it includes its in-loop validation and checkpoint saves, which the baseline does not do: "
            "conservative against tunery. wall_s = wall clock around trainer.train() (tunery: its "
            "train_runtime_s, measured the same way); total_s = model load, tokenisation, training, "
            "evaluation (tunery: also the export)",
            "step_s = time inside the optimiser steps (forward, backward, clipping, update; from "
            "on_step_begin to on_step_end of a step-clock callback, passed to tunery through the "
            "callbacks argument of tunery.training.loop.train); outside_steps_s = wall_s - step_s (batch "
            "collation, logging, in-loop evaluation, checkpoint saves); step_samples_per_s = trained "
            "samples / step_s. A diagnostic: the headline is samples_per_s",
            f"LoRA (r={LORA_R}, alpha={LORA_ALPHA}, query/value) uses learning rate "
            f"{args.lora_learning_rate} instead of {args.learning_rate}: adapters train few weights and "
            "usually need a higher rate",
            f"dev accuracy on {dev_rows} rows has a binomial standard error of about {dev_se:.1f} points "
            "(at 85% accuracy); a difference of that size between configurations is noise",
            "peak_rss_mb = ru_maxrss of the configuration's worker process (imports, data, training; for "
            "tunery also the export, which reloads the model)",
            "budget run: tunery's recipe has no wall-clock stop, so max_steps = "
            "floor(budget_s * samples_per_s / batch_size), with the tunery_full samples_per_s measured "
            "above on a random sample of the same training set; wall_s is the training time it really took",
            "ratio = tunery samples_per_s / baseline samples_per_s; target >= 2.0 at a dev accuracy "
            "delta >= 0",
            "timings are wall time on a possibly shared machine: compare the load averages with cpu_count",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    partial.unlink(missing_ok=True)  # only once the final JSON holds the runs
    print_table(configs, comparison, doc)
    print(f"cpu_count={os.cpu_count()}; load {doc['machine']['load_avg_1_5_15_at_end']}; wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
