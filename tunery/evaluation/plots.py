"""The evaluation's PNG plots: confusion matrix, ROC curves and reliability diagram."""

from collections.abc import Sequence
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
