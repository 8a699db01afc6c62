"""Smoke test of benchmarks/training_speed.py: it runs (--quick) and writes JSON of the documented shape.

No timing is asserted: the numbers depend on the machine; only their consistency is checked. The run is made
smaller than --quick's own default (128 training samples, 100 dev rows) and both sides tune the tiny BERT
(the benchmark's ``--model``) to stay cheap on two busy cores: what is under test is the harness.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tunery.config import TrainingConfig

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

SCRIPT = REPO / "benchmarks" / "training_speed.py"
CONFIGURATIONS = {"baseline", "tunery_full", "tunery_full_grouped", "tunery_lora"}  # the default set
FIELDS = {
    "train_rows",
    "dev_rows",
    "steps",
    "samples_per_s",
    "wall_s",
    "samples_per_s_wall",
    "step_s",
    "step_samples_per_s",
    "outside_steps_s",
    "total_s",
    "dev_accuracy",
    "peak_rss_mb",
    "padding",
    "sampling",
    "runs",
}
TRAIN_SAMPLES, DEV_ROWS, BATCH_SIZE = 128, 100, 16


def test_quick_run_writes_consistent_json(shared_data: Path, tmp_path: Path, tiny_bert: Path) -> None:
    out = tmp_path / "t.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), "--quick", "--data-dir", str(shared_data), "--out", str(out)]
    command += ["--train-samples", str(TRAIN_SAMPLES), "--dev-rows", str(DEV_ROWS), "--model", str(tiny_bert)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    doc = json.loads(out.read_text(encoding="utf-8"))

    for key in ("timestamp", "machine", "command", "settings", "configurations", "comparison", "targets"):
        assert key in doc
    assert doc["benchmark"] == "training_speed"
    assert doc["machine"]["cpu_count"] >= 1
    assert len(doc["machine"]["load_avg_1_5_15_at_start"]) == 3
    assert len(doc["machine"]["load_avg_1_5_15_at_end"]) == 3
    assert set(doc["machine"]["packages"]) >= {"torch", "transformers", "peft"}
    assert "--quick" in doc["command"]
    assert doc["settings"]["quick"] is True and doc["settings"]["repeats"] == 1
    assert doc["settings"]["model"] == str(tiny_bert)
    assert doc["notes"]

    configs = doc["configurations"]
    assert set(configs) == CONFIGURATIONS
    for name, c in configs.items():
        assert set(c) >= FIELDS, f"{name}: missing {FIELDS - set(c)}"
        assert c["train_rows"] == TRAIN_SAMPLES and c["dev_rows"] == DEV_ROWS
        assert c["steps"] == TRAIN_SAMPLES // BATCH_SIZE
        assert c["samples_per_s"] > 0 and c["samples_per_s_wall"] > 0
        assert c["wall_s"] > 0 and c["total_s"] > 0 and c["peak_rss_mb"] > 0
        assert 0.0 <= c["dev_accuracy"] <= 1.0
        if c["step_s"] is not None:  # None only when tunery's callbacks could not be wrapped
            assert 0 < c["step_s"] <= c["wall_s"] and c["step_samples_per_s"] > 0
        assert len(c["runs"]) == 1
    assert configs["baseline"]["padding"] == "max_length 128" and configs["baseline"]["sampling"] == "random"
    assert configs["tunery_full"]["padding"] == "dynamic"
    default_grouping = TrainingConfig().group_by_length  # the benchmark follows tunery's recipe default
    assert configs["tunery_full"]["sampling"] == ("group_by_length" if default_grouping else "random")
    assert configs["tunery_full_grouped"]["sampling"] == "group_by_length"
    assert doc["settings"]["seeds"] == [42] and [r["seed"] for r in configs["tunery_full"]["runs"]] == [42]

    base = configs["baseline"]
    for name in ("tunery_full", "tunery_full_grouped", "tunery_lora"):
        c, cmp = configs[name], doc["comparison"][f"{name}_vs_baseline"]
        expected = c["samples_per_s"] / base["samples_per_s"]
        assert cmp["samples_per_s_ratio"] == pytest.approx(expected, rel=1e-2)
        assert cmp["dev_accuracy_delta"] == pytest.approx(c["dev_accuracy"] - base["dev_accuracy"], abs=1e-3)

    assert doc["targets"]["speedup_random_batches"] is None  # full_random did not run
    for key, name in (("speedup", "tunery_full"), ("speedup_length_grouped", "tunery_full_grouped")):
        speed = doc["targets"][key]
        ratio = doc["comparison"][f"{name}_vs_baseline"]["samples_per_s_ratio"]
        assert speed["configuration"] == name and speed["samples_per_s_ratio"] == ratio
        assert speed["target_ratio"] == 2.0 and speed["dev_accuracy_delta_ci95"] is None  # one seed: no CI
        assert speed["met"] == (ratio >= 2.0 and speed["dev_accuracy_delta"] >= 0)
    assert not (out.parent / "t.partial.json").exists()  # the per-run progress file is removed at the end
    assert doc["budget"]["skipped"] is True  # --quick skips the budget run
    assert doc["targets"]["budget_accuracy"]["met"] is None


def _load_benchmark():
    import importlib.util

    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling hostinfo
    try:
        spec = importlib.util.spec_from_file_location("training_speed", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def _run(seed: int, samples_per_s: float, accuracy: float) -> dict:
    return {
        "seed": seed,
        "samples_per_s": samples_per_s,
        "samples_per_s_wall": samples_per_s / 2,
        "step_samples_per_s": None,
        "wall_s": 1.0,
        "dev_accuracy": accuracy,
        "train_loss": 0.5,
        "peak_rss_mb": 100.0 + seed,
        "padding": "dynamic",
    }


def test_summary_takes_median_speed_and_mean_accuracy_over_seeds_and_pairs_deltas_by_seed() -> None:
    bench = _load_benchmark()
    base = bench.summarise([_run(1, 10.0, 0.80), _run(2, 12.0, 0.90), _run(3, 11.0, 0.85)])
    mine = bench.summarise([_run(1, 40.0, 0.81), _run(2, 20.0, 0.88), _run(3, 30.0, 0.87)])
    assert base["samples_per_s"] == 11.0 and mine["samples_per_s"] == 30.0  # medians
    assert mine["dev_accuracy"] == pytest.approx((0.81 + 0.88 + 0.87) / 3, abs=1e-4)  # mean
    assert mine["peak_rss_mb"] == 103.0 and "seed" not in mine
    assert [r["seed"] for r in mine["runs"]] == [1, 2, 3]
    configs = {"baseline": base, "tunery_full": mine, "tunery_lora": mine}
    comparison = bench.compare(configs)
    assert set(comparison) == {"tunery_full_vs_baseline", "tunery_lora_vs_baseline"}  # only those that ran
    cmp = comparison["tunery_full_vs_baseline"]
    assert cmp["samples_per_s_ratio"] == pytest.approx(30.0 / 11.0, rel=1e-3)
    assert cmp["dev_accuracy_delta"] == pytest.approx(0.0033, abs=1e-4)
    assert cmp["dev_accuracy_delta_per_seed"] == {"1": 0.01, "2": -0.02, "3": 0.02}
    # paired deltas 0.01, -0.02, 0.02: SD 0.0208, t(0.975, 2 df) = 4.303 -> half-width 0.0517
    assert cmp["dev_accuracy_delta_sd"] == pytest.approx(0.0208, abs=1e-4)
    low, high = cmp["dev_accuracy_delta_ci95"]
    assert [low, high] == pytest.approx([0.0033 - 0.0517, 0.0033 + 0.0517], abs=2e-4)
    target = bench.speed_target(comparison, "tunery_full")
    assert target["met"] is True and target["dev_accuracy_delta_ci95"] == [low, high]
    assert bench.speed_target(comparison, "tunery_full_random") is None  # not run: no verdict


def test_paired_deltas_match_runs_by_seed_not_by_position() -> None:
    bench = _load_benchmark()
    theirs = [_run(7, 1.0, 0.80), _run(8, 1.0, 0.90)]
    mine = [_run(8, 1.0, 0.85), _run(7, 1.0, 0.82)]
    paired = bench.paired_deltas(mine, theirs)
    assert paired["per_seed"] == {"8": -0.05, "7": 0.02} and paired["n"] == 2
    assert paired["mean"] == pytest.approx(-0.015, abs=1e-4)
    compared = bench.compare({"baseline": bench.summarise(theirs), "tunery_full": bench.summarise(mine)})
    assert compared["tunery_full_vs_baseline"]["dev_accuracy_delta"] == paired["mean"]
    assert compared["tunery_full_vs_baseline"]["dev_accuracy_delta_n"] == 2
    alone = bench.paired_deltas(mine[:1], theirs)
    assert alone["sd"] is None and alone["ci95"] is None and alone["mean"] == pytest.approx(-0.05)


def test_configurations_flag_needs_the_baseline_and_known_workers() -> None:
    bench = _load_benchmark()
    args = bench.parse_args(["--configurations", "baseline,full_random", "--budget-minutes", "0"])
    assert args.configurations == ("baseline", "full_random")
    again = bench.parse_args(["--configurations", "baseline,full,baseline,full", "--budget-minutes", "0"])
    assert again.configurations == ("baseline", "full")  # each worker once
    for bad in ("full,lora", "baseline", "baseline,baseline", "baseline,fast"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--configurations", bad, "--budget-minutes", "0"])
    with pytest.raises(SystemExit):  # the budget run needs the full worker's measured speed
        bench.parse_args(["--configurations", "baseline,lora"])


def test_sampling_flag_overrides_the_recipe_default_only_when_given() -> None:
    bench = _load_benchmark()
    for flag, expected in (("default", None), ("random", False), ("group_by_length", True)):
        args = bench.parse_args(["--tunery-sampling", flag])
        recipe = bench.tunery_recipe(args, "full", Path("/tmp/unused"))
        default = TrainingConfig().group_by_length
        assert recipe.training.group_by_length == (default if expected is None else expected)
        # full_random / full_grouped always take random / length-grouped batches, whatever the flag says
        for kind, grouped in (("full_random", False), ("full_grouped", True)):
            forced = bench.tunery_recipe(args, kind, Path("/tmp/unused"))
            assert forced.training.group_by_length is grouped and forced.method.name == "full"
