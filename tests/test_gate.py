from __future__ import annotations

import numpy as np
import pytest

from tunery.config import GateConfig
from tunery.evaluation.metrics import paired_bootstrap
from tunery.registry import decide


def metrics(model: float, champion: float | None, ci: tuple[float, float] | None = None) -> dict:
    out = {"model": {"macro_f1": model}, "champion": None if champion is None else {"macro_f1": champion}}
    if ci is not None and champion is not None:
        out["gate_bootstrap"] = {
            "metric": "macro_f1",
            "delta": model - champion,
            "ci_low": ci[0],
            "ci_high": ci[1],
            "confidence": 0.95,
            "resamples": 1000,
        }
    return out


@pytest.mark.parametrize(
    ("model", "champion", "margin", "alias"),
    [
        (0.50, None, 0.0, "champion"),  # first model becomes champion
        (0.91, 0.90, 0.0, "champion"),  # clearly better
        (0.60, 0.90, 0.0, "challenger"),  # degraded
        (0.90, 0.90, 0.0, "challenger"),  # a tie does not promote
        (0.905, 0.90, 0.01, "challenger"),  # better, but within the margin
        (0.92, 0.90, 0.01, "champion"),  # beyond the margin
    ],
)
def test_gate_without_bootstrap_uses_the_margin_rule(model, champion, margin, alias):
    decision = decide(metrics(model, champion), GateConfig(min_improvement=margin))
    assert decision.alias == alias
    assert f"{model:.4f}" in decision.reason
    if champion is not None:
        assert f"{champion:.4f}" in decision.reason
        assert "plain margin rule" in decision.reason
        assert decision.ci_low is None


@pytest.mark.parametrize(
    ("model", "champion", "margin", "ci", "alias"),
    [
        (0.50, None, 0.0, (-0.1, 0.1), "champion"),  # first model becomes champion, CI or not
        (0.95, 0.85, 0.0, (0.05, 0.15), "champion"),  # clearly better
        (0.92, 0.90, 0.01, (0.004, 0.036), "champion"),  # beyond the margin and CI above 0
        (0.60, 0.90, 0.0, (-0.35, -0.25), "challenger"),  # degraded
        (0.60, 0.90, 0.0, (0.01, 0.05), "challenger"),  # degraded is never promoted, whatever the CI says
        (0.90, 0.90, 0.0, (-0.01, 0.01), "challenger"),  # a tie
        (0.905, 0.90, 0.01, (0.001, 0.009), "challenger"),  # CI above 0 but within the margin
        (0.9123, 0.9050, 0.0, (-0.0040, 0.0180), "challenger"),  # tiny improvement, CI includes 0
        (0.9123, 0.9050, 0.0, (0.0, 0.0180), "challenger"),  # a CI touching 0 does not exclude it
    ],
)
def test_gate_with_paired_bootstrap(model, champion, margin, ci, alias):
    decision = decide(metrics(model, champion, ci), GateConfig(min_improvement=margin))
    assert decision.alias == alias
    assert f"{model:.4f}" in decision.reason
    if champion is None:
        return
    assert f"{champion:.4f}" in decision.reason
    assert f"{model - champion:+.4f}" in decision.reason
    assert f"95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" in decision.reason
    assert (decision.ci_low, decision.ci_high) == ci
    assert ("does not beat champion" in decision.reason) == (alias == "challenger")


def test_gate_reason_says_when_the_ci_includes_zero():
    decision = decide(metrics(0.9123, 0.9050, (-0.0040, 0.0180)), GateConfig())
    assert decision.reason.startswith(
        "macro_f1 0.9123 vs champion 0.9050: +0.0073, 95% CI [-0.0040, +0.0180]"
    )
    assert "includes 0" in decision.reason and "not promoted" in decision.reason


def test_gate_ignores_a_bootstrap_of_another_metric():
    block = metrics(0.92, 0.90, (-0.5, -0.4))
    block["gate_bootstrap"]["metric"] = "accuracy"
    decision = decide(block, GateConfig())
    assert decision.alias == "champion" and "plain margin rule" in decision.reason


def _paired(n: int, p_challenger: float, p_champion: float, seed: int) -> tuple[list, list, list]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(["a", "b", "c"], size=n).tolist()

    def predict(p: float) -> list[str]:
        correct = rng.random(n) < p
        return [t if ok else {"a": "b", "b": "c", "c": "a"}[t] for t, ok in zip(truth, correct, strict=True)]

    return truth, predict(p_challenger), predict(p_champion)


def _scored(truth, challenger, champion) -> dict:
    from sklearn.metrics import f1_score

    labels = ["a", "b", "c"]
    return {
        "model": {"macro_f1": f1_score(truth, challenger, labels=labels, average="macro")},
        "champion": {"macro_f1": f1_score(truth, champion, labels=labels, average="macro")},
        "gate_bootstrap": paired_bootstrap(truth, challenger, champion, labels, "macro_f1", resamples=300),
    }


def test_gate_on_real_bootstraps():
    clear = _scored(*_paired(600, 0.9, 0.6, seed=1))
    assert decide(clear, GateConfig()).alias == "champion"
    worse = _scored(*_paired(600, 0.6, 0.9, seed=2))
    assert decide(worse, GateConfig()).alias == "challenger"
    truth, champion, _ = _paired(600, 0.8, 0.8, seed=3)
    challenger = list(champion)
    fixed = next(i for i, (t, p) in enumerate(zip(truth, champion, strict=True)) if t != p)
    challenger[fixed] = truth[fixed]  # one more row right: a tiny, real improvement
    tiny = _scored(truth, challenger, champion)
    assert tiny["model"]["macro_f1"] > tiny["champion"]["macro_f1"]
    decision = decide(tiny, GateConfig())
    assert decision.alias == "challenger" and "includes 0" in decision.reason


def _forgetting(passed: bool) -> dict:
    slices = {"d1": {"delta": -0.31, "ci_low": -0.45, "ci_high": -0.2, "forgotten": not passed}}
    return {
        "metric": "macro_f1",
        "margin": 0.02,
        "slices": slices,
        "forgotten": [] if passed else ["d1"],
        "passed": passed,
    }


def test_a_challenger_that_forgot_an_earlier_drop_is_not_promoted_even_when_better_overall():
    better = metrics(0.95, 0.90, ci=(0.02, 0.08))
    assert decide(better, GateConfig()).alias == "champion"
    decision = decide({**better, "forgetting": _forgetting(passed=False)}, GateConfig())
    assert decision.alias == "challenger"
    assert "forgets earlier data" in decision.reason and "drop d1 -0.3100" in decision.reason
    assert decide({**better, "forgetting": _forgetting(passed=True)}, GateConfig()).alias == "champion"


def test_forgetting_does_not_apply_without_a_champion():
    decision = decide({**metrics(0.5, None), "forgetting": _forgetting(passed=False)}, GateConfig())
    assert decision.alias == "champion"


def test_no_promotion_over_a_champion_that_another_run_made_meanwhile(tmp_path):
    """Two retrains overlap: the one that finishes second was compared with the old champion only."""
    from tunery.config import DataConfig, MlflowConfig, Recipe
    from tunery.registry import GateDecision, still_current
    from tunery.tracking import client

    recipe = Recipe(
        name="gate",
        data=DataConfig(source="x.csv"),
        mlflow=MlflowConfig(registered_model="gate-model", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"),
        workdir=str(tmp_path),
    )
    mlf = client(recipe)  # a real MLflow store (SQLite)
    mlf.create_registered_model("gate-model")
    for _ in range(2):
        mlf.create_model_version("gate-model", source=str(tmp_path))
    mlf.set_registered_model_alias("gate-model", "champion", "1")
    promote = GateDecision("champion", "better", 0.9, 0.8)
    assert still_current(recipe, {"champion_version": "1"}, promote) == promote
    keep = GateDecision("challenger", "worse", 0.7, 0.8)
    assert still_current(recipe, {"champion_version": "1"}, keep) == keep
    mlf.set_registered_model_alias("gate-model", "champion", "2")  # another run promoted version 2
    late = still_current(recipe, {"champion_version": "1"}, promote)
    assert late.alias == "challenger"
    assert "champion changed during this run (version 1 -> version 2)" in late.reason
    first = still_current(recipe, {"champion_version": None}, promote)  # "no champion yet" is stale too
    assert first.alias == "challenger" and "(no champion -> version 2)" in first.reason


# ------------------------------------------------------------------ the baseline floor and the guards


def _floor(model: float, baseline: float, ci: tuple[float, float]) -> dict:
    return {
        "metric": "macro_f1",
        "baseline": "tfidf_logreg",
        "model_value": model,
        "baseline_value": baseline,
        "candidates": {"tfidf_logreg": baseline, "linear_probe": baseline - 0.1},
        "delta": model - baseline,
        "ci_low": ci[0],
        "ci_high": ci[1],
    }


def test_the_first_model_is_not_champion_below_the_strongest_baseline():
    # the case a new user met: macro-F1 0.52 made champion while TF-IDF scored 0.95 on the same rows
    metrics = {
        "model": {"macro_f1": 0.52},
        "champion": None,
        "baseline_floor": _floor(0.52, 0.95, (-0.47, -0.39)),
    }
    decision = decide(metrics, GateConfig())
    assert decision.alias == "challenger"
    assert "strongest baseline tfidf_logreg 0.9500" in decision.reason and "not promoted" in decision.reason
    floor = next(c for c in decision.conditions if c["name"] == "baseline_floor")
    assert not floor["passed"] and floor["ci_low"] == -0.47
    # above the baseline but within the noise: still not champion
    metrics["model"]["macro_f1"] = 0.955
    metrics["baseline_floor"] = _floor(0.955, 0.95, (-0.01, 0.02))
    assert decide(metrics, GateConfig()).alias == "challenger"
    # reliably above it: champion; a margin applies to the floor as to the champion
    metrics["baseline_floor"] = _floor(0.955, 0.95, (0.001, 0.01))
    assert decide(metrics, GateConfig()).alias == "champion"
    assert decide(metrics, GateConfig(min_improvement=0.01)).alias == "challenger"
    # a recipe may switch the floor off; the decision then has no floor condition
    off = decide(
        {**metrics, "baseline_floor": _floor(0.5, 0.95, (-0.5, -0.4))}, GateConfig(baseline_floor=False)
    )
    assert off.alias == "champion" and "baseline_floor" not in {c["name"] for c in off.conditions}


def _guarded(figures: list[dict]) -> dict:
    out = metrics(0.95, 0.85, (0.05, 0.15))
    out["guards"] = figures
    return out


@pytest.mark.parametrize(
    ("guard", "figure", "passed"),
    [
        (
            {"metric": "accuracy"},
            {"candidate": 0.90, "champion": 0.91, "ci_low": -0.03, "ci_high": 0.01},
            False,
        ),
        (
            {"metric": "accuracy", "margin": 0.02},
            {"candidate": 0.90, "champion": 0.91, "ci_low": -0.03, "ci_high": 0.01},
            True,
        ),
        # strict: the interval's low end decides (non-inferiority)
        (
            {"metric": "accuracy", "margin": 0.02, "strict": True},
            {"candidate": 0.90, "champion": 0.91, "ci_low": -0.03, "ci_high": 0.01},
            False,
        ),
        (
            {"metric": "recall:spam"},
            {"candidate": 0.80, "champion": 0.95, "ci_low": -0.2, "ci_high": -0.1},
            False,
        ),
        # lower is better, relative margin: 12 ms against 10 ms is 20% slower
        (
            {"metric": "latency_p95_ms", "margin": 0.25},
            {"candidate": 12.0, "champion": 10.0, "lower_is_better": True},
            True,
        ),
        (
            {"metric": "latency_p95_ms", "margin": 0.1},
            {"candidate": 12.0, "champion": 10.0, "lower_is_better": True},
            False,
        ),
        ({"metric": "model_mb"}, {"candidate": 90.0, "champion": 91.0, "lower_is_better": True}, True),
        ({"metric": "accuracy"}, {"candidate": 0.5, "champion": None}, True),  # nothing to regress from
        (
            {"metric": "accuracy"},
            {"error": "accuracy was not computed on golden"},
            False,
        ),  # never silently passed
    ],
)
def test_each_guard_passes_or_blocks_by_its_rule(guard, figure, passed):
    config = GateConfig(guards=[guard])
    label = config.guards[0].label()
    decision = decide(_guarded([{"guard": label, **figure}]), config)
    condition = decision.conditions[-1]
    assert condition["name"] == f"guard {label}" and condition["passed"] is passed
    assert decision.alias == ("champion" if passed else "challenger")
    if not passed:
        assert f"blocked by guard {label}" in decision.reason


def test_the_judge_guard_needs_a_win_rate_of_at_least_one_half():
    config = GateConfig(guards=[{"metric": "judge_win_rate"}])
    figure = {"guard": "judge_win_rate", "win_rate": 0.45, "ci_low": 0.30, "ci_high": 0.60, "n": 40}
    assert decide(_guarded([figure]), config).alias == "challenger"
    assert decide(_guarded([{**figure, "win_rate": 0.55}]), config).alias == "champion"
    strict = GateConfig(guards=[{"metric": "judge_win_rate", "strict": True}])
    assert decide(_guarded([{**figure, "win_rate": 0.55}]), strict).alias == "challenger"


def test_a_missing_guard_figure_blocks_and_every_condition_becomes_a_tag():
    from tunery.registry import gate_condition_tags

    config = GateConfig(
        guards=[{"metric": "f1:spam", "margin": 0.01}, {"metric": "macro_f1", "set": "golden"}]
    )
    decision = decide(
        _guarded([{"guard": "f1:spam", "candidate": 0.9, "champion": 0.9, "ci_low": -0.02, "ci_high": 0.02}]),
        config,
    )
    assert decision.alias == "challenger"
    assert "guard golden/macro_f1: evaluation stored no figure for it" in decision.reason
    tags = gate_condition_tags(decision)
    assert tags["tunery.gate.condition.primary"].startswith("pass: macro_f1 0.9500 vs champion 0.8500")
    assert tags["tunery.gate.condition.guard_f1_spam"].startswith("pass")
    assert tags["tunery.gate.condition.guard_golden/macro_f1"].startswith("fail")
