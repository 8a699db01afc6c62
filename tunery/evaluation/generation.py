"""Metrics of generated answers (sft): ROUGE-L, GSM8K-style ``#### N`` exact match, and perplexity on
the answer tokens."""

import math
import re

import numpy as np
import pandas as pd

from tunery.config import Recipe

_FINAL_NUMBER = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 on lower-cased whitespace tokens (longest common subsequence)."""
    ref, cand = reference.lower().split(), candidate.lower().split()
    if not ref or not cand:
        return float(ref == cand)
    prev = [0] * (len(cand) + 1)
    for r in ref:
        row = [0]
        for j, c in enumerate(cand):
            row.append(prev[j] + 1 if r == c else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def final_number(text: str) -> str | None:
    """The ``#### N`` final answer of a text, normalised (no thousands separators), if it has one."""
    match = _FINAL_NUMBER.search(text.strip())
    return match[1].replace(",", "") if match else None


def generation_metrics(references: list[str], answers: list[str]) -> dict:
    """ROUGE-L over all rows; exact match of the final number over rows whose reference ends in ``#### N``."""
    scores = [rouge_l(r, a) for r, a in zip(references, answers, strict=True)]
    numeric = [(final_number(r), final_number(a)) for r, a in zip(references, answers, strict=True)]
    numeric = [(r, a) for r, a in numeric if r is not None]
    return {
        "rouge_l": float(sum(scores) / len(scores)) if scores else 0.0,
        "exact_match": float(sum(r == a for r, a in numeric) / len(numeric)) if numeric else None,
        "exact_match_rows": len(numeric),
        "n": len(scores),
    }


def perplexity(model, tokenizer, frame: pd.DataFrame, recipe: Recipe) -> float:
    """exp(mean cross-entropy) over the answer tokens of every example (prompt tokens are masked)."""

    import torch

    from tunery.training.sft import SftCollator, build_sft_datasets

    data, _ = build_sft_datasets(
        {"test": frame}, tokenizer, recipe.model.max_length, recipe.sft.system_prompt, False
    )
    collate = SftCollator(tokenizer.pad_token_id)
    total_loss, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(data["test"]), recipe.training.eval_batch_size):
            batch = collate(
                [
                    data["test"][i]
                    for i in range(start, min(start + recipe.training.eval_batch_size, len(data["test"])))
                ]
            )
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total_loss += float(loss)
            total_tokens += int((target != -100).sum())
    return math.exp(total_loss / max(total_tokens, 1))


def row_losses(model, tokenizer, frame: pd.DataFrame, recipe: Recipe) -> np.ndarray:
    """Per row: summed cross-entropy over its answer tokens and their number (shape ``(rows, 2)``), the
    same examples :func:`perplexity` scores. Rows without a scorable example get ``(0, 0)``."""
    import torch

    from tunery.training.sft import SftCollator, encode_rows

    per_row = encode_rows(frame, tokenizer, recipe.model.max_length, recipe.sft.system_prompt)
    owners = [row for row, examples in enumerate(per_row) for _ in examples]
    examples = [example for examples in per_row for example in examples]
    collate = SftCollator(tokenizer.pad_token_id)
    out = np.zeros((len(frame), 2), dtype=np.float64)
    size = recipe.training.eval_batch_size
    with torch.inference_mode():
        for start in range(0, len(examples), size):
            batch = collate(examples[start : start + size])
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
            ).sum(dim=1)
            tokens = (target != -100).sum(dim=1)
            for k, owner in enumerate(owners[start : start + size]):
                out[owner, 0] += float(loss[k])
                out[owner, 1] += int(tokens[k])
    return out


def conversation_turns(test: pd.DataFrame, limit: int) -> list[dict]:
    """Up to ``limit`` assistant turns of the test conversations to generate (weight-0 turns are context):
    each with its ``messages`` before the turn, ``tools`` and the reference ``turn``."""
    import json

    turns: list[dict] = []
    for raw in test["conversation"]:
        conversation = json.loads(raw)
        for i, message in enumerate(conversation["messages"]):
            if message["role"] == "assistant" and message.get("weight", 1) == 1:
                turns.append(
                    {
                        "messages": conversation["messages"][:i],
                        "tools": conversation["tools"],
                        "turn": message,
                    }
                )
                if len(turns) == limit:
                    return turns
    return turns


def tool_call_metrics(references: list[dict], calls: list[list[dict]]) -> dict | None:
    """Over reference turns that call tools: the right function names (in order), and arguments that
    parse and equal the reference's. None when no reference turn calls a tool."""
    import json

    pairs = [(r["tool_calls"], c) for r, c in zip(references, calls, strict=True) if r.get("tool_calls")]
    if not pairs:
        return None
    names = arguments = 0
    for wanted, got in pairs:
        if [w["function"]["name"] for w in wanted] != [g["function"]["name"] for g in got]:
            continue
        names += 1
        try:
            parsed = [json.loads(g["function"]["arguments"]) for g in got]
        except (TypeError, json.JSONDecodeError):
            continue
        arguments += parsed == [w["function"]["arguments"] for w in wanted]
    return {
        "tool_name_accuracy": names / len(pairs),
        "tool_call_accuracy": arguments / len(pairs),
        "tool_call_turns": len(pairs),  # not "n": merged with the generation metrics, whose n is every turn
    }
