"""Train/validation/test split by hash bucket, stable across re-runs and as data grows, with a leakage check.

Each row's split is decided by a seeded hash of its normalised text mapped to [0, 1): below ``test`` is
test, below ``test + validation`` is validation, the rest is train. The split of a row therefore depends
only on its own text and the seed: re-running, re-ordering files or appending new data never moves an
existing row to another split, so a golden test set stays frozen and only grows. Because the buckets are
the same for every class, each class is split 70/15/15 in expectation (stratified by construction); the
report shows the realised shares, and classes too small to reach every split are warned about.

Members of a near-duplicate cluster (MinHash LSH) share one bucket, that of the cluster's smallest normalised
text (an order-independent choice), so that near-identical texts never straddle train and test.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from tunery.config import SplitConfig
from tunery.data.near_dup import NearDuplicateIndex, near_duplicate_clusters
from tunery.data.normalise import normalise, normalise_many
from tunery.layout import SPLITS


class LeakageError(ValueError):
    """The same (or a near-identical) text appears in more than one split."""


def bucket(text: str, seed: int) -> float:
    """The seeded position in [0, 1) of a text (stable across runs, machines and Python versions)."""
    return _bucket_of_key(normalise(text), seed)


def _bucket_of_key(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(buckets: np.ndarray, cfg: SplitConfig) -> np.ndarray:
    """Split names for bucket values in [0, 1)."""
    return np.where(
        buckets < cfg.test, "test", np.where(buckets < cfg.test + cfg.validation, "validation", "train")
    )


def cluster_buckets(
    texts: list[str], seed: int, near_dup_threshold: float | None, prompts: list[str] | None = None
) -> np.ndarray:
    """Bucket of each row; a near-duplicate cluster uses the bucket of its smallest normalised text.

    ``prompts`` (conversations: the first user turn) key the buckets instead of the texts, so that
    conversations opening with the same request share a split.

    Keying a cluster on one member (chosen without looking at row order) keeps the bucket uniform, so big
    clusters are not pulled towards any split, and re-ordering the data cannot move a cluster.
    """
    keys = pd.Series(normalise_many(prompts if prompts is not None else texts), dtype=object)
    if near_dup_threshold is not None and len(texts) > 1:
        reps = near_duplicate_clusters(texts, threshold=near_dup_threshold)
        keys = keys.groupby(np.asarray(reps)).transform("min")
    return np.array([_bucket_of_key(k, seed) for k in keys], dtype=np.float64)


def split(
    rows: pd.DataFrame, cfg: SplitConfig, near_dup_threshold: float | None = 0.85
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Split cleaned rows (columns text, label, ...) into train/validation/test.

    Args:
        rows: cleaned rows.
        cfg: split fractions and seed.
        near_dup_threshold: Jaccard threshold for keeping near-duplicates together and for the leakage
            check; ``None`` checks exact duplicates only.

    Returns:
        The three frames, and warnings (e.g. classes missing from a split).

    Raises:
        LeakageError: a text (or near-duplicate) occurs in two splits.
    """
    texts = rows["text"].tolist()
    prompts = rows["prompt"].tolist() if "prompt" in rows.columns else None
    names = assign(cluster_buckets(texts, cfg.seed, near_dup_threshold, prompts), cfg)
    parts = {name: rows[names == name].reset_index(drop=True) for name in SPLITS}
    warnings = [
        f"class {label!r} has no rows in {name} ({int((rows['label'] == label).sum())} rows in total)"
        for label in sorted(rows["label"].unique())
        for name in SPLITS
        if not (parts[name]["label"] == label).any()
    ]
    check_leakage(parts, near_dup_threshold)
    return parts, warnings


def check_leakage(parts: dict[str, pd.DataFrame], near_dup_threshold: float | None = None) -> None:
    """Fail when a normalised text, or a near-duplicate of it, occurs in two splits (conversations: their
    first user turns too).

    Raises:
        LeakageError: naming the splits and an example text.
    """
    columns = {"text": "the same text", "prompt": "the same first user turn"}
    for column, what in columns.items():
        seen: dict[str, str] = {}
        for name, frame in parts.items():
            if column not in frame.columns:
                continue
            for text, key in zip(frame[column], normalise_many(frame[column].tolist()), strict=True):
                other = seen.setdefault(key, name)
                if other != name:
                    raise LeakageError(f"leakage: {what} is in {other} and {name}: {text[:80]!r}")
    if near_dup_threshold is not None:
        _check_near_leakage(parts, near_dup_threshold)


def _check_near_leakage(parts: dict[str, pd.DataFrame], threshold: float) -> None:
    index = NearDuplicateIndex(threshold=threshold)
    for name, frame in parts.items():
        texts = frame["text"].tolist()
        if not texts:
            continue
        signatures = index.signatures(texts)
        if len(index):
            for i, hits in enumerate(index.query(signatures)):
                if hits:
                    other, row = hits[0].split(":", 1)
                    raise LeakageError(
                        f"leakage: near-duplicate texts in {other} and {name}: "
                        f"{parts[other]['text'].iloc[int(row)][:80]!r} ~ {texts[i][:80]!r}"
                    )
        index.add(signatures, [f"{name}:{i}" for i in range(len(texts))])
