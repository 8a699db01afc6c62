"""The evaluation's PNG plots: confusion matrix, ROC curves, reliability diagram and accuracy per slice."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tunery.evaluation.metrics import (
    ECE_BINS,
    encode_labels,
    expected_calibration_error,
    probability_rows,
    reliability_bins,
)
from tunery.plotting import pyplot, save

SLICES_PLOTTED = 25  # bars per slice chart: the worst ones (a source column can have hundreds of files)
SLICE_LABEL_CHARS = 36  # a longer slice name (a file path) keeps its end


def plot_confusion(y_true: list[str], y_pred: list[str], labels: list[str], path: Path) -> Path:
    """Save a confusion-matrix PNG (rows: true label, columns: predicted)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set_title("Test split confusion matrix")
    return save(fig, path, dpi=110)


def plot_roc_curves(y_true: Sequence[str], proba, labels: Sequence[str], path: Path) -> Path:
    """Save ROC curves as PNG: binary, one curve for ``labels[1]``; multiclass, one-vs-rest per class
    (a class without positives or negatives among the rows has no curve)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = list(labels)
    truth = encode_labels(y_true, labels)
    p = probability_rows(proba, len(truth), len(labels))
    plt = pyplot()
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
    return save(fig, path, dpi=110)


def plot_reliability(
    y_true: Sequence[str], probas: dict[str, np.ndarray], labels: Sequence[str], path: Path
) -> Path:
    """Save a reliability diagram as PNG: per-bin accuracy against mean confidence (max probability) for
    each named set of probabilities (the first one also as bars), with the ECE in the legend."""
    plt = pyplot()
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
    return save(fig, path, dpi=110)


def _short(name: str, limit: int = SLICE_LABEL_CHARS) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def plot_slices(
    rows: Sequence[Mapping],
    overall: float | None,
    path: Path,
    title: str = "Accuracy by slice",
    reference: str = "overall",
) -> Path:
    """Save a horizontal bar chart of accuracy per slice as PNG, worst on top.

    Args:
        rows: slices worst first, each with ``slice``, ``n``, ``accuracy``, ``ci_low``, ``ci_high`` and
            ``small`` (rows of :func:`~tunery.evaluation.robustness.slice_table`); the first
            :data:`SLICES_PLOTTED` are drawn.
        overall: the accuracy over all test rows, drawn as a vertical line (none when None).
        reference: what ``overall`` is called in the legend ("overall", "clean texts").

    Bars whose whole 95% interval lies below ``overall`` are red (a gap beyond noise), small slices grey and
    hatched (too few rows to act on), the others blue; the interval is the error bar, n is in the label.
    """
    from matplotlib.patches import Patch

    shown = list(rows)[:SLICES_PLOTTED]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.7 + 0.32 * max(len(shown), 1)))
    y = np.arange(len(shown))
    acc = np.array([float(r["accuracy"]) for r in shown])
    low = np.array([float(r["ci_low"]) for r in shown])
    high = np.array([float(r["ci_high"]) for r in shown])
    kinds = [
        "small" if r["small"] else "below" if overall is not None and hi < overall else "other"
        for r, hi in zip(shown, high, strict=True)
    ]
    colours = {"small": "#bbbbbb", "below": "#d62728", "other": "#1f77b4"}
    bars = ax.barh(
        y,
        acc,
        color=[colours[k] for k in kinds],
        xerr=np.clip([acc - low, high - acc], 0, None),  # the interval holds the accuracy, up to rounding
        capsize=3,
        ecolor="black",
    )
    for bar, kind, value, row in zip(bars, kinds, acc, y, strict=True):
        bar.set_hatch("//" if kind == "small" else "")
        # the value on the bar: a slice wrong on every row has no visible bar
        ax.text(
            0.01,
            row,
            f"{value:.2f}",
            va="center",
            fontsize="x-small",
            color="white" if value > 0.1 and kind != "small" else "#d62728" if kind == "below" else "black",
        )
    ax.set_yticks(y, [f"{_short(str(r['slice']))} (n={r['n']})" for r in shown], fontsize="small")
    ax.invert_yaxis()  # the worst slice (first row) on top
    handles = []
    if overall is not None:
        handles.append(ax.axvline(overall, color="black", linestyle="--", linewidth=1))
        handles[-1].set_label(f"{reference} {overall:.3f}")
    if "below" in kinds:
        handles.append(Patch(color=colours["below"], label=f"interval below {reference}"))
    if "small" in kinds:
        handles.append(Patch(facecolor=colours["small"], hatch="//", label="too few rows to act on"))
    if handles:  # under the axes, where it hides no bar
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize="small")
    more = f" (worst {len(shown)} of {len(rows)})" if len(rows) > len(shown) else ""
    ax.set(xlim=(0, 1.02), xlabel="Accuracy (error bar: 95% interval)", title=title + more)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path, dpi=100)
