"""Smoke test of benchmarks/data_throughput.py: it runs (--quick) and writes JSON of the documented shape.

No timing is asserted: the numbers depend on the machine; only their consistency is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.realdata

SCRIPT = REPO / "benchmarks" / "data_throughput.py"
FIELDS = {
    "rows",
    "baseline_s",
    "tunery_s",
    "baseline_rows_per_s",
    "tunery_rows_per_s",
    "ratio",
    "target",
    "meets_target",
    "agreement",
    "num_proc",
    "near_dup_impl",
}


def test_quick_run_writes_consistent_json(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--data-dir", str(shared_data), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))

    for key in ("timestamp", "machine", "command", "datasets", "peak_rss_mb"):
        assert key in doc
    assert doc["machine"]["cpu_count"] >= 1
    assert set(doc["machine"]["packages"]) >= {"pandas", "datasets", "numpy"}
    assert "--quick" in doc["command"]
    assert doc["peak_rss_mb"] > 0
    assert set(doc["datasets"]) == {"spam_assassin", "sst2"}
    for name, r in doc["datasets"].items():
        assert set(r) >= FIELDS, f"{name}: missing {FIELDS - set(r)}"
        assert r["rows"] == 1000
        assert r["baseline_rows_per_s"] > 0 and r["tunery_rows_per_s"] > 0
        assert r["baseline_s"] > 0 and r["tunery_s"] > 0
        assert r["ratio"] == pytest.approx(r["tunery_rows_per_s"] / r["baseline_rows_per_s"], rel=1e-2)
        assert r["target"] == 2.0
        assert r["meets_target"] == (r["ratio"] >= r["target"])
        assert 0.0 <= r["agreement"] <= 1.0
        assert r["num_proc"] >= 1
        assert r["near_dup_impl"] in ("datasketch", "tunery.near_duplicate_clusters")
