"""How many CPUs this process may really use: the ones it may run on, bounded by its cgroup's CPU quota.

``os.cpu_count()`` counts the host's CPUs. In a container or a Kubernetes pod with a CPU limit the process
sees all of them but gets only the quota's share of time: sizing torch's thread pool or a pool of cleaning
processes by the host count then makes dozens of threads fight over two CPUs' worth of time slices (the
kernel throttles the whole group once the quota is spent), which is several times slower than one thread
per usable CPU. :func:`usable_cpus` is what tunery sizes its threads and processes by.

Read, in order: the CPUs of the affinity mask (``taskset``, ``cpuset``); cgroup v2 ``cpu.max`` of this
process's cgroup and every ancestor (the tightest limit wins); cgroup v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``. A quota of 1.5 CPUs counts as 2 (the thread that gets half a CPU still helps).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (the affinity mask; the machine's count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _ratio(quota: str, period: str) -> float | None:
    """CPUs granted by a quota/period pair; None for no limit (``max`` or ``-1``) or unreadable values."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v2_limits(root: Path, cgroup_file: Path) -> list[float]:
    """The ``cpu.max`` limits of this process's v2 cgroup and of its ancestors up to ``root``."""
    try:
        lines = cgroup_file.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    relative = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    if relative is None:
        return []
    limits = []
    folder = root / relative.lstrip("/")
    while True:
        try:
            fields = (folder / "cpu.max").read_text(encoding="utf-8").split()
        except OSError:
            fields = []
        if len(fields) == 2 and (granted := _ratio(*fields)) is not None:
            limits.append(granted)
        if folder == root or root not in folder.parents:
            return limits
        folder = folder.parent


def _v1_limit(root: Path) -> float | None:
    """The CFS quota of a v1 ``cpu`` controller mounted under ``root`` (the container's own view)."""
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        folder = root / name
        try:
            quota = (folder / "cpu.cfs_quota_us").read_text(encoding="utf-8").strip()
            period = (folder / "cpu.cfs_period_us").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        return _ratio(quota, period)
    return None


def quota_cpus(root: Path = CGROUP_ROOT, cgroup_file: Path = Path("/proc/self/cgroup")) -> int | None:
    """CPUs the cgroup CPU quota grants this process (rounded up), or None when no quota applies."""
    limits = _v2_limits(root, cgroup_file)
    if not limits and (v1 := _v1_limit(root)) is not None:
        limits = [v1]
    return max(1, math.ceil(min(limits) - 1e-9)) if limits else None


def usable_cpus() -> int:
    """CPUs this process can keep busy: the affinity mask's count, capped by the cgroup CPU quota."""
    affinity = affinity_cpus()
    quota = quota_cpus()
    return min(affinity, quota) if quota else affinity


def fit_openmp_to_quota(environ: dict[str, str] | None = None) -> int | None:
    """Size OpenMP's (and so torch's) thread pool by the usable CPUs where a cgroup quota is tighter than the
    affinity mask; call it before torch is imported. A value the caller set in ``OMP_NUM_THREADS`` is kept.

    Returns:
        The thread count set, or None when nothing was changed (no quota below the affinity count, or
        ``OMP_NUM_THREADS`` already set).
    """
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    quota, affinity = quota_cpus(), affinity_cpus()
    if quota is None or quota >= affinity:
        return None
    environ["OMP_NUM_THREADS"] = str(quota)
    return quota
