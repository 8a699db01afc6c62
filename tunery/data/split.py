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


def assign(buckets: np.ndarray, cfg: SplitConfig, held_out: frozenset[str] = frozenset()) -> np.ndarray:
    """Split names for bucket values in [0, 1).

    ``held_out``: splits that come from their own files (``data.test_source``, ``validation_source``); the
    other splits share [0, 1) in the proportions of ``cfg``, so with a test file 70/15/15 becomes 82/18."""
    test = 0.0 if "test" in held_out else cfg.test
    validation = 0.0 if "validation" in held_out else cfg.validation
    scale = cfg.train + test + validation
    test, validation = test / scale, validation / scale
    return np.where(buckets < test, "test", np.where(buckets < test + validation, "validation", "train"))


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
    rows: pd.DataFrame,
    cfg: SplitConfig,
    near_dup_threshold: float | None = 0.85,
    held_out: dict[str, pd.DataFrame] | None = None,
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Split cleaned rows (columns text, label, ...) into train/validation/test.

    Args:
        rows: cleaned rows.
        cfg: split fractions and seed.
        near_dup_threshold: Jaccard threshold for keeping near-duplicates together and for the leakage
            check; ``None`` checks exact duplicates only.
        held_out: ``test`` and/or ``validation`` rows from their own files: those splits are these rows,
            whole, and ``rows`` fill the others (rows repeating them must be taken out first: leaked_rows).

    Returns:
        The three frames, and warnings (e.g. classes missing from a split).

    Raises:
        LeakageError: a text (or near-duplicate) occurs in two splits.
    """
    texts = rows["text"].tolist()
    prompts = rows["prompt"].tolist() if "prompt" in rows.columns else None
    held_out = held_out or {}
    names = assign(cluster_buckets(texts, cfg.seed, near_dup_threshold, prompts), cfg, frozenset(held_out))
    parts = {
        name: held_out[name].reset_index(drop=True)
        if name in held_out
        else rows[names == name].reset_index(drop=True)
        for name in SPLITS
    }
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


def leaked_rows(
    rows: pd.DataFrame, held_out: dict[str, pd.DataFrame], near_dup_threshold: float | None
) -> pd.DataFrame:
    """The rows of ``rows`` that repeat a row of a held-out set: the same normalised text (conversations:
    or the same first user turn), or a near-duplicate text (MinHash LSH at ``near_dup_threshold``).

    Returns:
        One line per leaked row, indexed like ``rows``: ``set`` (the held-out set's name), ``match`` (the
        held-out row as ``source:row``) and ``kind`` (``exact`` or ``near``); the first set in
        ``held_out``'s order that a row repeats exactly is named (near: the most similar row's set).
    """
    found: dict[int, tuple[str, str, str]] = {}
    for column in ("text", "prompt"):
        if column not in rows.columns:
            continue
        seen: dict[str, tuple[str, str]] = {}
        for name, frame in held_out.items():
            if column not in frame.columns:
                continue
            where = (frame["source"].astype(str) + ":" + frame["row"].astype(str)).tolist()
            for key, at in zip(normalise_many(frame[column].tolist()), where, strict=True):
                seen.setdefault(key, (name, at))
        for index, key in zip(rows.index, normalise_many(rows[column].tolist()), strict=True):
            if key in seen and index not in found:
                found[index] = (*seen[key], "exact")
    if near_dup_threshold is not None and len(rows):
        _near_leaks(rows, held_out, near_dup_threshold, found)
    table = pd.DataFrame.from_dict(found, orient="index", columns=["set", "match", "kind"])
    return table.reindex([i for i in rows.index if i in found])


def _near_leaks(
    rows: pd.DataFrame, held_out: dict[str, pd.DataFrame], threshold: float, found: dict[int, tuple]
) -> None:
    index = NearDuplicateIndex(threshold=threshold)
    for name, frame in held_out.items():
        if len(frame):
            where = frame["source"].astype(str) + ":" + frame["row"].astype(str)
            index.add(index.signatures(frame["text"].tolist()), [f"{name}\x1f{w}" for w in where])
    if not len(index):
        return
    rest = rows.index[[i not in found for i in rows.index]]
    if not len(rest):
        return
    for row_index, hits in zip(
        rest, index.query(index.signatures(rows.loc[rest, "text"].tolist())), strict=True
    ):
        if hits:
            name, at = hits[0].split("\x1f")  # the most similar held-out row
            found[row_index] = (name, at, "near")
