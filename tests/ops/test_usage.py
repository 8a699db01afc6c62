"""tunery.ops.usage: stage records written by real work (CPU spent in this process and in child processes),
appended by several processes at once, read back after a torn write, and priced by the documented formulas."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from tunery.ops import usage


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_stage_records_its_wall_and_cpu_time(tmp_path):
    path = tmp_path / "usage.jsonl"
    with usage.meter(path, "clean"):
        _burn(0.3)
        time.sleep(0.2)
    (record,) = usage.read(path)
    assert record["stage"] == "clean" and record["process"] == "orchestrator" and not record["failed"]
    assert 0.25 <= record["cpu_s"] < record["wall_s"]  # the sleep took wall time, not CPU
    assert record["wall_s"] >= 0.5 and record["peak_rss_mb"] > 10


def test_a_failed_stage_is_recorded_and_its_error_still_raised(tmp_path):
    path = tmp_path / "usage.jsonl"
    with pytest.raises(RuntimeError, match="disk full"), usage.meter(path, "train"):
        raise RuntimeError("disk full")
    assert [(r["stage"], r["failed"]) for r in usage.read(path)] == [("train", True)]


def _rank(path: str, rank: int) -> None:
    started = time.monotonic()
    _burn(0.2)
    usage.record_process(usage.Path(path), "train", started, rank, gpus=0)


def test_every_rank_appends_its_own_line(tmp_path):
    path = tmp_path / "usage.jsonl"
    ctx = multiprocessing.get_context("spawn")
    ranks = [ctx.Process(target=_rank, args=(str(path), k)) for k in range(4)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(60)
    records = usage.read(path)
    assert sorted(r["process"] for r in records) == ["rank0", "rank1", "rank2", "rank3"]
    assert all(r["cpu_s"] >= 0.2 and r["gpu_s"] == 0.0 for r in records)
    assert len({r["pid"] for r in records}) == 4


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "usage.jsonl"
    usage.append(path, {"stage": "open", "process": "orchestrator", "wall_s": 1.0, "cpu_s": 0.5})
    with path.open("a") as f:
        f.write('{"stage": "train", "cpu')  # a writer killed mid-line
    assert [r["stage"] for r in usage.read(path)] == ["open"]
    assert usage.read(tmp_path / "missing.jsonl") == []


def _record(stage, process, wall, cpu, gpu=0.0, rss=100.0):
    figures = {"wall_s": wall, "cpu_s": cpu, "gpu_s": gpu, "peak_rss_mb": rss}
    return {"stage": stage, "process": process, **figures}


def test_summary_adds_attempts_and_ranks_and_prices_them():
    records = [
        _record("evaluate", "orchestrator", 30.0, 50.0, rss=900.0),
        _record("train", "orchestrator", 100.0, 4.0),  # a failed first attempt, retried
        _record("train", "orchestrator", 120.0, 5.0),
        _record("train", "rank0", 110.0, 200.0, gpu=110.0, rss=2500.0),
        _record("train", "rank1", 109.0, 190.0, gpu=109.0, rss=2400.0),
    ]
    rates = usage.Rates(cpu_hour=0.036, gpu_hour=3.6, currency="EUR", cpu_watts=10.0, gpu_watts=300.0)
    summary = usage.summarise(records, rates)
    train = summary["stages"]["train"]
    assert train["attempts"] == 2 and train["wall_s"] == 220.0  # the orchestrator's wall, not the ranks'
    assert train["cpu_s"] == 399.0 and train["gpu_s"] == 219.0 and train["peak_rss_mb"] == 2500.0
    total = summary["total"]
    assert total["cpu_s"] == 449.0 and total["wall_s"] == 250.0 and total["peak_rss_mb"] == 2500.0
    assert total["energy_kwh"] == pytest.approx((449.0 * 10.0 + 219.0 * 300.0) / 3.6e6)
    assert total["money"] == pytest.approx(449.0 / 3600 * 0.036 + 219.0 / 3600 * 3.6)
    assert summary["currency"] == "EUR"
    metrics = usage.metrics(summary)
    assert metrics["cost_money"] == pytest.approx(total["money"])
    assert metrics["cost_train_gpu_s"] == 219.0 and metrics["cost_evaluate_cpu_s"] == 50.0
    assert usage.text(summary).endswith(f"{total['money']:.4f} EUR")
    json.dumps(summary)  # stored as the run's cost.json


def test_a_stage_name_becomes_a_valid_metric_name():
    summary = usage.summarise([_record("publish-data", "orchestrator", 1.0, 0.5)], usage.Rates())
    assert "cost_publish_data_cpu_s" in usage.metrics(summary)
    assert usage.metrics(summary)["cost_money"] == 0.0  # no rates: nothing priced
