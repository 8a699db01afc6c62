"""The search summary: every trial of the study, the best one, what the whole search cost, Optuna's plots.

The summary covers the study, not only this run: a resumed search shows (and sums the cost of) the trials
of its earlier runs too.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunery import tracking
from tunery.config import Recipe
from tunery.layout import RunLayout
from tunery.search import study as studies

SUMMARY = "summary.json"
PLOTS = {
    "history": "optimization_history.png",
    "intermediate": "intermediate_values.png",
    "importances": "param_importances.png",
}
COST_KEYS = ("wall_s", "cpu_s", "gpu_s", "energy_kwh", "money")


def summary(recipe: Recipe) -> dict:
    """The study's trials (number, state, value, parameters, duration, cost), counts, best and cost sum."""
    study = studies.open_study(recipe)
    trials, totals = [], dict.fromkeys(COST_KEYS, 0.0)
    for t in study.get_trials(deepcopy=False):
        cost = t.user_attrs.get(studies.COST) or {}
        for key in COST_KEYS:
            totals[key] += float(cost.get(key, 0.0))
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        trials.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": t.params,
                "duration_s": duration,
                "pruned_at_evaluation": t.user_attrs.get(studies.PRUNED_AT),
                "error": t.user_attrs.get(studies.ERROR),
                "retry_of": t.system_attrs.get("failed_trial"),
                "duplicate_of": t.user_attrs.get(studies.DUPLICATE_OF),
                "cost": cost or None,
                "mlflow_run_id": t.user_attrs.get(studies.RUN_ID),
            }
        )
    counts: dict[str, int] = {}
    for row in trials:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    duplicates = sum(row["duplicate_of"] is not None for row in trials)
    try:
        top = studies.best(study)
        best = {"number": top.number, "value": top.value, "params": top.params}
    except studies.SearchError:
        best = None
    return {
        "study": study.study_name,
        "storage": tracking.redact(studies.storage_url(recipe)),
        "sampler": recipe.search.sampler,
        "pruner": recipe.search.pruner.name,
        "metric": studies.metric(recipe),
        "direction": studies.direction(recipe),
        "budget": studies.budget(recipe),
        "finished": studies.finished(study),
        "counts": counts,
        "trained": len(trials) - duplicates,
        "duplicates": duplicates,
        "best": best,
        "trials": trials,
        "cost": {**totals, "currency": recipe.cost.currency},
    }


def plots(recipe: Recipe, folder: Path) -> list[Path]:
    """Optuna's optimisation history, intermediate values and parameter importances, as PNG files (those
    the study has enough trials for: importances need two complete trials that differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    study = studies.open_study(recipe)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    drawers = {
        "history": optuna_plots.plot_optimization_history,
        "intermediate": optuna_plots.plot_intermediate_values,
        "importances": optuna_plots.plot_param_importances,
    }
    with studies.quiet():
        for name, draw in drawers.items():
            try:
                axes = draw(study)
            except (ValueError, RuntimeError):  # too few trials for this plot yet
                plt.close("all")
                continue
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            path = folder / PLOTS[name]
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            made.append(path)
    return made


def importances(recipe: Recipe) -> dict[str, float]:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA in Optuna 5) over the complete
    trials; {} with too few of them."""
    import optuna

    study = studies.open_study(recipe)
    with studies.quiet():
        try:
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        except (ValueError, RuntimeError):
            return {}


def markdown(found: dict) -> str:
    """The summary as a markdown table for a Prefect artifact."""
    best = found["best"]
    lines = [
        f"# Search {found['study']}",
        "",
        f"{found['sampler']} sampler, {found['pruner']} pruner; {found['direction']} validation "
        f"{found['metric']}; {found['finished']} of {found['budget']} trials finished {found['counts']}.",
        "",
        f"**Best**: trial {best['number']}, {found['metric']} {best['value']:.4f}, {best['params']}"
        if best
        else "**Best**: no trial completed",
        "",
        f"**Cost of the whole search** (every trial of the study): CPU {found['cost']['cpu_s']:.1f} s, "
        f"GPU {found['cost']['gpu_s']:.1f} s, energy {found['cost']['energy_kwh']:.5f} kWh, "
        f"{found['cost']['money']:.4f} {found['cost']['currency']}",
        "",
        "| trial | state | value | parameters | seconds | CPU s | cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in found["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        seconds = "" if t["duration_s"] is None else f"{t['duration_s']:.0f}"
        cost = t["cost"] or {}
        state = t["state"] + (f" at eval {t['pruned_at_evaluation']}" if t["pruned_at_evaluation"] else "")
        if t["duplicate_of"] is not None:
            state += f" (= trial {t['duplicate_of']}, not trained again)"
        lines.append(
            f"| {t['number']} | {state} | {value} | {t['params']} | {seconds} | "
            f"{cost.get('cpu_s', 0.0):.1f} | {cost.get('money', 0.0):.4f} |"
        )
    if found.get("importances"):
        shares = ", ".join(f"{k} {v:.2f}" for k, v in found["importances"].items())
        lines += ["", f"Parameter importances (PED-ANOVA): {shares}"]
    return "\n".join(lines) + "\n"


def publish(recipe: Recipe, layout: RunLayout, run_id: str) -> dict:
    """Write ``search/summary.json`` and the plots, log them to the search's MLflow run with ``search_*``
    metrics (counts, best value, the summed cost) and the best parameters as ``search.best.*`` params.

    Returns:
        The summary (with the parameter importances).
    """
    from mlflow.entities import Param

    found = summary(recipe)
    found["importances"] = importances(recipe)
    folder = layout.root / "search"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SUMMARY
    path.write_text(json.dumps(found, indent=2, default=str), encoding="utf-8")
    files = [path, *plots(recipe, folder)]
    tracking.log_files(recipe, run_id, files, "search")
    metrics = {f"search_trials_{state}": float(n) for state, n in found["counts"].items()}
    metrics["search_trials_finished"] = float(found["finished"])
    metrics.update({f"search_cost_{k}": float(found["cost"][k]) for k in COST_KEYS})
    if found["best"]:
        metrics["search_best_value"] = float(found["best"]["value"])
    mlf = tracking.client(recipe)
    logger = tracking.MlflowLogger(recipe, run_id)
    logger.log_metrics(metrics)
    if found["best"]:
        params = [Param(f"search.best.{k}", str(v)) for k, v in found["best"]["params"].items()]
        params.append(Param("search.best.trial", str(found["best"]["number"])))
        mlf.log_batch(run_id, params=params)
    return found


def one_line(found: dict) -> str:
    """``12 of 12 trials finished {'complete': 9, 'pruned': 3}; best trial 7 accuracy 0.8712; cost ...``."""
    best = found["best"]
    shown = f"best trial {best['number']} {found['metric']} {best['value']:.4f}" if best else "no best trial"
    cost = found["cost"]
    return (
        f"{found['finished']} of {found['budget']} trials finished {found['counts']}; {shown}; whole search: "
        f"CPU {cost['cpu_s']:.0f} s, {cost['money']:.4f} {cost['currency']}"
    )
