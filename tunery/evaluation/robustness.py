"""Sensitivity of a classifier: seeded perturbations of the test texts (typos, case, truncation,
punctuation) and per-slice scores (text length, class)."""

import math
import re
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from tunery.evaluation.metrics import argmax_labels

PERTURBATION_SEED = 0
TYPO_RATE = 0.10

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
        y_pred = argmax_labels(predict_proba(texts), labels)
    clean = _accuracy_macro_f1(y_true, y_pred, labels)
    perturbations = {}
    for name, perturb in PERTURBATIONS.items():
        changed = perturb(texts, seed=seed)
        scores = _accuracy_macro_f1(y_true, argmax_labels(predict_proba(changed), labels), labels)
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
