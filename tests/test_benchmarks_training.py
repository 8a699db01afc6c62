"""Smoke test of benchmarks/training_speed.py: it runs (--quick) and writes JSON of the documented shape.

No timing is asserted: the numbers depend on the machine; only their consistency is checked. The run is made
smaller than --quick's own default (128 training samples, 100 dev rows) to stay within ~3 minutes on two
busy cores: the baseline pads every example to 128 tokens, which is what makes it slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

SCRIPT = REPO / "benchmarks" / "training_speed.py"
CONFIGURATIONS = {"baseline", "tunery_full", "tunery_lora"}
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


def test_quick_run_writes_consistent_json(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), "--quick", "--data-dir", str(shared_data), "--out", str(out)]
    command += ["--train-samples", str(TRAIN_SAMPLES), "--dev-rows", str(DEV_ROWS)]
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
    assert configs["tunery_full"]["sampling"] == "group_by_length"

    base = configs["baseline"]
    for name in ("tunery_full", "tunery_lora"):
        c, cmp = configs[name], doc["comparison"][f"{name}_vs_baseline"]
        expected = c["samples_per_s"] / base["samples_per_s"]
        assert cmp["samples_per_s_ratio"] == pytest.approx(expected, rel=1e-2)
        assert cmp["dev_accuracy_delta"] == pytest.approx(c["dev_accuracy"] - base["dev_accuracy"], abs=1e-3)

    speed = doc["targets"]["speedup"]
    ratio = doc["comparison"]["tunery_full_vs_baseline"]["samples_per_s_ratio"]
    assert speed["samples_per_s_ratio"] == ratio and speed["target_ratio"] == 2.0
    assert speed["met"] == (ratio >= 2.0 and speed["dev_accuracy_delta"] >= 0)
    assert doc["budget"]["skipped"] is True  # --quick skips the budget run
    assert doc["targets"]["budget_accuracy"]["met"] is None
