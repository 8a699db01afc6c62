"""The champion/challenger gate: every condition a challenger must meet, each with its figure, its interval
and pass/fail, decided from ``eval/metrics.json`` alone.

A challenger becomes champion only when every condition passes:

1. **primary**: no champion yet, or (challenger - champion) on the primary metric is above
   ``gate.min_improvement`` with the paired bootstrap 95% interval above 0 (``gate_bootstrap``). Without a
   bootstrap block (metrics written by hand) the plain margin rule applies and the reason says so.
2. **baseline floor** (``gate.baseline_floor``, on by default): the same rule against the strongest baseline
   evaluation computed (``baseline_floor`` in the metrics: TF-IDF + LR or the linear probe for a classifier,
   the untuned model for sft and preference), the first model included.
3. **guards** (``gate.guards``): a figure that must not get worse than the champion's by more than its
   margin (absolute for scores; relative for latency and model size), or a judge win rate that must reach
   ``at_least``. By default the observed figure decides and its interval is reported; ``strict`` guards pass
   only when the interval's worse end stays within the margin. With no champion yet, guards against the
   champion pass (nothing to regress from), the judge guard excepted (it judges against the untuned model).
4. **forgetting** (continuous learning): a challenger that forgot earlier data is never promoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunery.config import JUDGE_GUARD, GateConfig, GuardConfig

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class GateDecision:
    alias: str
    reason: str
    challenger_score: float
    champion_score: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    # every condition: {"name", "passed", "figure", "compared_with", "delta", "ci_low", "ci_high", "text"}
    conditions: tuple[dict, ...] = field(default_factory=tuple)


def _bootstrap_block(metrics: dict, key: str) -> dict | None:
    """The paired bootstrap of ``metrics`` for ``key``, if evaluation stored a usable one."""
    boot = metrics.get("gate_bootstrap")
    if not isinstance(boot, dict) or boot.get("metric") != key:
        return None
    if not all(isinstance(boot.get(k), int | float) for k in ("ci_low", "ci_high")):
        return None
    return boot


def _condition(name: str, passed: bool, text: str, **figures) -> dict:
    return {"name": name, "passed": bool(passed), "text": text, **figures}


def _primary(metrics: dict, gate: GateConfig, key: str) -> dict:
    """The primary-metric condition against the champion (the wording the gate has always used)."""
    score = metrics["model"][key]
    champion = metrics.get("champion")
    if not champion:
        return _condition("primary", True, f"no champion yet ({key} {score:.4f})", figure=score)
    best = champion[key]
    delta = score - best
    margin = gate.min_improvement
    observed = f"{key} {score:.4f} vs champion {best:.4f}: {delta:+.4f}"
    figures = {"figure": score, "compared_with": best, "delta": delta}
    boot = _bootstrap_block(metrics, key)
    if boot is None:
        rule = "no paired bootstrap CI available, plain margin rule"
        if delta > margin:
            return _condition(
                "primary", True, f"{observed} beats champion by more than {margin:.4f} ({rule})", **figures
            )
        return _condition(
            "primary",
            False,
            f"{observed} does not beat champion by more than {margin:.4f} ({rule})",
            **figures,
        )
    low, high = float(boot["ci_low"]), float(boot["ci_high"])
    level = round(100 * float(boot.get("confidence", 0.95)))
    ci = f"{level}% CI [{low:+.4f}, {high:+.4f}] ({boot.get('resamples', '?')} paired bootstrap resamples)"
    figures |= {"ci_low": low, "ci_high": high}
    if delta <= margin:
        return _condition(
            "primary", False, f"{observed}, {ci}: does not beat champion by more than {margin:.4f}", **figures
        )
    if low <= 0:
        return _condition(
            "primary", False, f"{observed}, {ci} includes 0: does not beat champion reliably", **figures
        )
    return _condition(
        "primary", True, f"{observed}, {ci} excludes 0: beats champion by more than {margin:.4f}", **figures
    )


def _floor(metrics: dict, gate: GateConfig, key: str) -> dict:
    """The baseline floor: the model must beat the strongest baseline like a champion."""
    floor = metrics.get("baseline_floor")
    if not isinstance(floor, dict):
        return _condition(
            "baseline_floor", True, "baseline floor not checked: evaluation stored no baseline figures"
        )
    name, delta, key = floor["baseline"], float(floor["delta"]), floor.get("metric", key)
    low, high = float(floor["ci_low"]), float(floor["ci_high"])
    text = (
        f"baseline floor: {key} {floor['model_value']:.4f} vs strongest baseline {name} "
        f"{floor['baseline_value']:.4f}: {delta:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}]"
    )
    passed = delta > gate.min_improvement and low > 0
    verdict = "beats it" if passed else "does not beat the strongest baseline reliably"
    return _condition(
        "baseline_floor",
        passed,
        f"{text}: {verdict}",
        figure=floor["model_value"],
        compared_with=floor["baseline_value"],
        delta=delta,
        ci_low=low,
        ci_high=high,
        baseline=name,
    )


def _guard(guard: GuardConfig, figure: dict | None) -> dict:
    name = f"guard {guard.label()}"
    if figure is None or figure.get("error"):
        why = figure.get("error") if figure else "evaluation stored no figure for it"
        return _condition(name, False, f"{name}: {why}")
    if guard.metric == JUDGE_GUARD:
        rate, low, high = figure["win_rate"], figure.get("ci_low"), figure.get("ci_high")
        decisive = low if guard.strict else rate
        passed = decisive is not None and decisive >= guard.at_least
        interval = f", 95% CI [{low:.4f}, {high:.4f}]" if low is not None else ""
        text = (
            f"{name}: win rate {rate:.4f} against {figure.get('opponent', 'the champion')} over "
            f"{figure.get('n')} prompts{interval}, needs >= {guard.at_least:.2f}"
            + (" (strict: the interval's low end)" if guard.strict else "")
        )
        return _condition(name, passed, text, figure=rate, ci_low=low, ci_high=high)
    candidate, champion = figure.get("candidate"), figure.get("champion")
    if champion is None:
        shown = "n/a" if candidate is None else f"{candidate:.4f}"
        return _condition(name, True, f"{name}: {shown}, no champion to regress from", figure=candidate)
    return _regression(guard, name, figure)


def _regression(guard: GuardConfig, name: str, figure: dict) -> dict:
    candidate, champion = float(figure["candidate"]), float(figure["champion"])
    delta = candidate - champion
    low, high = figure.get("ci_low"), figure.get("ci_high")
    if figure.get("lower_is_better") or guard.metric in ("latency_p95_ms", "model_mb"):
        limit = champion * guard.margin  # relative: at most margin x the champion's figure above it
        worse_end = high if (guard.strict and high is not None) else delta
        passed = worse_end <= limit
        bound = f"at most {guard.margin:.0%} above the champion"
    else:
        limit = -guard.margin
        worse_end = low if (guard.strict and low is not None) else delta
        passed = worse_end >= limit
        bound = f"may drop at most {guard.margin:.4f}"
    interval = f", 95% CI [{low:+.4f}, {high:+.4f}]" if low is not None and high is not None else ""
    strict = " (strict: the interval's worse end)" if guard.strict else ""
    text = f"{name}: {candidate:.4f} vs champion {champion:.4f}: {delta:+.4f}{interval}, {bound}{strict}"
    return _condition(
        name, passed, text, figure=candidate, compared_with=champion, delta=delta, ci_low=low, ci_high=high
    )


def _forgetting(metrics: dict, key: str) -> dict | None:
    forgetting = metrics.get("forgetting")
    if not metrics.get("champion") or not isinstance(forgetting, dict) or forgetting.get("passed", True):
        return None
    slices = forgetting.get("slices", {})
    worst = ", ".join(
        f"drop {d} {slices[d]['delta']:+.4f} {forgetting.get('metric', key)}" for d in forgetting["forgotten"]
    )
    margin = forgetting.get("margin", 0)
    text = f"forgets earlier data: {worst} vs champion (margin {margin:.4f}, 95% CI below 0)"
    return _condition("forgetting", False, text)


def decide(metrics: dict, gate: GateConfig, task: str = "classification") -> GateDecision:
    """Apply every condition of the gate (module docstring) to a run's ``eval/metrics.json``.

    Returns:
        The alias (champion only when every condition passes), a reason that names the primary result and
        each failed condition, and every condition with its figure, interval and pass/fail.
    """
    key = gate.metric(task)
    score = metrics["model"][key]
    champion = metrics.get("champion")
    champion_score = champion[key] if champion else None
    forgot = _forgetting(metrics, key)
    if forgot is not None:  # checked first: a model that forgets is not compared any further
        return GateDecision(
            CHALLENGER, f"{forgot['text']}: not promoted", score, champion_score, conditions=(forgot,)
        )
    primary = _primary(metrics, gate, key)
    conditions = [primary]
    if gate.baseline_floor:
        conditions.append(_floor(metrics, gate, key))
    figures = {f.get("guard"): f for f in metrics.get("guards") or [] if isinstance(f, dict)}
    conditions += [_guard(guard, figures.get(guard.label())) for guard in gate.guards]
    failed = [c for c in conditions if not c["passed"]]
    if not failed:
        reason = f"{primary['text']}: promoted"
    elif failed == [primary]:
        reason = f"{primary['text']}: not promoted"
    else:
        blocked = "; ".join(c["text"] for c in failed if c is not primary)
        joint = "but blocked by" if primary["passed"] else "and also failed:"
        reason = f"{primary['text']}, {joint} {blocked}: not promoted"
    alias = CHALLENGER if failed else CHAMPION
    return GateDecision(
        alias, reason, score, champion_score, primary.get("ci_low"), primary.get("ci_high"), tuple(conditions)
    )
