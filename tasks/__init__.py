"""The Prefect tasks: each one call into the tunery library, with the retries, caching and slots declared.

Imported before the flows' first task touches torch: where a container's cgroup CPU quota grants fewer CPUs
than the host shows, OpenMP's thread pool (torch's evaluation and scoring in the flow's process) is sized
by the quota (``tunery.ops.cpus``); the training jobs size theirs in ``tunery.training.launch``.
"""

from tunery.ops.cpus import fit_openmp_to_quota

fit_openmp_to_quota()
