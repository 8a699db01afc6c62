"""What every benchmark records about the machine it ran on (imported by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any


def machine_info(packages: tuple[str, ...]) -> dict[str, Any]:
    """CPU count, load at start, platform, Python and the versions of ``packages`` (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": versions,
    }
