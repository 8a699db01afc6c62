"""The drop zone and its manifest: which files count as complete drops, and that each is taken exactly once.

Real files in a temporary folder (and a real fsspec ``memory://`` file system), a real SQLite manifest, and
real concurrent processes. Time is passed as ``now`` instead of sleeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import queue as queue_module
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fsspec
import pytest

from tests.conftest import REPO
from tunery.config import ContinuousConfig, DataConfig, MlflowConfig, Recipe
from tunery.continual import continuous, drops

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


# --- only regular files inside the zone are read ------------------------------------------------------
# Real symlinks, FIFOs, sockets and device nodes in a real zone. Whatever could hang (a FIFO, a device)
# runs with a deadline, in a child process or a thread; the unreadable file is scanned by a child process
# that drops root's privileges (root reads a mode-000 file), so its open() really fails.

PASSWD = Path("/etc/passwd")
SECRET = "SECRET-FIRST-LINE-7f3a"


def _age(path: Path, seconds: float) -> None:
    """Backdate an entry (a link itself, not its target): the bad entries come first in the scan order."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp), follow_symlinks=False)


def _good(zone: Path, name: str = "good.tsv") -> Path:
    return _write(zone / name, _tsv(f"a good row of {name}"))


def _reasons(found) -> dict[str, str]:
    return {e["name"]: e["reason"] for e in found.rejected}


def _recipe_file(recipe: Recipe, path: Path) -> Path:
    """The recipe as a file for the real CLI (JSON is YAML)."""
    body = {
        "name": recipe.name,
        "data": {"source": recipe.data.source, "text_columns": ["text"], "label_column": "label"},
        "continuous": {"settle_seconds": 0},
        "mlflow": {"registered_model": recipe.name},
        "workdir": recipe.workdir,
    }
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def _drops_list(recipe: Recipe, tmp_path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tunery.cli", "drops", "list", str(_recipe_file(recipe, tmp_path / "r.yaml"))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_symlink_to_a_file_outside_the_zone_is_never_read(zone, tmp_path):
    outside = _write(tmp_path / "outside" / "secret.tsv", f"{SECRET}\tham\n" + _tsv("secret row"))
    (zone / "passwd.tsv").symlink_to(PASSWD)
    (zone / "secret.tsv").symlink_to(outside)
    _age(zone / "passwd.tsv", 300)
    _age(zone / "secret.tsv", 200)
    _good(zone)
    recipe = _recipe(str(zone), tmp_path / "work")

    found = drops.scan(recipe)
    assert [e["name"] for e in found.new] == ["good.tsv"]
    assert _reasons(found) == {"passwd.tsv": "outside_zone", "secret.tsv": "outside_zone"}
    result = continuous.update_dataset(recipe, "flow-run-1")  # what the flow does next: commit the drops
    assert result["committed"] == [found.new[0]["id"]] and result["failed"] == {}

    first_line = PASSWD.read_text(encoding="utf-8").splitlines()[0]
    listed = _drops_list(recipe, tmp_path)
    assert "outside_zone" in listed and "passwd.tsv" in listed
    stored = b"".join(p.read_bytes() for p in drops.state_dir(recipe).rglob("*") if p.is_file())
    for text in (first_line, SECRET, "secret row"):
        assert text not in listed
        assert text.encode() not in stored  # not in the manifest, nor anywhere in the dataset
    assert [d.name for d in drops.Manifest.of(recipe).drops()] == ["good.tsv"]


def test_a_symlink_inside_the_zone_to_a_zone_file_is_still_refused(zone, tmp_path):
    target = _good(zone, "a.tsv")
    (zone / "b.tsv").symlink_to(target.name)  # relative, to a regular file in the zone
    (zone / "c.tsv").symlink_to(target)  # absolute
    found = drops.scan(_recipe(str(zone), tmp_path / "work"))
    assert [e["name"] for e in found.new] == ["a.tsv"]
    assert found.duplicates == []  # not taken as a copy of a.tsv either: never read
    assert _reasons(found) == {"b.tsv": "symlink", "c.tsv": "symlink"}


def test_a_dangling_symlink_does_not_stop_the_scan(zone, tmp_path):
    (zone / "gone.tsv").symlink_to(zone / "deleted-long-ago.tsv")
    (zone / "loop.tsv").symlink_to("loop.tsv")
    _age(zone / "gone.tsv", 300)
    _age(zone / "loop.tsv", 300)
    _good(zone)
    recipe = _recipe(str(zone), tmp_path / "work")

    found = drops.scan(recipe)
    assert [e["name"] for e in found.new] == ["good.tsv"]
    assert _reasons(found) == {"gone.tsv": "dangling_symlink", "loop.tsv": "dangling_symlink"}

    (zone / "gone.tsv").unlink()  # the writer fixes it: a regular file under that name
    _write(zone / "gone.tsv", _tsv("back"))
    again = drops.scan(recipe)
    assert [e["name"] for e in again.new] == ["gone.tsv"] and again.rejected == []
    assert [r.name for r in drops.Manifest.of(recipe).rejects()] == ["loop.tsv"]  # gone.tsv's is cleared


def _scan_to_queue(zone: str, workdir: str, queue) -> None:
    result = drops.scan(_recipe(zone, Path(workdir)))
    queue.put(result.as_dict())


def _in_child(target, *args, seconds: float = 60):
    """What ``target(*args, queue)`` puts on the queue in a child process; fails if the child dies without
    an answer (an exception: in its stderr) or does not answer in time (it hangs: it is killed)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, queue))
    child.start()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                return queue.get(timeout=0.5)
            except queue_module.Empty:
                if not child.is_alive() and queue.empty():
                    pytest.fail(f"the scan failed in the child process (exit code {child.exitcode})")
        pytest.fail(f"the scan did not return within {seconds} s (it hangs on an entry)")
    finally:
        child.kill()
        child.join(timeout=10)


def _scan_with_deadline(zone: Path, work: Path, seconds: float = 60) -> dict:
    return _in_child(_scan_to_queue, str(zone), str(work), seconds=seconds)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_never_hangs_the_scan(zone, tmp_path, kind):
    entry = zone / f"{kind}.tsv"
    if kind == "fifo":
        os.mkfifo(entry)  # no writer: opening it for reading blocks forever
    else:
        try:
            os.mknod(entry, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: reading never ends
        except PermissionError:
            pytest.skip("this machine may not create device nodes")
    _age(entry, 300)
    _good(zone)

    started = time.monotonic()
    found = _scan_with_deadline(zone, tmp_path / "work")
    assert time.monotonic() - started < 60
    assert [e["name"] for e in found["new"]] == ["good.tsv"]
    assert [(e["name"], e["reason"]) for e in found["rejected"]] == [(f"{kind}.tsv", "not_regular_file")]


def test_a_unix_socket_is_refused(zone, tmp_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(zone / "s.tsv"))
        _age(zone / "s.tsv", 300)
        _good(zone)
        found = drops.scan(_recipe(str(zone), tmp_path / "work"))
    finally:
        server.close()
    assert [e["name"] for e in found.new] == ["good.tsv"]
    assert _reasons(found) == {"s.tsv": "not_regular_file"}
    assert "socket" in found.rejected[0]["detail"]


def _scan_unprivileged(zone: str, workdir: str, queue) -> None:
    """Scan as a user who may not read a mode-000 file: root drops to ``nobody`` (root reads anything)."""
    if os.geteuid() == 0:
        drops.survey(zone, PATTERNS, 0)  # import what the scan imports lazily while the files are readable
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    try:
        with open(Path(zone) / "locked.tsv", "rb"):
            queue.put("readable")
            return
    except PermissionError:
        pass
    queue.put(drops.scan(_recipe(zone, Path(workdir))).as_dict())


def test_an_unreadable_file_is_refused_and_the_others_are_taken(tmp_path):
    # a folder that ``nobody`` can reach and write (pytest's own temporary folders are private to root)
    base = Path(tempfile.mkdtemp(prefix="tunery-drops-"))
    try:
        zone, work = base / "zone", base / "work"
        locked = _write(zone / "locked.tsv", _tsv("locked"))
        _age(locked, 300)
        _good(zone)
        for path in (base, zone, *zone.iterdir()):
            if os.geteuid() == 0:
                os.chown(path, 65534, 65534)
        locked.chmod(0)
        found = _in_child(_scan_unprivileged, str(zone), str(work))
        if found == "readable":
            pytest.skip("this user reads a mode-000 file (a capability): nothing is unreadable here")
        assert [e["name"] for e in found["new"]] == ["good.tsv"]
        (rejected,) = found["rejected"]
        assert rejected["name"] == "locked.tsv" and rejected["reason"] == "unreadable"
        assert "Permission denied" in rejected["detail"]
    finally:
        shutil.rmtree(base)


def test_entries_swapped_after_the_listing_are_not_followed_or_waited_on(zone, tmp_path, monkeypatch):
    """The check at listing time is not enough: the file is opened O_NOFOLLOW | O_NONBLOCK and fstat-ed."""
    for name in ("fifo.tsv", "link.tsv"):
        _age(_write(zone / name, _tsv(f"{name} when listed")), 300)
    _good(zone)
    survey = drops.survey

    def survey_then_swap(*args, **kwargs):
        listed = survey(*args, **kwargs)  # the real listing: three regular files
        os.mkfifo(zone / "new-fifo")
        os.replace(zone / "new-fifo", zone / "fifo.tsv")
        (zone / "new-link").symlink_to(PASSWD)
        os.replace(zone / "new-link", zone / "link.tsv")
        return listed

    monkeypatch.setattr(drops, "survey", survey_then_swap)
    result = {}
    scanner = threading.Thread(
        target=lambda: result.update(found=drops.scan(_recipe(str(zone), tmp_path / "w")))
    )
    scanner.daemon = True
    scanner.start()
    scanner.join(timeout=30)
    if scanner.is_alive():  # blocked in open() on the FIFO: unblock it with a writer, then fail
        with open(zone / "fifo.tsv", "wb"):
            pass
        pytest.fail("the scan blocked on a FIFO swapped in after the listing")
    found = result["found"]
    assert [e["name"] for e in found.new] == ["good.tsv"]
    assert _reasons(found) == {"fifo.tsv": "not_regular_file", "link.tsv": "outside_zone"}


def _hash_in_thread(path: Path, seconds: float = 30):
    """``content_sha256([path])`` in a thread: what it raised; fails if it blocks (then unblocks it)."""
    outcome = {}

    def run():
        try:
            outcome["digest"] = drops.content_sha256([str(path)])
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    if thread.is_alive():
        with open(path, "wb"):  # the blocked open() of the FIFO returns once a writer opens it
            pass
        pytest.fail(f"content_sha256 blocked on {path.name}")
    return outcome.get("error")


def test_hashing_a_drop_again_refuses_a_fifo_or_a_link_put_in_its_place(zone):
    """The dataset hashes a drop's files again before ingesting them (the bytes must be the registered
    ones): a FIFO or symlink put there since is refused at once, without blocking or following it."""
    os.mkfifo(zone / "fifo.tsv")
    (zone / "link.tsv").symlink_to(PASSWD)
    fifo, link = _hash_in_thread(zone / "fifo.tsv"), _hash_in_thread(zone / "link.tsv")
    assert isinstance(fifo, drops.EntryRefused) and fifo.args[0] == "not_regular_file"
    assert isinstance(link, drops.EntryRefused) and link.args[0] == "symlink"
    assert _hash_in_thread(_good(zone)) is None


def test_a_registered_drop_replaced_by_a_symlink_fails_and_is_never_ingested(zone, tmp_path):
    recipe = _recipe(str(zone), tmp_path / "work")
    _good(zone, "a.tsv")
    _good(zone, "b.tsv")
    ids = {e["name"]: e["id"] for e in drops.scan(recipe).new}
    (zone / "b.tsv").unlink()
    (zone / "b.tsv").symlink_to(PASSWD)  # after registration, before the dataset takes it in

    result = continuous.update_dataset(recipe, "flow-run-1")
    assert result["committed"] == [ids["a.tsv"]]
    assert result["failed"] == {
        ids[
            "b.tsv"
        ]: "EntryRefused: symlink: a symlink: links are never followed, only regular files are read"
    }
    stored = b"".join(p.read_bytes() for p in drops.state_dir(recipe).rglob("*") if p.is_file())
    assert PASSWD.read_text(encoding="utf-8").splitlines()[0].encode() not in stored


def test_a_folder_drop_takes_only_its_regular_files(zone, tmp_path):
    batch = zone / "batch"
    _write(batch / "part-0.tsv", _tsv("inside"))
    (batch / "part-1.tsv").symlink_to(PASSWD)
    os.mkfifo(batch / "part-2.tsv")
    _write(batch / drops.SUCCESS_MARKER, "")
    outside = tmp_path / "elsewhere"
    _write(outside / "part-0.tsv", _tsv(SECRET))
    _write(outside / drops.SUCCESS_MARKER, "")
    (zone / "linked").symlink_to(outside, target_is_directory=True)  # a folder drop by link: refused

    found = _scan_with_deadline(zone, tmp_path / "work")
    assert [e["name"] for e in found["new"]] == ["batch"]
    reasons = {e["name"]: e["reason"] for e in found["rejected"]}
    assert reasons == {"batch/part-1.tsv": "outside_zone", "batch/part-2.tsv": "not_regular_file"} | {
        "linked": "outside_zone"
    }
    (drop,) = drops.Manifest.of(_recipe(str(zone), tmp_path / "work")).drops()
    assert drop.file_list() == [str(batch / "part-0.tsv")]


def test_a_refused_entry_is_recorded_and_logged_once(zone, tmp_path, caplog):
    (zone / "link.tsv").symlink_to(PASSWD)
    (zone / "pipe.tsv").symlink_to("no-such-file")
    recipe = _recipe(str(zone), tmp_path / "work")
    with caplog.at_level(logging.WARNING, logger="tunery.continual.drops"):
        first = drops.scan(recipe)
        second = drops.scan(recipe)
        _good(zone)
        third = drops.scan(recipe)
    assert sorted(_reasons(first)) == ["link.tsv", "pipe.tsv"]
    assert second.rejected == [] and third.rejected == []
    assert [e["name"] for e in third.new] == ["good.tsv"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("skipped" in w for w in warnings)
    assert sorted(r.reason for r in drops.Manifest.of(recipe).rejects()) == [
        "dangling_symlink",
        "outside_zone",
    ]
    assert _drops_list(recipe, tmp_path).count("rejected") == 2


def test_a_name_with_control_characters_is_stored_as_given_and_shown_escaped(zone, tmp_path, caplog):
    name = "evil\nv1 committed\x1b[31m.tsv"
    _write(zone / name, _tsv("the row of a strange name"))
    bad_link = "link\r\x1b]0;owned\x07.tsv"
    (zone / bad_link).symlink_to(PASSWD)
    recipe = _recipe(str(zone), tmp_path / "work")
    with caplog.at_level(logging.WARNING, logger="tunery.continual.drops"):
        found = drops.scan(recipe)
    assert [e["name"] for e in found.new] == [name]
    (drop,) = drops.Manifest.of(recipe).drops()
    assert drop.name == name and drop.uri == str(zone / name)  # stored as given

    listed = _drops_list(recipe, tmp_path)
    assert "evil\\nv1 committed\\x1b[31m.tsv" in listed
    assert "link\\r\\x1b]0;owned\\x07.tsv" in listed
    assert not any(c in listed for c in "\x1b\r\x07")
    assert len(listed.splitlines()) == 2  # one line per entry: no forged line
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "\\x1b]0;owned\\x07" in warning and not any(c in warning for c in "\x1b\r\x07\n")


def test_a_name_that_is_not_utf8_is_refused_not_a_crash(zone, tmp_path):
    raw = os.fsencode(str(zone)) + b"/bad-\xff.tsv"
    with open(raw, "wb") as fh:
        fh.write(_tsv("latin-1 name").encode())
    _age(Path(os.fsdecode(raw)), 300)
    _good(zone)
    recipe = _recipe(str(zone), tmp_path / "work")
    found = drops.scan(recipe)
    assert [e["name"] for e in found.new] == ["good.tsv"]
    assert [(e["reason"], drops.shown(e["name"])) for e in found.rejected] == [("bad_name", "bad-\\xff.tsv")]
    assert "bad-\\xff.tsv  bad_name" in _drops_list(recipe, tmp_path)  # stored as bytes, shown once escaped


def test_shown_escapes_control_format_and_undecodable_characters_only():
    assert drops.shown("plain name-é_ü.tsv") == "plain name-é_ü.tsv"
    assert drops.shown("a\nb\tc\rd\x1be\x7f\\") == "a\\nb\\tc\\rd\\x1be\\x7f\\\\"
    assert drops.shown("rtl\u202egnp.tsv\u2028") == "rtl\\u202egnp.tsv\\u2028"
    assert drops.shown(os.fsdecode(b"bad-\xff")) == "bad-\\xff"
