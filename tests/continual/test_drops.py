"""The drop zone and its manifest: which files count as complete drops, and that each is taken exactly once.

Real files in a temporary folder (and a real fsspec ``memory://`` file system), a real SQLite manifest, and
real concurrent processes. Time is passed as ``now`` instead of sleeping.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import fsspec
import pytest

from tunery.config import ContinuousConfig, DataConfig, MlflowConfig, Recipe
from tunery.continual import drops

PATTERNS = ["*.csv", "*.tsv", "*.jsonl"]
LATER = 4_000_000_000.0  # 2096: every file in these tests has settled by then


def _recipe(zone: str, workdir: Path, **continuous) -> Recipe:
    continuous.setdefault("settle_seconds", 0)
    return Recipe(
        name="zone-test",
        data=DataConfig(source=zone, text_columns=["text"], label_column="label"),
        continuous=ContinuousConfig(**continuous),
        mlflow=MlflowConfig(registered_model="zone-test"),
        workdir=str(workdir),
    )


def _write(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


def _tsv(*rows: str) -> str:
    return "text\tlabel\n" + "".join(f"{r}\tham\n" for r in rows)


def _names(candidates) -> list[str]:
    return sorted(c.name for c in candidates)


@pytest.fixture
def zone(tmp_path) -> Path:
    folder = tmp_path / "zone"
    folder.mkdir()
    return folder


# --- the writers' protocol ----------------------------------------------------------------------------


def test_only_renamed_complete_files_matching_the_patterns_are_candidates(zone):
    for name in ("a.tsv.part", "b.tsv.tmp", ".c.tsv", "_d.tsv", "e.tsv~", "f.csv.crdownload", "notes.txt"):
        _write(zone / name, _tsv("in progress"))
    assert drops.list_candidates(str(zone), PATTERNS, 0, now=LATER) == []

    (zone / "a.tsv.part").rename(zone / "a.tsv")  # the writer finished: atomic rename
    found = drops.list_candidates(str(zone), PATTERNS, 0, now=LATER)
    assert [(c.name, c.kind) for c in found] == [("a.tsv", "file")]
    (candidate,) = found
    assert candidate.files == (str(zone / "a.tsv"),)
    assert candidate.size == (zone / "a.tsv").stat().st_size


def test_a_folder_is_a_drop_only_once_its_success_marker_exists(zone):
    batch = zone / "batch-7"
    _write(batch / "part-0.tsv", _tsv("one"))
    _write(batch / "part-1.tsv", _tsv("two"))
    _write(batch / "part-2.tsv.part", _tsv("unfinished"))
    _write(batch / "README.txt", "not data")
    assert drops.list_candidates(str(zone), PATTERNS, 0, now=LATER) == []  # no marker: however old

    _write(batch / drops.SUCCESS_MARKER, "")
    (candidate,) = drops.list_candidates(str(zone), PATTERNS, 0, now=LATER)
    assert candidate.kind == "folder" and candidate.name == "batch-7"
    assert candidate.files == (str(batch / "part-0.tsv"), str(batch / "part-1.tsv"))
    assert candidate.size == sum((batch / f"part-{i}.tsv").stat().st_size for i in (0, 1))
    assert candidate.mtime == pytest.approx((batch / drops.SUCCESS_MARKER).stat().st_mtime)


def test_a_folder_still_being_written_under_a_temporary_name_is_ignored(zone):
    _write(zone / "_batch" / "part-0.tsv", _tsv("one"))
    _write(zone / "_batch" / drops.SUCCESS_MARKER, "")
    assert drops.list_candidates(str(zone), PATTERNS, 0, now=LATER) == []


def test_settle_seconds_holds_back_a_file_modified_just_now(zone):
    old = _write(zone / "old.tsv", _tsv("old"))
    fresh = _write(zone / "fresh.tsv", _tsv("fresh"))
    now = time.time()
    os.utime(old, (now - 60, now - 60))
    os.utime(fresh, (now - 1, now - 1))

    assert _names(drops.list_candidates(str(zone), PATTERNS, 5, now=now)) == ["old.tsv"]
    assert _names(drops.list_candidates(str(zone), PATTERNS, 5, now=now + 5)) == ["fresh.tsv", "old.tsv"]
    assert _names(drops.list_candidates(str(zone), PATTERNS, 0, now=now)) == ["fresh.tsv", "old.tsv"]


def test_candidates_come_oldest_first(zone):
    now = time.time()
    for i, name in enumerate(["c.tsv", "a.tsv", "b.tsv"]):
        os.utime(_write(zone / name, _tsv(name)), (now - 100 + i, now - 100 + i))
    assert [c.name for c in drops.list_candidates(str(zone), PATTERNS, 0, now=now)] == [
        "c.tsv",
        "a.tsv",
        "b.tsv",
    ]


def test_scan_respects_settle_seconds_through_now(zone, tmp_path):
    recipe = _recipe(str(zone), tmp_path / "work", settle_seconds=30)
    path = _write(zone / "a.tsv", _tsv("a"))
    mtime = path.stat().st_mtime
    early = drops.scan(recipe, now=mtime + 1)
    assert early.new == [] and early.candidates == 0
    late = drops.scan(recipe, now=mtime + 31)
    assert [e["name"] for e in late.new] == ["a.tsv"]


def test_a_missing_zone_is_an_error_naming_the_zone(tmp_path):
    missing = tmp_path / "no-such-zone"
    with pytest.raises(FileNotFoundError, match="no-such-zone"):
        drops.list_candidates(str(missing), PATTERNS, 0)
    with pytest.raises(FileNotFoundError, match="no-such-zone"):
        drops.scan(_recipe(str(missing), tmp_path / "work"))


def test_a_file_as_zone_is_an_error(tmp_path):
    not_a_folder = _write(tmp_path / "zone.tsv", _tsv("x"))
    with pytest.raises(FileNotFoundError, match="zone.tsv"):
        drops.list_candidates(str(not_a_folder), PATTERNS, 0)


# --- exactly once -------------------------------------------------------------------------------------


def test_scanning_twice_or_after_a_restart_registers_nothing_new(zone, tmp_path):
    recipe = _recipe(str(zone), tmp_path / "work")
    _write(zone / "a.tsv", _tsv("a"))
    _write(zone / "b.tsv", _tsv("b"))

    first = drops.scan(recipe)
    assert sorted(e["name"] for e in first.new) == ["a.tsv", "b.tsv"] and first.duplicates == []
    digest = hashlib.sha256((zone / "a.tsv").read_bytes()).hexdigest()
    by_name = {e["name"]: e for e in first.new}
    assert by_name["a.tsv"]["sha256"] == digest and by_name["a.tsv"]["id"] == digest[:16]

    second = drops.scan(recipe)
    assert second.new == [] and second.duplicates == [] and second.candidates == 2

    restarted = drops.Manifest(drops.state_dir(recipe) / "manifest.sqlite")  # a new watcher process
    assert sorted(d.name for d in restarted.drops()) == ["a.tsv", "b.tsv"]
    assert all(d.status == "pending" for d in restarted.drops())
    assert all(restarted.known(c) for c in drops.list_candidates(str(zone), PATTERNS, 0))
    assert drops.scan(recipe).new == []


def test_the_same_bytes_under_another_name_are_a_duplicate_not_a_new_drop(zone, tmp_path):
    recipe = _recipe(str(zone), tmp_path / "work")
    _write(zone / "a.tsv", _tsv("same", "rows"))
    (first,) = drops.scan(recipe).new

    _write(zone / "copy-of-a.tsv", _tsv("same", "rows"))
    again = drops.scan(recipe)
    assert again.new == []
    assert again.duplicates == [
        {
            "id": first["id"],
            "sha256": first["sha256"],
            "name": "copy-of-a.tsv",
            "uri": str(zone / "copy-of-a.tsv"),
        }
    ]
    assert len(drops.Manifest.of(recipe).drops()) == 1
    assert drops.scan(recipe).duplicates == []  # reported once: the copy is now a known file


def test_new_content_under_the_same_name_is_a_new_drop(zone, tmp_path):
    recipe = _recipe(str(zone), tmp_path / "work")
    path = _write(zone / "daily.tsv", _tsv("monday"))
    yesterday = time.time() - 86_400
    os.utime(path, (yesterday, yesterday))
    (monday,) = drops.scan(recipe).new

    _write(path, _tsv("tuesday", "more rows"))  # overwritten in place today
    (tuesday,) = drops.scan(recipe).new
    assert tuesday["id"] != monday["id"] and tuesday["name"] == "daily.tsv"
    assert [d.status for d in drops.Manifest.of(recipe).drops()] == ["pending", "pending"]


def test_a_folder_drop_hashes_its_files_names_and_contents(zone, tmp_path):
    recipe = _recipe(str(zone), tmp_path / "work")
    for folder in ("x", "y"):
        _write(zone / folder / "part-0.tsv", _tsv("one"))
        _write(zone / folder / "part-1.tsv", _tsv("two"))
        _write(zone / folder / drops.SUCCESS_MARKER, "")
    _write(zone / "z" / "part-0.tsv", _tsv("one"))
    _write(zone / "z" / "part-9.tsv", _tsv("two"))  # same bytes, another file name
    _write(zone / "z" / drops.SUCCESS_MARKER, "")

    found = drops.scan(recipe)
    # x and y hold the same files: one drop (x: older marker, or first name on a tie).
    # z holds the same bytes under another file name: its own drop
    assert sorted(e["name"] for e in found.new) == ["x", "z"]
    assert [e["name"] for e in found.duplicates] == ["y"]
    (x,) = [d for d in drops.Manifest.of(recipe).drops() if d.name == "x"]
    assert [Path(f).name for f in x.file_list()] == ["part-0.tsv", "part-1.tsv"]


def _scan_in_child(zone: str, workdir: str, barrier, queue) -> None:
    recipe = _recipe(zone, Path(workdir))
    barrier.wait()  # both watchers start at the same moment, on a workdir with no manifest yet
    result = drops.scan(recipe)
    queue.put((result.new, result.duplicates))


def test_two_watchers_scanning_at_once_register_each_drop_exactly_once(zone, tmp_path):
    work = tmp_path / "work"
    files = [_write(zone / f"drop-{i:02d}.tsv", _tsv(f"row {i} " + "x" * 20_000)) for i in range(12)]

    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_scan_in_child, args=(str(zone), str(work), barrier, queue)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    new = [e["uri"] for found, _ in results for e in found]
    assert sorted(new) == sorted(str(f) for f in files)  # each file new for exactly one watcher
    # the loser of a race on a file must not report the file as a copy of itself
    assert [e for _, dups in results for e in dups] == []
    with sqlite3.connect(drops.state_dir(_recipe(str(zone), work)) / "manifest.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT sha256) FROM drops").fetchone() == (12, 12)
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT uri) FROM files").fetchone() == (12, 12)


# --- fsspec zones -------------------------------------------------------------------------------------


def test_an_fsspec_memory_zone_works_like_a_folder(tmp_path):
    root = f"memory://tunery-zone-{os.getpid()}-{tmp_path.name}"
    fs = fsspec.filesystem("memory")
    fs.mkdir(root)
    try:
        for name, body in {"a.tsv": _tsv("a"), "a.tsv.part": _tsv("partial"), "notes.txt": "x"}.items():
            with fsspec.open(f"{root}/{name}", "w") as fh:
                fh.write(body)
        with fsspec.open(f"{root}/batch/part-0.tsv", "w") as fh:
            fh.write(_tsv("b"))
        recipe = _recipe(root, tmp_path / "work")

        found = drops.scan(recipe)
        assert [e["name"] for e in found.new] == ["a.tsv"]  # the folder has no marker yet
        (drop,) = drops.Manifest.of(recipe).drops()
        (uri,) = drop.file_list()
        assert uri.startswith("memory://") and uri.endswith("/a.tsv")
        with fsspec.open(uri, "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == drop.sha256

        fs.pipe(f"{root}/batch/{drops.SUCCESS_MARKER}", b"")
        again = drops.scan(recipe)
        assert [(e["name"], e["uri"].startswith("memory://")) for e in again.new] == [("batch", True)]
        assert drops.scan(recipe).new == []
    finally:
        fs.rm(root, recursive=True)


def test_a_missing_memory_zone_is_an_error_naming_it():
    with pytest.raises(FileNotFoundError, match="memory://no-such-tunery-zone"):
        drops.list_candidates("memory://no-such-tunery-zone", PATTERNS, 0)


# --- status bookkeeping -------------------------------------------------------------------------------


@pytest.fixture
def three_drops(zone, tmp_path):
    recipe = _recipe(str(zone), tmp_path / "work")
    for name in ("a.tsv", "b.tsv", "c.tsv"):
        _write(zone / name, _tsv(name))
    found = drops.scan(recipe)
    ids = {e["name"]: e["id"] for e in found.new}
    return drops.Manifest.of(recipe), ids


def test_pending_drops_are_announced_once_then_again_after_reannounce_seconds(three_drops):
    manifest, ids = three_drops
    assert sorted(d.id for d in manifest.to_announce(300)) == sorted(ids.values())

    manifest.mark_announced([ids["a.tsv"], ids["b.tsv"]])
    now = time.time()
    assert [d.id for d in manifest.to_announce(300, now=now)] == [ids["c.tsv"]]
    assert manifest.get(ids["a.tsv"]).announcements == 1
    later = sorted(d.id for d in manifest.to_announce(300, now=now + 301))
    assert later == sorted(ids.values())  # still pending long after: the event was lost

    manifest.mark_announced([ids["a.tsv"]])
    assert manifest.get(ids["a.tsv"]).announcements == 2

    manifest.set_status([ids["a.tsv"]], "committed", version=1)
    manifest.set_status([ids["c.tsv"]], "held", owner="flow-run-1")
    assert [d.id for d in manifest.to_announce(300, now=now + 10**6)] == [ids["b.tsv"]]


def test_a_failed_drop_can_be_requeued_but_a_committed_one_cannot(three_drops):
    manifest, ids = three_drops
    manifest.set_status([ids["a.tsv"]], "failed", detail="DataError: no label column")
    requeued = manifest.requeue(ids["a.tsv"])
    assert requeued.status == "pending"
    assert "failed" in requeued.detail and "no label column" in requeued.detail
    assert [d.id for d in manifest.drops("pending")].count(ids["a.tsv"]) == 1

    manifest.set_status([ids["b.tsv"]], "committed", version=3)
    with pytest.raises(ValueError, match="committed"):
        manifest.requeue(ids["b.tsv"])
    assert manifest.get(ids["b.tsv"]).status == "committed" and manifest.get(ids["b.tsv"]).version == 3
    with pytest.raises(ValueError, match="pending"):
        manifest.requeue(ids["c.tsv"])


def test_status_changes_are_validated_and_unknown_drops_are_errors(three_drops):
    manifest, ids = three_drops
    with pytest.raises(ValueError, match="unknown drop status"):
        manifest.set_status([ids["a.tsv"]], "done")
    assert manifest.get(ids["a.tsv"]).status == "pending"
    with pytest.raises(KeyError, match="no drop"):
        manifest.get("0" * 16)


def test_a_recipe_without_a_continuous_section_has_no_zone(tmp_path):
    recipe = _recipe(str(tmp_path), tmp_path / "work").model_copy(update={"continuous": None})
    with pytest.raises(ValueError, match="no `continuous` section"):
        drops.zone_uri(recipe)
