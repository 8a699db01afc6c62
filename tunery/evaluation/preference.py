"""Evaluation of a preference-tuned model on the test rows, beside the model it started from and the champion.

Every model is scored on the same rows by the log-probability it gives each answer after the prompt (summed
over the answer's tokens, rendered with the chat template as training renders it):

- pairs: ``preference_accuracy``, the share of pairs whose chosen answer gets the higher log-probability per
  token (summed log-probabilities mostly say which answer is shorter; no reference is needed, so the untuned
  model and the champion have one too); ``logp_margin``, the mean summed difference; ``reward_accuracy`` and
  ``reward_margin``, DPO's implicit reward ``beta * (log p_model - log p_untuned)`` of the chosen answer above
  that of the rejected one (the untuned model is its own reference: it has none);
- unpaired (KTO) rows: ``preference_accuracy`` is the ROC AUC with which the per-token log-probability
  separates desirable from undesirable answers; ``reward_accuracy`` the share of rows whose implicit reward
  has the sign of the label, ``reward_margin`` the mean reward of desirable minus that of undesirable ones.

"Untuned" is the model training started from (``model.init_from``, an SFT model usually, else ``model.base``).
The gate reads ``gate_bootstrap``: the paired bootstrap CI of (model - champion) on its primary metric,
resampling test rows. ``eval/generations.parquet`` holds the replies of the model and of the champion (the
untuned model when there is none) to test prompts, side by side with the chosen and rejected answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from tunery.config import Recipe
from tunery.evaluation.gate_figures import baseline_floor, guard_figures
from tunery.evaluation.metrics import bootstrap_delta
from tunery.evaluation.signoff import size_figure
from tunery.layout import RunLayout

# Logits held at once while scoring (rows x tokens x vocabulary floats): 2^27 is 512 MB.
LOGITS_BUDGET = 2**27


def encoded(tokenizer, row: dict, style: str) -> dict[str, tuple[list[int], int]]:
    """Per answer side: (prompt + answer token ids, number of prompt tokens), rendered as TRL renders them
    (the answer starts where the prompt's rendering and the whole conversation's part)."""
    from tunery.training.preference import conversations_of

    parts = conversations_of(row, style)
    tools = (row.get("tools") or None) if style != "text" else None
    prompt = list(
        tokenizer.apply_chat_template(
            parts["prompt"], tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )
    out = {}
    for side in ("chosen", "rejected", "completion"):
        if side not in parts:
            continue
        ids = list(
            tokenizer.apply_chat_template(
                parts["prompt"] + parts[side], tools=tools, tokenize=True, return_dict=False
            )
        )
        shared = next((i for i, (a, b) in enumerate(zip(prompt, ids, strict=False)) if a != b), len(prompt))
        out[side] = (ids, min(shared, len(prompt)))
    return out


def answer_logps(model, sequences: list[tuple[list[int], int]], pad_id: int) -> np.ndarray:
    """Summed log-probability of each sequence's answer tokens (those after its prompt)."""
    import torch

    vocabulary = model.get_output_embeddings().weight.shape[0]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    out = np.zeros(len(sequences), dtype=np.float64)
    start = 0
    while start < len(order):
        width = len(sequences[order[min(start + 63, len(order) - 1)]][0])
        size = max(1, min(64, LOGITS_BUDGET // max(width * vocabulary, 1)))
        batch = order[start : start + size]
        width = max(len(sequences[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, i in enumerate(batch):
            seq = sequences[i][0]
            ids[k, : len(seq)] = torch.tensor(seq)
            mask[k, : len(seq)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
            for k, i in enumerate(batch):
                seq, prompt = sequences[i]
                targets = torch.tensor(seq[prompt:])
                scores = logits[k, prompt - 1 : len(seq) - 1].float().log_softmax(-1)
                out[i] = float(scores.gather(-1, targets[:, None]).sum())
        start += len(batch)
    return out


def score(model, tokenizer, rows: list[dict]) -> dict[str, np.ndarray]:
    """Per row: the answers' summed log-probabilities (``chosen``/``rejected``, or ``completion``) and their
    token counts (``<side>_tokens``)."""
    from tunery.data.templates import tool_style

    style = tool_style(tokenizer)
    encodings = [encoded(tokenizer, row, style) for row in rows]
    sides = [s for s in ("chosen", "rejected", "completion") if encodings and s in encodings[0]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {}
    for side in sides:
        sequences = [e[side] for e in encodings]
        out[side] = answer_logps(model, sequences, pad)
        out[f"{side}_tokens"] = np.array([len(ids) - prompt for ids, prompt in sequences], dtype=np.float64)
    return out


def _auc(values: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(labels.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(labels, values))


def row_metrics(
    scores: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None, labels, beta: float
) -> dict[str, Callable[[np.ndarray], float]]:
    """The metrics of one model as functions of test-row indices (the bootstrap resamples those)."""
    out: dict[str, Callable[[np.ndarray], float]] = {}
    if "chosen" in scores:
        margin = scores["chosen"] - scores["rejected"]
        per_token = scores["chosen"] / np.maximum(scores["chosen_tokens"], 1) - scores[
            "rejected"
        ] / np.maximum(scores["rejected_tokens"], 1)
        out["preference_accuracy"] = lambda idx: float((per_token[idx] > 0).mean())
        out["logp_margin"] = lambda idx: float(margin[idx].mean())
        if reference is not None:
            reward = margin - (reference["chosen"] - reference["rejected"])
            out["reward_accuracy"] = lambda idx: float((reward[idx] > 0).mean())
            out["reward_margin"] = lambda idx: float(beta * reward[idx].mean())
        return out
    desirable = np.asarray(labels, dtype=bool)
    per_token = scores["completion"] / np.maximum(scores["completion_tokens"], 1)
    out["preference_accuracy"] = lambda idx: _auc(per_token[idx], desirable[idx])
    if reference is not None:
        reward = beta * (scores["completion"] - reference["completion"])
        out["reward_accuracy"] = lambda idx: float(((reward[idx] > 0) == desirable[idx]).mean())

        def margin_of(idx: np.ndarray) -> float:
            good, bad = reward[idx][desirable[idx]], reward[idx][~desirable[idx]]
            return float(good.mean() - bad.mean()) if len(good) and len(bad) else float("nan")

        out["reward_margin"] = margin_of
    return out


def _values(functions: dict[str, Callable[[np.ndarray], float]], n: int) -> dict:
    every = np.arange(n)
    values = {name: fn(every) for name, fn in functions.items()}
    return {k: (None if v != v else v) for k, v in values.items()} | {"n": n}


def _replies(model, tokenizer, rows: list[dict], recipe: Recipe) -> list[str]:
    from tunery.training.sft import generate_replies

    turns = [{"messages": row["prompt"], "tools": row.get("tools") or []} for row in rows]
    return generate_replies(
        model,
        tokenizer,
        turns,
        recipe.sft.generation_max_new_tokens,
        repetition_penalty=recipe.sft.repetition_penalty,
    )


def evaluate_preference(
    recipe: Recipe, layout: RunLayout, champion_dir: Path | None, step: Callable[[str], None]
) -> dict:
    """Score the model, the untuned model and the champion (a model folder, if any) on the test rows."""
    from transformers import AutoTokenizer

    from tunery.data.preferences import answer_text, is_unpaired
    from tunery.models import resolve_model
    from tunery.training import export, methods
    from tunery.training.preference import rows_of

    rows = rows_of(pd.read_parquet(layout.split("test")))
    if not rows:
        raise ValueError("the test split holds no preference rows: nothing to evaluate the model on")
    beta, n = recipe.preference.beta, len(rows)
    labels = [bool(r["label"]) for r in rows] if is_unpaired(rows[0]) else None
    tokenizer = AutoTokenizer.from_pretrained(layout.model_dir)
    start = resolve_model(recipe.model.init_from or recipe.model.base)
    step(f"scoring the answers of {n} test rows (tuned and untuned model)")
    model = export.load_exported(layout.model_dir, "preference")
    scores = score(model, tokenizer, rows)
    untuned = methods.load_base_model(start, "preference", None, recipe).eval()
    untuned_scores = score(untuned, tokenizer, rows)
    tuned_fns = row_metrics(scores, untuned_scores, labels, beta)
    untuned_fns = row_metrics(untuned_scores, None, labels, beta)
    sample = rows[: recipe.evaluation.generation_samples]
    step(f"generating replies to {len(sample)} test prompts (tuned model)")
    replies = _replies(model, tokenizer, sample, recipe)
    del model
    champion_metrics, gate_bootstrap, other, other_name = None, None, untuned, "untuned"
    champion_scores: dict[str, np.ndarray] = {}
    champion_fns: dict[str, Callable[[np.ndarray], float]] = {}
    primary = recipe.evaluation.gate.metric(recipe.task)
    if champion_dir is not None:
        step(f"scoring the champion on the same {n} rows, paired bootstrap")
        del untuned
        other, other_name = export.load_exported(champion_dir, "preference"), "champion"
        champion_scores = score(other, tokenizer, rows)
        champion_fns = row_metrics(champion_scores, untuned_scores, labels, beta)
        champion_metrics = _values(champion_fns, n)
        gate_bootstrap = bootstrap_delta(tuned_fns[primary], champion_fns[primary], n, primary)
    step(f"generating the {other_name} model's replies to the same {len(sample)} prompts")
    other_replies = _replies(other, tokenizer, sample, recipe)
    write_scores(layout, rows, {"model": scores, "untuned": untuned_scores, "champion": champion_scores})
    first = "chosen" if labels is None else "completion"
    pd.DataFrame(
        {
            "prompt": [json.dumps(r["prompt"], ensure_ascii=False) for r in sample],
            first: [answer_text(r[first]) for r in sample],
            **({} if labels is None else {"label": labels[: len(sample)]}),
            **({"rejected": [answer_text(r["rejected"]) for r in sample]} if labels is None else {}),
            "answer": [str(a) for a in replies],
            f"{other_name}_answer": [str(a) for a in other_replies],
        }
    ).to_parquet(layout.eval_dir / "generations.parquet", index=False)
    # the untuned model is its own reference (no reward): its floor is on preference accuracy
    floor_metric = primary if primary in untuned_fns else "preference_accuracy"
    floor = baseline_floor(tuned_fns, {"untuned": untuned_fns}, floor_metric, n)
    costs = {"model_mb": size_figure(layout.model_dir, champion_dir)}
    per_set = {"test": (tuned_fns, champion_fns if champion_dir is not None else None, n)}
    return {
        "model": _values(tuned_fns, n),
        "baseline_floor": floor,
        "guards": guard_figures(recipe.evaluation.gate.guards, per_set, costs),
        "costs": costs,
        "baselines": {"untuned": {**_values(untuned_fns, n), "model": start}},
        "champion": champion_metrics,
        "gate_bootstrap": gate_bootstrap,
        "samples": [
            {"prompt": answer_text(r["prompt"][-1:]), "answer": str(a), f"{other_name}_answer": str(b)}
            for r, a, b in zip(sample, replies, other_replies, strict=True)
        ][:8],
        "notes": {
            "preference_accuracy": "pairs: share whose chosen answer gets the higher log-probability per "
            "token; unpaired rows: ROC AUC of the per-token log-probability for desirable answers",
            "reward": f"implicit reward {beta} x (log p_model - log p_untuned), untuned = {start}",
            "rows": "eval/preference_scores.parquet: per test row, log-probabilities of each answer",
        },
    }


def write_scores(layout: RunLayout, rows: list[dict], scores: dict[str, dict[str, np.ndarray]]) -> None:
    """``eval/preference_scores.parquet``: per test row, each model's scores (``<model>_<side>``, as
    :func:`score` returns them; no champion columns without a champion), labels of unpaired rows."""
    frame = pd.DataFrame(
        {f"{name}_{k}": v for name, per_model in scores.items() for k, v in per_model.items()}
    )
    frame.insert(0, "prompt", [json.dumps(r["prompt"], ensure_ascii=False)[:2000] for r in rows])
    if rows and "label" in rows[0]:
        frame["label"] = [bool(r["label"]) for r in rows]
    frame.to_parquet(layout.eval_dir / "preference_scores.parquet", index=False)


def scores_of(frame: pd.DataFrame, name: str) -> dict[str, np.ndarray]:
    """One model's scores read back from ``eval/preference_scores.parquet`` (the inverse of writing it)."""
    prefix = f"{name}_"
    return {c[len(prefix) :]: frame[c].to_numpy() for c in frame.columns if c.startswith(prefix)}
