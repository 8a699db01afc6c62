"""Classification metrics on label strings, calibration, the paired bootstrap the gate reads, and the
flat headline numbers logged to MLflow."""

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

ECE_BINS = 10
BOOTSTRAP_RESAMPLES = 1_000
BOOTSTRAP_SEED = 0


def encode_labels(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Label strings -> indices into ``labels`` (-1 for a value outside the label set)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64)


def probability_rows(proba, n: int, k: int) -> np.ndarray:
    """Class probabilities as float64 rows that sum to 1 (softmax outputs are float32)."""
    p = np.asarray(proba, dtype=np.float64).reshape(n, k)
    if (p < 0).any():
        raise ValueError("probabilities must be non-negative")
    sums = p.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError("every row of probabilities needs a positive sum")
    return p / sums


def align_proba(proba: np.ndarray, classes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Columns of a fitted estimator's ``predict_proba`` (``classes_`` order) -> ``labels`` order."""
    out = np.zeros((len(proba), len(labels)))
    for j, cls in enumerate(classes):
        out[:, list(labels).index(str(cls))] = proba[:, j]
    return out


def argmax_labels(proba: np.ndarray, labels: Sequence[str]) -> list[str]:
    """The most probable label of each row."""
    return [labels[i] for i in np.asarray(proba).argmax(axis=1)]


def one_hot(predictions: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Probability 1.0 for the predicted class: the probabilities of a predictor that only gives labels."""
    codes = encode_labels(predictions, labels)
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
    truth = encode_labels(y_true, labels)
    p = probability_rows(proba, len(truth), len(labels))
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
    truth = encode_labels(y_true, labels)
    if (truth < 0).any():
        raise ValueError("a true label is not one of the labels")
    k = len(labels)
    p = probability_rows(proba, len(truth), k)
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
    truth, a, b = encode_labels(y_true, labels), encode_labels(pred_a, labels), encode_labels(pred_b, labels)
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


def bootstrap_delta(
    a: Callable[[np.ndarray], float],
    b: Callable[[np.ndarray], float],
    n: int,
    metric: str,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> dict:
    """Percentile CI of a - b over test rows resampled with replacement, the same rows for both (paired).
    Resamples on which a metric is undefined (an AUC over one class) are left out and counted."""
    rng = np.random.default_rng(seed)
    every = np.arange(n)
    deltas = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        deltas.append(a(rows) - b(rows))
    deltas = np.asarray(deltas)
    kept = deltas[~np.isnan(deltas)]
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(kept, [tail, 100 - tail]) if len(kept) else (float("nan"),) * 2
    return {
        "metric": metric,
        "delta": float(a(every) - b(every)),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "resamples": resamples,
        "undefined_resamples": int(len(deltas) - len(kept)),
        "seed": seed,
        "n": n,
    }


_MLFLOW_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")  # what an MLflow metric name may not hold


def headline(metrics: dict) -> dict[str, float]:
    """The flat numbers worth logging as MLflow metrics: test_*, baseline_<name>_*, champion_*, and for
    classification gate_bootstrap_* and sensitivity_<perturbation>_*; the baseline floor, evaluation sets,
    the judge and the benchmark suites where evaluation computed them."""

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
    floor = metrics.get("baseline_floor") or {}
    flat.update({f"baseline_floor_{k}": floor[k] for k in ("delta", "ci_low", "ci_high") if k in floor})
    for name, entry in (metrics.get("sets") or {}).items():  # evaluation sets: set_<name>_<metric>
        flat.update({f"set_{name}_{k}": v for k, v in numbers(entry["model"]).items()})
        if entry.get("champion"):
            flat.update({f"set_{name}_champion_{k}": v for k, v in numbers(entry["champion"]).items()})
    judge = metrics.get("judge") or {}
    flat.update(
        {
            f"judge_{k}": judge[k]
            for k in ("win_rate", "ci_low", "ci_high", "position_bias")
            if judge.get(k) is not None
        }
    )
    for row in (metrics.get("benchmarks") or {}).get("table") or []:  # benchmark_<model>_<task>_<metric>
        for model in ("base", "champion", "candidate"):
            if isinstance(row.get(model), int | float):
                metric = _MLFLOW_UNSAFE.sub("_", f"{row['task']}_{row['metric']}")
                flat[f"benchmark_{model}_{metric}"] = row[model]
    return flat
