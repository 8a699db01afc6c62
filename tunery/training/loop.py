"""Fine-tuning with the HF Trainer, run inside each process of a training job (see tunery.launch).

Sequence classification (encoder) or instruction tuning (decoder, task ``sft``), with any method from
tunery.methods (full, LoRA, prompt/prefix/p-tuning, IA3, QLoRA on CUDA), optionally under DeepSpeed ZeRO.
Checkpoints are written every ``training.save_steps`` steps and marked complete once every rank has saved,
so a crashed job resumes from the last complete one. The trained model is exported on rank 0 as a plain
safetensors folder (adapters merged where possible, checked numerically against the adapter model).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tunery.config import Recipe
from tunery.layout import COMPLETE_MARKER, MODEL_META, RunLayout
from tunery.models import resolve_model
from tunery.tracking import MetricLogger, NullLogger


def label_list(recipe: Recipe, train: pd.DataFrame) -> list[str]:
    """The class labels in a fixed order: the recipe's explicit set, else sorted training labels."""
    return list(recipe.data.labels) if recipe.data.labels else sorted(train["label"].unique().tolist())


def _tokenized(frame: pd.DataFrame, tokenizer, label_ids: dict[str, int], max_length: int):
    from datasets import Dataset

    labels = frame["label"].map(label_ids).tolist()
    data = Dataset.from_dict({"text": frame["text"].tolist(), "labels": labels})
    return data.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _callbacks(recipe: Recipe, logger: MetricLogger) -> list:
    from transformers import EarlyStoppingCallback, TrainerCallback

    class Progress(TrainerCallback):
        """Rank 0: one progress line per log event, and every Trainer log record to the metric logger."""

        def on_train_begin(self, args, state, control, **kwargs):
            self._start = time.monotonic()
            self._first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            numeric = {k: v for k, v in logs.items() if isinstance(v, int | float)}
            logger.log_metrics(
                {k if k.startswith("eval_") else f"train/{k}": v for k, v in numeric.items()},
                step=state.global_step,
            )
            done = state.global_step - self._first_step
            elapsed = time.monotonic() - self._start
            eta = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
            shown = " ".join(f"{k}={v:.4g}" for k, v in numeric.items() if k not in ("epoch", "step"))
            step = f"step {state.global_step}/{state.max_steps}"
            print(f"{step} {shown} | {elapsed:.0f}s elapsed, eta {eta:.0f}s", flush=True)

    class MarkComplete(TrainerCallback):
        """Mark a checkpoint complete once every rank has written its part (crash-safe resume)."""

        def on_save(self, args, state, control, **kwargs):
            _barrier()
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                (folder / COMPLETE_MARKER).write_text(str(state.global_step))
            _barrier()

    callbacks = [Progress(), MarkComplete()]
    if recipe.training.early_stopping_patience:
        callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=recipe.training.early_stopping_patience)
        )
    return callbacks


def _training_args(recipe: Recipe, out_dir: Path, deepspeed_config: str | None):
    import torch
    from transformers import TrainingArguments

    t = recipe.training  # gradient checkpointing is switched on by methods.load_base_model, not here
    early = t.early_stopping_patience is not None
    eval_steps = t.eval_steps or (t.save_steps if early else None)
    strategy = "steps" if eval_steps else "epoch"
    # load_best_model_at_end needs checkpoints on evaluation steps: save on the same schedule then
    save_steps = eval_steps if early else t.save_steps
    metric = "loss" if recipe.task == "sft" else t.early_stopping_metric
    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        max_grad_norm=t.max_grad_norm,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        eval_strategy=strategy,
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model=f"eval_{metric}" if early else None,
        greater_is_better=metric != "loss" if early else None,
        report_to=[],
        train_sampling_strategy="group_by_length"
        if t.group_by_length and not recipe.sft.packing
        else "random",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        # transformers 5.23 multiplies the logged loss by the world size otherwise (see STACK_NOTES)
        average_tokens_across_devices=False,
        disable_tqdm=True,  # progress is one line per log event (readable in Prefect and CI logs)
        deepspeed=deepspeed_config,
        # Without a GPU, accelerate only sees the launcher's process group when told it runs on CPU
        # (otherwise it falls back to a world of one and every rank trains on all the data).
        use_cpu=not torch.cuda.is_available(),
    )


def _accuracy(eval_pred) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import f1_score

    logits, labels = eval_pred
    if isinstance(logits, tuple):
        logits = logits[0]
    preds = np.argmax(logits, axis=-1)
    macro = float(f1_score(labels, preds, average="macro"))
    return {"accuracy": float((preds == labels).mean()), "macro_f1": macro}


def _datasets(recipe: Recipe, layout: RunLayout, tokenizer, labels: list[str] | None):
    """Tokenised train and validation sets, the collator and the metric function for the task."""
    frames = {name: pd.read_parquet(layout.split(name)) for name in ("train", "validation")}
    if recipe.task == "sft":
        from tunery.training.sft import SftCollator, build_sft_datasets

        data, stats = build_sft_datasets(
            frames, tokenizer, recipe.model.max_length, recipe.sft.system_prompt, recipe.sft.packing
        )
        return data["train"], data["validation"], SftCollator(tokenizer.pad_token_id), None, stats
    from transformers import DataCollatorWithPadding

    label_ids = {label: i for i, label in enumerate(labels)}
    train = _tokenized(frames["train"], tokenizer, label_ids, recipe.model.max_length)
    val = _tokenized(frames["validation"], tokenizer, label_ids, recipe.model.max_length)
    # dynamic padding: each batch is padded to its own longest example
    return train, val, DataCollatorWithPadding(tokenizer), _accuracy, {"train_examples": len(train)}


def train(
    recipe: Recipe,
    layout: RunLayout,
    logger: MetricLogger | None = None,
    resume_from: str | None = None,
    deepspeed_config: str | None = None,
    callbacks: Sequence = (),
) -> Path:
    """Fine-tune on the run's train split (validating on its validation split) and export the model.

    Args:
        recipe: the validated recipe.
        layout: the run folder; reads its splits, writes checkpoints, ``model/`` and ``train/metrics.json``.
        logger: where loss, learning rate and validation metrics go (rank 0; default: nowhere).
        resume_from: a complete checkpoint folder to continue from.
        deepspeed_config: path of a rendered DeepSpeed config, or None.
        callbacks: extra ``transformers.TrainerCallback`` instances, run after tunery's own (a benchmark's
            step clock, say).

    Returns:
        The folder of the exported model (plain transformers format, tokenizer, ``tunery_model.json``).
    """
    import torch
    from transformers import AutoTokenizer, Trainer, set_seed

    from tunery.training import methods

    logger = logger or NullLogger()
    if recipe.training.num_threads:
        torch.set_num_threads(recipe.training.num_threads)
    set_seed(recipe.training.seed)
    # A warm start (model.init_from, e.g. the champion's exported folder) replaces the weights, not the
    # recipe's base: the tokenizer is the same, and PEFT adapters are exported on top of these weights.
    base_path = resolve_model(recipe.model.init_from or recipe.model.base)
    if recipe.model.init_from and _is_main():
        print(f"tunery: warm start from {base_path}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    labels = (
        label_list(recipe, pd.read_parquet(layout.split("train")))
        if recipe.task == "classification"
        else None
    )
    model = methods.apply_method(methods.load_base_model(base_path, recipe.task, labels, recipe), recipe)
    train_set, val_set, collator, metrics_fn, data_stats = _datasets(recipe, layout, tokenizer, labels)
    trainer = Trainer(
        model=model,
        args=_training_args(recipe, layout.checkpoints, deepspeed_config),
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=metrics_fn,
        callbacks=[*_callbacks(recipe, logger), *callbacks],
    )
    started = time.perf_counter()
    if resume_from and _is_main():
        print(f"tunery: resuming training from {resume_from}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume_from)
    elapsed = time.perf_counter() - started
    final_eval = trainer.evaluate()
    final_dir = layout.train_dir / "final"
    trainer.save_model(str(final_dir))  # every rank: ZeRO-3 gathers the weights here
    _barrier()
    if _is_main():
        export = _export(recipe, layout, final_dir, base_path, labels, tokenizer, val_set, collator)
        summary = {
            "train_loss": result.training_loss,
            "train_runtime_s": elapsed,
            "train_samples_per_second": result.metrics.get("train_samples_per_second"),
            "global_steps": result.global_step,
            "resumed_from": resume_from,
            "validation": {k.removeprefix("eval_"): v for k, v in final_eval.items()},
            "export": export,
            "data": data_stats,
            "trainable_parameters": methods.trainable_summary(trainer.model),
            "world_size": trainer.args.world_size,  # as accelerate sees it (data is sharded by this)
        }
        (layout.train_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    _barrier()
    return layout.model_dir


def _reload(recipe: Recipe, final_dir: Path, base_path: str, labels: list[str] | None):
    """Load what the Trainer saved, outside DeepSpeed: a full model, or the base plus the adapter."""
    from tunery.training import methods

    if recipe.method.name == "full":
        return methods.load_base_model(str(final_dir), recipe.task, labels, recipe)
    from peft import PeftModel

    base = methods.load_base_model(base_path, recipe.task, labels, recipe)
    return PeftModel.from_pretrained(base, str(final_dir))


def _export(recipe, layout, final_dir, base_path, labels, tokenizer, val_set, collator) -> dict:
    """Rank 0: merge adapters where possible (verified on validation inputs); save tokenizer and meta."""
    from tunery.training.export import export_model

    model = _reload(recipe, final_dir, base_path, labels).eval()
    sample = collator(
        [{k: v for k, v in val_set[i].items() if k != "labels"} for i in range(min(16, len(val_set)))]
    )
    sample.pop("labels", None)
    export = export_model(model, layout.model_dir, dict(sample))
    tokenizer.save_pretrained(layout.model_dir)
    meta = {
        "task": recipe.task,
        "labels": labels,
        "max_length": recipe.model.max_length,
        "base_model": recipe.model.base,
        "base_model_path": base_path,
        "method": recipe.method.name,
        "export_format": export["format"],
        "cleaning": recipe.cleaning.model_dump(mode="json"),
        "sft": recipe.sft.model_dump(mode="json"),
        "recipe_digest": recipe.digest(),
    }
    (layout.model_dir / MODEL_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return export
