"""What every benchmark records about the machine it ran on (imported by the benchmark scripts)."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
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


def write_result(path: Path, doc: dict[str, Any]) -> None:
    """Write a benchmark's JSON document (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
