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
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tunery.config import Recipe
from tunery.inference import TextClassifier
from tunery.layout import RunLayout

ECE_BINS = 10
PROBE_MAX_TRAIN_ROWS = 5_000
PROBE_BATCH_SIZE = 64
BOOTSTRAP_RESAMPLES = 1_000
BOOTSTRAP_SEED = 0
PERTURBATION_SEED = 0
TYPO_RATE = 0.10

# ---------------------------------------------------------------------------------------------- metrics


def _encode(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Label strings -> indices into ``labels`` (-1 for a value outside the label set)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64)


def _probabilities(proba, n: int, k: int) -> np.ndarray:
    """Class probabilities as float64 rows that sum to 1 (softmax outputs are float32)."""
    p = np.asarray(proba, dtype=np.float64).reshape(n, k)
    if (p < 0).any():
        raise ValueError("probabilities must be non-negative")
    sums = p.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError("every row of probabilities needs a positive sum")
    return p / sums


def one_hot(predictions: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Probability 1.0 for the predicted class: the probabilities of a predictor that only gives labels."""
    codes = _encode(predictions, labels)
    if (codes < 0).any():
        raise ValueError("a prediction is not one of the labels")
    out = np.zeros((len(codes), len(labels)))
    out[np.arange(len(codes)), codes] = 1.0
    return out


def reliability_bins(y_true: Sequence[str], proba, labels: Sequence[str], n_bins: int = ECE_BINS) -> dict:
    """Confidence (max class probability) against accuracy in ``n_bins`` equal-width bins of [0, 1].

    Bins are those of ``numpy.histogram`` with edges ``linspace(0, 1, n_bins + 1)``: left-closed, the last
    one closed on both sides. Returns edges, row counts and, per non-empty bin, the mean confidence and the
    accuracy of the argmax prediction (``None`` for an empty bin).
    """
    truth = _encode(y_true, labels)
    p = _probabilities(proba, len(truth), len(labels))
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == truth).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts, _ = np.histogram(confidence, bins=edges)
    conf_sum, _ = np.histogram(confidence, bins=edges, weights=confidence)
    correct_sum, _ = np.histogram(confidence, bins=edges, weights=correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, accuracy = conf_sum / counts, correct_sum / counts
    return {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "confidence": [float(c) if n else None for c, n in zip(mean_conf, counts, strict=True)],
        "accuracy": [float(a) if n else None for a, n in zip(accuracy, counts, strict=True)],
    }


def expected_calibration_error(
    y_true: Sequence[str], proba, labels: Sequence[str], n_bins: int = ECE_BINS
) -> float:
    """ECE = sum over bins b of (n_b / n) * |accuracy_b - mean confidence_b|.

    The confidence of a row is its maximum class probability and it is correct when the argmax class is the
    true label; the bins are ``n_bins`` equal-width bins of [0, 1] (see :func:`reliability_bins`).
    """
    bins = reliability_bins(y_true, proba, labels, n_bins)
    n = sum(bins["counts"])
    if n == 0:
        return 0.0
    return float(
        sum(
            count / n * abs(acc - conf)
            for count, acc, conf in zip(bins["counts"], bins["accuracy"], bins["confidence"], strict=True)
            if count
        )
    )


def probability_metrics(y_true: Sequence[str], proba, labels: Sequence[str]) -> dict:
    """AUC-ROC, log-loss, ECE and (two classes) Brier score from class probabilities in ``labels`` order.

    AUC-ROC: binary, ``roc_auc_score`` of the positive class ``labels[1]``; multiclass, one-vs-rest macro.
    An AUC that is undefined on these rows (a class without positives or negatives) is omitted and named
    under ``undefined``.
    """
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    labels = list(labels)
    truth = _encode(y_true, labels)
    if (truth < 0).any():
        raise ValueError("a true label is not one of the labels")
    k = len(labels)
    p = _probabilities(proba, len(truth), k)
    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        try:
            if k == 2:
                auc = roc_auc_score(truth == 1, p[:, 1])
            else:
                auc = roc_auc_score(truth, p, multi_class="ovr", average="macro", labels=list(range(k)))
        except ValueError:  # older scikit-learn raises instead of returning nan
            auc = float("nan")
    if math.isnan(auc):
        out["undefined"] = ["auc_roc"]
    else:
        out["auc_roc"] = float(auc)
    # Integer classes 0..k-1: log_loss orders the columns of y_pred by sorted label, which is then ours.
    out["log_loss"] = float(log_loss(truth, p, labels=list(range(k))))
    out["ece"] = expected_calibration_error(y_true, p, labels)
    if k == 2:
        out["brier"] = float(brier_score_loss((truth == 1).astype(int), p[:, 1]))
    return out


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], proba=None
) -> dict:
    """Accuracy, macro/weighted precision-recall-F1, a per-class report and, given class probabilities
    (columns in ``labels`` order), the probability metrics of :func:`probability_metrics` (scikit-learn).
    """
    from sklearn.metrics import accuracy_score, classification_report, precision_recall_fscore_support

    labels = list(labels)
    metrics: dict = {"accuracy": float(accuracy_score(y_true, y_pred)), "n": len(y_true)}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        metrics.update(
            {f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)}
        )
    if proba is not None:
        metrics.update(probability_metrics(y_true, proba, labels))
    report = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    metrics["per_class"] = {label: {k: float(v) for k, v in report[label].items()} for label in labels}
    return metrics


# -------------------------------------------------------------------------------------------- baselines


def majority_baseline(train: pd.DataFrame, n: int) -> list[str]:
    """Predict the most frequent training label for every test row."""
    return [train["label"].value_counts().idxmax()] * n


def _align(proba: np.ndarray, classes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Columns of a fitted estimator's ``predict_proba`` (``classes_`` order) -> ``labels`` order."""
    out = np.zeros((len(proba), len(labels)))
    for j, cls in enumerate(classes):
        out[:, list(labels).index(str(cls))] = proba[:, j]
    return out


def _predicted(proba: np.ndarray, labels: Sequence[str]) -> list[str]:
    return [labels[i] for i in np.asarray(proba).argmax(axis=1)]


def tfidf_logreg_baseline(
    train: pd.DataFrame, texts: Sequence[str], labels: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """Word 1-2 gram TF-IDF + balanced logistic regression fitted on ``train`` (text, label).

    Returns:
        The predicted labels of ``texts`` and their class probabilities in ``labels`` order.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline(
        [
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
            ("logreg", LogisticRegression(max_iter=1000, class_weight="balanced")),
        ]
    )
    pipeline.fit(train["text"].tolist(), train["label"].astype(str).tolist())
    proba = _align(pipeline.predict_proba(list(texts)), pipeline.classes_, labels)
    return _predicted(proba, labels), proba


def mean_pooled_embeddings(
    model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = PROBE_BATCH_SIZE
) -> np.ndarray:
    """Mean of the last hidden states over the non-padding tokens, one row per text (frozen model)."""
    import torch

    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] or "" for i in rows],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[rows] = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).numpy()
    return out


def linear_probe_baseline(
    base: str,
    train: pd.DataFrame,
    texts: Sequence[str],
    labels: Sequence[str],
    max_length: int,
    seed: int = 0,
    max_train_rows: int = PROBE_MAX_TRAIN_ROWS,
    batch_size: int = PROBE_BATCH_SIZE,
) -> tuple[list[str], np.ndarray, dict]:
    """The untuned base model as a linear probe: standardised mean-pooled last hidden states of the frozen
    encoder + balanced logistic regression, fitted on at most ``max_train_rows`` seeded training rows.

    Args:
        base: a folder or hub id for ``AutoModel`` and ``AutoTokenizer`` (the recipe's base model, see
            :func:`tunery.models.resolve_model`).

    Returns:
        Predicted labels, class probabilities (``labels`` order) and what the probe was fitted on.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoTokenizer

    sample = train.sample(n=max_train_rows, random_state=seed) if len(train) > max_train_rows else train
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(base).eval()
    train_x = mean_pooled_embeddings(model, tokenizer, sample["text"].tolist(), max_length, batch_size)
    test_x = mean_pooled_embeddings(model, tokenizer, list(texts), max_length, batch_size)
    del model
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
    probe.fit(train_x, sample["label"].astype(str).tolist())
    proba = _align(probe.predict_proba(test_x), probe.classes_, labels)
    info = {
        "train_rows": len(sample),
        "train_rows_available": len(train),
        "max_train_rows": max_train_rows,
        "seed": seed,
        "note": (
            f"frozen base encoder, mean-pooled last hidden states, max_length {max_length}; logistic "
            f"regression fitted on {len(sample)} of {len(train)} training rows (capped at {max_train_rows}, "
            "seeded sample, to bound CPU time)"
        ),
    }
    return _predicted(proba, labels), proba, info


# ---------------------------------------------------------------------------------------- perturbations

_WORD = re.compile(r"\S+")


def _typo(word: str, rng: np.random.Generator) -> str:
    """Swap two adjacent differing characters or delete one character (the word always changes)."""
    swaps = [j for j in range(len(word) - 1) if word[j] != word[j + 1]]
    if swaps and rng.random() < 0.5:
        j = swaps[int(rng.integers(len(swaps)))]
        return word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    j = int(rng.integers(len(word)))
    return word[:j] + word[j + 1 :]


def typos(texts: Sequence[str], seed: int = PERTURBATION_SEED, rate: float = TYPO_RATE) -> list[str]:
    """Seeded typos in ``rate`` of the words of each text (at least one word when a text has any).

    Words are whitespace-separated tokens; the chosen ones (among words of 2+ characters) get one adjacent
    character swap or one character deletion. Whitespace is kept as it was. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        words = list(_WORD.finditer(text))
        eligible = [i for i, m in enumerate(words) if len(m.group()) >= 2]
        n_change = min(max(1, round(rate * len(words))), len(eligible)) if words else 0
        chosen = set(rng.choice(eligible, size=n_change, replace=False).tolist()) if n_change else set()
        pieces, last = [], 0
        for i, m in enumerate(words):
            pieces.append(text[last : m.start()])
            pieces.append(_typo(m.group(), rng) if i in chosen else m.group())
            last = m.end()
        pieces.append(text[last:])
        out.append("".join(pieces))
    return out


def lowercase(texts: Sequence[str], seed: int = PERTURBATION_SEED) -> list[str]:
    return [t.lower() for t in texts]


def uppercase(texts: Sequence[str], seed: int = PERTURBATION_SEED) -> list[str]:
    return [t.upper() for t in texts]


def truncate_half(texts: Sequence[str], seed: int = PERTURBATION_SEED) -> list[str]:
    """Keep the first ceil(n / 2) of the n whitespace-separated words of each text."""
    out = []
    for text in texts:
        words = list(_WORD.finditer(text))
        out.append(text[: words[math.ceil(len(words) / 2) - 1].end()] if words else text)
    return out


def strip_punctuation(texts: Sequence[str], seed: int = PERTURBATION_SEED) -> list[str]:
    """Remove every Unicode punctuation character (categories P*); symbols such as £ or + stay."""
    return ["".join(ch for ch in t if not unicodedata.category(ch).startswith("P")) for t in texts]


PERTURBATIONS: dict[str, Callable[..., list[str]]] = {
    "typos": typos,
    "lowercase": lowercase,
    "uppercase": uppercase,
    "truncate_half": truncate_half,
    "no_punctuation": strip_punctuation,
}


def _accuracy_macro_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def length_slices(texts: Sequence[str], y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    """Accuracy and macro-F1 per word-count quartile bucket of ``texts``.

    Bucket q1 holds rows with at most the 25th percentile of word counts, q2 up to the median, q3 up to the
    75th percentile, q4 the rest; empty buckets (tied quartiles) are left out. Macro-F1 averages over the
    labels present in the bucket (true or predicted).
    """
    counts = np.array([len(t.split()) for t in texts])
    if not len(counts):
        return {}
    bucket = np.searchsorted(np.quantile(counts, [0.25, 0.5, 0.75]), counts, side="left")
    truth, pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    out = {}
    for b in range(4):
        rows = bucket == b
        if rows.any():
            lo, hi = int(counts[rows].min()), int(counts[rows].max())
            out[f"q{b + 1}"] = {
                "words": [lo, hi],
                "n": int(rows.sum()),
                **_accuracy_macro_f1(truth[rows].tolist(), pred[rows].tolist(), None),
            }
    return out


def class_slices(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Per true class: row count and accuracy on its rows (its recall); macro-F1 is not meaningful there."""
    truth, pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    out = {}
    for label in labels:
        rows = truth == label
        out[label] = {
            "n": int(rows.sum()),
            "accuracy": float((pred[rows] == label).mean()) if rows.any() else None,
        }
    return out


def sensitivity_analysis(
    predict_proba: Callable[[list[str]], np.ndarray],
    texts: Sequence[str],
    y_true: Sequence[str],
    labels: Sequence[str],
    y_pred: Sequence[str] | None = None,
    seed: int = PERTURBATION_SEED,
) -> dict:
    """The model under perturbed test texts, and per slice of the unperturbed test rows.

    Args:
        predict_proba: texts -> class probabilities in ``labels`` order (one loaded model, reused).
        y_pred: the model's predictions on the unperturbed texts (computed when not given).

    Returns:
        ``{"seed", "perturbations": {name: {accuracy, macro_f1, delta_accuracy, delta_macro_f1,
        changed_rows}}, "slices": {"length": {...}, "class": {...}}}``; deltas are perturbed minus clean.
    """
    labels = list(labels)
    texts = list(texts)
    if y_pred is None:
        y_pred = _predicted(predict_proba(texts), labels)
    clean = _accuracy_macro_f1(y_true, y_pred, labels)
    perturbations = {}
    for name, perturb in PERTURBATIONS.items():
        changed = perturb(texts, seed=seed)
        scores = _accuracy_macro_f1(y_true, _predicted(predict_proba(changed), labels), labels)
        perturbations[name] = {
            **scores,
            "delta_accuracy": scores["accuracy"] - clean["accuracy"],
            "delta_macro_f1": scores["macro_f1"] - clean["macro_f1"],
            "changed_rows": int(sum(a != b for a, b in zip(texts, changed, strict=True))),
        }
    return {
        "seed": seed,
        "clean": clean,
        "perturbations": perturbations,
        "slices": {
            "length": length_slices(texts, y_true, y_pred),
            "class": class_slices(y_true, y_pred, labels),
        },
    }


# -------------------------------------------------------------------------------------- paired bootstrap

_AVERAGED = {
    "macro_f1": ("macro", 2),
    "weighted_f1": ("weighted", 2),
    "macro_precision": ("macro", 0),
    "macro_recall": ("macro", 1),
    "weighted_precision": ("weighted", 0),
    "weighted_recall": ("weighted", 1),
}


def metric_value(metric: str, truth: np.ndarray, pred: np.ndarray, k: int) -> float:
    """A classification metric of integer-coded rows (classes 0..k-1, -1 for an unknown prediction)."""
    from sklearn.metrics import precision_recall_fscore_support

    if metric == "accuracy":
        return float(np.mean(truth == pred))
    if metric not in _AVERAGED:
        raise ValueError(f"no bootstrap for metric {metric!r}")
    average, which = _AVERAGED[metric]
    scores = precision_recall_fscore_support(
        truth, pred, labels=list(range(k)), average=average, zero_division=0
    )
    return float(scores[which])


def paired_bootstrap(
    y_true: Sequence[str],
    pred_a: Sequence[str],
    pred_b: Sequence[str],
    labels: Sequence[str],
    metric: str = "macro_f1",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> dict:
    """Percentile CI of metric(a) - metric(b) over test rows resampled with replacement, the same rows for
    both (paired); the metric is recomputed with scikit-learn on every resample (accuracy: mean correctness).

    Returns:
        ``{"metric", "delta" (on all rows), "ci_low", "ci_high", "confidence", "resamples", "seed", "n"}``.
    """
    import sklearn

    labels = list(labels)
    k = len(labels)
    truth, a, b = _encode(y_true, labels), _encode(pred_a, labels), _encode(pred_b, labels)
    if not (len(truth) == len(a) == len(b)) or not len(truth):
        raise ValueError("paired bootstrap needs the same, non-empty test rows for both models")
    rng = np.random.default_rng(seed)
    n = len(truth)
    deltas = np.empty(resamples)
    with sklearn.config_context(assume_finite=True):
        delta = metric_value(metric, truth, a, k) - metric_value(metric, truth, b, k)
        for r in range(resamples):
            rows = rng.integers(0, n, n)
            t = truth[rows]
            deltas[r] = metric_value(metric, t, a[rows], k) - metric_value(metric, t, b[rows], k)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return {
        "metric": metric,
        "delta": float(delta),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "resamples": resamples,
        "seed": seed,
        "n": n,
    }


# ------------------------------------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(y_true: list[str], y_pred: list[str], labels: list[str], path: Path) -> Path:
    """Save a confusion-matrix PNG (rows: true label, columns: predicted)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set_title("Test split confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc_curves(y_true: Sequence[str], proba, labels: Sequence[str], path: Path) -> Path:
    """Save ROC curves as PNG: binary, one curve for ``labels[1]``; multiclass, one-vs-rest per class
    (a class without positives or negatives among the rows has no curve)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = list(labels)
    truth = _encode(y_true, labels)
    p = _probabilities(proba, len(truth), len(labels))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    classes = [1] if len(labels) == 2 else range(len(labels))
    for i in classes:
        positive = truth == i
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, i])
        ax.plot(fpr, tpr, label=f"{labels[i]} (AUC {roc_auc_score(positive, p[:, i]):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    kind = f"positive class {labels[1]}" if len(labels) == 2 else "one-vs-rest"
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=f"Test split ROC ({kind})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(
    y_true: Sequence[str], probas: dict[str, np.ndarray], labels: Sequence[str], path: Path
) -> Path:
    """Save a reliability diagram as PNG: per-bin accuracy against mean confidence (max probability) for
    each named set of probabilities (the first one also as bars), with the ECE in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for position, (name, proba) in enumerate(probas.items()):
        bins = reliability_bins(y_true, proba, labels)
        ece = expected_calibration_error(y_true, proba, labels)
        filled = [i for i, c in enumerate(bins["counts"]) if c]
        conf = [bins["confidence"][i] for i in filled]
        acc = [bins["accuracy"][i] for i in filled]
        if position == 0:
            lefts = [bins["edges"][i] for i in filled]
            width = bins["edges"][1] - bins["edges"][0]
            ax.bar(lefts, acc, width=width, align="edge", alpha=0.3, edgecolor="black", label=f"{name} bins")
        ax.plot(conf, acc, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    ax.set(xlabel="Confidence (max class probability)", ylabel="Accuracy", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(f"Reliability diagram ({ECE_BINS} equal-width bins)")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- evaluate

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
    recipe: Recipe, layout: RunLayout, champion: Predictor | None = None, champion_version: str | None = None
) -> Path:
    """Score the run's model, the baselines and (optionally) the champion on the same test rows.

    Args:
        recipe: the validated recipe.
        layout: the run folder (reads ``model/`` and the splits; writes ``eval/``).
        champion: predictions of the current champion for a frame of test rows, if there is one.
        champion_version: the registry version behind ``champion`` (recorded for the gate).

    Returns:
        The path of ``eval/metrics.json``: ``{"model": ..., "baselines": {...}, "champion": ... | null}``
        (classification adds ``sensitivity``, ``gate_bootstrap`` and ``plots``; see the module docstring).
    """
    layout.eval_dir.mkdir(parents=True, exist_ok=True)
    if recipe.task == "sft":
        result = _evaluate_sft(recipe, layout, champion)
    else:
        result = _evaluate_classification(recipe, layout, champion)
    result.update(
        {"primary_metric": recipe.evaluation.gate.metric(recipe.task), "champion_version": champion_version}
    )
    layout.metrics.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return layout.metrics


def _evaluate_classification(recipe: Recipe, layout: RunLayout, champion: Predictor | None) -> dict:
    from tunery.models import resolve_model

    test = pd.read_parquet(layout.split("test"))
    train = pd.read_parquet(layout.split("train"))
    classifier = TextClassifier(layout.model_dir, batch_size=recipe.training.eval_batch_size)
    labels = classifier.labels
    texts, truth = test["text"].tolist(), test["label"].astype(str).tolist()

    # The test split holds cleaned text already; cleaning again would be a no-op, so skip it.
    predict_proba = functools.partial(classifier.predict_proba, clean=False)

    proba = _probabilities(predict_proba(texts), len(texts), len(labels))
    predictions = _predicted(proba, labels)
    model_metrics = classification_metrics(truth, predictions, labels, proba)
    sensitivity = sensitivity_analysis(predict_proba, texts, truth, labels, predictions)
    del classifier, predict_proba  # free the fine-tuned model before the linear probe loads the base

    majority = majority_baseline(train, len(test))
    tfidf_pred, tfidf_proba = tfidf_logreg_baseline(train, texts, labels)
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

    champion_metrics, gate_bootstrap = None, None
    if champion:
        champion_pred, champion_proba = champion_outputs(champion(test), labels)
        champion_metrics = classification_metrics(truth, champion_pred, labels, champion_proba)
        if champion_proba is None:
            champion_metrics["note"] = "the champion gave labels only: probability metrics omitted"
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
    return {
        "labels": labels,
        "model": model_metrics,
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


def _evaluate_sft(recipe: Recipe, layout: RunLayout, champion: Predictor | None) -> dict:
    """Perplexity on the whole test split; generations on a sample, scored against the references."""
    from transformers import AutoTokenizer

    from tunery import methods
    from tunery.models import resolve_model
    from tunery.sft import generate_answers

    test = pd.read_parquet(layout.split("test"))
    sample = test.head(recipe.evaluation.generation_samples).reset_index(drop=True)
    tokenizer = AutoTokenizer.from_pretrained(layout.model_dir)
    model = methods.load_exported(layout.model_dir, "sft")
    base = methods.load_base_model(resolve_model(recipe.model.base), "sft", None, recipe).eval()
    generate = dict(
        system_prompt=recipe.sft.system_prompt, max_new_tokens=recipe.sft.generation_max_new_tokens
    )
    answers = generate_answers(model, tokenizer, sample, **generate)
    base_answers = generate_answers(base, tokenizer, sample, **generate)
    references = sample["output"].tolist()
    pd.DataFrame(
        {
            "instruction": sample["instruction"],
            "input": sample["input"],
            "reference": references,
            "answer": answers,
            "untuned_answer": base_answers,
        }
    ).to_parquet(layout.eval_dir / "generations.parquet", index=False)
    tuned = {
        **generation_metrics(references, answers),
        "perplexity": perplexity(model, tokenizer, test, recipe),
    }
    zero_shot = {
        **generation_metrics(references, base_answers),
        "perplexity": perplexity(base, tokenizer, test, recipe),
    }
    return {
        "model": tuned,
        "baselines": {"zero_shot": zero_shot},
        "champion": generation_metrics(references, champion(sample)) if champion else None,
        "samples": [
            {"instruction": i, "reference": r, "answer": a, "untuned_answer": b}
            for i, r, a, b in zip(sample["instruction"], references, answers, base_answers, strict=True)
        ][:8],
    }


def perplexity(model, tokenizer, frame: pd.DataFrame, recipe: Recipe) -> float:
    """exp(mean cross-entropy) over the answer tokens of every example (prompt tokens are masked)."""
    import math

    import torch

    from tunery.sft import SftCollator, build_sft_datasets

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


def headline(metrics: dict) -> dict[str, float]:
    """The flat numbers worth logging as MLflow metrics: test_*, baseline_<name>_*, champion_*, and for
    classification gate_bootstrap_* and sensitivity_<perturbation>_*."""

    def numbers(values: dict) -> dict:
        return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    flat = {f"test_{k}": v for k, v in numbers(metrics["model"]).items()}
    for name, values in metrics["baselines"].items():
        flat.update({f"baseline_{name}_{k}": v for k, v in numbers(values).items()})
    if metrics.get("champion"):
        flat.update({f"champion_{k}": v for k, v in numbers(metrics["champion"]).items()})
    if metrics.get("gate_bootstrap"):
        boot = metrics["gate_bootstrap"]
        flat.update({f"gate_bootstrap_{k}": boot[k] for k in ("delta", "ci_low", "ci_high") if k in boot})
    for name, values in ((metrics.get("sensitivity") or {}).get("perturbations") or {}).items():
        flat.update({f"sensitivity_{name}_{k}": v for k, v in numbers(values).items()})
    return flat
