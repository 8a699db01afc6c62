"""Near-duplicate detection with MinHash signatures and LSH banding, written with numpy only.

Texts are normalised (lower-cased, punctuation stripped from word edges, whitespace collapsed) and cut into
character k-gram shingles hashed with FNV-1a over code points and a MurmurHash3 finaliser, a deterministic
hash: Python's ``hash()`` is salted per process and would make signatures (and a persisted index) differ
between runs. Each of the ``num_perm`` MinHash slots is the minimum of a universal hash ``(a*x + b) mod p``
with ``p = 2**31 - 1`` over a text's shingles, so the fraction of equal slots between two signatures
estimates the Jaccard similarity of their shingle sets.

Only the first :data:`MAX_CHARS` characters of a text are shingled: that bounds time and memory on raw
e-mails (some are 300,000 characters of attachments), and two texts that agree on their first 20,000
characters are near duplicates for any practical purpose.

Candidates come from LSH banding (texts sharing all rows of a band land in one bucket) and are then verified
by estimated Jaccard, so the banding is tuned for recall: a false candidate costs one comparison, a missed
one is a lost duplicate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from tunery.data.normalise import MAX_CHARS, normalised_codes

EMPTY = np.uint32(0xFFFF_FFFF)
"""Signature value of a text without shingles; never produced by the hash, whose values are below p."""

_PRIME = (1 << 31) - 1  # Mersenne prime: reduction is shifts and adds, and a*x + b stays below 2**63
_P64 = np.uint64(_PRIME)
_S31 = np.uint64(31)
_FNV_OFFSET = 2166136261
_FNV_PRIME = 16777619
_BATCH_CHARS = 1 << 20  # characters shingled per batch: bounds the shingle arrays and the hash table
_TABLE_ROWS = 2048  # shingles hashed per step, so the (rows, num_perm) uint64 temporaries stay in cache
_GATHER_CELLS = 4096  # padded shingle slots gathered per step when taking per-text minima
_PAIR_CHUNK = 1 << 16  # candidate pairs verified per step
_BAND_SEED = 0x5EED  # band hashing only names buckets, so it is fixed rather than tied to `seed`
_INDEX_FORMAT = 1  # bump when normalisation or hashing changes: saved signatures would no longer match


def _ranks(counts: np.ndarray) -> np.ndarray:
    """Position of each element inside its group, for groups of the given sizes laid end to end."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def _fnv1a_windows(codes: np.ndarray, k: int) -> np.ndarray:
    """FNV-1a (32 bit) over code points of every k-long window of ``codes``."""
    n = len(codes) - k + 1
    h = np.full(n, _FNV_OFFSET, dtype=np.uint32)
    for j in range(k):
        h ^= codes[j : j + n]  # contiguous slices: the fast path for nearly all shingles
        h *= np.uint32(_FNV_PRIME)  # wraps mod 2**32, as FNV wants
    return h


def _fnv1a_prefixes(codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a (32 bit) over ``codes[start : start + length]`` for texts shorter than k (their one shingle)."""
    h = np.full(len(starts), _FNV_OFFSET, dtype=np.uint32)
    for j in range(int(lengths.max(initial=0))):
        live = j < lengths
        h[live] = (h[live] ^ codes[starts[live] + j]) * np.uint32(_FNV_PRIME)
    return h


def _mix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's fmix32 finaliser, in place.

    FNV values of overlapping k-grams differ in structured ways that the linear ``(a*x + b) mod p`` keeps,
    and that made estimates of word-level edits about 0.035 too low; mixed values behave as random.
    """
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _shingle_hashes(codes: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash the k-gram shingles of normalised texts, all texts in one vectorised pass.

    Args:
        codes: Code points of the normalised texts laid end to end.
        lengths: Length of each text.
        k: Shingle length in characters.

    Returns:
        ``(hashes, counts)``: uint32 hashes of every text's shingles laid end to end (repeats kept), and the
        number of shingles per text.
    """
    full = lengths >= k
    counts = np.where(full, lengths - k + 1, np.minimum(lengths, 1))
    starts = np.cumsum(lengths) - lengths
    hashes = np.empty(int(counts.sum()), dtype=np.uint32)
    is_full = np.repeat(full, counts)
    if full.any():
        # hash every window of the concatenation (contiguous slices are fast), then keep those inside a text
        window_hashes = _fnv1a_windows(codes, k)
        n_full = np.where(full, counts, 0)
        hashes[is_full] = window_hashes[np.repeat(starts, n_full) + _ranks(n_full)]
    short = ~full & (lengths > 0)
    hashes[~is_full] = _fnv1a_prefixes(codes, starts[short], lengths[short])
    return _mix32(hashes), counts


def shingles(text: str, k: int = 5) -> set[int]:
    """The set of hashed character k-gram shingles of a normalised text.

    Args:
        text: Raw text; it is normalised first (see :func:`normalise`).
        k: Shingle length in characters.

    Returns:
        uint32 hash values (as ints). A text shorter than ``k`` gives one shingle, its whole normalised
        text; an empty (normalised) text gives an empty set.
    """
    hashes, _ = _shingle_hashes(*normalised_codes([text]), k)
    return set(hashes.tolist())


def exact_jaccard(a: str, b: str, k: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets, for tests and diagnostics.

    Args:
        a: First text.
        b: Second text.
        k: Shingle length in characters.

    Returns:
        ``|A & B| / |A | B|``; 0.0 when both are empty, as empty texts are never duplicates of each other.
    """
    sa, sb = shingles(a, k), shingles(b, k)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Jaccard similarity estimated from MinHash signatures: the fraction of equal slots.

    Args:
        a: A signature, shape (num_perm,), or a stack of them, shape (n, num_perm).
        b: Signature(s) of the same shape.

    Returns:
        A float for single signatures, else an array of n floats. Empty texts estimate 0.0.
    """
    a, b = np.asarray(a), np.asarray(b)
    equal = (a == b) & (a != EMPTY)
    est = np.count_nonzero(equal, axis=-1) / a.shape[-1]
    return float(est) if np.ndim(est) == 0 else est


def _hash_coefficients(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
    return a, b


def _permute(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a*x + b) mod p`` for every shingle hash x and every (a, b): shape (len(x), num_perm), uint32."""
    x = x.astype(np.uint64)
    x = (x & _P64) + (x >> _S31)  # x < 2**32 becomes <= 2**31 (same residue), so a*x + b < 2**63
    y = x[:, None] * a
    y += b
    r = y & _P64  # Mersenne reduction: y = hi * 2**31 + lo = hi + lo (mod p)
    y >>= _S31
    r += y
    y = r >> _S31
    r &= _P64
    r += y  # now r <= p + 2
    np.minimum(r, r - _P64, out=r)  # r - p wraps around to a huge value unless r >= p
    return r.astype(np.uint32)


def _gather_blocks(counts: np.ndarray) -> Iterator[np.ndarray]:
    """Blocks of texts with shingles, sorted by shingle count, each about _GATHER_CELLS padded cells."""
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    i = 0
    while i < len(order):
        j = min(len(order), i + max(1, _GATHER_CELLS // int(counts[order[i]])))
        # texts are sorted by length, so the last one sets the padded width
        j = min(j, i + max(1, _GATHER_CELLS // int(counts[order[j - 1]])))
        yield order[i:j]
        i = j


def _minhash_batch(hashes: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signatures of one batch of texts from their shingle hashes."""
    # short texts share most shingles, so hash each distinct shingle once and gather per text
    uniq, inverse = np.unique(hashes, return_inverse=True)
    table = np.empty((len(uniq) + 1, len(a)), dtype=np.uint32)
    table[-1] = EMPTY  # the padding row: EMPTY is larger than every real value, so it never wins the min
    for start in range(0, len(uniq), _TABLE_ROWS):
        stop = min(start + _TABLE_ROWS, len(uniq))
        table[start:stop] = _permute(uniq[start:stop], a, b)
    signatures = np.full((len(counts), len(a)), EMPTY, dtype=np.uint32)
    offsets = np.cumsum(counts) - counts
    for ids in _gather_blocks(counts):
        # a padded (texts, width) matrix of table rows makes the per-text min one contiguous reduction
        cols = np.arange(int(counts[ids[-1]]))
        pad = cols >= counts[ids, None]
        rows = inverse[np.where(pad, 0, offsets[ids, None] + cols)]
        rows[pad] = len(uniq)
        signatures[ids] = table.take(rows, axis=0).min(axis=1)
    return signatures


def _batches(texts: Sequence[str]) -> Iterator[slice]:
    """Consecutive slices of texts holding about _BATCH_CHARS characters each."""
    start, size = 0, 0
    for i, text in enumerate(texts):
        size += min(len(text), MAX_CHARS)
        if size >= _BATCH_CHARS:
            yield slice(start, i + 1)
            start, size = i + 1, 0
    if start < len(texts):
        yield slice(start, len(texts))


def minhash_signatures(texts: list[str], num_perm: int = 128, k: int = 5, seed: int = 0) -> np.ndarray:
    """MinHash signatures of texts, vectorised over texts, shingles and hash functions.

    Args:
        texts: Raw texts (normalised and capped at :data:`MAX_CHARS` here).
        num_perm: Number of hash functions, i.e. signature length.
        k: Shingle length in characters.
        seed: Seed of the hash coefficients; signatures are comparable only with equal num_perm, k, seed.

    Returns:
        uint32 array of shape (len(texts), num_perm). Rows of texts without shingles are all :data:`EMPTY`.
    """
    if num_perm < 1 or k < 1:
        raise ValueError(f"num_perm and k must be positive, got num_perm={num_perm}, k={k}")
    a, b = _hash_coefficients(num_perm, seed)
    signatures = np.empty((len(texts), num_perm), dtype=np.uint32)
    for part in _batches(texts):
        hashes, counts = _shingle_hashes(*normalised_codes(texts[part]), k)
        signatures[part] = _minhash_batch(hashes, counts, a, b)
    return signatures


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Choose LSH (bands, rows) for a Jaccard threshold, weighting missed pairs 9x over false candidates.

    A pair with Jaccard s becomes a candidate with probability ``1 - (1 - s**rows)**bands``. Candidates are
    verified afterwards, so a false candidate only costs a comparison; the weighting therefore puts the
    S-curve's midpoint a little below ``threshold`` (0.80 for 0.85 with 128 permutations).

    Args:
        threshold: Target Jaccard similarity, in (0, 1].
        num_perm: Signature length; bands * rows <= num_perm.

    Returns:
        ``(bands, rows)``.
    """
    below, above = np.linspace(0.0, threshold, 201), np.linspace(threshold, 1.0, 201)
    best, best_cost = (1, num_perm), np.inf
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            false_pos = np.trapezoid(1 - (1 - below**rows) ** bands, below)
            false_neg = np.trapezoid((1 - above**rows) ** bands, above)
            cost = 0.1 * false_pos + 0.9 * false_neg
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 bucket key per (text, band): a random linear hash of the band's rows."""
    mult = np.random.default_rng(_BAND_SEED).integers(1, 1 << 63, size=rows, dtype=np.uint64) | np.uint64(1)
    keys = np.empty((len(signatures), bands), dtype=np.uint64)
    for band in range(bands):
        part = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        # sums wrap mod 2**64; a collision only adds a candidate, which verification then rejects
        keys[:, band] = (part * mult).sum(axis=1)
    return keys


def _bucket_pairs(keys: np.ndarray) -> np.ndarray:
    """All pairs (i < j) of rows sharing a key, as an (m, 2) int64 array."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    # each member is paired with the members after it in its bucket
    after = np.repeat(sizes, sizes) - 1 - _ranks(sizes)
    left = np.repeat(np.arange(len(keys)), after)
    right = left + 1 + _ranks(after)
    pairs = np.stack([order[left], order[right]], axis=1)
    return np.sort(pairs, axis=1)


def _verified(pairs: np.ndarray, sig_a: np.ndarray, sig_b: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of pairs (row of sig_a, row of sig_b) whose estimated Jaccard reaches threshold."""
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = pairs[start : start + _PAIR_CHUNK]
        keep[start : start + _PAIR_CHUNK] = (
            estimated_jaccard(sig_a[chunk[:, 0]], sig_b[chunk[:, 1]]) >= threshold
        )
    return keep


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving keeps the trees flat
        i = parent[i]
    return i


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    """Union-find over edges; returns each node's root, the smallest node of its component."""
    parent = list(range(n))
    for i, j in edges.tolist():
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            # the smaller root wins, so a root is always its component's smallest node
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([_find(parent, i) for i in range(n)], dtype=np.int64)


def _cluster_signatures(signatures: np.ndarray, threshold: float) -> np.ndarray:
    """Representative (smallest index in its cluster) of every row of a signature matrix."""
    n, num_perm = signatures.shape
    reps = np.arange(n, dtype=np.int64)
    rows = np.flatnonzero(signatures[:, 0] != EMPTY)  # empty texts stay alone
    if len(rows) < 2:
        return reps
    # identical signatures are duplicates outright; collapsing them keeps LSH buckets small
    uniq, first, inverse = np.unique(signatures[rows], axis=0, return_index=True, return_inverse=True)
    bands, band_rows = lsh_params(threshold, num_perm)
    keys = _band_keys(uniq, bands, band_rows)
    pairs = np.concatenate([_bucket_pairs(keys[:, band]) for band in range(bands)])
    pairs = np.unique(pairs, axis=0)
    edges = pairs[_verified(pairs, uniq, uniq, threshold)]
    # union-find on the original index of each distinct signature's first occurrence keeps roots minimal
    node = rows[first]
    order = np.argsort(node)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    roots = _components(len(uniq), rank[edges])
    reps[rows] = node[order][roots[rank[inverse.ravel()]]]
    return reps


def near_duplicate_clusters(
    texts: list[str], threshold: float = 0.85, num_perm: int = 128, k: int = 5, seed: int = 0
) -> list[int]:
    """Cluster near-duplicate texts: LSH candidates verified by estimated Jaccard, joined by union-find.

    Args:
        texts: Raw texts.
        threshold: Minimum estimated Jaccard similarity of a linked pair, in (0, 1].
        num_perm: Signature length.
        k: Shingle length in characters.
        seed: Seed of the hash coefficients.

    Returns:
        For each text the index of its cluster's representative, the smallest index in the cluster (itself
        when it has no near duplicate). Texts without shingles (empty after normalisation) are alone.
        Deterministic, and cluster membership does not depend on the order of the texts. Clusters are
        transitive (A~B and B~C join A and C), so a member can be less similar to its representative than
        the threshold.
    """
    _check_threshold(threshold)
    return _cluster_signatures(minhash_signatures(texts, num_perm, k, seed), threshold).tolist()


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")


class NearDuplicateIndex:
    """An LSH index of MinHash signatures that can be extended and persisted (for continuous learning).

    Args:
        threshold: Minimum estimated Jaccard similarity of a query result, in (0, 1].
        num_perm: Signature length the index accepts.
        k: Shingle length; kept so that :meth:`signatures` makes compatible signatures.
        seed: Hash seed; kept for the same reason.
    """

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, k: int = 5, seed: int = 0) -> None:
        _check_threshold(threshold)
        self.threshold, self.num_perm, self.k, self.seed = float(threshold), int(num_perm), int(k), int(seed)
        self.bands, self.rows = lsh_params(self.threshold, self.num_perm)
        self._signatures = np.empty((0, self.num_perm), dtype=np.uint32)
        self._keys: list[str] = []
        self._band_keys = np.empty((0, self.bands), dtype=np.uint64)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # per-band argsort and sorted keys

    def __len__(self) -> int:
        return len(self._keys)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """MinHash signatures of texts with this index's num_perm, k and seed.

        Args:
            texts: Raw texts.

        Returns:
            uint32 array of shape (len(texts), num_perm).
        """
        return minhash_signatures(texts, self.num_perm, self.k, self.seed)

    def _check(self, signatures: np.ndarray) -> np.ndarray:
        signatures = np.asarray(signatures)
        if signatures.ndim != 2 or signatures.shape[1] != self.num_perm:
            raise ValueError(f"expected signatures of shape (n, {self.num_perm}), got {signatures.shape}")
        return signatures.astype(np.uint32, copy=False)

    def add(self, signatures: np.ndarray, keys: list[str]) -> None:
        """Add signatures under the given keys.

        Args:
            signatures: Array of shape (n, num_perm) from :meth:`signatures` or compatible settings.
            keys: One key per signature (e.g. a row id); returned by :meth:`query`.

        Returns:
            None.
        """
        signatures = self._check(signatures)
        if len(keys) != len(signatures):
            raise ValueError(f"{len(keys)} keys for {len(signatures)} signatures")
        self._signatures = np.concatenate([self._signatures, signatures])
        self._band_keys = np.concatenate([self._band_keys, _band_keys(signatures, self.bands, self.rows)])
        self._keys.extend(str(key) for key in keys)
        self._sorted = None  # rebuilt lazily, so many adds before a query sort once

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            order = np.argsort(self._band_keys, axis=0, kind="stable")
            self._sorted = order, np.take_along_axis(self._band_keys, order, axis=0)
        return self._sorted

    def _candidates(self, query_keys: np.ndarray) -> np.ndarray:
        """Distinct (query row, index row) pairs that share at least one band bucket."""
        order, sorted_keys = self._lookup()
        found = []
        for band in range(self.bands):
            lo = np.searchsorted(sorted_keys[:, band], query_keys[:, band], side="left")
            hi = np.searchsorted(sorted_keys[:, band], query_keys[:, band], side="right")
            hits = hi - lo
            queries = np.repeat(np.arange(len(query_keys)), hits)
            found.append(np.stack([queries, order[np.repeat(lo, hits) + _ranks(hits), band]], axis=1))
        return np.unique(np.concatenate(found), axis=0)

    def query(self, signatures: np.ndarray) -> list[list[str]]:
        """Keys of indexed signatures whose estimated Jaccard with each query reaches the threshold.

        Args:
            signatures: Array of shape (n, num_perm).

        Returns:
            One list per query signature, most similar first (ties in insertion order); empty for a query
            without shingles.
        """
        signatures = self._check(signatures)
        results: list[list[str]] = [[] for _ in range(len(signatures))]
        if not len(self) or not len(signatures):
            return results
        pairs = self._candidates(_band_keys(signatures, self.bands, self.rows))
        pairs = pairs[_verified(pairs, signatures, self._signatures, self.threshold)]
        sims = estimated_jaccard(signatures[pairs[:, 0]], self._signatures[pairs[:, 1]])
        for q, i in pairs[np.lexsort((pairs[:, 1], -sims, pairs[:, 0]))].tolist():
            results[q].append(self._keys[i])
        return results

    def save(self, path: str | Path) -> None:
        """Write the index to an .npz file (no pickles), so it persists between runs.

        Args:
            path: Destination file.

        Returns:
            None.
        """
        with open(path, "wb") as fh:  # a file object stops numpy from appending a second ".npz"
            np.savez_compressed(
                fh,
                format=np.int64(_INDEX_FORMAT),
                threshold=np.float64(self.threshold),
                settings=np.array([self.num_perm, self.k, self.seed], dtype=np.int64),
                signatures=self._signatures,
                keys=np.array(self._keys, dtype=np.str_),
            )

    @classmethod
    def load(cls, path: str | Path) -> NearDuplicateIndex:
        """Read an index written by :meth:`save`.

        Args:
            path: Source file.

        Returns:
            The index, with the same parameters, signatures and keys.
        """
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != _INDEX_FORMAT:
                raise ValueError(
                    f"{path}: index format {int(data['format'])}, this code reads {_INDEX_FORMAT}"
                )
            num_perm, k, seed = data["settings"].tolist()
            index = cls(float(data["threshold"]), num_perm, k, seed)
            if len(data["keys"]):
                index.add(data["signatures"], data["keys"].tolist())
        return index
