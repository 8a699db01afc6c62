"""Preference tuning inside a training job: TRL's DPO (and its IPO loss), ORPO and KTO trainers on the run's
preference rows, with tunery's Trainer loop around them (checkpoints, resume, progress, export).

The reference model. With a peft method (LoRA, IA3, QLoRA) TRL computes the reference log-probabilities
with the adapters switched off: the reference is the model training started from and no second copy is
loaded. With ``method: full`` DPO, IPO and KTO load an explicit, frozen reference copy of the starting
weights (the recipe's ``model.init_from`` or ``model.base``); ORPO needs no reference at all.

The data. Each split row holds a canonical pair (or unpaired KTO row) of :mod:`tunery.data.preferences`;
it becomes TRL's conversational example (``prompt`` messages, ``chosen``/``rejected`` or ``completion`` +
``label``), which TRL renders with the model's chat template exactly as it is prompted at inference. A
template without tool support gets tools and tool calls as text, as in SFT (``tunery.data.templates``).
``kto`` also takes pairs: TRL turns each into a desirable and an undesirable answer.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from tunery.config import Recipe
from tunery.data import preferences as prefs
from tunery.data.templates import TEXT, as_text_tools, tool_style

# objective -> the TRL loss it runs (dpo and ipo are DPOTrainer's loss types)
DPO_LOSS = {"dpo": "sigmoid", "ipo": "ipo"}

# TRL's trainers score log-probabilities with a chunked LM head (``trl.kernels.chunked_logprob``) whose
# tiles, 4096 tokens x 32768 vocabulary entries, are sized for a GPU's Triton kernel. Without Triton the tiles
# are folded in torch ops that make several fp32 copies of each tile: about 1.2 GB that a 2048-token step
# allocates and frees again in every forward and backward pass. CPU tiles: (tokens, vocabulary entries).
# Measured with SmolLM2-135M DPO-LoRA (bf16, gradient checkpointing, 4 steps of 2 pairs of up to 512 tokens,
# 2 cores): training peak RSS 3.70 -> 1.85 GB and 41.7 -> 21.8 s (tiles of 1024 x 4096: 2.07 GB, 22.6 s;
# 1024 x 8192: 2.15 GB, 29.1 s).
CPU_LOGPROB_TILE = (1024, 2048)


def rows_of(frame: pd.DataFrame) -> list[dict]:
    """The canonical rows of a split frame (its ``pair`` column)."""
    return [json.loads(raw) for raw in frame["pair"]]


def conversations_of(row: dict, style: str) -> dict[str, list[dict]]:
    """The row's prompt and each answer as the chat template is handed them: text tools where the
    template renders none (``style`` is :func:`tunery.data.templates.tool_style`), else the canonical
    messages with their tool calls."""
    tools = row.get("tools") or []
    out: dict[str, list[dict]] = {}
    for side in ("completion",) if prefs.is_unpaired(row) else ("chosen", "rejected"):
        messages = row["prompt"] + row[side]
        if style == TEXT and (tools or any(m.get("tool_calls") for m in messages)):
            messages = as_text_tools({"messages": messages, "tools": tools})["messages"]
        answer = len(row[side])
        out["prompt"], out[side] = messages[:-answer], messages[-answer:]
    return out


def _stored(message: dict) -> dict:
    """A message as an Arrow row can hold it: tool-call arguments as JSON text (their keys differ from call
    to call); :func:`template_view` turns them back into objects before the template renders them."""
    out = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": json.dumps(call["function"]["arguments"])}}
            for call in message["tool_calls"]
        ]
    for key in ("tool_call_id", "name"):
        if message.get(key):
            out[key] = message[key]
    return out


def trl_example(row: dict, style: str) -> dict[str, Any]:
    """One canonical row as TRL's conversational example (``tools`` as JSON text, which TRL parses, for a
    template that renders tools itself)."""
    example: dict[str, Any] = {
        side: [_stored(m) for m in messages] for side, messages in conversations_of(row, style).items()
    }
    example["tools"] = json.dumps(row["tools"]) if style != TEXT and row.get("tools") else None
    if prefs.is_unpaired(row):
        example["label"] = bool(row["label"])
    return example


def _restored(messages: Any) -> Any:
    """Messages read back from Arrow: keys another message had (None here) dropped, arguments decoded."""
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        if not isinstance(message, dict):
            out.append(message)
            continue
        message = {k: v for k, v in message.items() if v is not None}
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {
                    **call,
                    "function": {**call["function"], "arguments": json.loads(call["function"]["arguments"])},
                }
                for call in message["tool_calls"]
            ]
        out.append(message)
    return out


def template_view(tokenizer):
    """``tokenizer`` with an ``apply_chat_template`` that first undoes what storing messages in Arrow did
    (see :func:`_stored`): TRL renders the dataset's messages through it."""
    original = tokenizer.apply_chat_template

    def apply_chat_template(conversation, *args, **kwargs):
        return original(_restored(conversation), *args, **kwargs)

    tokenizer.apply_chat_template = apply_chat_template
    return tokenizer


def dataset(frame: pd.DataFrame, style: str):
    """A split frame as a ``datasets.Dataset`` of TRL examples."""
    from datasets import Dataset

    return Dataset.from_list([trl_example(row, style) for row in rows_of(frame)])


def trainer_class_and_config(recipe: Recipe) -> tuple[type, type, dict]:
    """The TRL trainer and config classes of the recipe's objective, and the objective's settings."""
    objective, pref = recipe.preference.objective, recipe.preference
    common = {"beta": pref.beta, "max_length": recipe.model.max_length, "disable_dropout": True}
    if objective in DPO_LOSS:
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig, {**common, "loss_type": [DPO_LOSS[objective]]}
    if objective == "kto":
        from trl import KTOConfig, KTOTrainer

        weights = {"desirable_weight": pref.desirable_weight, "undesirable_weight": pref.undesirable_weight}
        # its KL term pairs each answer with its neighbour's prompt in a fixed-order batch (the train set is
        # shuffled once, with the recipe's seed, instead)
        return KTOTrainer, KTOConfig, {**common, **weights, "train_sampling_strategy": "sequential"}
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOTrainer, ORPOConfig, common


def fit_logprob_tiles_to_cpu() -> bool:
    """Give TRL's chunked log-probability head :data:`CPU_LOGPROB_TILE` tiles when no GPU trains (a
    process-wide setting of the pinned TRL, read at every call; GPU runs keep TRL's own). Returns whether it
    was set."""
    import torch
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return False
    if not hasattr(kernel, "TOKEN_CHUNK_SIZE") or not hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):
        return False  # another TRL than the pinned one: its own tiles (tests/training/test_preference.py)
    kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = CPU_LOGPROB_TILE
    return True


def build_trainer(
    recipe: Recipe, frames: dict[str, pd.DataFrame], model, tokenizer, args: dict, wrap, callbacks
):
    """The TRL trainer of the recipe's objective on the train and validation frames.

    Args:
        args: ``transformers.TrainingArguments`` keyword arguments (tunery's, as for every task).
        wrap: applied to the trainer class (tunery's step budget, see ``loop._budget_trainer``).

    Returns:
        ``(trainer, data statistics)``.
    """
    trainer_class, config_class, settings = trainer_class_and_config(recipe)
    cpu_tiles = fit_logprob_tiles_to_cpu()
    style = tool_style(tokenizer)
    if style != TEXT:
        tokenizer = template_view(tokenizer)
    train, validation = (dataset(frames[name], style) for name in ("train", "validation"))
    if recipe.preference.objective == "kto":
        train = train.shuffle(seed=recipe.training.seed)
    # TRL's defaults differ from the Trainer's (bf16 and gradient checkpointing on): tunery's recipe decides
    # both (gradient checkpointing is switched on by methods.load_base_model when the recipe asks).
    config = config_class(**{**args, **settings, "gradient_checkpointing": False})
    trainer = wrap(trainer_class)(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    stats = {
        "objective": recipe.preference.objective,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "train_examples": len(trainer.train_dataset),
        "reference": "none (orpo)"
        if recipe.preference.objective == "orpo"
        else ("adapters disabled" if recipe.method.name != "full" else "explicit copy"),
        "logprob_tiles": list(CPU_LOGPROB_TILE) if cpu_tiles else "trl",
    }
    return trainer, stats


def export_sample(tokenizer, frame: pd.DataFrame, rows: int = 4) -> dict:
    """A padded batch of validation prompts with their chosen (or only) answer, for the export check."""
    style = tool_style(tokenizer)
    texts = []
    for row in rows_of(frame.head(rows)):
        parts = conversations_of(row, style)
        answer = parts.get("chosen", parts.get("completion"))
        tools = row.get("tools") if style != TEXT else None
        texts.append(
            tokenizer.apply_chat_template(parts["prompt"] + answer, tools=tools or None, tokenize=False)
        )
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
