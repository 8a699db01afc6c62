"""The forgetting check of continuous learning: is the new model worse than the champion on the test rows
of drops it learnt from earlier? Reads the run folder (``lineage.json``, the test split with its ``drop_id``
column, ``eval/predictions.parquet``; for sft the exported model and the champion's model folder; for
preference the per-row scores of ``eval/preference_scores.parquet``) and adds ``forgetting`` to
``eval/metrics.json``.

Every slice has ``delta`` (model against champion; below zero: the model is worse) with a paired bootstrap
interval ``ci_low``..``ci_high`` over the slice's rows. Classification and preference: the gate's primary
metric (preference: the model's and the champion's scores of the same rows, read back). sft:
perplexity (``delta`` = ppl_champion / ppl_model - 1, so +0.05 means 5% lower perplexity) or ROUGE-L of
generated replies (``delta`` = the model's mean minus the champion's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tunery.config import Recipe
from tunery.evaluation.generation import conversation_turns, rouge_l, row_losses
from tunery.evaluation.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired_bootstrap
from tunery.layout import RunLayout


def forgetting_metric(recipe: Recipe) -> str:
    """The metric the check uses: the recipe's choice; auto: the gate's primary metric (classification),
    perplexity (sft) or preference accuracy (preference: the reward metrics measure against the model
    training started from, which a warm start makes the champion itself)."""
    chosen = recipe.continuous.forgetting_metric if recipe.continuous else "auto"
    if chosen != "auto":
        return chosen
    if recipe.task == "preference":
        return "preference_accuracy"
    return "perplexity" if recipe.task == "sft" else recipe.evaluation.gate.metric(recipe.task)


def forgetting_check(recipe: Recipe, layout: RunLayout, champion_dir: Path | None = None) -> dict:
    """Score the model and the champion on each earlier drop's test rows; a slice where the model is worse
    by more than ``continuous.forgetting_margin`` *and* the paired bootstrap CI of the difference is below
    zero counts as forgotten. The result is stored in ``eval/metrics.json`` under ``forgetting`` (the gate
    reads it) and returned.

    Args:
        recipe: the run's recipe.
        layout: the run folder.
        champion_dir: sft only: the champion's exported model folder (classification reads the champion's
            predictions that evaluation stored).
    """
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    metric = forgetting_metric(recipe)
    margin = recipe.continuous.forgetting_margin if recipe.continuous else 0.0
    lineage = json.loads((layout.root / "lineage.json").read_text(encoding="utf-8"))
    earlier = [d["id"] for d in lineage["drops"] if d["id"] not in set(lineage["new_drops"])]
    result: dict = {"metric": metric, "margin": margin, "slices": {}, "forgotten": [], "passed": True}
    if not metrics.get("champion"):
        result["note"] = "no champion: nothing to forget"
    elif not earlier:
        result["note"] = "no earlier drops"
    elif recipe.task == "preference":
        result["slices"] = _preference_slices(recipe, layout, earlier, metric, margin)
    elif recipe.task == "sft":
        if champion_dir is None:
            raise ValueError("the sft forgetting check needs the champion's model folder")
        result["slices"] = _sft_slices(recipe, layout, earlier, Path(champion_dir), metric, margin)
    else:
        test = pd.read_parquet(layout.split("test"), columns=["drop_id"])
        predictions = pd.read_parquet(layout.eval_dir / "predictions.parquet")
        predictions["drop_id"] = test["drop_id"].to_numpy()
        for drop_id in earlier:
            rows = predictions[predictions["drop_id"] == drop_id]
            if len(rows) < 2:
                continue
            boot = paired_bootstrap(
                rows["label"].tolist(),
                rows["predicted"].tolist(),
                rows["champion_predicted"].tolist(),
                metrics["labels"],
                metric,
                resamples=BOOTSTRAP_RESAMPLES,
                seed=BOOTSTRAP_SEED,
            )
            forgot = boot["delta"] < -margin and boot["ci_high"] < 0
            result["slices"][drop_id] = {"rows": len(rows), **boot, "forgotten": forgot}
    result["forgotten"] = [d for d, block in result["slices"].items() if block["forgotten"]]
    result["passed"] = not result["forgotten"]
    metrics["forgetting"] = result
    layout.metrics.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return result


def describe(metric: str, block: dict) -> str:
    """One line for a slice of the result (a log line)."""
    if "note" in block and "delta" not in block:
        return f"test rows ({block['rows']}): {metric} {block['note']}"
    if "champion_perplexity" in block:
        values = f"perplexity {block['perplexity']:.3f} vs champion {block['champion_perplexity']:.3f}"
    elif "champion_rouge_l" in block:
        values = f"ROUGE-L {block['rouge_l']:.4f} vs champion {block['champion_rouge_l']:.4f}"
    elif f"champion_{metric}" in block:
        values = f"{metric} {block[metric]:.4f} vs champion {block[f'champion_{metric}']:.4f}"
    else:
        values = f"{metric} vs champion"
    return (
        f"test rows ({block['rows']}): {values}, delta {block['delta']:+.4f} "
        f"CI [{block['ci_low']:+.4f}, {block['ci_high']:+.4f}]"
        + ("  FORGOTTEN" if block["forgotten"] else "")
    )


def _sft_slices(
    recipe: Recipe, layout: RunLayout, earlier: list[str], champion_dir: Path, metric: str, margin: float
) -> dict:
    from transformers import AutoTokenizer

    from tunery.training import export

    test = pd.read_parquet(layout.split("test"))
    tokenizer = AutoTokenizer.from_pretrained(layout.model_dir)
    model = export.load_exported(layout.model_dir, "sft").eval()
    champion = export.load_exported(champion_dir, "sft").eval()
    slices = {}
    for drop_id in earlier:
        rows = test[test["drop_id"] == drop_id].reset_index(drop=True)
        if len(rows) < 2:
            continue
        if metric == "perplexity":
            block = _perplexity_slice(
                row_losses(model, tokenizer, rows, recipe), row_losses(champion, tokenizer, rows, recipe)
            )
            forgot = block["delta"] < -margin / (1 + margin) and block["ci_high"] < 0
        else:
            mine, theirs = _rouge_per_item(model, champion, tokenizer, rows, recipe)
            block = _mean_difference_slice(mine, theirs)
            forgot = block["delta"] < -margin and block["ci_high"] < 0
        slices[drop_id] = {"rows": len(rows), **block, "forgotten": bool(forgot)}
    return slices


def _preference_slices(
    recipe: Recipe, layout: RunLayout, earlier: list[str], metric: str, margin: float
) -> dict:
    """Preference: the metric of the model and of the champion on each earlier drop's test rows, from the
    per-row scores evaluation stored (``eval/preference_scores.parquet``: nothing is scored again). A slice
    on which the metric is undefined (an AUC over rows of one label) is kept with a note, not forgotten."""
    from tunery.evaluation.metrics import bootstrap_delta
    from tunery.evaluation.preference import row_metrics, scores_of

    drops = pd.read_parquet(layout.split("test"), columns=["drop_id"])["drop_id"].to_numpy()
    frame = pd.read_parquet(layout.eval_dir / "preference_scores.parquet")
    labels = frame["label"].to_numpy() if "label" in frame.columns else None
    untuned = scores_of(frame, "untuned")
    beta = recipe.preference.beta
    mine = row_metrics(scores_of(frame, "model"), untuned, labels, beta)[metric]
    theirs = row_metrics(scores_of(frame, "champion"), untuned, labels, beta)[metric]
    slices = {}
    for drop_id in earlier:
        rows = np.flatnonzero(drops == drop_id)
        if len(rows) < 2:
            continue
        block = bootstrap_delta(
            lambda i, r=rows: mine(r[i]), lambda i, r=rows: theirs(r[i]), len(rows), metric
        )
        if math.isnan(block["delta"]):
            note = "undefined on these rows (an AUC needs desirable and undesirable answers)"
            slices[drop_id] = {"rows": len(rows), "forgotten": False, "note": note}
            continue
        forgot = block["delta"] < -margin and block["ci_high"] < 0
        values = {metric: mine(rows), f"champion_{metric}": theirs(rows)}
        slices[drop_id] = {"rows": len(rows), **values, **block, "forgotten": bool(forgot)}
    return slices


def _perplexity_slice(mine: np.ndarray, theirs: np.ndarray) -> dict:
    """ppl_champion / ppl_model - 1 on the slice, with a paired bootstrap CI over its rows (both models are
    scored on the same tokens, so the ratio is exp of the mean per-token loss difference)."""
    scored = mine[:, 1] > 0
    mine, theirs = mine[scored], theirs[scored]
    if not len(mine):
        return {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 0, "note": "no scorable rows"}

    def ratio(rows: np.ndarray) -> float:
        tokens = mine[rows, 1].sum()
        return math.exp((theirs[rows, 0].sum() - mine[rows, 0].sum()) / tokens) - 1.0

    everything = np.arange(len(mine))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = [ratio(rng.integers(0, len(mine), len(mine))) for _ in range(BOOTSTRAP_RESAMPLES)]
    tokens = mine[:, 1].sum()
    return {
        "delta": ratio(everything),
        "ci_low": float(np.percentile(draws, 2.5)),
        "ci_high": float(np.percentile(draws, 97.5)),
        "perplexity": math.exp(mine[:, 0].sum() / tokens),
        "champion_perplexity": math.exp(theirs[:, 0].sum() / tokens),
        "n": len(mine),
    }


def _mean_difference_slice(mine: list[float], theirs: list[float]) -> dict:
    a, b = np.asarray(mine, dtype=float), np.asarray(theirs, dtype=float)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        rows = rng.integers(0, len(a), len(a))
        draws.append(float(a[rows].mean() - b[rows].mean()))
    return {
        "delta": float(a.mean() - b.mean()),
        "ci_low": float(np.percentile(draws, 2.5)),
        "ci_high": float(np.percentile(draws, 97.5)),
        "rouge_l": float(a.mean()),
        "champion_rouge_l": float(b.mean()),
        "n": len(a),
    }


def _rouge_per_item(model, champion, tokenizer, rows: pd.DataFrame, recipe: Recipe):
    """ROUGE-L of each generated reply (up to ``evaluation.generation_samples`` per slice) for both models."""
    from tunery.data.templates import as_text_tools
    from tunery.training.sft import generate_answers, generate_replies

    budget, limit = recipe.sft.generation_max_new_tokens, recipe.evaluation.generation_samples
    penalty = {"repetition_penalty": recipe.sft.repetition_penalty}
    if "conversation" in rows.columns:
        turns = conversation_turns(rows, limit)
        references = [
            as_text_tools({"messages": [t["turn"]], "tools": []})["messages"][0]["content"] for t in turns
        ]
        replies = [generate_replies(m, tokenizer, turns, budget, **penalty) for m in (model, champion)]
    else:
        sample = rows.head(limit)
        references = sample["output"].tolist()
        replies = [
            generate_answers(m, tokenizer, sample, recipe.sft.system_prompt, budget, **penalty)
            for m in (model, champion)
        ]
    return tuple([rouge_l(r, a) for r, a in zip(references, answers, strict=True)] for answers in replies)
