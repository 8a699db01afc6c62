"""Hyperparameter search: TPE with pruning against a grid without pruning, same space, same trial budget.

Fine-tuning the packaged MiniLM on an SST-2 training sample (``--train-samples``, seeded), validated on the
SST-2 dev set (all 872 rows): every trial is tunery's real trial (``tunery.search.trial.run_trial``: its
own training job, its nested MLflow run, pruning from the job's per-epoch evaluation lines), in one run of
this script, one search after the other:

* ``grid``: Optuna's grid sampler over the space, no pruning, 12 trials (the whole grid);
* ``tpe``: Optuna's TPE over the same space (3 random start-up trials: tunery's default for 12), median
  pruner (3 start-up trials), 12 trials;
* ``default``: one training job with the default recipe's hyperparameters, for reference.

The space: ``training.learning_rate`` in {2e-5, 5e-5, 1e-4, 2e-4} x ``training.epochs`` in {1, 2, 3}.

A proposal that repeats a finished trial's parameters is finished with that trial's result and not
trained (tunery's search does that for every sampler); ``trained`` counts the training jobs, ``trials``
the trials of the study.

Compute is what tunery's cost records say each trial used: CPU-seconds of the orchestrating process and of
the training job (``usage.jsonl``, the trials' ``cost_cpu_s``), and wall seconds.

Target (issue #17, fixed before the run): TPE+pruning reaches the grid's best dev accuracy within noise, in
at most half the grid's compute (CPU-seconds). "Within noise": TPE's best >= grid's best - 1.96 x
sqrt(2 p (1 - p) / n), the 95% bound of the difference of two accuracies on the same n dev rows (p the
grid's best accuracy).

Usage::

    python benchmarks/search.py                  # 800 training rows, 12 + 12 trials + the default (~30 min)
    python benchmarks/search.py --quick          # 96 rows, 2 + 2 trials, 100 dev rows (smoke test)

Results go to ``benchmarks/results/search.json`` (``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hostinfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LEARNING_RATES = [2e-5, 5e-5, 1e-4, 2e-4]
EPOCHS = [1, 2, 3]


def sst2(data_dir: Path, train_samples: int, dev_rows: int | None, seed: int):
    from training_speed import load_data

    data = load_data(data_dir, train_samples, dev_rows, seed)
    names = {0: "negative", 1: "positive"}
    return {
        split: frame.rename(columns={"sentence": "text"}).assign(label=frame["label"].map(names))
        for split, frame in data.items()
    }


def base_recipe(args: argparse.Namespace, workdir: Path, study: str, sampler: str, pruner: str) -> Any:
    from tunery.config import Recipe

    return Recipe.model_validate(
        {
            "name": f"search-benchmark-{study}",
            "data": {"source": str(workdir / "unused.csv")},
            "model": {"base": args.model, "max_length": args.max_length},
            "training": {"batch_size": 16, "seed": args.seed, "save_steps": 10_000},
            "search": {
                "study": study,
                "sampler": sampler,
                "trials": args.trials,
                "metric": "accuracy",
                "seed": args.seed,
                "pruner": {"name": pruner, "startup_trials": 3},
                "space": {
                    "training.learning_rate": {"type": "choice", "choices": LEARNING_RATES},
                    "training.epochs": {"type": "choice", "choices": EPOCHS},
                },
            },
            "mlflow": {"experiment": "search-benchmark", "registered_model": "search-benchmark"},
            "workdir": str(workdir),
        }
    )


def write_splits(layout, data) -> None:
    for split, frame in (("train", data["train"]), ("validation", data["dev"]), ("test", data["dev"])):
        path = layout.split(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path)


def run_search(args, workdir: Path, data, name: str, sampler: str, pruner: str) -> dict[str, Any]:
    """One whole search: every trial through tunery's trial runner, timed and costed."""
    from tunery import tracking
    from tunery.layout import RunLayout
    from tunery.search import study as studies
    from tunery.search.trial import run_trial

    recipe = base_recipe(args, workdir, name, sampler, pruner)
    layout = RunLayout.create(workdir, recipe.name)
    write_splits(layout, data)
    parent = tracking.start_run(recipe, layout.root)
    study = studies.open_study(recipe)
    clock = studies.Clock.start(None)
    started = time.perf_counter()
    outcomes = []
    while ids := studies.ask(study, recipe, clock):
        for trial_id in ids:
            outcome = run_trial(recipe, layout, parent, trial_id, on_line=lambda line: None)
            print(f"  {name}: {outcome.line('accuracy')}", flush=True)
            outcomes.append(outcome)
    wall = time.perf_counter() - started
    tracking.end_run(recipe, parent, "FINISHED")
    complete = [o for o in outcomes if o.state == "complete"]
    best = max(complete, key=lambda o: o.value)
    cpu = sum((o.cost or {}).get("total", {}).get("cpu_s", 0.0) for o in outcomes)
    stored = study.get_trials(deepcopy=False)
    duplicates = [t for t in stored if studies.DUPLICATE_OF in t.user_attrs]
    return {
        "sampler": sampler,
        "pruner": pruner,
        "trials": len(stored),
        "trained": len(outcomes),
        "duplicates_not_trained": len(duplicates),
        "complete": len(complete),
        "pruned": sum(o.state == "pruned" for o in outcomes),
        "failed": sum(o.state == "failed" for o in outcomes),
        "best_dev_accuracy": best.value,
        "best_params": best.params,
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "trials_per_hour": round(len(stored) / wall * 3600, 2),
        "trainings_per_hour": round(len(outcomes) / wall * 3600, 2),
        "trial_log": [
            {
                "number": o.number,
                "state": o.state,
                "value": o.value,
                "params": o.params,
                "cpu_s": (o.cost or {}).get("total", {}).get("cpu_s"),
                "wall_s": (o.cost or {}).get("total", {}).get("wall_s"),
            }
            for o in outcomes
        ],
    }


def run_default(args, workdir: Path, data) -> dict[str, Any]:
    """The default recipe's hyperparameters (learning rate 5e-5, 3 epochs), one training job."""
    from tunery import tracking
    from tunery.layout import RunLayout
    from tunery.training.launch import launch_training

    recipe = base_recipe(args, workdir, "default", "random", "none").model_copy(update={"search": None})
    layout = RunLayout.create(workdir, "search-benchmark-default")
    write_splits(layout, data)
    run_id = tracking.start_run(recipe, layout.root)
    started = time.perf_counter()
    launch_training(recipe, layout, run_id, on_line=lambda line: None)
    wall = time.perf_counter() - started
    summary = json.loads((layout.train_dir / "metrics.json").read_text())
    return {
        "learning_rate": recipe.training.learning_rate,
        "epochs": recipe.training.epochs,
        "dev_accuracy": summary["validation"]["accuracy"],
        "wall_s": round(wall, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--train-samples", type=int, default=800)
    parser.add_argument("--dev-rows", type=int, default=None, help="dev rows (default: all 872)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--model", default="minilm", help="base model (catalogue name, folder or hub id)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="96 rows, 2 trials each, 100 dev rows")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "search.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_samples, args.dev_rows, args.trials = 96, 100, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = hostinfo.machine_info(("torch", "transformers", "optuna", "tunery"))
    data = sst2(args.data_dir, args.train_samples, args.dev_rows, args.seed)
    with tempfile.TemporaryDirectory(prefix="tunery-search-bench-") as tmp:
        workdir = Path(tmp)
        grid = run_search(args, workdir, data, "grid", "grid", "none")
        tpe = run_search(args, workdir, data, "tpe", "tpe", "median")
        default = run_default(args, workdir, data)
    n = len(data["dev"])
    p = grid["best_dev_accuracy"]
    noise = 1.96 * math.sqrt(2 * p * (1 - p) / n)
    ratio = tpe["cpu_s"] / grid["cpu_s"] if grid["cpu_s"] else None
    met_accuracy = tpe["best_dev_accuracy"] >= p - noise
    met_compute = ratio is not None and ratio <= 0.5
    doc = {
        "benchmark": "search",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": "python benchmarks/search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "train_samples": len(data["train"]),
            "dev_rows": n,
            "max_length": args.max_length,
            "model": args.model,
            "trials": args.trials,
            "space": {"training.learning_rate": LEARNING_RATES, "training.epochs": EPOCHS},
            "seed": args.seed,
        },
        "searches": {"grid": grid, "tpe_pruned": tpe},
        "default_recipe": default,
        "comparison": {
            "tpe_minus_grid_best_accuracy": round(tpe["best_dev_accuracy"] - p, 4),
            "noise_95": round(noise, 4),
            "tpe_over_grid_cpu_s": None if ratio is None else round(ratio, 3),
            "tpe_over_grid_wall_s": round(tpe["wall_s"] / grid["wall_s"], 3),
        },
        "targets": {
            "tpe_reaches_grid_best_within_noise": {"met": met_accuracy},
            "tpe_compute_at_most_half_of_grid": {"threshold": 0.5, "value": ratio, "met": met_compute},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    header = ("search", "trials", "trained", "pruned", "best acc", "CPU s", "wall s", "trials/h")
    print("\n{:<12} {:>6} {:>7} {:>6} {:>9} {:>8} {:>8} {:>9}".format(*header))
    for name, s in (("grid", grid), ("tpe+median", tpe)):
        print(
            f"{name:<12} {s['trials']:>6} {s['trained']:>7} {s['pruned']:>6} {s['best_dev_accuracy']:>9.4f} "
            f"{s['cpu_s']:>8.0f} "
            f"{s['wall_s']:>8.0f} {s['trials_per_hour']:>9.1f}"
        )
    print(f"default recipe: dev accuracy {default['dev_accuracy']:.4f} ({default['wall_s']:.0f} s)")
    print(f"targets: {json.dumps(doc['targets'])}")
    return doc


if __name__ == "__main__":
    main()
