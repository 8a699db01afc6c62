"""Smoke test of benchmarks/sft_speed.py: both trainers (tunery, TRL's SFTTrainer) run in their own worker
and the JSON has the documented shape with consistent figures. No timing is asserted; the run is smaller
than --quick (2 steps on 192-token conversations) and tunes the tiny Llama with SmolLM2's tokenizer (the
benchmark's ``--model``) to stay cheap on two cores: what is under test is the harness, not the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

SCRIPT = REPO / "benchmarks" / "sft_speed.py"


def test_quick_run_writes_consistent_json(shared_data: Path, tmp_path: Path, tiny_llama: Path) -> None:
    out = tmp_path / "sft.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--data-dir", str(shared_data), "--out", str(out)]
    command += ["--steps", "2", "--max-length", "192", "--train-rows", "16", "--model", str(tiny_llama)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    doc = json.loads(out.read_text(encoding="utf-8"))

    assert doc["benchmark"] == "sft_speed" and doc["settings"]["steps"] == 2
    assert doc["settings"]["model"] == str(tiny_llama)
    assert doc["machine"]["packages"]["trl"], "TRL is the peer: its version is recorded"
    assert set(doc["configurations"]) == {"tunery", "trl"}
    for name, c in doc["configurations"].items():
        assert c["steps"] == 2, name
        assert c["tokens"] > 0 and c["train_runtime_s"] > 0
        assert c["tokens_per_s"] == pytest.approx(c["tokens"] / c["train_runtime_s"], rel=1e-2)
        assert c["eval_loss"] > 0 and c["peak_rss_mb"] > 0 and len(c["runs"]) == 1
    tunery, trl = doc["configurations"]["tunery"], doc["configurations"]["trl"]
    assert tunery["packing"] is True and tunery["loss_on"] == "assistant turns"
    assert trl["packing"] is False and trl["loss_on"] == "every token"  # TRL's defaults
    # packed 192-token sequences hold more real tokens per step than TRL's padded batches of 2
    assert tunery["tokens"] > trl["tokens"]
    ratio = tunery["tokens_per_s"] / trl["tokens_per_s"]
    assert doc["comparison"]["tokens_per_s_ratio"] == pytest.approx(ratio, rel=1e-2)
    delta = doc["comparison"]["eval_loss_delta"]
    assert delta["mean"] == pytest.approx(tunery["eval_loss"] - trl["eval_loss"], abs=1e-3)
    assert doc["targets"]["met"] == (ratio >= 1.5 and delta["mean"] <= 0)
