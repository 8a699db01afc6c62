"""Smoke test of benchmarks/search.py: it runs (--quick, on the tiny BERT) and writes JSON of the documented
shape, with targets computed from its own figures. No timing or accuracy is asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

SCRIPT = REPO / "benchmarks" / "search.py"


def test_quick_run_writes_consistent_json(shared_data: Path, tmp_path: Path, tiny_bert: Path) -> None:
    out = tmp_path / "s.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--data-dir", str(shared_data), "--out", str(out)]
    command += ["--model", str(tiny_bert), "--max-length", "32"]
    proc = subprocess.run(
        command, cwd=REPO / "benchmarks", env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["benchmark"] == "search" and "--quick" in doc["command"]
    assert doc["settings"]["model"] == str(tiny_bert) and doc["settings"]["dev_rows"] == 100
    searches = doc["searches"]
    assert set(searches) == {"grid", "tpe_pruned"}
    for search in searches.values():
        assert search["trials"] == 2 and search["trained"] + search["duplicates_not_trained"] == 2
        assert len(search["trial_log"]) == search["trained"]
        assert search["cpu_s"] == pytest.approx(sum(t["cpu_s"] for t in search["trial_log"]), abs=0.2)
        assert 0.0 <= search["best_dev_accuracy"] <= 1.0
        completed = [t["value"] for t in search["trial_log"] if t["state"] == "complete"]
        assert search["best_dev_accuracy"] == max(completed)
    assert searches["grid"]["pruned"] == 0, "the grid runs without a pruner"
    assert 0.0 <= doc["default_recipe"]["dev_accuracy"] <= 1.0
    grid, tpe = searches["grid"], searches["tpe_pruned"]
    p = grid["best_dev_accuracy"]
    noise = 1.96 * math.sqrt(2 * p * (1 - p) / 100)
    targets = doc["targets"]
    assert targets["tpe_reaches_grid_best_within_noise"]["met"] == (tpe["best_dev_accuracy"] >= p - noise)
    ratio = targets["tpe_compute_at_most_half_of_grid"]["value"]
    assert ratio == pytest.approx(tpe["cpu_s"] / grid["cpu_s"])
    assert targets["tpe_compute_at_most_half_of_grid"]["met"] == (ratio <= 0.5)
