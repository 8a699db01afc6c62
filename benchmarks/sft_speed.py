"""SFT speed: tunery's conversation fine-tuning against TRL's ``SFTTrainer`` with its defaults.

The peer an LLM team would pick: TRL's ``SFTTrainer`` (the version pinned in requirements/constraints.txt),
given a conversational ``messages`` dataset and left at its defaults (no packing, padding to the longest
example of each batch, loss on every token, and on this machine bf16 autocast and gradient checkpointing,
which SFTConfig turns on by itself; ``use_cpu`` is set where there is no GPU, as TRL asks). tunery:
``tunery.training.loop.train`` on a run folder whose splits hold the same conversations in tunery's
canonical form, with packing on (``sft.packing``: several conversations per sequence, attention never
crossing them) and loss on the assistant turns.

Shared by both, nothing else: the packaged SmolLM2-135M-Instruct, LoRA (r, alpha, dropout, target modules),
the data (real LLaMA-Factory conversations from ``../shared/data/llama_factory/kto_en_demo.json``, only
those that fit ``--max-length`` tokens in the model's chat template, so neither side truncates), the
number of optimiser steps, batch size, learning rate and seed. Each configuration trains in a fresh worker
process of this script (``--worker tunery|trl``), one after the other (alternately over ``--repeats``;
repeat ``i`` uses seed ``--seed + i`` for both), so that each peak RSS is that trainer's alone.

Measured per run:

* ``tokens``: the real (non-padding) tokens the model was trained on, counted by a forward pre-hook on the
  model during training steps (attention-mask sum; for packed batches, positions that are not padding);
* ``tokens_per_s``: ``tokens`` over the trainer's ``train_runtime`` (what ``trainer.train()`` took);
* ``eval_loss``: mean cross-entropy per assistant token on the same held-out conversations, computed for
  both trained models by the same function (``tunery.evaluation.generation.perplexity``); TRL's own loss
  covers every token by default, so its training loss is reported as is but not compared;
* ``peak_rss_mb``: the worker's peak resident set size.

Target (issue "Conversations"): tunery >= 1.5x TRL's tokens/s at equal or lower eval loss.

Usage::

    python benchmarks/sft_speed.py                 # 30 steps, batch 4, 120 conversations, 1 repeat
    python benchmarks/sft_speed.py --repeats 3     # 3 seeds
    python benchmarks/sft_speed.py --quick         # 3 steps, 96-token conversations (smoke test)

Results go to ``benchmarks/results/sft_speed.json`` (``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import math
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
DEFAULT_OUT = REPO / "benchmarks" / "results" / "sft_speed.json"
MODEL = "smollm2"
LORA_R, LORA_ALPHA, LORA_TARGETS = 8, 16, ("q_proj", "v_proj")
TARGET_RATIO = 1.5
RESULT_PREFIX = "SFT_SPEED_RESULT "
WORKERS = ("tunery", "trl")
DATA_FILE = ("llama_factory", "kto_en_demo.json")
TEST_CONVERSATIONS = 24


# --------------------------------------------------------------------------------------------------------
# Data: the same conversations for both sides
# --------------------------------------------------------------------------------------------------------


def load_conversations(
    data_dir: Path, max_length: int, train_rows: int, seed: int, model: str = MODEL
) -> dict[str, list]:
    """LLaMA-Factory's KTO demo conversations (OpenAI ``messages``) that fit ``max_length`` tokens in the
    model's chat template, shuffled with ``seed``: ``train_rows`` to train on and a fixed held-out set
    (the same for every seed) to score."""
    import random

    from transformers import AutoTokenizer

    from tunery.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    records = json.loads((data_dir.joinpath(*DATA_FILE)).read_text(encoding="utf-8"))
    fitting = []
    for record in records:
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        length = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        if messages[-1]["role"] == "assistant" and length <= max_length:
            fitting.append(messages)
    held_out, pool = fitting[:TEST_CONVERSATIONS], fitting[TEST_CONVERSATIONS:]
    random.Random(seed).shuffle(pool)
    if len(pool) < train_rows:
        raise SystemExit(f"only {len(pool)} conversations fit {max_length} tokens; ask fewer --train-rows")
    return {"train": pool[:train_rows], "test": held_out}


def canonical_frame(conversations: list[list[dict]]):
    """Conversations as tunery's clean stage writes them (columns text, prompt, conversation, label)."""
    import pandas as pd

    from tunery.data import conversations as conv

    rows = []
    for messages in conversations:
        record = {"messages": messages, "tools": []}
        rows.append(
            {
                "text": conv.key(record),
                "prompt": conv.first_user_turn(record),
                "conversation": json.dumps(record, ensure_ascii=False),
                "label": "",
            }
        )
    return pd.DataFrame(rows)


def tunery_recipe(args: argparse.Namespace, workdir: Path) -> Any:
    """tunery's defaults except the settings shared with TRL."""
    from tunery.config import Recipe

    return Recipe.model_validate(
        {
            "name": "sft-speed",
            "task": "sft",
            "data": {"source": "unused.jsonl", "conversation": {"format": "openai"}},
            "model": {"base": args.model, "max_length": args.max_length},
            "method": {
                "name": "lora",
                "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "target_modules": list(LORA_TARGETS)},
            },
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "eval_batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "seed": args.seed,
            },
            "sft": {"packing": True},
            "mlflow": {"registered_model": "sft-speed"},
            "workdir": str(workdir),
        }
    )


# --------------------------------------------------------------------------------------------------------
# Worker side: one configuration per process
# --------------------------------------------------------------------------------------------------------


def token_counter(pad_id: int) -> Any:
    """A Trainer callback counting the real tokens of every training forward pass (``.tokens``)."""
    from transformers import TrainerCallback

    class TokenCounter(TrainerCallback):
        def __init__(self) -> None:
            self.tokens = 0
            self._handle = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

        def on_train_end(self, args, state, control, **kwargs):
            if self._handle is not None:
                self._handle.remove()

        def _count(self, module, args, kwargs):
            if not module.training:
                return
            ids = kwargs.get("input_ids")
            mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
            if mask is not None:
                self.tokens += int(mask.sum())
            elif positions is not None:  # packed: padding sits at position 0 with the pad id
                self.tokens += int(ids.numel() - ((positions == 0) & (ids == pad_id)).sum())
            else:
                self.tokens += int(ids.numel())

    return TokenCounter()


def model_path(model: str = MODEL) -> str:
    """The model as a local folder (the packaged SmolLM2 is converted from its GGUF once, then cached)."""
    from tunery.models import resolve_model

    return resolve_model(model)


def _scored(model, tokenizer, test, recipe) -> float:
    """Mean cross-entropy per assistant token on the held-out conversations (the same for both sides)."""
    from tunery.evaluation.generation import perplexity

    model.eval()
    return math.log(perplexity(model, tokenizer, test, recipe))


def run_tunery(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    import tunery.training.loop
    from tunery.layout import RunLayout
    from tunery.training import export

    data = load_conversations(args.data_dir, args.max_length, args.train_rows, args.seed, args.model)
    recipe = tunery_recipe(args, Path(args.workdir))
    layout = RunLayout.create(args.workdir, "bench-sft-tunery")
    test = canonical_frame(data["test"])
    frames = {"train": canonical_frame(data["train"]), "validation": test.head(4), "test": test}
    for name, frame in frames.items():
        layout.split(name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(layout.split(name), index=False)
    tokenizer = AutoTokenizer.from_pretrained(model_path(args.model))
    counter, clock = token_counter(tokenizer.pad_token_id), step_clock()
    tunery.training.loop.train(recipe, layout, callbacks=[counter, clock])
    metrics = json.loads((layout.train_dir / "metrics.json").read_text(encoding="utf-8"))
    model = export.load_exported(layout.model_dir, "sft")
    eval_loss = _scored(model, tokenizer, test, recipe)
    shutil.rmtree(layout.root, ignore_errors=True)
    return _figures(
        counter, clock, metrics["train_runtime_s"], metrics["global_steps"], metrics["train_loss"], eval_loss
    ) | {"packing": True, "loss_on": "assistant turns", "precision": "fp32"}


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunery.config import LoraConfig as TuneryLora

    data = load_conversations(args.data_dir, args.max_length, args.train_rows, args.seed, args.model)
    recipe = tunery_recipe(args, Path(args.workdir))  # for the shared scoring function only
    path = model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    config = SFTConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),  # TRL's default bf16 refuses a CPU-only machine without it
    )
    lora = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=TuneryLora().dropout,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    counter, clock = token_counter(tokenizer.pad_token_id), step_clock()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"messages": m} for m in data["train"]]),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[counter, clock],
    )
    result = trainer.train()
    with torch.autocast("cpu", enabled=False):
        eval_loss = _scored(trainer.model.float(), tokenizer, canonical_frame(data["test"]), recipe)
    shutil.rmtree(Path(args.workdir) / "trl", ignore_errors=True)
    return _figures(
        counter, clock, result.metrics["train_runtime"], result.global_step, result.training_loss, eval_loss
    ) | {
        "packing": config.packing,
        "loss_on": "assistant turns" if config.assistant_only_loss else "every token",
        "precision": "bf16 autocast" if config.bf16 else "fp32",
        "gradient_checkpointing": bool(config.gradient_checkpointing),
    }


def _figures(counter, clock, runtime: float, steps: int, train_loss: float, eval_loss: float) -> dict:
    return {
        "steps": int(steps),
        "tokens": counter.tokens,
        "train_runtime_s": round(runtime, 3),
        "tokens_per_s": round(counter.tokens / runtime, 2),
        "step_s": round(clock.seconds, 3),
        "tokens_per_step_s": round(counter.tokens / clock.seconds, 2) if clock.seconds else None,
        "train_loss": round(float(train_loss), 4),
        "eval_loss": round(eval_loss, 4),
    }


def worker_main(args: argparse.Namespace) -> None:
    # imported before any clock starts, so that neither side is charged for imports
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import tunery.training.loop  # noqa: F401

    result = run_tunery(args) if args.worker == "tunery" else run_trl(args)
    result |= {
        "seed": args.seed,
        "peak_rss_mb": workers.peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------------
# Parent: run the workers, summarise, write the JSON
# --------------------------------------------------------------------------------------------------------


def worker_command(args: argparse.Namespace, kind: str, workdir: Path, seed: int) -> list[str]:
    settings = {
        "data_dir": args.data_dir,
        "model": args.model,
        "max_length": args.max_length,
        "train_rows": args.train_rows,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": seed,
        "workdir": workdir,
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for key, value in settings.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Timings: medians over the repeats; losses: means over the seeds; peak RSS: the largest."""
    timed = ("tokens_per_s", "train_runtime_s", "step_s", "tokens_per_step_s", "tokens")
    averaged = ("eval_loss", "train_loss")
    summary = {k: v for k, v in runs[0].items() if k not in (*timed, *averaged, "seed", "peak_rss_mb")}
    for key in timed:
        values = [r[key] for r in runs if r.get(key) is not None]
        summary[key] = round(statistics.median(values), 3) if values else None
    for key in averaged:
        summary[key] = round(statistics.fmean(r[key] for r in runs), 4)
    summary["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    summary["runs"] = runs
    return summary


def paired_eval_loss(mine: list[dict], theirs: list[dict]) -> dict[str, Any]:
    """Eval-loss differences paired by seed (tunery - TRL; below zero: tunery lower), with Student's t 95%
    interval of the mean when there are at least two seeds."""
    by_seed = {r["seed"]: r["eval_loss"] for r in theirs}
    deltas = [r["eval_loss"] - by_seed[r["seed"]] for r in mine if r["seed"] in by_seed]
    mean = statistics.fmean(deltas)
    result: dict[str, Any] = {"n": len(deltas), "mean": round(mean, 4), "per_seed": deltas, "ci95": None}
    if len(deltas) >= 2:
        from scipy.stats import t

        half = t.ppf(0.975, len(deltas) - 1) * statistics.stdev(deltas) / math.sqrt(len(deltas))
        result["ci95"] = [round(mean - half, 4), round(mean + half, 4)]
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    workers.common_arguments(parser, DEFAULT_DATA_DIR, DEFAULT_OUT, MODEL, "the chat model both sides tune")
    parser.add_argument("--max-length", type=int, default=512, help="token budget of a conversation")
    parser.add_argument("--train-rows", type=int, default=120, help="training conversations")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps of both trainers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2.0e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="seeds seed .. seed + repeats - 1")
    parser.add_argument("--quick", action="store_true", help="3 steps on 40 short conversations")
    parser.add_argument("--verbose", action="store_true", help="show the workers' logs")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and not args.worker:  # explicit --steps / --train-rows / --max-length still win
        given = set(argv if argv is not None else sys.argv[1:])
        quick = {
            "--steps": ("steps", 3),
            "--train-rows": ("train_rows", 40),
            "--max-length": ("max_length", 256),
        }
        for flag, (name, value) in quick.items():
            if flag not in given:
                setattr(args, name, value)
        args.batch_size = 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return None
    load = os.getloadavg()
    machine = hostinfo.machine_info(("torch", "transformers", "peft", "trl", "datasets", "accelerate"))
    workdir = Path(tempfile.mkdtemp(prefix="tunery-sft-speed-"))
    try:
        runs = workers.run_alternately(
            WORKERS,
            args.repeats,
            lambda kind, i: worker_command(args, kind, workdir / f"{kind}-{i}", args.seed + i),
            RESULT_PREFIX,
            args.verbose,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    configs = {name: summarise(found) for name, found in runs.items()}
    ratio = configs["tunery"]["tokens_per_s"] / configs["trl"]["tokens_per_s"]
    paired = paired_eval_loss(runs["tunery"], runs["trl"])
    machine["load_avg_1_5_15_at_start"] = [round(x, 2) for x in load]
    machine["load_avg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "benchmark": "sft_speed",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {
            "model": args.model,
            "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "target_modules": list(LORA_TARGETS)},
            "data": "/".join(DATA_FILE),
            "max_length": args.max_length,
            "train_rows": args.train_rows,
            "test_conversations": TEST_CONVERSATIONS,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "seeds": [args.seed + i for i in range(args.repeats)],
            "quick": args.quick,
        },
        "configurations": configs,
        "comparison": {
            "tokens_per_s_ratio": round(ratio, 3),
            "eval_loss_delta": paired,
            "peak_rss_ratio": round(configs["tunery"]["peak_rss_mb"] / configs["trl"]["peak_rss_mb"], 3),
        },
        "targets": {
            "tokens_per_s_ratio": TARGET_RATIO,
            "met": ratio >= TARGET_RATIO and paired["mean"] <= 0,
        },
        "notes": [
            "tokens = real (non-padding) tokens of the training forward passes, counted by the same hook on "
            "both sides; tokens/s divides them by the trainer's train_runtime.",
            "eval_loss = log perplexity over the assistant tokens of the same held-out conversations, one "
            "function for both trained models (TRL's own loss covers every token by default).",
            "TRL runs with SFTConfig's defaults (on this CPU: bf16 autocast and gradient checkpointing on); "
            "both sides share model, LoRA, data, steps, batch size, learning rate and seed.",
            "Same steps and batch size: with packing a tunery step holds more conversations than TRL's.",
        ],
    }
    hostinfo.write_result(args.out, doc)
    print_table(configs, doc)
    return doc


def print_table(configs: dict[str, dict[str, Any]], doc: dict[str, Any]) -> None:
    header = f"{'':8} {'tokens/s':>10} {'tokens':>8} {'runtime s':>10} {'eval loss':>10} {'peak RSS MB':>12}"
    print(header)
    for name, c in configs.items():
        print(
            f"{name:8} {c['tokens_per_s']:>10.1f} {c['tokens']:>8} {c['train_runtime_s']:>10.1f} "
            f"{c['eval_loss']:>10.4f} {c['peak_rss_mb']:>12.0f}"
        )
    comparison, target = doc["comparison"], doc["targets"]
    print(
        f"tunery / TRL tokens/s: {comparison['tokens_per_s_ratio']:.2f}x (target >= {TARGET_RATIO}x), "
        f"eval loss delta {comparison['eval_loss_delta']['mean']:+.4f}: "
        + ("target met" if target["met"] else "target NOT met")
    )


if __name__ == "__main__":
    main()
