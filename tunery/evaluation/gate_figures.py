"""The figures the gate decides on besides the primary metric, each with its interval: the baseline floor
and the guards (``evaluation.gate.guards``).

Evaluation has the per-row outputs, so it computes every figure here and stores them in ``eval/metrics.json``
(``baseline_floor``, ``guards``); the gate (:func:`tunery.registry.decide`) only applies the rules to them.

A metric is a function of test-row indices (``RowMetric``), so one paired bootstrap serves every metric:
the candidate and the champion (or the baseline) are scored on the same resampled rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tunery.config import COST_GUARDS, JUDGE_GUARD, GuardConfig
from tunery.evaluation.metrics import BOOTSTRAP_SEED, bootstrap_delta, encode_labels

RowMetric = Callable[[np.ndarray], float]
LATENCY_RESAMPLES = 2_000


def _confusion(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts (rows: truth); a prediction outside the labels (-1) counts as wrong for every class."""
    known = pred >= 0
    matrix = np.bincount(truth[known] * k + pred[known], minlength=k * k).reshape(k, k)
    missing = np.bincount(truth[~known], minlength=k)
    return np.concatenate([matrix, missing[:, None]], axis=1)  # last column: unknown predictions


def _scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    k = matrix.shape[0]
    hits = np.diag(matrix[:, :k]).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix[:, :k].sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, 0.0)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"recall": recall, "precision": precision, "f1": f1, "support": support}


def label_metrics(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, RowMetric]:
    """Classification metrics as functions of row indices: the averaged ones (as scikit-learn computes
    them, zero_division=0) and ``recall:<label>``, ``precision:<label>``, ``f1:<label>`` per class."""
    labels = list(labels)
    k = len(labels)
    t, p = encode_labels(truth, labels), encode_labels(pred, labels)

    def averaged(kind: str, weighted: bool) -> RowMetric:
        def value(idx: np.ndarray) -> float:
            scores = _scores(_confusion(t[idx], p[idx], k))
            if weighted:
                total = scores["support"].sum()
                return float((scores[kind] * scores["support"]).sum() / total) if total else 0.0
            return float(scores[kind].mean())

        return value

    out: dict[str, RowMetric] = {
        "accuracy": lambda idx: float(np.mean(t[idx] == p[idx])),
        "macro_f1": averaged("f1", False),
        "weighted_f1": averaged("f1", True),
        "macro_precision": averaged("precision", False),
        "macro_recall": averaged("recall", False),
    }
    for i, label in enumerate(labels):
        for kind in ("recall", "precision", "f1"):
            out[f"{kind}:{label}"] = lambda idx, i=i, kind=kind: float(
                _scores(_confusion(t[idx], p[idx], k))[kind][i]
            )
    return out


def mean_of(values: Sequence[float | None]) -> RowMetric:
    """The mean of per-row values over the rows that have one (NaN when none does: e.g. exact match of
    references without a final number)."""
    array = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

    def value(idx: np.ndarray) -> float:
        chosen = array[idx]
        chosen = chosen[~np.isnan(chosen)]
        return float(chosen.mean()) if len(chosen) else float("nan")

    return value


def baseline_floor(
    model: dict[str, RowMetric], baselines: dict[str, dict[str, RowMetric]], metric: str, n: int
) -> dict | None:
    """The paired bootstrap of (model - the strongest baseline) on ``metric``; the strongest is the one with
    the best value on all rows. None when no baseline has the metric."""
    every = np.arange(n)
    scored = {name: fns[metric](every) for name, fns in baselines.items() if metric in fns}
    scored = {name: value for name, value in scored.items() if value == value}  # NaN: undefined here
    if not scored or n == 0:
        return None
    strongest = max(scored, key=lambda name: scored[name])
    boot = bootstrap_delta(model[metric], baselines[strongest][metric], n, metric)
    return {
        "baseline": strongest,
        "model_value": float(model[metric](every)),
        "baseline_value": float(scored[strongest]),
        "candidates": {name: float(v) for name, v in scored.items()},
        **boot,
    }


def _paired(guard: GuardConfig, candidate: dict[str, RowMetric], champion: dict[str, RowMetric], n: int):
    metric = guard.metric
    if metric not in candidate or metric not in champion:
        return {"error": f"{metric} was not computed on {guard.set or 'test'}"}
    boot = bootstrap_delta(candidate[metric], champion[metric], n, metric)
    every = np.arange(n)
    return {
        "candidate": float(candidate[metric](every)),
        "champion": float(champion[metric](every)),
        "delta": boot["delta"],
        "ci_low": boot["ci_low"],
        "ci_high": boot["ci_high"],
        "n": n,
        "interval": f"paired bootstrap over rows, {boot['resamples']} resamples",
    }


def latency_figure(candidate_ms: Sequence[float], champion_ms: Sequence[float] | None) -> dict:
    """p95 single-request latency of both models and a bootstrap interval of the p95 difference (each
    model's timings resampled on their own: they are separate requests)."""
    cand = np.asarray(candidate_ms, dtype=np.float64)
    out = {"candidate": float(np.percentile(cand, 95)), "n": len(cand)}
    if champion_ms is None:
        return out | {"champion": None}
    champ = np.asarray(champion_ms, dtype=np.float64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    deltas = [
        np.percentile(rng.choice(cand, len(cand)), 95) - np.percentile(rng.choice(champ, len(champ)), 95)
        for _ in range(LATENCY_RESAMPLES)
    ]
    low, high = np.percentile(deltas, [2.5, 97.5])
    return out | {
        "champion": float(np.percentile(champ, 95)),
        "delta": out["candidate"] - float(np.percentile(champ, 95)),
        "ci_low": float(low),
        "ci_high": float(high),
        "interval": f"bootstrap of the p95 difference, {LATENCY_RESAMPLES} resamples",
    }


def guard_figures(
    guards: Sequence[GuardConfig],
    per_set: dict[str, tuple[dict[str, RowMetric], dict[str, RowMetric] | None, int]],
    costs: dict[str, dict] | None = None,
    judge: dict | None = None,
    benchmarks: dict[str, dict] | None = None,
) -> list[dict]:
    """The figures of every guard, candidate against champion.

    Args:
        guards: the recipe's guards.
        per_set: ``{"test" | set name: (candidate metrics, champion metrics or None, rows)}``.
        costs: ``{"latency_p95_ms": latency_figure(...), "model_mb": {"candidate", "champion"}}``.
        judge: the judge's win-rate summary (``win_rate``, ``ci_low``, ``ci_high``, ``n``, ...).
        benchmarks: ``{"candidate": {task: {metric: v, metric_stderr: se}}, "champion": ...}``.

    Returns:
        One dict per guard: ``guard`` (its label), ``metric``, ``set``, ``lower_is_better`` and the figures
        (``candidate``, ``champion``, ``delta``, ``ci_low``, ``ci_high``), or ``error`` when a figure is
        missing (the gate fails such a guard); ``champion`` None when there is no champion yet.
    """
    out = []
    for guard in guards:
        record = {
            "guard": guard.label(),
            "metric": guard.metric,
            "set": guard.set or "test",
            "lower_is_better": guard.metric in COST_GUARDS,
        }
        record.update(_figure(guard, per_set, costs or {}, judge, benchmarks or {}))
        out.append(record)
    return out


def _figure(guard, per_set, costs, judge, benchmarks) -> dict:
    if guard.metric == JUDGE_GUARD:
        if judge is None or judge.get("win_rate") is None:
            return {"error": "the judge gave no valid verdict"}
        return {key: judge.get(key) for key in ("win_rate", "ci_low", "ci_high", "n", "opponent")}
    if guard.metric in COST_GUARDS:
        return costs.get(guard.metric) or {"error": f"{guard.metric} was not measured"}
    if guard.metric.startswith("benchmark:"):
        return _benchmark_figure(guard.metric.split(":", 1)[1], benchmarks)
    name = guard.set or "test"
    if name not in per_set:
        return {"error": f"evaluation set {name!r} was not scored"}
    candidate, champion, n = per_set[name]
    if champion is None:
        every = np.arange(n)
        value = candidate[guard.metric](every) if guard.metric in candidate else None
        return {"candidate": value, "champion": None, "n": n}
    return _paired(guard, candidate, champion, n)


def _benchmark_figure(spec: str, benchmarks: dict) -> dict:
    task, metric = spec.split("/", 1)

    def value(model: str) -> tuple[float | None, float | None]:
        scores = (benchmarks.get(model) or {}).get(task) or {}
        found = scores.get(metric)
        stderr = scores.get(f"{metric}_stderr")
        return (None if found is None else float(found)), (None if stderr in (None, "N/A") else float(stderr))

    cand, cand_se = value("candidate")
    if cand is None:
        return {"error": f"benchmark {task} has no {metric} for the candidate"}
    champ, champ_se = value("champion")
    if champ is None:
        return {"candidate": cand, "champion": None}
    delta = cand - champ
    spread = 1.96 * float(np.hypot(cand_se or 0.0, champ_se or 0.0))
    return {
        "candidate": cand,
        "champion": champ,
        "delta": delta,
        "ci_low": delta - spread,
        "ci_high": delta + spread,
        "interval": "normal, from lm-eval's standard errors",
    }
