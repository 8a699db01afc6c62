"""Smoke test of benchmarks/preference_memory.py: tunery's DPO-LoRA, TRL's DPO with an explicit reference copy
and tunery's SFT-LoRA each train in their own worker, and the JSON has the documented shape with consistent
figures. No timing or memory figure is asserted; the run is --quick (2 steps on pairs of at most 256 tokens)
and tunes the tiny Llama with SmolLM2's tokenizer (the benchmark's ``--model``) to stay cheap on two cores:
what is under test is the harness, not the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

SCRIPT = REPO / "benchmarks" / "preference_memory.py"


def test_quick_run_writes_consistent_json(shared_data: Path, tmp_path: Path, tiny_llama: Path) -> None:
    out = tmp_path / "preference.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--data-dir", str(shared_data), "--out", str(out)]
    command += ["--model", str(tiny_llama)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    doc = json.loads(out.read_text(encoding="utf-8"))

    assert doc["benchmark"] == "preference_memory" and doc["settings"]["steps"] == 2
    assert doc["settings"]["model"] == str(tiny_llama) and doc["machine"]["packages"]["trl"]
    data = doc["settings"]["data"]
    assert data["rows_in"] == 300 and sum(data["pairs"].values()) == data["kept"] > 0
    assert set(doc["configurations"]) == {"tunery", "trl", "sft"}
    for name, c in doc["configurations"].items():
        assert c["steps"] == 2 and c["samples"] == 2 * doc["settings"]["batch_size"], name
        assert c["samples_per_s"] == pytest.approx(c["samples"] / c["step_s"], rel=1e-2)
        assert 0 < c["train_peak_rss_mb"] <= c["peak_rss_mb"] and len(c["runs"]) == 1
    tunery, trl = doc["configurations"]["tunery"], doc["configurations"]["trl"]
    assert (tunery["method"], tunery["reference"]) == ("lora", "adapters disabled")
    assert (trl["method"], trl["reference"]) == ("full", "explicit copy")
    assert trl["gradient_checkpointing"] is True and trl["learning_rate"] == 1e-6  # DPOConfig's defaults
    for c in (tunery, trl, doc["untuned"]):
        assert 0 <= c["preference_accuracy"] <= 1
    comparison = doc["comparison"]
    ratio = tunery["train_peak_rss_mb"] / trl["train_peak_rss_mb"]
    assert comparison["peak_rss_ratio"] == pytest.approx(ratio, rel=1e-2)
    assert comparison["samples_per_s_ratio"] == pytest.approx(
        tunery["samples_per_s"] / trl["samples_per_s"], rel=1e-2
    )
    (seed,) = comparison["preference_accuracy"]["per_seed"]
    delta = seed["tunery_minus_trl"]
    assert delta["ci_low"] <= delta["delta"] <= delta["ci_high"] and delta["n"] == doc["untuned"]["n"]
    assert delta["delta"] == pytest.approx(tunery["preference_accuracy"] - trl["preference_accuracy"])
    met = comparison["peak_rss_ratio"] <= 0.6 and comparison["samples_per_s_ratio"] >= 1.3
    assert doc["targets"]["met"] == (met and delta["ci_high"] >= 0)
    reward = seed["reward_accuracy"]
    assert 0 <= reward["tunery"] <= 1 and 0 <= reward["trl"] <= 1
    assert reward["tunery_minus_trl"]["delta"] == pytest.approx(reward["tunery"] - reward["trl"], abs=1e-3)
