"""tunery.ops.cpus: the CPUs a process may use, read from cgroup files laid out as the kernel lays them out
(a v2 hierarchy with this process's cgroup and its ancestors, a v1 ``cpu`` controller) in a temporary
folder, and the threads and processes tunery sizes by it."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from tunery.config import CleaningConfig, Recipe
from tunery.data import clean
from tunery.ops import cpus
from tunery.training import launch


def _v2(tmp_path, limits: dict[str, str]):
    """A v2 hierarchy: ``limits`` maps a cgroup path (``""`` is the root) to its cpu.max text; this process
    sits in the deepest one."""
    root = tmp_path / "cgroup"
    for relative, text in limits.items():
        folder = root / relative
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(text + "\n")
    leaf = max(limits, key=len)
    cgroup_file = tmp_path / "self-cgroup"
    cgroup_file.write_text(f"0::/{leaf}\n")
    return root, cgroup_file


def test_a_v2_quota_counts_its_cpus_rounded_up(tmp_path):
    root, own = _v2(tmp_path, {"": "max 100000", "kubepods/pod1": "150000 100000"})
    assert cpus.quota_cpus(root, own) == 2


def test_the_tightest_ancestor_wins(tmp_path):
    root, own = _v2(
        tmp_path, {"": "max 100000", "kubepods": "100000 100000", "kubepods/pod1/ctr": "400000 100000"}
    )
    assert cpus.quota_cpus(root, own) == 1


def test_no_limit_anywhere_is_no_quota(tmp_path):
    root, own = _v2(tmp_path, {"": "max 100000", "user.slice": "max 100000"})
    assert cpus.quota_cpus(root, own) is None


def test_a_v1_cfs_quota_is_read_and_minus_one_means_none(tmp_path):
    root = tmp_path / "v1"
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("300000\n")
    missing = tmp_path / "no-such-cgroup-file"
    assert cpus.quota_cpus(root, missing) == 3
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.quota_cpus(root, missing) is None


def test_unreadable_or_garbled_files_are_no_quota(tmp_path):
    root, own = _v2(tmp_path, {"": "max 100000", "a": "lots of cpus"})
    assert cpus.quota_cpus(root, own) is None
    assert cpus.quota_cpus(tmp_path / "nothing", tmp_path / "nothing-either") is None


def test_usable_cpus_on_this_machine_is_within_what_it_has():
    assert 1 <= cpus.usable_cpus() <= len(os.sched_getaffinity(0)) <= (os.cpu_count() or 1)


def test_usable_cpus_is_the_quota_when_it_is_below_the_affinity_count(monkeypatch):
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 32)
    monkeypatch.setattr(cpus, "quota_cpus", lambda: 2)
    assert cpus.usable_cpus() == 2
    monkeypatch.setattr(cpus, "quota_cpus", lambda: None)
    assert cpus.usable_cpus() == 32


def test_openmp_is_sized_by_the_quota_only_when_unset_and_tighter(monkeypatch):
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 32)
    monkeypatch.setattr(cpus, "quota_cpus", lambda: 2)
    environ: dict[str, str] = {}
    assert cpus.fit_openmp_to_quota(environ) == 2 and environ == {"OMP_NUM_THREADS": "2"}
    kept = {"OMP_NUM_THREADS": "6"}
    assert cpus.fit_openmp_to_quota(kept) is None and kept == {"OMP_NUM_THREADS": "6"}
    monkeypatch.setattr(cpus, "quota_cpus", lambda: None)
    untouched: dict[str, str] = {}
    assert cpus.fit_openmp_to_quota(untouched) is None and untouched == {}


def _recipe(**training) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "cpus",
            "data": {"source": "d.csv", "text_columns": ["text"], "label_column": "label"},
            "model": {"base": "minilm"},
            "training": training,
            "mlflow": {"experiment": "cpus", "registered_model": "cpus"},
        }
    )


def test_training_threads_share_the_usable_cpus_not_the_hosts(monkeypatch):
    monkeypatch.delenv(launch.THREAD_CAP, raising=False)
    monkeypatch.setattr(launch, "usable_cpus", lambda: 4)
    assert launch.threads_per_process(_recipe()) == 4
    assert launch.threads_per_process(_recipe(num_threads=3)) == 3  # the recipe's figure wins


@pytest.mark.parametrize(("usable", "expected"), [(1, 1), (6, 6)])
def test_heavy_cleaning_uses_a_process_per_usable_cpu(monkeypatch, usable, expected):
    monkeypatch.setattr(clean, "usable_cpus", lambda: usable)
    rows, chars = clean.PARALLEL_MIN_ROWS, clean.PARALLEL_MIN_CHARS // clean.PARALLEL_MIN_ROWS + 1
    heavy = pd.DataFrame({"text": ["x" * chars] * rows})
    assert clean.process_count(heavy, CleaningConfig()) == expected
    assert clean.process_count(heavy.head(10), CleaningConfig()) == 1  # small inputs stay in-process
