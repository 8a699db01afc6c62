"""Sensitivity of a classifier: seeded perturbations of the test texts (typos, case, truncation,
punctuation) and per-slice scores (text length, class, and any grouping column such as the source file or
the drop a row came from), as a table a reader can act on, worst slice first.

- :func:`sensitivity_analysis`: the dict stored under ``sensitivity`` in ``eval/metrics.json``.
- :func:`slice_table`: that dict as one row per slice and perturbation, worst first.
- :func:`write_sensitivity`: the table as ``eval/sensitivity.csv`` and one bar chart per dimension.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from tunery.evaluation.metrics import argmax_labels
from tunery.evaluation.plots import plot_slices

PERTURBATION_SEED = 0
TYPO_RATE = 0.10
SMALL_SLICE = 20  # rows: a slice with fewer is flagged, its accuracy moves too much with one row
SMALL_NOTE = "too few rows to act on"
WILSON_Z = 1.959964  # two-sided 95%
SENSITIVITY_CSV = "sensitivity.csv"  # in the eval folder: written by write_sensitivity
SENSITIVITY_PLOT_PREFIX = "sensitivity_"  # ``plots`` keys (and PNG names) of the per-dimension charts
TABLE_COLUMNS = ["dimension", "slice", "n", "accuracy", "delta", "ci_low", "ci_high", "small"]
EXTRA_COLUMNS = ["macro_f1", "flipped"]  # where they apply (macro-F1: not per class; flipped: perturbations)
# metrics.json keeps the key "class" for earlier runs' readers; the table names the data's column.
_DIMENSIONS = {"class": "label"}

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


def wilson_interval(correct: int, n: int, z: float = WILSON_Z) -> tuple[float, float] | tuple[None, None]:
    """The Wilson score interval of a proportion ``correct / n`` (95% by default); (None, None) for n = 0.

    Chosen over a bootstrap because it needs no resampling and stays honest at the edges: a slice that is
    wrong on all of its 30 rows gets [0, 0.11], where a bootstrap gives the degenerate [0, 0].
    """
    if n <= 0:
        return None, None
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exact at the edges (the formula gives 0 and 1 there, up to rounding)
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def _scored(rows: np.ndarray, truth: np.ndarray, pred: np.ndarray, overall: float, f1: bool) -> dict:
    """n, accuracy (macro-F1 over the labels present when ``f1``), delta vs ``overall``, 95% interval and
    the small-slice flag of the rows selected by the boolean mask ``rows``."""
    n = int(rows.sum())
    if not n:
        return {
            "n": 0,
            "accuracy": None,
            "delta_accuracy": None,
            "ci_low": None,
            "ci_high": None,
            "small": True,
        }
    correct = int((truth[rows] == pred[rows]).sum())
    low, high = wilson_interval(correct, n)
    out = {"n": n, "accuracy": correct / n}
    if f1:
        out["macro_f1"] = _accuracy_macro_f1(truth[rows].tolist(), pred[rows].tolist(), None)["macro_f1"]
    return {
        **out,
        "delta_accuracy": correct / n - overall,
        "ci_low": low,
        "ci_high": high,
        "small": n < SMALL_SLICE,
    }


def _overall(truth: np.ndarray, pred: np.ndarray) -> float:
    return float((truth == pred).mean()) if len(truth) else 0.0


def length_slices(texts: Sequence[str], y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    """Scores per word-count quartile bucket of ``texts`` (see :func:`group_slices` for the fields).

    Bucket q1 holds rows with at most the 25th percentile of word counts, q2 up to the median, q3 up to the
    75th percentile, q4 the rest; empty buckets (tied quartiles) are left out. Each bucket also gives its
    ``words`` range; macro-F1 averages over the labels present in the bucket (true or predicted).
    """
    counts = np.array([len(t.split()) for t in texts])
    if not len(counts):
        return {}
    bucket = np.searchsorted(np.quantile(counts, [0.25, 0.5, 0.75]), counts, side="left")
    truth, pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    overall = _overall(truth, pred)
    out = {}
    for b in range(4):
        rows = bucket == b
        if rows.any():
            words = [int(counts[rows].min()), int(counts[rows].max())]
            out[f"q{b + 1}"] = {"words": words, **_scored(rows, truth, pred, overall, f1=True)}
    return out


def class_slices(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Per true class: its rows' accuracy (the class's recall; macro-F1 is not meaningful there), with the
    fields of :func:`group_slices`; a class without test rows has n 0 and accuracy None."""
    truth, pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    overall = _overall(truth, pred)
    return {label: _scored(truth == label, truth, pred, overall, f1=False) for label in labels}


def group_slices(groups: Sequence, y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    """Scores per distinct value of a grouping column (e.g. the source file of each test row).

    Returns:
        ``{value: {n, accuracy, macro_f1, delta_accuracy, ci_low, ci_high, small}}`` in first-seen order;
        delta is the slice's accuracy minus the accuracy over all rows, ``ci_*`` its 95% Wilson interval,
        ``small`` whether it has fewer than :data:`SMALL_SLICE` rows. A missing value is named "(missing)".
    """
    keys = np.asarray(["(missing)" if _missing(g) else str(g) for g in groups], dtype=object)
    truth, pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    overall = _overall(truth, pred)
    return {key: _scored(keys == key, truth, pred, overall, f1=True) for key in dict.fromkeys(keys.tolist())}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sensitivity_analysis(
    predict_proba: Callable[[list[str]], np.ndarray],
    texts: Sequence[str],
    y_true: Sequence[str],
    labels: Sequence[str],
    y_pred: Sequence[str] | None = None,
    seed: int = PERTURBATION_SEED,
    groups: Mapping[str, Sequence] | None = None,
) -> dict:
    """The model under perturbed test texts, and per slice of the unperturbed test rows.

    Args:
        predict_proba: texts -> class probabilities in ``labels`` order (one loaded model, reused).
        y_pred: the model's predictions on the unperturbed texts (computed when not given).
        groups: extra slicing columns, one value per test row, by name (e.g. ``{"source": ..., "drop":
            ...}``); each becomes a slice dimension next to ``length`` and ``class``.

    Returns:
        ``{"seed", "n", "clean", "perturbations": {name: {accuracy, macro_f1, delta_accuracy,
        delta_macro_f1, changed_rows, flipped, ci_low, ci_high}}, "slices": {"length": {...}, "class":
        {...}, <group>: {...}}}``: deltas are perturbed (or slice) minus clean, ``flipped`` the share of
        rows whose prediction changed, ``ci_*`` 95% Wilson intervals of the accuracy; a slice's fields are
        those of :func:`group_slices`.

    Raises:
        ValueError: a group that is not one value per text, or is named like a built-in dimension.
    """
    labels, texts = list(labels), list(texts)
    groups = dict(groups or {})
    for name, values in groups.items():
        if name in ("length", "class", *_DIMENSIONS.values(), "perturbation"):
            raise ValueError(f"group {name!r} clashes with a built-in slice dimension: rename it")
        if len(values) != len(texts):
            raise ValueError(f"group {name!r} has {len(values)} values for {len(texts)} test rows")
    if y_pred is None:
        y_pred = argmax_labels(predict_proba(texts), labels)
    clean = _accuracy_macro_f1(y_true, y_pred, labels)
    perturbations = {}
    for name, perturb in PERTURBATIONS.items():
        changed = perturb(texts, seed=seed)
        predicted = argmax_labels(predict_proba(changed), labels)
        scores = _accuracy_macro_f1(y_true, predicted, labels)
        low, high = wilson_interval(round(scores["accuracy"] * len(texts)), len(texts))
        perturbations[name] = {
            **scores,
            "delta_accuracy": scores["accuracy"] - clean["accuracy"],
            "delta_macro_f1": scores["macro_f1"] - clean["macro_f1"],
            "changed_rows": int(sum(a != b for a, b in zip(texts, changed, strict=True))),
            "flipped": float(np.mean([a != b for a, b in zip(y_pred, predicted, strict=True)]))
            if texts
            else 0.0,
            "ci_low": low,
            "ci_high": high,
        }
    slices = {
        "length": length_slices(texts, y_true, y_pred),
        "class": class_slices(y_true, y_pred, labels),
        **{name: group_slices(values, y_true, y_pred) for name, values in groups.items()},
    }
    return {"seed": seed, "n": len(texts), "clean": clean, "perturbations": perturbations, "slices": slices}


# ------------------------------------------------------------------------------------------ the table


def _slice_name(dimension: str, key: str, values: Mapping) -> str:
    if dimension == "length" and values.get("words"):
        low, high = values["words"]
        return f"{key} ({low} words)" if low == high else f"{key} ({low}-{high} words)"
    return str(key)


def slice_table(sensitivity: Mapping):
    """One row per slice and per perturbation of :func:`sensitivity_analysis`'s dict, worst first.

    Columns: :data:`TABLE_COLUMNS` (dimension ``length``, ``label``, each group, or ``perturbation``;
    ``delta`` is accuracy minus the overall clean accuracy; ``ci_*`` the 95% interval; ``small`` fewer than
    :data:`SMALL_SLICE` rows) then :data:`EXTRA_COLUMNS`. Sorted by accuracy, lowest first, ties by the
    larger n; slices without rows last. Intervals and deltas missing from an earlier run's dict are
    computed from n and accuracy.

    Returns:
        a ``pandas.DataFrame``.
    """
    import pandas as pd

    overall = (sensitivity.get("clean") or {}).get("accuracy")
    records = []
    entries = [
        (_DIMENSIONS.get(dimension, dimension), _slice_name(dimension, key, values), values)
        for dimension, slices in (sensitivity.get("slices") or {}).items()
        for key, values in slices.items()
    ]
    n_rows = sensitivity.get("n")
    entries += [
        ("perturbation", name, {"n": n_rows, **p})
        for name, p in (sensitivity.get("perturbations") or {}).items()
    ]
    for dimension, name, values in entries:
        n, accuracy = values.get("n"), values.get("accuracy")
        low, high = values.get("ci_low"), values.get("ci_high")
        if low is None and accuracy is not None and n:
            low, high = wilson_interval(round(accuracy * n), n)
        delta = values.get("delta_accuracy")
        if delta is None and accuracy is not None and overall is not None:
            delta = accuracy - overall
        records.append(
            {
                "dimension": dimension,
                "slice": name,
                "n": n,
                "accuracy": accuracy,
                "delta": delta,
                "ci_low": low,
                "ci_high": high,
                "small": bool(n is not None and n < SMALL_SLICE),
                "macro_f1": values.get("macro_f1"),
                "flipped": values.get("flipped"),
            }
        )
    table = pd.DataFrame.from_records(records, columns=TABLE_COLUMNS + EXTRA_COLUMNS)
    table = table.astype({c: "float64" for c in ("accuracy", "delta", "ci_low", "ci_high", *EXTRA_COLUMNS)})
    table["n"] = table["n"].astype("Int64")
    table = table.sort_values(["accuracy", "n"], ascending=[True, False], na_position="last", kind="stable")
    return table.reset_index(drop=True)


def _file_stem(dimension: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", dimension.lower()).strip("_") or "slices"


def write_sensitivity(sensitivity: Mapping, eval_dir: Path) -> dict[str, str]:
    """Write :func:`slice_table` as ``eval_dir / SENSITIVITY_CSV`` and one bar chart per dimension
    (accuracy per slice with its 95% interval, the overall accuracy as a line, worst on top).

    Returns:
        ``{"sensitivity_<dimension>": "<file name in eval_dir>"}`` of the charts, in dimension order
        (length, label, the groups, perturbation): the ``plots`` entries of ``metrics.json``. The CSV is
        always :data:`SENSITIVITY_CSV` and is not in it (it is not a plot).
    """
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    table = slice_table(sensitivity)
    table.to_csv(eval_dir / SENSITIVITY_CSV, index=False)
    overall = (sensitivity.get("clean") or {}).get("accuracy")
    written = {}
    dimensions = [_DIMENSIONS.get(d, d) for d in sensitivity.get("slices") or {}] + ["perturbation"]
    for dimension in dimensions:
        rows = table[(table["dimension"] == dimension) & table["accuracy"].notna()]
        if rows.empty:
            continue
        stem = SENSITIVITY_PLOT_PREFIX + _file_stem(dimension)
        reference = "clean texts" if dimension == "perturbation" else "overall"
        title = f"Accuracy by {dimension}" if dimension != "perturbation" else "Accuracy under perturbation"
        plot_slices(rows.to_dict("records"), overall, eval_dir / f"{stem}.png", title, reference)
        written[stem] = f"{stem}.png"
    return written
