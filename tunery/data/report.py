"""The data report: counts per stage, quarantine reasons, labels per split, text lengths, as JSON,
PNG plots and markdown (the Prefect artifact and the MLflow run both show it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tunery.plotting import figure, save


def length_summary(lengths: pd.Series) -> dict[str, float]:
    """Character-length quantiles of a split's texts."""
    if lengths.empty:
        return {"min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    q = lengths.quantile([0.5, 0.9, 0.99])
    return {
        "min": int(lengths.min()),
        "p50": float(q[0.5]),
        "p90": float(q[0.9]),
        "p99": float(q[0.99]),
        "max": int(lengths.max()),
    }


def content_digest(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's rows, independent of row order and index (same rows -> same digest).

    Each row is hashed over its values (pandas' stable row hash, columns in name order); the sorted row
    hashes, the column names and the row count are hashed together.
    """
    columns = sorted(frame.columns)
    digest = hashlib.sha256(json.dumps(columns).encode() + str(len(frame)).encode())
    if len(frame):
        rows = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()
        digest.update(np.sort(rows).tobytes())
    return digest.hexdigest()


def clean_warnings(stats: dict) -> list[str]:
    """What the cleaning counts say a person should know before training on the data."""
    warnings = []
    history = stats.get("history_ignored", {})
    if history.get("rows"):
        warnings.append(
            f"{history['rows']} of {stats['rows_in']} rows have a `history` of earlier turns "
            f"({history['turns']} turns) that is ignored: {history['kept']} kept rows are trained as "
            "stand-alone last turns (multi-turn alpaca data is not supported yet)"
        )
    return warnings


def split_summary(parts: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Rows, content digest, label counts and shares, and length quantiles of each split."""
    total = sum(len(p) for p in parts.values()) or 1
    out = {}
    for name, frame in parts.items():
        counts = frame["label"].value_counts().sort_index()
        out[name] = {
            "rows": len(frame),
            "digest": content_digest(frame),
            "share": len(frame) / total,
            "labels": {str(k): int(v) for k, v in counts.items()},
            "label_shares": {str(k): float(v / max(len(frame), 1)) for k, v in counts.items()},
            "chars": length_summary(frame["text"].str.len()),
        }
    return out


def plot_lengths(parts: dict[str, pd.DataFrame], path: Path) -> Path:
    """Histogram of text length (characters, log scale) per split."""
    fig, ax = figure(7, 4)
    lengths = [p["text"].str.len().clip(lower=1) for p in parts.values()]
    upper = max((int(s.max()) for s in lengths if len(s)), default=10)
    bins = np.logspace(0, np.log10(max(upper, 10)), 40)
    for name, values in zip(parts, lengths, strict=True):
        ax.hist(
            values, bins=bins, histtype="step", density=True, label=f"{name} ({len(values)})", linewidth=1.5
        )
    ax.set_xscale("log")
    ax.set_xlabel("characters per text")
    ax.set_ylabel("density")
    ax.set_title("Text length per split")
    ax.legend()
    return save(fig, path)


def plot_labels(summary: dict[str, dict], path: Path) -> Path:
    """Grouped bars: share of each label in each split (stratification at a glance)."""
    labels = sorted({label for s in summary.values() for label in s["label_shares"]})
    fig, ax = figure(max(6, 1.2 * len(labels) + 2), 4)
    width = 0.8 / max(len(summary), 1)
    for i, (name, s) in enumerate(summary.items()):
        shares = [s["label_shares"].get(label, 0.0) for label in labels]
        ax.bar(np.arange(len(labels)) + i * width, shares, width, label=name)
    ax.set_xticks(np.arange(len(labels)) + width * (len(summary) - 1) / 2, labels, rotation=30, ha="right")
    ax.set_ylabel("share of split")
    ax.set_title("Label distribution per split")
    ax.legend()
    return save(fig, path)


def markdown(report: dict) -> str:
    """The data report as markdown (for a Prefect artifact)."""
    clean = report["clean"]
    lines = [
        "## Data",
        f"rows in **{clean['rows_in']}** → kept **{clean['kept']}**, quarantined **{clean['quarantined']}**, "
        f"duplicates removed **{clean['deduplicated']}** "
        f"(exact {clean.get('exact_duplicates', 0)}, near {clean.get('near_duplicates', 0)})",
        "",
    ]
    if clean["quarantine_reasons"]:
        lines += ["| quarantine reason | rows |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in clean["quarantine_reasons"].items()]
        lines.append("")
    lines += ["| split | rows | share | labels | median chars |", "|---|---|---|---|---|"]
    for name, s in report.get("split", {}).items():
        labels = ", ".join(f"{k}: {v}" for k, v in s["labels"].items())
        lines.append(f"| {name} | {s['rows']} | {s['share']:.1%} | {labels} | {s['chars']['p50']:.0f} |")
    for warning in report.get("warnings", []):
        lines.append(f"\n> warning: {warning}")
    return "\n".join(lines)
