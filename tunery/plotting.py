"""The one headless plotting helper: every PNG tunery writes (data report, drift, evaluation) goes through it.

Servers and workers have no display, so matplotlib is switched to its Agg backend before pyplot loads.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported lazily: matplotlib costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(width: float, height: float):
    """A headless ``(fig, ax)`` of the given size in inches."""
    return pyplot().subplots(figsize=(width, height))


def save(fig, path: Path, dpi: int = 100) -> Path:
    """Lay out and write the figure as PNG to ``path``, close it (never left open), return ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
