"""Fine-tuning with the HF Trainer, run inside each process of a training job (see tunery.launch).

Sequence classification (encoder) or instruction tuning (decoder, task ``sft``), with any method from
tunery.methods (full, LoRA, prompt/prefix/p-tuning, IA3, QLoRA on CUDA), optionally under DeepSpeed ZeRO.
Checkpoints are written every ``training.save_steps`` steps and marked complete once every rank has saved,
so a crashed job resumes from the last complete one. The trained model is exported on rank 0 as a plain
safetensors folder (adapters merged where possible, checked numerically against the adapter model).
"""

from __future__ import annotations

import json
import math
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


def _evaluations_left(args, state, steps_left: int) -> int:
    """Evaluations still to run in the ``steps_left`` remaining steps (by step or at each epoch's end)."""
    if not steps_left:
        return 0
    if str(args.eval_strategy).endswith("steps") and args.eval_steps:
        return steps_left // int(args.eval_steps)
    steps_per_epoch = state.max_steps / max(state.num_train_epochs, 1)
    return math.ceil(steps_left / steps_per_epoch) if steps_per_epoch else 0


# One line per validation pass in the job's output: EVALUATION_PREFIX + JSON {"evaluation": n (1-based, of
# this attempt), "epoch", "step", "metrics": {"loss": ..., "accuracy": ...}}. A search prunes trials by it.
EVALUATION_PREFIX = "tunery-evaluation "


def evaluation_line(number: int, state, metrics: dict) -> str:
    values = {
        k.removeprefix("eval_"): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not k.endswith(("_runtime", "_per_second"))
    }
    payload = {
        "evaluation": number,
        "epoch": state.epoch,
        "step": state.global_step,
        "max_steps": state.max_steps,
        "metrics": values,
    }
    return EVALUATION_PREFIX + json.dumps(payload)


def parse_evaluation_line(line: str) -> dict | None:
    """The payload of an :func:`evaluation_line`, or None for any other line (or a torn one)."""
    if not line.startswith(EVALUATION_PREFIX):
        return None
    try:
        payload = json.loads(line[len(EVALUATION_PREFIX) :])
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and isinstance(payload.get("metrics"), dict) else None


def _callbacks(recipe: Recipe, logger: MetricLogger) -> list:
    from transformers import EarlyStoppingCallback, TrainerCallback

    class Progress(TrainerCallback):
        """Rank 0: a line when training starts, one per log event (and after steps 1 and 3, so that a slow
        start is visible), and every Trainer log record to the metric logger.

        The ETA is the mean time of the steps after the first one (which carries one-time costs: process
        group set-up, first batch, kernel warm-up), evaluation time excluded, times the steps left, plus
        the evaluations still to come at the duration the last one took."""

        def __init__(self):
            self._reset(0)

        def _reset(self, first_step: int) -> None:
            self._first_step = first_step
            self._start = self._step_end = time.monotonic()
            self._first_done: float | None = None  # when this process's first step ended
            self._eval_s = self._eval_total_s = 0.0
            self._evaluations = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self._reset(state.global_step)
            if state.is_world_process_zero:
                print(
                    f"tunery: training {state.max_steps - state.global_step} of {state.max_steps} steps "
                    f"(batch {args.per_device_train_batch_size} x {args.world_size} process(es) x "
                    f"{args.gradient_accumulation_steps} accumulation)",
                    flush=True,
                )

        def on_step_end(self, args, state, control, **kwargs):
            self._step_end = time.monotonic()
            done = state.global_step - self._first_step
            if done == 1:
                self._first_done = self._step_end
            if state.is_world_process_zero and done in (1, 3) and state.global_step % args.logging_steps:
                print(f"step {state.global_step}/{state.max_steps} | {self._timing(args, state)}", flush=True)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            # evaluation runs right after the step that triggered it
            self._eval_s = time.monotonic() - self._step_end
            self._eval_total_s += self._eval_s
            self._evaluations += 1
            if state.is_world_process_zero and metrics:  # the line a search's pruner reads (launch.py)
                print(evaluation_line(self._evaluations, state, metrics), flush=True)

        def _timing(self, args, state) -> str:
            now = time.monotonic()
            elapsed = now - self._start
            done = state.global_step - self._first_step
            if self._first_done is None or done < 2:
                return f"{elapsed:.0f}s elapsed"
            per_step = (now - self._first_done - self._eval_total_s) / (done - 1)
            left = max(state.max_steps - state.global_step, 0)
            eta = per_step * left + _evaluations_left(args, state, left) * self._eval_s
            return f"{elapsed:.0f}s elapsed, {per_step:.2f}s/step, eta {eta:.0f}s"

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            numeric = {k: v for k, v in logs.items() if isinstance(v, int | float)}
            logger.log_metrics(
                {k if k.startswith("eval_") else f"train/{k}": v for k, v in numeric.items()},
                step=state.global_step,
            )
            shown = " ".join(f"{k}={v:.4g}" for k, v in numeric.items() if k not in ("epoch", "step"))
            timing = self._timing(args, state)
            print(f"step {state.global_step}/{state.max_steps} {shown} | {timing}", flush=True)

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


def _unused_trainable(model, batch: dict) -> list[str]:
    """Trainable parameters that one forward and backward pass leaves without a gradient.

    DDP must be told ``find_unused_parameters`` exactly when there are some (an extra graph traversal
    every step otherwise, and a warning in the log). The pass restores the RNG state and clears the
    gradients, so training is unchanged by it.
    """
    import torch

    state, was_training = torch.get_rng_state(), model.training
    model.train()
    try:
        model(**batch).loss.backward()
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(state)
        model.train(was_training)


def _training_kwargs(recipe: Recipe, out_dir: Path, deepspeed_config: str | None, find_unused: bool) -> dict:
    """The ``TrainingArguments`` of the recipe (TRL's configs take the same keywords)."""
    import torch

    t = recipe.training  # gradient checkpointing is switched on by methods.load_base_model, not here
    early = t.early_stopping_patience is not None
    eval_steps = t.eval_steps or (t.save_steps if early else None)
    strategy = "steps" if eval_steps else "epoch"
    # load_best_model_at_end needs checkpoints on evaluation steps: save on the same schedule then
    save_steps = eval_steps if early else t.save_steps
    metric = t.early_stopping_metric  # the recipe allows only loss for the generative tasks
    return dict(
        output_dir=str(out_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        # sft validates on the loss alone: gathering its logits (rows x tokens x vocabulary) for no metric
        # held gigabytes (6.4 GB peak for a tiny Llama with SmolLM2's 49k vocabulary at 512 tokens)
        prediction_loss_only=recipe.task == "sft",
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
        ddp_find_unused_parameters=find_unused,  # DDP only (several processes, no DeepSpeed)
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

        conversation = recipe.data.conversation
        data, stats = build_sft_datasets(
            frames,
            tokenizer,
            recipe.model.max_length,
            recipe.sft.system_prompt,
            recipe.sft.packing,
            conversation.train_on if conversation else "all",
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
    distillation: dict | None = None,
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
        distillation: ``{"alpha", "temperature"}``: train a classifier on ``layout.teacher_outputs`` (the
            training rows with a teacher's logits) with the distillation loss (``training.distill``).

    Returns:
        The folder of the exported model (plain transformers format, tokenizer, ``tunery_model.json``).
    """
    import torch
    from transformers import AutoTokenizer, PrinterCallback, set_seed
    from transformers.trainer_utils import TrainOutput

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
    if recipe.task == "preference":
        from tunery.training import preference

        frames = {name: pd.read_parquet(layout.split(name)) for name in ("train", "validation")}
        trainer, data_stats = preference.build_trainer(
            recipe,
            frames,
            model,
            tokenizer,
            _training_kwargs(recipe, layout.checkpoints, deepspeed_config, False),
            _budget_trainer,
            [*_callbacks(recipe, logger), *callbacks],
        )
        export_sample = preference.export_sample(tokenizer, frames["validation"])
    else:
        trainer, data_stats, export_sample = _trainer(
            recipe,
            layout,
            model,
            tokenizer,
            labels,
            deepspeed_config,
            [*_callbacks(recipe, logger), *callbacks],
            distillation,
        )
    # The Trainer's PrinterCallback prints every log record a second time, as a dict: Progress prints them.
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    if resume_from and _is_main():
        print(f"tunery: resuming training from {resume_from}", flush=True)
    finished = _finished_state(resume_from) if resume_from else None
    if finished is not None and _is_main():
        print(
            f"tunery: {Path(resume_from).name} holds all {finished.global_step} steps of the budget: "
            "exporting it without further training",
            flush=True,
        )
    result = trainer.train(resume_from_checkpoint=resume_from)
    if finished is not None:  # no step was taken: the loss is the one the checkpoint's attempt logged
        losses = [e["train_loss"] for e in finished.log_history if "train_loss" in e]
        result = TrainOutput(finished.global_step, losses[-1] if losses else None, {})
    elapsed = time.perf_counter() - started
    final_eval = _final_evaluation(trainer)
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.deepspeed_plugin.zero_stage == 3
    if zero3:  # partitioned weights: every rank takes part in gathering them into one saved model
        final_dir = layout.train_dir / "final"
        trainer.save_model(str(final_dir))
    _barrier()
    if _is_main():
        trainable = methods.trainable_summary(trainer.model)  # before a merge folds the adapters away
        # Without ZeRO-3 rank 0 holds the whole trained model: export it from memory (one write); under
        # ZeRO-3 reload the gathered copy outside DeepSpeed. Unwrapped of mixed precision's autocast too:
        # the export check compares plain fp32 forwards (bf16 products differ from the merged model's).
        model = (
            _reload(recipe, final_dir, base_path, labels)
            if zero3
            else trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        )
        export = _export(recipe, layout, model, base_path, labels, tokenizer, export_sample)
        summary = {
            "train_loss": result.training_loss,
            "train_runtime_s": elapsed,
            "train_samples_per_second": result.metrics.get("train_samples_per_second"),
            "global_steps": result.global_step,
            "resumed_from": resume_from,
            "validation": {k.removeprefix("eval_"): v for k, v in final_eval.items()},
            "export": export,
            "data": data_stats,
            "trainable_parameters": trainable,
            "world_size": trainer.args.world_size,  # as accelerate sees it (data is sharded by this)
        }
        (layout.train_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    _barrier()
    return layout.model_dir


def _trainer(
    recipe: Recipe, layout: RunLayout, model, tokenizer, labels, deepspeed_config, callbacks, distillation
):
    """The Trainer of a classification or sft run, its data statistics and a batch for the export check."""
    from transformers import Trainer

    train_set, val_set, collator, metrics_fn, data_stats = _datasets(recipe, layout, tokenizer, labels)
    trainer_class = _budget_trainer(Trainer)
    args = _training_kwargs(recipe, layout.checkpoints, deepspeed_config, False)
    if distillation is not None:
        from tunery.training import distill

        if recipe.task != "classification" or not layout.teacher_outputs.is_file():
            raise ValueError(f"distillation trains a classifier from {layout.teacher_outputs}: not found")
        frame = pd.read_parquet(layout.teacher_outputs)
        label_ids = {label: i for i, label in enumerate(labels)}
        train_set = distill.teacher_dataset(frame, tokenizer, label_ids, recipe.model.max_length)
        data_stats = {**data_stats, "train_examples": len(train_set), "distillation": distillation}
        trainer_class = distill.distilling(trainer_class, distillation["alpha"], distillation["temperature"])
        args["remove_unused_columns"] = False  # the teacher's logits reach compute_loss
    find_unused = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not deepspeed_config:
        unused = _unused_trainable(model, collator([train_set[i] for i in range(min(2, len(train_set)))]))
        find_unused = bool(unused)
        if unused and _is_main():
            print(f"tunery: {len(unused)} trainable parameter(s) get no gradient: {unused[:5]}", flush=True)
    from transformers import TrainingArguments

    trainer = trainer_class(
        model=model,
        args=TrainingArguments(**{**args, "ddp_find_unused_parameters": find_unused}),
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=metrics_fn,
        callbacks=callbacks,
    )
    rows = [{k: v for k, v in val_set[i].items() if k != "labels"} for i in range(min(16, len(val_set)))]
    sample = dict(collator(rows))
    sample.pop("labels", None)
    return trainer, data_stats, sample


def _reload(recipe: Recipe, final_dir: Path, base_path: str, labels: list[str] | None):
    """Load what the Trainer saved, outside DeepSpeed: a full model, or the base plus the adapter."""
    from tunery.training import methods

    if recipe.method.name == "full":
        return methods.load_base_model(str(final_dir), recipe.task, labels, recipe)
    from peft import PeftModel

    base = methods.load_base_model(base_path, recipe.task, labels, recipe)
    return PeftModel.from_pretrained(base, str(final_dir))


def _budget_trainer(trainer_class):
    """``trainer_class`` taking no step past its budget.

    Resumed from a checkpoint that already holds every step (an attempt trained to the end and failed
    afterwards, in the export say), transformers' loop skips the trained batches of the last epoch and then
    takes one more step (step 11 of 10) before it checks the budget. Here that epoch does not start: the
    restored weights (and, under DeepSpeed, the restored engine) are what training ends with."""

    class BudgetTrainer(trainer_class):
        def _run_epoch(self, *args, **kwargs):
            if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
                self.control.should_training_stop = True
                return None
            return super()._run_epoch(*args, **kwargs)

    if not callable(getattr(trainer_class, "_run_epoch", None)):  # transformers moved its epoch loop
        raise RuntimeError("transformers.Trainer has no _run_epoch: check requirements/constraints.txt")
    return BudgetTrainer


def _finished_state(checkpoint: str):
    """The Trainer state saved in ``checkpoint`` when it already reached its step budget, else None."""
    from transformers import TrainerState

    path = Path(checkpoint) / "trainer_state.json"
    if not path.is_file():
        return None
    state = TrainerState.load_from_json(str(path))
    return state if state.max_steps and state.global_step >= state.max_steps else None


def _final_evaluation(trainer) -> dict:
    """The validation metrics of the model training ends with, evaluating again only when needed.

    With ``load_best_model_at_end`` that is the best checkpoint's evaluation; otherwise the evaluation
    logged at the last step, when the schedule ran one there (the end of the last epoch, usually)."""
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best:
        step = int(Path(best).name.rsplit("-", 1)[-1])
        found = [e for e in evals if e.get("step") == step]
    else:
        found = [e for e in evals if e.get("step") == trainer.state.global_step]
    if found:
        return {k: v for k, v in found[-1].items() if k.startswith("eval_")}
    return trainer.evaluate()


def _export(recipe, layout, model, base_path, labels, tokenizer, sample: dict) -> dict:
    """Rank 0: merge adapters where possible (verified on ``sample``, a batch of validation inputs); save the
    tokenizer and the model-folder metadata."""
    from tunery.training.export import export_model

    model = model.eval()
    export = export_model(model, layout.model_dir, sample)
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
        **({"preference": recipe.preference.model_dump(mode="json")} if recipe.task == "preference" else {}),
        "recipe_digest": recipe.digest(),
    }
    (layout.model_dir / MODEL_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return export
