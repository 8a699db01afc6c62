"""Evaluation on the test split: the fine-tuned model, baselines and the current champion, all scored on
exactly the same rows with scikit-learn metrics, plus plots, a sensitivity analysis and the paired
bootstrap the champion/challenger gate reads.

Classification (``eval/metrics.json``):

- ``model`` / ``baselines[name]`` / ``champion``: accuracy; macro, weighted and per-class precision,
  recall and F1; with class probabilities also ``auc_roc`` (binary: ROC AUC of the positive class
  ``labels[1]``; multiclass: one-vs-rest macro average), ``log_loss``, ``ece`` (expected calibration
  error, see :func:`reliability_bins`) and, for two classes, ``brier`` (Brier score of ``labels[1]``).
  Metrics that need probabilities are left out, never imputed, when a predictor gives only labels; a
  metric that is undefined on the test rows (AUC of a class absent from them) is left out as well and
  named in ``undefined``.
- ``baselines``: ``majority`` (the most frequent training label, scored as probability 1.0 for that
  class, so AUC is 0.5 and log-loss is large by construction), ``tfidf_logreg`` (word 1-2 gram TF-IDF +
  logistic regression fitted on the train split) and ``linear_probe`` (logistic regression on mean-pooled
  last hidden states of the frozen, untuned base encoder; at most 5,000 seeded training rows).
- ``sensitivity``: the model under perturbed test texts and per slice of the test rows.
- ``gate_bootstrap``: paired bootstrap CI of (model - champion) on the primary metric (with a champion).
- ``plots``: PNG paths relative to the run folder (confusion matrix, ROC curves, reliability diagram).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tunery.config import Recipe
from tunery.evaluation import signoff
from tunery.evaluation.baselines import linear_probe_baseline, majority_baseline, tfidf_logreg_baseline
from tunery.evaluation.gate_figures import baseline_floor, guard_figures, label_metrics
from tunery.evaluation.generation import generation_metrics, perplexity
from tunery.evaluation.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    ECE_BINS,
    argmax_labels,
    classification_metrics,
    one_hot,
    paired_bootstrap,
    probability_rows,
)
from tunery.evaluation.plots import plot_confusion, plot_reliability, plot_roc_curves
from tunery.evaluation.robustness import PERTURBATIONS, sensitivity_analysis, write_sensitivity
from tunery.layout import RunLayout
from tunery.serving.inference import TextClassifier

# A champion's outputs for the test rows: labels (classification) or answers (sft) as a list; for
# classification also a frame with ``label`` and ``prob_<label>`` columns (the registered pyfunc's output).
Predictor = Callable[[pd.DataFrame], "list[str] | pd.DataFrame"]


def champion_outputs(output, labels: Sequence[str]) -> tuple[list[str], np.ndarray | None]:
    """A champion predictor's output -> (labels, probabilities in ``labels`` order or None).

    Probabilities are used only when the output has exactly one ``prob_<label>`` column per current label.
    """
    if isinstance(output, pd.DataFrame):
        predicted = output["label"].astype(str).tolist()
        columns = [f"prob_{label}" for label in labels]
        given = {c for c in output.columns if str(c).startswith("prob_")}
        proba = output[columns].to_numpy(dtype=np.float64) if given == set(columns) else None
        return predicted, proba
    return [str(v) for v in output], None


def evaluate(
    recipe: Recipe,
    layout: RunLayout,
    champion: Predictor | None = None,
    champion_version: str | None = None,
    progress: Callable[[str, str], None] | None = None,
    champion_dir: Path | None = None,
) -> Path:
    """Score the run's model, the baselines and (optionally) the champion on the same test rows.

    Args:
        recipe: the validated recipe.
        layout: the run folder (reads ``model/`` and the splits; writes ``eval/``).
        champion: predictions of the current champion for a frame of test rows, if there is one.
        champion_version: the registry version behind ``champion`` (recorded for the gate).
        progress: called with ("evaluate", message) as each long step starts and ends (minutes on CPU for
            a few thousand rows: perturbations re-score the test split five times, the probe embeds it).
        champion_dir: the champion's model folder: preference scores its answers from it (see
            :mod:`tunery.evaluation.preference`); the others measure its size and latency from it (given
            when a guard needs them, :func:`tunery.evaluation.signoff.needs_champion_folder`).

    Returns:
        The path of ``eval/metrics.json``: ``{"model": ..., "baselines": {...}, "champion": ... | null}``
        (classification adds ``sensitivity``, ``gate_bootstrap`` and ``plots``; see the module docstring).
    """
    layout.eval_dir.mkdir(parents=True, exist_ok=True)
    step = _Steps(progress)
    if recipe.task == "preference":
        from tunery.evaluation.preference import evaluate_preference

        result = evaluate_preference(recipe, layout, champion_dir, step)
    elif recipe.task == "sft":
        result = _evaluate_sft(recipe, layout, champion, step, champion_dir)
    else:
        result = _evaluate_classification(recipe, layout, champion, step, champion_dir)
    result.update(
        {"primary_metric": recipe.evaluation.gate.metric(recipe.task), "champion_version": champion_version}
    )
    layout.metrics.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return layout.metrics


class _Steps:
    """Reports each evaluation step with its size when it starts and its duration when the next begins."""

    def __init__(self, progress: Callable[[str, str], None] | None):
        self._progress = progress or (lambda stage, message: None)
        self._started = time.monotonic()
        self._index = 0

    def __call__(self, message: str) -> None:
        self._index += 1
        self._progress(
            "evaluate", f"[{self._index}] {message} ({time.monotonic() - self._started:.0f} s so far)"
        )


def _evaluate_classification(
    recipe: Recipe, layout: RunLayout, champion: Predictor | None, step: _Steps, champion_dir: Path | None
) -> dict:
    from tunery.models import resolve_model

    test = pd.read_parquet(layout.split("test"))
    train = pd.read_parquet(layout.split("train"))
    classifier = TextClassifier(layout.model_dir, batch_size=recipe.training.eval_batch_size)
    labels = classifier.labels
    texts, truth = test["text"].tolist(), test["label"].astype(str).tolist()

    # The test split holds cleaned text already; cleaning again would be a no-op, so skip it.
    predict_proba = functools.partial(classifier.predict_proba, clean=False)

    step(f"scoring the model on {len(texts)} test rows")
    proba = probability_rows(predict_proba(texts), len(texts), len(labels))
    predictions = argmax_labels(proba, labels)
    model_metrics = classification_metrics(truth, predictions, labels, proba)
    step(f"sensitivity: {len(PERTURBATIONS)} perturbations x {len(texts)} rows, slices: length, label, file")
    groups = {  # slices besides length and label: the source file, and the drop (continuous learning)
        name: test[column].tolist()
        for name, column in (("source", "source"), ("drop", "drop_id"))
        if column in test.columns
    }
    sensitivity = sensitivity_analysis(predict_proba, texts, truth, labels, predictions, groups=groups)
    sets, per_set = {}, {}
    if recipe.evaluation.sets:
        step(f"scoring the model and the champion on evaluation sets {', '.join(recipe.evaluation.sets)}")
        sets, per_set = signoff.classification_sets(
            recipe, layout, predict_proba, labels, champion, champion_outputs
        )
    step(f"latency: {recipe.evaluation.latency_rows} one-row requests (model size too)")
    costs = signoff.classification_costs(recipe, layout.model_dir, texts, champion_dir)
    del classifier, predict_proba  # free the fine-tuned model before the linear probe loads the base

    step(f"baselines: majority and TF-IDF + logistic regression on {len(train)} training rows")
    majority = majority_baseline(train, len(test))
    tfidf_pred, tfidf_proba = tfidf_logreg_baseline(train, texts, labels)
    step(f"baseline: linear probe on frozen {recipe.model.base} ({len(train)} + {len(texts)} rows to embed)")
    probe_pred, probe_proba, probe_info = linear_probe_baseline(
        resolve_model(recipe.model.base),
        train,
        texts,
        labels,
        max_length=recipe.model.max_length,
        seed=recipe.training.seed,
    )
    baselines = {
        "majority": {
            **classification_metrics(truth, majority, labels, one_hot(majority, labels)),
            "note": "constant prediction scored as probability 1.0 for the majority class "
            "(AUC-ROC 0.5; log-loss is large by construction)",
        },
        "tfidf_logreg": classification_metrics(truth, tfidf_pred, labels, tfidf_proba),
        "linear_probe": {
            **classification_metrics(truth, probe_pred, labels, probe_proba),
            "info": probe_info,
        },
    }

    frame = pd.DataFrame({"text": texts, "label": truth, "predicted": predictions})
    frame["correct"] = frame["predicted"] == frame["label"]
    for i, label in enumerate(labels):
        frame[f"prob_{label}"] = proba[:, i]
    frame["tfidf_logreg_predicted"] = tfidf_pred
    frame["linear_probe_predicted"] = probe_pred

    primary = recipe.evaluation.gate.metric(recipe.task)
    model_fns = label_metrics(truth, predictions, labels)
    floor = baseline_floor(
        model_fns,
        {
            "tfidf_logreg": label_metrics(truth, tfidf_pred, labels),
            "linear_probe": label_metrics(truth, probe_pred, labels),
            "majority": label_metrics(truth, majority, labels),
        },
        primary,
        len(texts),
    )
    champion_metrics, gate_bootstrap, champion_fns = None, None, None
    if champion:
        step(f"scoring the champion on the same {len(texts)} rows, paired bootstrap")
        champion_pred, champion_proba = champion_outputs(champion(test), labels)
        champion_metrics = classification_metrics(truth, champion_pred, labels, champion_proba)
        if champion_proba is None:
            champion_metrics["note"] = "the champion gave labels only: probability metrics omitted"
        champion_fns = label_metrics(truth, champion_pred, labels)
        frame["champion_predicted"] = champion_pred
        frame["champion_correct"] = frame["champion_predicted"] == frame["label"]
        gate_bootstrap = paired_bootstrap(
            truth,
            predictions,
            champion_pred,
            labels,
            recipe.evaluation.gate.metric(recipe.task),
            resamples=BOOTSTRAP_RESAMPLES,
            seed=BOOTSTRAP_SEED,
        )
    frame.to_parquet(layout.eval_dir / "predictions.parquet", index=False)

    eval_dir = layout.eval_dir
    step("plots: confusion matrix, ROC curves, reliability diagram")
    plots = {
        "confusion_matrix": plot_confusion(truth, predictions, labels, eval_dir / "confusion_matrix.png"),
        "roc_curves": plot_roc_curves(truth, proba, labels, eval_dir / "roc_curves.png"),
        "reliability": plot_reliability(
            truth,
            {"model": proba, "tfidf_logreg": tfidf_proba, "linear_probe": probe_proba},
            labels,
            eval_dir / "reliability.png",
        ),
    }
    plots.update({key: eval_dir / name for key, name in write_sensitivity(sensitivity, eval_dir).items()})
    per_set["test"] = (model_fns, champion_fns, len(texts))
    guards = guard_figures(recipe.evaluation.gate.guards, per_set, costs)
    return {
        "labels": labels,
        "model": {**model_metrics, **{k: v["candidate"] for k, v in costs.items()}},
        "baseline_floor": floor,
        "guards": guards,
        "costs": costs,
        "sets": sets,
        "baselines": baselines,
        "champion": champion_metrics,
        "gate_bootstrap": gate_bootstrap,
        "sensitivity": sensitivity,
        "plots": {name: path.relative_to(layout.root).as_posix() for name, path in plots.items()},
        "notes": {
            "ece": f"expected calibration error, {ECE_BINS} equal-width bins of the max class probability",
            "auc_roc": "binary: positive class labels[1]; multiclass: one-vs-rest macro average",
            "predictions": "eval/predictions.parquet: per-row predictions of the model, baselines, champion",
        },
    }


def _evaluate_sft(
    recipe: Recipe, layout: RunLayout, champion: Predictor | None, step: _Steps, champion_dir: Path | None
) -> dict:
    """Perplexity on the whole test split; generations on ``evaluation.generation_samples`` rows (default:
    all of them), scored against the references, beside the untuned model and the champion."""
    from transformers import AutoTokenizer

    from tunery.models import resolve_model
    from tunery.training import export, methods
    from tunery.training.sft import generate_answers, stop_rate

    test = pd.read_parquet(layout.split("test"))
    tokenizer = AutoTokenizer.from_pretrained(layout.model_dir)
    model = export.load_exported(layout.model_dir, "sft")
    base = methods.load_base_model(resolve_model(recipe.model.base), "sft", None, recipe).eval()
    if "conversation" in test.columns:
        return _evaluate_conversations(
            recipe, layout, test, tokenizer, model, base, champion, step, champion_dir
        )
    sample = test.head(recipe.evaluation.generation_samples).reset_index(drop=True)
    generate = dict(
        system_prompt=recipe.sft.system_prompt,
        max_new_tokens=recipe.sft.generation_max_new_tokens,
        repetition_penalty=recipe.sft.repetition_penalty,
    )
    step(f"generating answers to {len(sample)} of {len(test)} test prompts (tuned and untuned model)")
    answers = generate_answers(model, tokenizer, sample, **generate)
    base_answers = generate_answers(base, tokenizer, sample, **generate)
    references = sample["output"].tolist()
    champion_answers = None
    if champion is not None:
        step(f"generating the champion's answers to the same {len(sample)} prompts")
        champion_answers = [str(a) for a in champion(sample)]
    pd.DataFrame(
        {
            "instruction": sample["instruction"],
            "input": sample["input"],
            "reference": references,
            "answer": answers,
            "answer_stopped": [a.stopped for a in answers],
            "untuned_answer": base_answers,
            "untuned_stopped": [a.stopped for a in base_answers],
            **({"champion_answer": champion_answers} if champion_answers is not None else {}),
        }
    ).to_parquet(layout.eval_dir / "generations.parquet", index=False)
    step(f"perplexity on {len(test)} test rows (tuned and untuned model)")
    tuned = {
        **generation_metrics(references, answers),
        "stop_rate": stop_rate(answers),
        "perplexity": perplexity(model, tokenizer, test, recipe),
    }
    zero_shot = {
        **generation_metrics(references, base_answers),
        "stop_rate": stop_rate(base_answers),
        "perplexity": perplexity(base, tokenizer, test, recipe),
    }

    def answer_set(frame: pd.DataFrame) -> tuple[list[str], list[str], list[str] | None]:
        rows = frame.head(recipe.evaluation.generation_samples).reset_index(drop=True)
        mine = [str(a) for a in generate_answers(model, tokenizer, rows, **generate)]
        theirs = [str(a) for a in champion(rows)] if champion is not None else None
        return rows["output"].tolist(), mine, theirs

    generated = signoff.Generated(
        references, [str(a) for a in answers], [str(a) for a in base_answers], champion_answers
    )
    return {
        "model": tuned,
        "baselines": {"zero_shot": zero_shot},
        "champion": generation_metrics(references, champion_answers)
        if champion_answers is not None
        else None,
        **signoff.sft_signoff(
            recipe, layout, generated, signoff.instruction_prompts(sample), answer_set, step, champion_dir
        ),
        "samples": [
            {"instruction": i, "reference": r, "answer": a, "untuned_answer": b}
            for i, r, a, b in zip(sample["instruction"], references, answers, base_answers, strict=True)
        ][:8],
        "notes": {"generation": f"answers generated for {len(sample)} of {len(test)} test rows"},
    }


def _evaluate_conversations(
    recipe, layout, test, tokenizer, model, base, champion, step, champion_dir
) -> dict:
    """Per assistant turn of the test conversations: ROUGE-L and exact match of the replies, tool-call
    accuracy where the reference calls tools, perplexity over every assistant turn."""
    from tunery.data.templates import as_text_tools, parse_tool_calls
    from tunery.evaluation.generation import conversation_turns, tool_call_metrics
    from tunery.training.sft import generate_replies, stop_rate

    turns = conversation_turns(test, recipe.evaluation.generation_samples)
    budget = recipe.sft.generation_max_new_tokens
    step(
        f"generating {len(turns)} assistant turns of {len(test)} test conversations (tuned and untuned model)"
    )
    penalty = recipe.sft.repetition_penalty
    answers = generate_replies(model, tokenizer, turns, budget, repetition_penalty=penalty)
    base_answers = generate_replies(base, tokenizer, turns, budget, repetition_penalty=penalty)

    def text_of(turn: dict) -> str:  # a turn that calls tools is scored on its text form
        return as_text_tools({"messages": [turn["turn"]], "tools": []})["messages"][0]["content"]

    references = [text_of(t) for t in turns]
    reference_turns = [t["turn"] for t in turns]

    def scored(replies: list[str], perplexity_of) -> dict:
        calls = [parse_tool_calls(reply)[1] for reply in replies]
        tools = tool_call_metrics(reference_turns, calls)
        return {
            **generation_metrics(references, replies),
            **(tools or {}),
            "stop_rate": stop_rate(replies),
            "perplexity": perplexity_of,
        }

    def champion_replies(selected: list[dict]) -> list[str]:
        frame = pd.DataFrame(
            {"messages": [t["messages"] for t in selected], "tools": [t["tools"] for t in selected]}
        )
        return [str(a) for a in champion(frame)]

    champion_answers = None
    if champion is not None:
        step(f"generating the champion's replies to the same {len(turns)} turns")
        champion_answers = champion_replies(turns)
    step(f"perplexity on {len(test)} test conversations (tuned and untuned model)")
    tuned = scored(answers, perplexity(model, tokenizer, test, recipe))
    zero_shot = scored(base_answers, perplexity(base, tokenizer, test, recipe))
    last_user = [
        next((m["content"] for m in reversed(t["messages"]) if m["role"] == "user"), "") for t in turns
    ]
    pd.DataFrame(
        {
            "user": last_user,
            "reference": references,
            "answer": answers,
            "answer_stopped": [a.stopped for a in answers],
            "untuned_answer": base_answers,
            "untuned_stopped": [a.stopped for a in base_answers],
            **({"champion_answer": champion_answers} if champion_answers is not None else {}),
        }
    ).to_parquet(layout.eval_dir / "generations.parquet", index=False)

    def answer_set(frame: pd.DataFrame) -> tuple[list[str], list[str], list[str] | None]:
        selected = conversation_turns(frame, recipe.evaluation.generation_samples)
        mine = [
            str(a) for a in generate_replies(model, tokenizer, selected, budget, repetition_penalty=penalty)
        ]
        theirs = champion_replies(selected) if champion is not None else None
        return [text_of(t) for t in selected], mine, theirs

    generated = signoff.Generated(
        references, [str(a) for a in answers], [str(a) for a in base_answers], champion_answers
    )
    prompts = [
        "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in t["messages"] if m["role"] != "system")
        for t in turns
    ]
    return {
        "model": tuned,
        "baselines": {"zero_shot": zero_shot},
        "champion": None if champion_answers is None else generation_metrics(references, champion_answers),
        **signoff.sft_signoff(recipe, layout, generated, prompts, answer_set, step, champion_dir),
        "samples": [
            {"instruction": u, "reference": r, "answer": a, "untuned_answer": b}
            for u, r, a, b in zip(last_user, references, answers, base_answers, strict=True)
        ][:8],
        "notes": {"generation": f"{len(turns)} assistant turns of {len(test)} test conversations generated"},
    }
