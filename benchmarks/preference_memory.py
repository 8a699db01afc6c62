"""Preference-tuning memory and speed: tunery's DPO with LoRA (the adapter-disabled model as its implicit
reference) against TRL's DPO example defaults, which load an explicit reference copy of the model.

The peer an LLM team would pick: TRL's ``DPOTrainer`` (the version pinned in requirements/constraints.txt) as
its example script ``trl/scripts/dpo.py`` runs it without peft flags: full fine-tuning, a second copy of the
model loaded as ``ref_model``, and ``DPOConfig``'s defaults (on this machine bf16 autocast and gradient
checkpointing, which DPOConfig turns on by itself, learning rate 1e-6; ``use_cpu`` is set where there is no
GPU, as TRL asks). tunery: ``tunery.training.loop.train`` on a ``task: preference`` recipe with ``method:
lora`` and tunery's defaults otherwise (learning rate 5e-5; fp32 and no gradient checkpointing unless
``--tunery-precision bf16`` / ``--tunery-gradient-checkpointing`` set tunery's own ``training.precision`` and
``training.gradient_checkpointing``, the two settings TRL's defaults turn on).

Shared by both, nothing else: the packaged SmolLM2-135M-Instruct, the pairs (LLaMA-Factory's real
``dpo_en_demo.json``, through tunery's ingest, clean and split stages: the pairs that fit ``--max-length``
tokens in the chat template, split by prompt), ``--max-length``, DPO's beta (0.1, TRL's default), the number
of optimiser steps, the batch size and the seed. A third configuration, tunery's SFT with the same LoRA on
the prompts and chosen answers of the same train pairs (same steps, batch size and seed), gives the ratio of
DPO-LoRA's peak memory to plain SFT-LoRA's. Each configuration trains in a fresh worker process of this script
(``--worker tunery|trl|sft``), one after the other (alternately over ``--repeats``; repeat ``i`` uses seed
``--seed + i`` for all), so that each peak RSS is that trainer's alone (model loading included: the explicit
reference copy is part of what TRL's defaults cost).

Measured per run:

* ``train_peak_rss_mb``: the worker's peak resident set size when training ends (model loading and every
  step included; tunery's export and the scoring after it not): the memory ratios use it; ``peak_rss_mb``,
  the worker's peak at its end;
* ``samples_per_s``: training pairs (``steps x batch size``) over the time spent inside optimiser steps
  (forward, reference forward, backward, update; ``workers.step_clock``), and ``train_runtime_s``, what
  ``trainer.train()`` took;
* ``preference_accuracy`` of each trained DPO model on the held-out test pairs, scored by one function for
  both (``tunery.evaluation.preference``: the share of pairs whose chosen answer gets the higher
  log-probability per token), beside the untrained model's; the paired bootstrap interval of tunery - TRL.

Target (issue "Preference tuning"): tunery's peak RSS <= 0.6x TRL's and samples/s >= 1.3x, with the same
preference accuracy within noise (the 95% interval of the difference contains 0 or lies above it).

Usage::

    python benchmarks/preference_memory.py               # 16 steps, batch 2, 512 tokens, 1 seed
    python benchmarks/preference_memory.py --repeats 3   # seeds 0, 1, 2
    python benchmarks/preference_memory.py --quick       # 2 steps, 256 tokens (smoke test)

Results go to ``benchmarks/results/preference_memory.json`` (``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hostinfo
import workers
from workers import step_clock

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "preference_memory.json"
MODEL = "smollm2"
DATA_FILE = ("llama_factory", "dpo_en_demo.json")
BETA = 0.1
TARGET_RSS_RATIO, TARGET_SPEED_RATIO = 0.6, 1.3
RESULT_PREFIX = "PREFERENCE_MEMORY_RESULT "
WORKERS = ("tunery", "trl", "sft")
SPLIT = {"train": 0.6, "validation": 0.05, "test": 0.35}


# --------------------------------------------------------------------------------------------------------
# Data: tunery's stages once, the same split files for every worker
# --------------------------------------------------------------------------------------------------------


def recipe_of(args: argparse.Namespace, workdir: Path, task: str = "preference") -> Any:
    """tunery's defaults except the settings shared with TRL (task ``sft``: the SFT-LoRA comparison)."""
    from tunery.config import Recipe

    body: dict[str, Any] = {
        "name": f"bench-{task}",
        "task": task,
        "data": {"source": str(args.data_dir.joinpath(*DATA_FILE))},
        "split": SPLIT,
        "cleaning": {"max_quarantine_fraction": 0.95},
        "model": {"base": args.model, "max_length": args.max_length},
        "method": {"name": "lora"},
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "eval_batch_size": args.batch_size,
            "seed": args.seed,
            "logging_steps": max(1, args.steps // 4),
            "precision": args.tunery_precision,
            "gradient_checkpointing": args.tunery_gradient_checkpointing,
        },
        "mlflow": {"registered_model": f"bench-{task}"},
        "workdir": str(workdir),
    }
    if task == "preference":
        body["preference"] = {"objective": "dpo", "beta": BETA}
    else:
        body["data"]["conversation"] = {"format": "openai"}
    return Recipe.model_validate(body)


def prepare_splits(args: argparse.Namespace, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """Ingest, clean and split the pairs with tunery's stages; returns the splits folder and its counts."""
    from tunery.data import stages
    from tunery.layout import RunLayout

    recipe = recipe_of(args, workdir)
    layout = RunLayout.create(workdir, "bench-data")
    stages.ingest_stage(recipe, layout)
    stages.clean_stage(recipe, layout)
    stages.split_stage(recipe, layout)
    report = json.loads(layout.data_report.read_text(encoding="utf-8"))
    counts = {name: report["split"][name]["rows"] for name in SPLIT}
    needed = args.steps * args.batch_size
    if counts["train"] < args.batch_size:
        raise SystemExit(
            f"only {counts['train']} train pairs fit {args.max_length} tokens; raise --max-length"
        )
    data = {
        "file": "/".join(DATA_FILE),
        "rows_in": report["clean"]["rows_in"],
        "kept": report["clean"]["kept"],
        "quarantine_reasons": report["clean"]["quarantine_reasons"],
        "pairs": counts,
        "pairs_trained_on": needed,
        "epochs": round(needed / counts["train"], 2),
    }
    return layout.split("train").parent, data


def split_frames(splits: Path) -> dict[str, Any]:
    import pandas as pd

    return {name: pd.read_parquet(splits / f"{name}.parquet") for name in SPLIT}


def sft_frame(frame) -> Any:
    """The pairs' prompts and chosen answers as tunery's canonical conversations (the SFT comparison)."""
    import pandas as pd

    from tunery.data import conversations as conv
    from tunery.training.preference import rows_of

    out = []
    for row in rows_of(frame):
        record = {"messages": row["prompt"] + row["chosen"], "tools": row.get("tools") or []}
        out.append(
            {
                "text": conv.key(record),
                "prompt": conv.first_user_turn(record),
                "conversation": json.dumps(record, ensure_ascii=False),
                "label": "",
            }
        )
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------------------
# Worker side: one configuration per process
# --------------------------------------------------------------------------------------------------------


def model_path(model: str) -> str:
    """The model as a local folder (the packaged SmolLM2 is converted from its GGUF once, then cached)."""
    from tunery.models import resolve_model

    return resolve_model(model)


def scored(model, tokenizer, frame) -> dict[str, list[float]]:
    """Per test pair: the summed log-probabilities of the chosen and rejected answers and their lengths."""
    from tunery.evaluation import preference
    from tunery.training.preference import rows_of

    model.eval()
    return {k: v.tolist() for k, v in preference.score(model, tokenizer, rows_of(frame)).items()}


def rss_at_train_end() -> Any:
    """A Trainer callback that records the process's peak RSS when training ends (``.peak_mb``): model
    loading and every step included, the export and the scoring after it not."""
    from transformers import TrainerCallback

    class PeakAtEnd(TrainerCallback):
        peak_mb: float | None = None

        def on_train_end(self, args, state, control, **kwargs):
            self.peak_mb = workers.peak_rss_mb()

    return PeakAtEnd()


def _write_splits(layout, frames: dict[str, Any]) -> None:
    for name, frame in frames.items():
        layout.split(name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(layout.split(name), index=False)


def run_tunery(args: argparse.Namespace, task: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    import tunery.training.loop
    from tunery.layout import RunLayout
    from tunery.training import export

    frames = split_frames(args.splits)
    recipe = recipe_of(args, Path(args.workdir), task)
    layout = RunLayout.create(args.workdir, f"bench-{task}")
    if task == "sft":
        frames = {name: sft_frame(frame) for name, frame in frames.items()}
    _write_splits(layout, frames)
    clock, peak = step_clock(), rss_at_train_end()
    tunery.training.loop.train(recipe, layout, callbacks=[clock, peak])
    metrics = json.loads((layout.train_dir / "metrics.json").read_text(encoding="utf-8"))
    figures = _figures(
        args, clock, metrics["train_runtime_s"], metrics["global_steps"], metrics["train_loss"]
    )
    figures["train_peak_rss_mb"] = peak.peak_mb
    figures |= {"method": "lora", "reference": "adapters disabled" if task == "preference" else None}
    precision = "bf16 autocast" if recipe.training.precision == "bf16" else recipe.training.precision
    figures |= {"precision": precision, "gradient_checkpointing": recipe.training.gradient_checkpointing}
    figures["learning_rate"] = recipe.training.learning_rate
    if task == "preference":
        tokenizer = AutoTokenizer.from_pretrained(model_path(args.model))
        model = export.load_exported(layout.model_dir, "preference")
        figures["test_scores"] = scored(model, tokenizer, split_frames(args.splits)["test"])
    shutil.rmtree(layout.root, ignore_errors=True)
    return figures


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tunery.training.preference import rows_of

    frames = split_frames(args.splits)
    path = model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ref_model = AutoModelForCausalLM.from_pretrained(path)  # trl/scripts/dpo.py without peft flags
    config = DPOConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        beta=BETA,
        seed=args.seed,
        logging_steps=max(1, args.steps // 4),
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),  # TRL's default bf16 refuses a CPU-only machine without it
    )
    pairs = [
        {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
        for row in rows_of(frames["train"])
    ]
    clock, peak = step_clock(), rss_at_train_end()
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        callbacks=[clock, peak],
    )
    result = trainer.train()
    figures = _figures(args, clock, result.metrics["train_runtime"], result.global_step, result.training_loss)
    figures["train_peak_rss_mb"] = peak.peak_mb
    figures |= {"method": "full", "reference": "explicit copy", "learning_rate": config.learning_rate}
    figures |= {"precision": "bf16 autocast" if config.bf16 else "fp32"}
    figures["gradient_checkpointing"] = bool(config.gradient_checkpointing)
    with torch.autocast("cpu", enabled=False):
        figures["test_scores"] = scored(trainer.model.float(), tokenizer, frames["test"])
    shutil.rmtree(Path(args.workdir) / "trl", ignore_errors=True)
    return figures


def _figures(args: argparse.Namespace, clock, runtime: float, steps: int, train_loss: float) -> dict:
    samples = int(steps) * args.batch_size
    return {
        "steps": int(steps),
        "samples": samples,
        "train_runtime_s": round(runtime, 3),
        "step_s": round(clock.seconds, 3),
        "samples_per_s": round(samples / clock.seconds, 4) if clock.seconds else None,
        "train_loss": round(float(train_loss), 4),
    }


def run_untuned(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(args.model)
    model = AutoModelForCausalLM.from_pretrained(path)
    return {
        "test_scores": scored(model, AutoTokenizer.from_pretrained(path), split_frames(args.splits)["test"])
    }


def worker_main(args: argparse.Namespace) -> None:
    # imported before any clock starts, so that no side is charged for imports
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import tunery.training.loop  # noqa: F401

    if args.worker == "untuned":
        result = run_untuned(args)
    elif args.worker == "trl":
        result = run_trl(args)
    else:
        result = run_tunery(args, "preference" if args.worker == "tunery" else "sft")
    result |= {
        "seed": args.seed,
        "peak_rss_mb": workers.peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------------
# Parent: prepare the data, run the workers, summarise, write the JSON
# --------------------------------------------------------------------------------------------------------


def worker_command(args: argparse.Namespace, kind: str, splits: Path, workdir: Path, seed: int) -> list[str]:
    settings = {
        "data_dir": args.data_dir,
        "model": args.model,
        "max_length": args.max_length,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": seed,
        "splits": splits,
        "workdir": workdir,
        "tunery_precision": args.tunery_precision,
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for key, value in settings.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command + (["--tunery-gradient-checkpointing"] if args.tunery_gradient_checkpointing else [])


def accuracy_functions(scores: dict[str, list[float]], untuned: dict[str, list[float]] | None = None):
    """Preference accuracy as a function of test-pair indices; with ``untuned`` scores, reward accuracy
    (the share of pairs whose chosen - rejected log-probability margin grew from the untuned model's)."""
    import numpy as np

    from tunery.evaluation import preference

    def arrays(found: dict[str, list[float]]) -> dict[str, Any]:
        return {k: np.asarray(v, dtype=np.float64) for k, v in found.items()}

    functions = preference.row_metrics(arrays(scores), untuned and arrays(untuned), None, BETA)
    return functions["reward_accuracy"] if untuned else functions["preference_accuracy"]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Timings: medians over the repeats; peak RSS: the largest; accuracy: the mean over the seeds."""
    import numpy as np

    timed = ("samples_per_s", "train_runtime_s", "step_s")
    summary = {
        k: v
        for k, v in runs[0].items()
        if k not in (*timed, "seed", "peak_rss_mb", "train_peak_rss_mb", "train_loss", "test_scores")
    }
    for key in timed:
        values = [r[key] for r in runs if r.get(key) is not None]
        summary[key] = round(statistics.median(values), 3) if values else None
    summary["train_loss"] = round(statistics.fmean(r["train_loss"] for r in runs), 4)
    summary["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    summary["train_peak_rss_mb"] = max(r["train_peak_rss_mb"] for r in runs)
    if "test_scores" in runs[0]:
        accuracies = []
        for run in runs:
            n = len(run["test_scores"]["chosen"])
            accuracies.append(accuracy_functions(run["test_scores"])(np.arange(n)))
        summary["preference_accuracy"] = round(statistics.fmean(accuracies), 4)
    summary["runs"] = [{k: v for k, v in r.items() if k != "test_scores"} for r in runs]
    return summary


def paired_accuracy(mine: list[dict], theirs: list[dict], untuned: dict) -> dict[str, Any]:
    """tunery - TRL preference accuracy on the test pairs: per seed, with the paired bootstrap 95% interval
    (resampling test pairs; several seeds: the mean of their per-seed intervals' bounds is not a CI, so
    each seed's interval is reported)."""
    import numpy as np

    from tunery.evaluation import preference

    by_seed = {r["seed"]: r for r in theirs}
    base = accuracy_functions(untuned["test_scores"])
    per_seed = []
    for run in mine:
        other = by_seed[run["seed"]]
        n = len(run["test_scores"]["chosen"])
        a, b = accuracy_functions(run["test_scores"]), accuracy_functions(other["test_scores"])
        delta = preference.bootstrap_delta(a, b, n, "preference_accuracy")
        over_base = preference.bootstrap_delta(a, base, n, "preference_accuracy")
        moved = {
            name: accuracy_functions(r["test_scores"], untuned["test_scores"])
            for name, r in (("tunery", run), ("trl", other))
        }
        every = np.arange(n)
        reward = {name: round(fn(every), 4) for name, fn in moved.items()}
        reward["tunery_minus_trl"] = preference.bootstrap_delta(
            moved["tunery"], moved["trl"], n, "reward_accuracy"
        )
        per_seed.append(
            {
                "seed": run["seed"],
                "n": n,
                "tunery_minus_trl": delta,
                "tunery_minus_untuned": over_base,
                "reward_accuracy": reward,
            }
        )
    return {"per_seed": per_seed}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    workers.common_arguments(parser, DEFAULT_DATA_DIR, DEFAULT_OUT, MODEL, "the chat model every side tunes")
    parser.add_argument("--max-length", type=int, default=512, help="token budget of prompt + answer")
    parser.add_argument("--steps", type=int, default=16, help="optimiser steps of every trainer")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="seeds seed .. seed + repeats - 1")
    parser.add_argument(
        "--tunery-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="tunery's training.precision (bf16: autocast, on a CPU with native bfloat16 or a GPU)",
    )
    parser.add_argument(
        "--tunery-gradient-checkpointing",
        action="store_true",
        help="tunery's training.gradient_checkpointing (TRL's DPOConfig has it on by default)",
    )
    parser.add_argument("--quick", action="store_true", help="2 steps on pairs of at most 256 tokens")
    parser.add_argument("--verbose", action="store_true", help="show the workers' logs")
    parser.add_argument("--worker", choices=(*WORKERS, "untuned"), help=argparse.SUPPRESS)
    parser.add_argument("--splits", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and not args.worker:  # explicit --steps / --max-length still win
        given = set(argv if argv is not None else sys.argv[1:])
        for flag, (name, value) in {"--steps": ("steps", 2), "--max-length": ("max_length", 256)}.items():
            if flag not in given:
                setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return None
    load = os.getloadavg()
    machine = hostinfo.machine_info(("torch", "transformers", "peft", "trl", "datasets", "accelerate"))
    workdir = Path(tempfile.mkdtemp(prefix="tunery-preference-memory-"))
    try:
        splits, data = prepare_splits(args, workdir / "data")
        print(
            f"pairs: {data['pairs']} (of {data['rows_in']} rows; {data['kept']} fit {args.max_length} tokens)"
        )
        untuned = workers.run_worker(
            worker_command(args, "untuned", splits, workdir / "untuned", args.seed),
            RESULT_PREFIX,
            args.verbose,
        )
        runs = workers.run_alternately(
            WORKERS,
            args.repeats,
            lambda kind, i: worker_command(args, kind, splits, workdir / f"{kind}-{i}", args.seed + i),
            RESULT_PREFIX,
            args.verbose,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    configs = {name: summarise(found) for name, found in runs.items()}
    import numpy as np

    n_test = len(untuned["test_scores"]["chosen"])
    untuned_accuracy = accuracy_functions(untuned["test_scores"])(np.arange(n_test))
    tunery, trl, sft = configs["tunery"], configs["trl"], configs["sft"]
    rss_ratio = tunery["train_peak_rss_mb"] / trl["train_peak_rss_mb"]
    speed_ratio = tunery["samples_per_s"] / trl["samples_per_s"]
    paired = paired_accuracy(runs["tunery"], runs["trl"], untuned)
    same_accuracy = all(s["tunery_minus_trl"]["ci_high"] >= 0 for s in paired["per_seed"])
    machine["load_avg_1_5_15_at_start"] = [round(x, 2) for x in load]
    machine["load_avg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "benchmark": "preference_memory",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {
            "model": args.model,
            "data": data,
            "max_length": args.max_length,
            "beta": BETA,
            "tunery": {
                "precision": args.tunery_precision,
                "gradient_checkpointing": args.tunery_gradient_checkpointing,
            },
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seeds": [args.seed + i for i in range(args.repeats)],
            "quick": args.quick,
        },
        "configurations": configs,
        "untuned": {"preference_accuracy": round(untuned_accuracy, 4), "n": n_test},
        "comparison": {
            "peak_rss_ratio": round(rss_ratio, 3),
            "worker_peak_rss_ratio": round(tunery["peak_rss_mb"] / trl["peak_rss_mb"], 3),
            "samples_per_s_ratio": round(speed_ratio, 3),
            "preference_accuracy": paired,
            "dpo_lora_to_sft_lora_peak_rss": round(tunery["train_peak_rss_mb"] / sft["train_peak_rss_mb"], 3),
        },
        "targets": {
            "peak_rss_ratio": TARGET_RSS_RATIO,
            "samples_per_s_ratio": TARGET_SPEED_RATIO,
            "met": rss_ratio <= TARGET_RSS_RATIO and speed_ratio >= TARGET_SPEED_RATIO and same_accuracy,
        },
        "notes": [
            "train_peak_rss_mb = the worker process's ru_maxrss when training ends (model loading and every "
            "step included: TRL's explicit reference copy is loaded by its example script; tunery's export "
            "and the scoring of the test pairs come after it): the ratios use it. peak_rss_mb = the "
            "worker's ru_maxrss at its end, scoring included (worker_peak_rss_ratio).",
            "samples_per_s = pairs trained on (steps x batch size) over the seconds inside optimiser steps.",
            "preference_accuracy = share of test pairs whose chosen answer has the higher per-token "
            "log-probability, one scoring function for every model; 'same within noise' = the paired "
            "bootstrap 95% interval of tunery - TRL reaches 0 or lies above it, for every seed.",
            "reward_accuracy (per seed, not part of the target) = share of test pairs whose chosen - "
            "rejected log-probability margin grew from the untuned model's: whether training moved each "
            "model toward the chosen answers even where it did not yet flip a pair's per-token verdict.",
            "TRL runs with DPOConfig's defaults (on this CPU: bf16 autocast, gradient checkpointing, "
            "learning rate 1e-6) and full fine-tuning; tunery with its own defaults and LoRA. Shared: model, "
            "pairs, max_length, beta, steps, batch size, seed.",
            "sft = tunery's SFT with the same LoRA on the train pairs' prompts and chosen answers.",
        ],
    }
    hostinfo.write_result(args.out, doc)
    print_table(configs, doc)
    return doc


def print_table(configs: dict[str, dict[str, Any]], doc: dict[str, Any]) -> None:
    print(f"{'':8} {'samples/s':>10} {'step s':>8} {'pref acc':>9} {'train RSS MB':>13} {'peak RSS MB':>12}")
    for name, c in configs.items():
        accuracy = c.get("preference_accuracy")
        print(
            f"{name:8} {c['samples_per_s']:>10.3f} {c['step_s']:>8.1f} "
            f"{accuracy if accuracy is not None else float('nan'):>9.3f} {c['train_peak_rss_mb']:>13.0f} "
            f"{c['peak_rss_mb']:>12.0f}"
        )
    comparison, target = doc["comparison"], doc["targets"]
    print(
        f"untuned preference accuracy: {doc['untuned']['preference_accuracy']:.3f} (n={doc['untuned']['n']})"
    )
    for seed in comparison["preference_accuracy"]["per_seed"]:
        reward = seed["reward_accuracy"]
        print(
            f"seed {seed['seed']}: reward accuracy (margin grew from the untuned model's) tunery "
            f"{reward['tunery']:.3f}, TRL {reward['trl']:.3f}"
        )
    print(
        f"tunery / TRL: peak RSS {comparison['peak_rss_ratio']:.2f}x (target <= {TARGET_RSS_RATIO}x), "
        f"samples/s {comparison['samples_per_s_ratio']:.2f}x (target >= {TARGET_SPEED_RATIO}x); "
        f"DPO-LoRA / SFT-LoRA peak RSS {comparison['dpo_lora_to_sft_lora_peak_rss']:.2f}x: "
        + ("target met" if target["met"] else "target NOT met")
    )


if __name__ == "__main__":
    main()
