"""The forgetting check of continuous learning: is the new model worse than the champion on the test rows
of drops it learnt from earlier? Reads only the run folder (``lineage.json``, the test split with its
``drop_id`` column, ``eval/predictions.parquet``) and adds ``forgetting`` to ``eval/metrics.json``."""

from __future__ import annotations

import json

import pandas as pd

from tunery.config import Recipe
from tunery.evaluation.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired_bootstrap
from tunery.layout import RunLayout


def forgetting_check(recipe: Recipe, layout: RunLayout) -> dict:
    """Score the model and the champion on each earlier drop's test rows; a slice where the model is worse
    by more than ``continuous.forgetting_margin`` *and* the paired bootstrap CI of the difference is below
    zero counts as forgotten. The result is stored in ``eval/metrics.json`` under ``forgetting`` (the gate
    reads it) and returned.
    """
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    metric = recipe.evaluation.gate.metric(recipe.task)
    margin = recipe.continuous.forgetting_margin if recipe.continuous else 0.0
    lineage = json.loads((layout.root / "lineage.json").read_text(encoding="utf-8"))
    earlier = [d["id"] for d in lineage["drops"] if d["id"] not in set(lineage["new_drops"])]
    result: dict = {"metric": metric, "margin": margin, "slices": {}, "forgotten": [], "passed": True}
    if not metrics.get("champion"):
        result["note"] = "no champion: nothing to forget"
    elif not earlier:
        result["note"] = "no earlier drops"
    else:
        test = pd.read_parquet(layout.split("test"), columns=["drop_id"])
        predictions = pd.read_parquet(layout.eval_dir / "predictions.parquet")
        predictions["drop_id"] = test["drop_id"].to_numpy()
        for drop_id in earlier:
            rows = predictions[predictions["drop_id"] == drop_id]
            if len(rows) < 2:
                continue
            boot = paired_bootstrap(
                rows["label"].tolist(),
                rows["predicted"].tolist(),
                rows["champion_predicted"].tolist(),
                metrics["labels"],
                metric,
                resamples=BOOTSTRAP_RESAMPLES,
                seed=BOOTSTRAP_SEED,
            )
            forgot = boot["delta"] < -margin and boot["ci_high"] < 0
            result["slices"][drop_id] = {"rows": len(rows), **boot, "forgotten": forgot}
            if forgot:
                result["forgotten"].append(drop_id)
        result["passed"] = not result["forgotten"]
    metrics["forgetting"] = result
    layout.metrics.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return result
