"""Drift between a new data drop and the history it joins (classification data: `text`, `label`).

Four measures, each cheap and bounded: population stability index (PSI) of the label shares, of the
word-count lengths and of the history's most frequent words, and a classifier two-sample test (can a
TF-IDF logistic regression tell the drop from the history? its cross-validated ROC AUC). The report is
a dict written as JSON, with PNG plots and a markdown summary for a Prefect artifact.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tunery.config import DriftConfig
from tunery.plotting import figure, save

_WORD = re.compile(r"\w+")
_MIN_ROWS = 10  # below this per side a two-sample test says nothing worth reporting
_TOP_NEW_WORDS = 15


def _tokens(text: str) -> list[str]:
    """Lower-cased word tokens of one text."""
    return _WORD.findall(str(text).lower())


def _shares(counts: np.ndarray) -> np.ndarray:
    """Counts (or proportions) -> proportions; all zeros stay zeros."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def population_stability_index(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins.

    Args:
        expected: counts or proportions per bin of the reference (history).
        actual: counts or proportions per bin of the new drop, same length.
        eps: floor of each proportion, so that an empty bin gives a large but finite term.

    Returns:
        The PSI (0 for identical distributions; by convention > 0.25 is a large shift).
    """
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        raise ValueError(f"PSI needs bins of the same length, got {expected.shape} and {actual.shape}.")
    e = np.maximum(_shares(expected), eps)
    a = np.maximum(_shares(actual), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def label_psi(history_labels: Iterable, new_labels: Iterable) -> tuple[float, dict]:
    """PSI of the label shares over the union of the labels of both sides.

    Returns:
        (psi, {"history": {label: share}, "new": {label: share}}); labels are given as strings.
    """
    history = Counter(str(label) for label in history_labels)
    new = Counter(str(label) for label in new_labels)
    labels = sorted(set(history) | set(new))
    h = np.array([history[label] for label in labels], dtype=float)
    n = np.array([new[label] for label in labels], dtype=float)
    summary = {
        "history": dict(zip(labels, _shares(h).tolist(), strict=True)),
        "new": dict(zip(labels, _shares(n).tolist(), strict=True)),
    }
    return population_stability_index(h, n), summary


def _word_counts(texts: Iterable[str]) -> np.ndarray:
    return np.array([len(_tokens(t)) for t in texts], dtype=float)


def length_psi(history_texts: Sequence[str], new_texts: Sequence[str], bins: int = 10) -> tuple[float, dict]:
    """PSI of the word-count lengths, binned at the history's quantiles.

    Interior edges are the history's 1/bins .. (bins-1)/bins quantiles, deduplicated (word counts are
    integers, so short texts give repeated quantiles); the outer bins are open-ended, so a drop of much
    longer or shorter texts still lands in a bin. A value equal to an edge goes to the bin above it.
    Ties mean that a history of a single length c has bins (< c) and (>= c): a drop of only longer
    texts then shows no length PSI (the two-sample and vocabulary measures still see it).

    Returns:
        (psi, {"edges", "history_shares", "new_shares", "history_mean_words", "new_mean_words"}).
    """
    h, n = _word_counts(history_texts), _word_counts(new_texts)
    quantiles = np.quantile(h, np.linspace(0, 1, bins + 1)[1:-1]) if len(h) else np.array([])
    edges = np.unique(quantiles)
    h_counts = np.bincount(np.searchsorted(edges, h, side="right"), minlength=len(edges) + 1)
    n_counts = np.bincount(np.searchsorted(edges, n, side="right"), minlength=len(edges) + 1)
    summary = {
        "edges": edges.tolist(),
        "history_shares": _shares(h_counts).tolist(),
        "new_shares": _shares(n_counts).tolist(),
        "history_mean_words": float(h.mean()) if len(h) else 0.0,
        "new_mean_words": float(n.mean()) if len(n) else 0.0,
    }
    return population_stability_index(h_counts, n_counts), summary


def _over_represented(history: Counter, new: Counter, eps: float = 1e-4) -> list[dict]:
    """Words whose share grew most in the drop, ranked by their PSI term (frequent and shifted first)."""
    h_total, n_total = max(sum(history.values()), 1), max(sum(new.values()), 1)
    rows = []
    for word, count in new.items():
        a, e = count / n_total, max(history.get(word, 0) / h_total, eps)
        if a > e:
            rows.append(
                {
                    "word": word,
                    "history_share": history.get(word, 0) / h_total,
                    "new_share": a,
                    "psi_term": (a - e) * np.log(a / e),
                }
            )
    rows.sort(key=lambda r: r["psi_term"], reverse=True)
    return [{**r, "psi_term": float(r["psi_term"])} for r in rows[:_TOP_NEW_WORDS]]


def vocabulary_psi(
    history_texts: Sequence[str], new_texts: Sequence[str], top_k: int = 200
) -> tuple[float, dict]:
    """PSI over the history's top_k words plus one "other" bin (lower-cased \\w+ tokens).

    Returns:
        (psi, summary) with top_k, token counts, out_of_vocabulary_rate (share of the drop's tokens
        never seen anywhere in the history) and over_represented (the drop's words whose share grew most).
    """
    history = Counter(tok for t in history_texts for tok in _tokens(t))
    new = Counter(tok for t in new_texts for tok in _tokens(t))
    top = [word for word, _ in history.most_common(top_k)]
    h_top, n_top = [history[w] for w in top], [new[w] for w in top]
    h = np.array([*h_top, sum(history.values()) - sum(h_top)], dtype=float)
    n = np.array([*n_top, sum(new.values()) - sum(n_top)], dtype=float)
    n_tokens = sum(new.values())
    unseen = sum(count for word, count in new.items() if word not in history)
    summary = {
        "top_k": len(top),
        "history_tokens": int(h.sum()),
        "new_tokens": int(n_tokens),
        "out_of_vocabulary_rate": unseen / n_tokens if n_tokens else 0.0,
        "other_share": {"history": float(_shares(h)[-1]), "new": float(_shares(n)[-1])},
        "over_represented": _over_represented(history, new),
    }
    return population_stability_index(h, n), summary


def _sample(texts: Sequence[str], max_rows: int, rng: np.random.Generator) -> list[str]:
    texts = [str(t) for t in texts]
    if len(texts) <= max_rows:
        return texts
    return [texts[i] for i in np.sort(rng.choice(len(texts), size=max_rows, replace=False))]


def classifier_two_sample_test(
    history_texts: Sequence[str], new_texts: Sequence[str], max_rows: int, seed: int
) -> dict:
    """Can a classifier tell the drop from the history? Out-of-fold ROC AUC of "is new".

    Up to max_rows texts per side are sampled (seeded); TF-IDF (word 1-2 grams, min_df 2, sublinear tf)
    and a logistic regression (class_weight="balanced" when the sides differ in size) are scored with
    stratified k-fold CV, k = 5, fewer (at least 2) when a side has under 25 rows. AUC ~0.5: the sides
    look alike; near 1: the drop is a different population.

    Returns:
        {"auc", "rows": {"history", "new"}, "folds"}, or {"auc": None, "skipped": reason}.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    history, new = _sample(history_texts, max_rows, rng), _sample(new_texts, max_rows, rng)
    if min(len(history), len(new)) < _MIN_ROWS:
        return {
            "auc": None,
            "skipped": f"too few rows (history {len(history)}, new {len(new)}; need {_MIN_ROWS})",
        }
    y = np.r_[np.zeros(len(history)), np.ones(len(new))]
    # the vectoriser is fitted once on both sides: it sees no labels, and refitting per fold costs 5x
    try:
        x = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit_transform(history + new)
    except ValueError as err:  # every text empty or only once-seen words: nothing to learn from
        return {"auc": None, "skipped": f"no usable vocabulary ({err})"}
    folds = max(2, min(5, min(len(history), len(new)) // 5))
    model = LogisticRegression(
        solver="liblinear", class_weight="balanced" if len(history) != len(new) else None
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, cv=cv, method="decision_function")
    return {
        "auc": float(roc_auc_score(y, scores)),
        "rows": {"history": len(history), "new": len(new)},
        "folds": folds,
    }


def _high(report: dict, cfg: DriftConfig) -> list[str]:
    """A readable line per measure above its threshold (PSIs net of their sampling noise)."""
    checks = [
        ("label PSI", report["label"]["excess"] if "label" in report else None, cfg.psi_threshold),
        ("length PSI", report["length"]["excess"], cfg.psi_threshold),
        ("vocabulary PSI", report["vocabulary"]["excess"], cfg.vocabulary_psi_threshold),
        ("two-sample AUC", report["two_sample"]["auc"], cfg.auc_threshold),
    ]
    return [
        f"{name} {value:.2f} > {limit:.2f}" + (" (net of sampling noise)" if "PSI" in name else "")
        for name, value, limit in checks
        if value is not None and value > limit
    ]


NOISE_REPEATS = 3


def sampling_noise(measure, history: pd.DataFrame, n_new: int, seed: int) -> float:
    """The PSI that a drop of ``n_new`` rows drawn from the history itself gets (mean of a few draws).

    PSI grows as samples shrink even without any drift (a 200-row SMS drop scores ~0.3 on 201 vocabulary
    bins by chance alone, bursty words being the main cause), so thresholds apply to the PSI in excess of
    this no-drift level rather than to the raw value.
    """
    rng = np.random.default_rng(seed)
    size = min(n_new, len(history) // 2)
    if size < 1:
        return 0.0
    values = []
    for _ in range(NOISE_REPEATS):
        picked = np.zeros(len(history), dtype=bool)
        picked[rng.choice(len(history), size=size, replace=False)] = True
        values.append(measure(history[~picked], history[picked])[0])
    return float(np.mean(values))


def plot_labels(label: dict, path: Path) -> Path:
    """Grouped bars: share of each label in the history and in the drop."""
    labels = sorted(set(label["history"]) | set(label["new"]))
    fig, ax = figure(max(6, 1.2 * len(labels) + 2), 4)
    x = np.arange(len(labels))
    for i, side in enumerate(("history", "new")):
        ax.bar(x + i * 0.4, [label[side].get(lb, 0.0) for lb in labels], 0.4, label=side)
    ax.set_xticks(x + 0.2, labels, rotation=30, ha="right")
    ax.set_ylabel("share of rows")
    ax.set_title(f"Labels (PSI {label['psi']:.3f})")
    ax.legend()
    return save(fig, path)


def plot_lengths(history_texts: Sequence[str], new_texts: Sequence[str], psi: float, path: Path) -> Path:
    """Overlaid normalised histograms of the word counts of both sides."""
    h, n = _word_counts(history_texts), _word_counts(new_texts)
    upper = max(float(np.quantile(np.r_[h, n], 0.99)), 10.0)  # a few huge texts would squash the rest
    bins = np.linspace(0, upper, 40)
    fig, ax = figure(7, 4)
    for values, name in ((h, "history"), (n, "new")):
        ax.hist(
            np.minimum(values, upper), bins=bins, density=True, alpha=0.5, label=f"{name} ({len(values)})"
        )
    ax.set_xlabel("words per text (last bin: longer)")
    ax.set_ylabel("density")
    ax.set_title(f"Text length (PSI {psi:.3f})")
    ax.legend()
    return save(fig, path)


def plot_vocabulary(vocabulary: dict, path: Path) -> Path:
    """Horizontal bars: the drop's most over-represented words, history share vs drop share."""
    rows = vocabulary["over_represented"][::-1]  # largest at the top
    fig, ax = figure(7, max(3, 0.3 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["history_share"] for r in rows], 0.4, label="history")
    ax.barh(y + 0.2, [r["new_share"] for r in rows], 0.4, label="new")
    ax.set_yticks(y, [r["word"] for r in rows])
    ax.set_xlabel("share of tokens")
    title = f"Most over-represented words in the drop (vocabulary PSI {vocabulary['psi']:.3f})"
    ax.set_title(title if rows else "No over-represented words in the drop")
    ax.legend()
    return save(fig, path)


def _write(report: dict, out_dir: Path) -> dict:
    (out_dir / "drift.json").write_text(json.dumps(report, indent=2))
    return report


def drift_report(history: pd.DataFrame, new: pd.DataFrame, cfg: DriftConfig, out_dir: Path) -> dict:
    """All four drift measures of a drop against its history, with plots and out_dir/drift.json.

    Args:
        history: the rows already trained on (`text`, `label`); empty for the first drop. sft data: the
            prompts as `text` and an empty `label` (no label measure then).
        new: the drop (`text`, `label`).
        cfg: thresholds, sampling bound, seed and the action to take on high drift.
        out_dir: created; receives drift.json, labels.png, lengths.png and vocabulary.png.

    Returns:
        The report: rows, label, length, vocabulary, two_sample, thresholds, high (a line per measure above
        its threshold), drifted, action, plots. With nothing to compare (empty history or empty drop) the
        measures are left out, drifted is False and a note says why.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = {
        "rows": {"history": len(history), "new": len(new)},
        "thresholds": {
            "psi": cfg.psi_threshold,
            "vocabulary_psi": cfg.vocabulary_psi_threshold,
            "auc": cfg.auc_threshold,
        },
        "action": cfg.action,
    }
    if history.empty or new.empty:
        note = "no history: first drop" if history.empty else "empty drop: nothing to compare"
        return _write({**base, "high": [], "drifted": False, "note": note, "plots": []}, out_dir)
    # Every measure reads at most cfg.max_rows rows of each side (seeded sample): the cost stays bounded as
    # the history grows, and a few thousand rows pin these distributions down well enough.
    history = history.sample(n=min(len(history), cfg.max_rows), random_state=cfg.seed)
    new = new.sample(n=min(len(new), cfg.max_rows), random_state=cfg.seed)
    h_texts, n_texts = history["text"].astype(str).tolist(), new["text"].astype(str).tolist()
    report = {**base, "sampled_rows": {"history": len(history), "new": len(new)}}
    labelled = bool((history["label"].astype(str) != "").any() or (new["label"].astype(str) != "").any())
    measures = {
        "label": lambda h, n: label_psi(h["label"].astype(str), n["label"].astype(str)),
        "length": lambda h, n: length_psi(h["text"].astype(str).tolist(), n["text"].astype(str).tolist()),
        "vocabulary": lambda h, n: vocabulary_psi(
            h["text"].astype(str).tolist(), n["text"].astype(str).tolist()
        ),
    }
    if not labelled:
        del measures["label"]
    for name, measure in measures.items():
        psi, summary = measure(history, new)
        noise = sampling_noise(measure, history, len(new), cfg.seed)
        report[name] = {"psi": psi, "noise": noise, "excess": max(psi - noise, 0.0), **summary}
    report["two_sample"] = classifier_two_sample_test(h_texts, n_texts, cfg.max_rows, cfg.seed)
    report["high"] = _high(report, cfg)
    report["drifted"] = bool(report["high"])
    report["plots"] = [
        *([str(plot_labels(report["label"], out_dir / "labels.png"))] if labelled else []),
        str(plot_lengths(h_texts, n_texts, report["length"]["psi"], out_dir / "lengths.png")),
        str(plot_vocabulary(report["vocabulary"], out_dir / "vocabulary.png")),
    ]
    return _write(report, out_dir)


def drift_markdown(report: dict) -> str:
    """A short markdown summary of a drift report (for a Prefect artifact)."""
    rows = report["rows"]
    lines = ["## Drift", f"history **{rows['history']}** rows, drop **{rows['new']}** rows", ""]
    if "note" in report:
        return "\n".join([*lines, f"> {report['note']}: not drifted"])
    limits = report["thresholds"]
    two = report["two_sample"]
    measures = [
        *([("label PSI", report["label"], limits["psi"])] if "label" in report else []),
        ("length PSI", report["length"], limits["psi"]),
        ("vocabulary PSI", report["vocabulary"], limits["vocabulary_psi"]),
    ]
    lines += [
        "| measure | value | no-drift level | judged | threshold | high? |",
        "|---|---|---|---|---|---|",
    ]
    for name, block, limit in measures:
        high = "**yes**" if block["excess"] > limit else "no"
        values = f"{block['psi']:.3f} | {block['noise']:.3f} | {block['excess']:.3f}"
        lines.append(f"| {name} | {values} | {limit:.2f} | {high} |")
    if two["auc"] is None:
        lines.append(
            f"| two-sample AUC | skipped: {two.get('skipped', '')} | 0.5 | - | {limits['auc']:.2f} | no |"
        )
    else:
        high = "**yes**" if two["auc"] > limits["auc"] else "no"
        lines.append(
            f"| two-sample AUC | {two['auc']:.3f} | 0.5 | {two['auc']:.3f} | {limits['auc']:.2f} | {high} |"
        )
    lines.append(
        f"\nout-of-vocabulary tokens in the drop: {report['vocabulary']['out_of_vocabulary_rate']:.1%}"
    )
    verdict = f"**drifted** (action: {report['action']})" if report["drifted"] else "not drifted"
    lines += ["", f"verdict: {verdict}", *[f"- high: {line}" for line in report["high"]]]
    return "\n".join(lines)
