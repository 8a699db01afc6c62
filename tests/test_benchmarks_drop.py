"""Smoke test of benchmarks/drop_ingest.py: it runs (--quick) and writes JSON of the documented shape.

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


@pytest.mark.parametrize("dataset", ["spam_assassin", "sms_spam"])
def test_quick_run_writes_consistent_json(shared_data: Path, tmp_path: Path, dataset: str) -> None:
    out = tmp_path / "drops.json"
    script = REPO / "benchmarks" / "drop_ingest.py"
    command = [sys.executable, str(script), "--quick", "--dataset", dataset, "--data-dir", str(shared_data)]
    proc = subprocess.run(
        [*command, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    setup = doc["setup"]
    assert (setup["drops"], setup["rows_per_drop"], setup["repeats"], setup["data"]) == (4, 100, 1, dataset)
    assert setup["rotations"] == [0] and setup["baseline_repeats"] == 1
    rows = doc["per_drop_median"]
    assert [r["drop"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        parts = row["ingest_s"] + row["clean_s"] + row["dedup_split_s"] + row["write_s"]
        assert row["total_s"] == pytest.approx(parts)
        assert 0 < row["total_s"] <= row["update_s"]  # the update stages the drop, then checks drift
        assert row["baseline_s"] > 0
    # the history grows by what each drop kept (at most its 100 rows)
    history = [r["history_rows"] for r in rows]
    assert history[0] == 0 and all(0 < b - a <= 100 for a, b in zip(history, history[1:], strict=False))
    ratios = doc["ratio_last_over_first"]
    assert ratios["stage"] == pytest.approx(rows[-1]["total_s"] / rows[0]["total_s"])
    assert doc["target"]["met"] == (ratios["stage"] <= doc["target"]["stage_ratio_at_most"])
    assert "target stage ratio" in proc.stdout
