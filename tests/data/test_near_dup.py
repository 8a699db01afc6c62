from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunery.data.near_dup import (
    EMPTY,
    NearDuplicateIndex,
    estimated_jaccard,
    exact_jaccard,
    lsh_params,
    minhash_signatures,
    near_duplicate_clusters,
    shingles,
)
from tunery.data.normalise import normalise

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

_VOCABULARY = (
    "river stone lantern copper meadow signal harbor velvet orbit thunder garden marble pilot canvas "
    "ember falcon glacier summit willow quartz rocket cinder saddle prism tundra beacon harvest nickel "
    "lagoon timber violet anchor bramble cobalt dune echo fjord grove hollow island jasper kettle"
)
WORDS = _VOCABULARY.split()


def sentence(rng: random.Random, n_words: int = 30) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def random_chars(rng: np.random.Generator, n: int) -> str:
    """Random letters and spaces: nearly every 5-gram is distinct, so shingle overlap is controlled."""
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789 "))
    return "".join(rng.choice(alphabet, size=n))


def shifted_pair(seed: int, jaccard: float, length: int = 400, k: int = 5) -> tuple[str, str]:
    """Two windows of one random string, offset so that their shingle sets have about this Jaccard."""
    m = length - k + 1  # shingles per window; an offset d shares m - d of them: J = (m - d) / (m + d)
    d = round(m * (1 - jaccard) / (1 + jaccard))
    # no runs of spaces: collapsing them would shorten a window and shift the shingle count
    s = " ".join(random_chars(np.random.default_rng(seed), length + d + 50).split())
    return s[:length], s[d : d + length]


def clusters_as_sets(texts: list[str], reps: list[int]) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for text, rep in zip(texts, reps, strict=True):
        groups.setdefault(rep, set()).add(text)
    return {frozenset(g) for g in groups.values()}


# --- normalisation and shingles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello,   WORLD!!", "hello world"),
        ("  (quoted)  \t\n text... ", "quoted text"),
        ("don't e-mail me at 3.5 p.m.", "don't e-mail me at 3.5 p.m"),
        ("... --- !!!", ""),
        ("", ""),
        ("Caf\u00e9\u00a0ÜBER", "café über"),
    ],
)
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def _word_char(ch: str) -> bool:
    return ch == "_" or unicodedata.category(ch)[0] in "LNM"


def _reference_normalise(text: str) -> str:
    """Token-by-token statement of the rule: strip non-word characters at both ends of every token."""
    tokens = []
    for token in text.lower().split():
        i, j = 0, len(token)
        while i < j and not _word_char(token[i]):
            i += 1
        while j > i and not _word_char(token[j - 1]):
            j -= 1
        tokens.append(token[i:j])
    return " ".join(t for t in tokens if t)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_vectorised_normalise_matches_the_token_rule(text):
    assert normalise(text) == _reference_normalise(text)
    assert normalise(normalise(text)) == normalise(text)


@pytest.mark.parametrize(
    ("text", "k", "size"),
    [
        ("", 5, 0),
        ("?!  ...", 5, 0),
        ("abc", 5, 1),  # shorter than k: one shingle of the whole text
        ("abcde", 5, 1),
        ("abcdefg", 5, 3),
        ("aaaaaaaa", 5, 1),  # repeated k-grams are one shingle
        ("abcdefg", 3, 5),
    ],
)
def test_shingle_counts(text, k, size):
    assert len(shingles(text, k)) == size


def test_short_text_shingle_differs_from_other_short_texts():
    assert shingles("abc") != shingles("abd")
    assert shingles("ABC!") == shingles("abc")


def test_shingle_hash_is_not_salted_per_process():
    code = (
        "from tunery.data.near_dup import shingles; print(sorted(shingles('Deterministic hashing, please')))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(sorted(shingles("Deterministic hashing, please")))


# --- signatures --------------------------------------------------------------------------------------


def test_signatures_are_the_minimum_of_universal_hashes():
    """Each slot is min over shingles x of (a*x + b) mod (2**31 - 1), a and b drawn from default_rng(seed)."""
    texts = ["the quick brown fox", "hi", "", "zzzzzzzzzzzz"]
    sigs = minhash_signatures(texts, num_perm=16, seed=7)
    rng = np.random.default_rng(7)
    p = (1 << 31) - 1
    a = rng.integers(1, p, size=16, dtype=np.uint64).tolist()
    b = rng.integers(0, p, size=16, dtype=np.uint64).tolist()
    for text, row in zip(texts, sigs, strict=True):
        sh = shingles(text)
        expected = [
            min((ai * x + bi) % p for x in sh) if sh else int(EMPTY) for ai, bi in zip(a, b, strict=True)
        ]
        assert row.tolist() == expected
    assert sigs.shape == (4, 16)
    assert sigs.dtype == np.uint32


def test_signatures_do_not_depend_on_batch_neighbours():
    rng = random.Random(3)
    texts = [sentence(rng, rng.randint(0, 40)) for _ in range(50)]
    together = minhash_signatures(texts)
    alone = np.concatenate([minhash_signatures([t]) for t in texts])
    np.testing.assert_array_equal(together, alone)


@pytest.mark.parametrize("jaccard", [0.2, 0.4, 0.6, 0.8, 0.95])
def test_estimated_jaccard_tracks_exact_jaccard(jaccard):
    for seed in range(3):
        a, b = shifted_pair(seed, jaccard)
        exact = exact_jaccard(a, b)
        assert abs(exact - jaccard) < 0.05, "the generator makes pairs of the intended similarity"
        sig = minhash_signatures([a, b], num_perm=256)
        assert abs(estimated_jaccard(sig[0], sig[1]) - exact) <= 0.1


def test_estimates_of_word_edits_are_unbiased():
    """Overlapping k-grams hash to related values; the estimate must still not drift from the truth."""
    errors = []
    for seed in range(40):
        words = sentence(random.Random(seed)).split()
        edited = words.copy()
        edited[seed % 30] = "xylophone"
        a, b = " ".join(words), " ".join(edited)
        sig = minhash_signatures([a, b])
        errors.append(estimated_jaccard(sig[0], sig[1]) - exact_jaccard(a, b))
    assert abs(np.mean(errors)) < 0.015  # one estimate's standard deviation is about 0.027


def test_exact_jaccard_edge_cases():
    assert exact_jaccard("same text", "Same  text!") == 1.0
    assert exact_jaccard("", "") == 0.0
    assert exact_jaccard("abcdefgh", "") == 0.0


# --- clustering --------------------------------------------------------------------------------------


def test_identical_texts_cluster():
    text = sentence(random.Random(0))
    assert near_duplicate_clusters(["other words entirely here", text, text, text]) == [0, 1, 1, 1]


@pytest.mark.parametrize("position", [0, 7, 15, 29])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_word_changed_in_30_clusters_at_0_8(position, seed):
    words = sentence(random.Random(seed)).split()
    changed = words.copy()
    changed[position] = "xylophone"
    texts = [" ".join(words), " ".join(changed)]
    assert exact_jaccard(*texts) >= 0.8
    assert near_duplicate_clusters(texts, threshold=0.8) == [0, 0]


def test_unrelated_texts_never_cluster():
    rng = random.Random(5)
    texts = [sentence(rng) for _ in range(40)] + [
        random_chars(np.random.default_rng(i), 80) for i in range(40)
    ]
    assert near_duplicate_clusters(texts) == list(range(len(texts)))


@pytest.mark.parametrize(
    "variant",
    [
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG NEAR THE RIVER BANK",
        "the   quick brown fox\tjumps over the lazy dog\nnear the river bank",
        "The quick, brown fox jumps over the lazy dog -- near the river bank!!!",
        "  (The quick brown fox) jumps over the 'lazy' dog near the river bank.  ",
    ],
)
def test_case_whitespace_and_punctuation_variants_cluster(variant):
    original = "The quick brown fox jumps over the lazy dog near the river bank."
    assert near_duplicate_clusters([original, variant]) == [0, 0]


def test_empty_texts_never_cluster():
    texts = ["", "   ", "?!", "", "real text here", "real text here"]
    assert near_duplicate_clusters(texts) == [0, 1, 2, 3, 4, 4]


def test_clusters_are_deterministic_and_independent_of_order():
    rng = random.Random(11)
    base = [sentence(rng, 20) for _ in range(15)]
    texts = base + [t.upper() for t in base[:5]] + [t.replace(" ", "  ", 3) + "!" for t in base[5:10]]
    texts += [sentence(rng, 20) for _ in range(15)]
    reps = near_duplicate_clusters(texts)
    assert reps == near_duplicate_clusters(texts)
    assert sum(r != i for i, r in enumerate(reps)) == 10
    for seed in range(5):
        shuffled = texts.copy()
        random.Random(seed).shuffle(shuffled)
        assert clusters_as_sets(shuffled, near_duplicate_clusters(shuffled)) == clusters_as_sets(texts, reps)


@pytest.mark.parametrize(
    ("jaccard", "min_found", "max_found"),
    [(0.95, 49, 50), (0.9, 45, 50), (0.6, 0, 0), (0.3, 0, 0)],
)
def test_threshold_sweep(jaccard, min_found, max_found):
    """At threshold 0.85: pairs well above it are found, pairs well below it never are."""
    pairs = [shifted_pair(1000 + i, jaccard) for i in range(50)]
    texts = [t for pair in pairs for t in pair]
    reps = near_duplicate_clusters(texts, threshold=0.85)
    found = sum(reps[2 * i + 1] == 2 * i for i in range(50))
    assert min_found <= found <= max_found


@pytest.mark.parametrize(
    ("threshold", "num_perm"), [(0.5, 128), (0.8, 128), (0.85, 128), (0.9, 128), (0.85, 64), (0.7, 256)]
)
def test_lsh_s_curve_sits_near_the_threshold(threshold, num_perm):
    bands, rows = lsh_params(threshold, num_perm)
    assert bands * rows <= num_perm
    midpoint = (1 / bands) ** (1 / rows)
    assert threshold - 0.15 <= midpoint <= threshold + 0.03
    assert 1 - (1 - threshold**rows) ** bands >= 0.5, "pairs at the threshold are usually candidates"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), max_size=30))
def test_representatives_are_minimal_and_self_representing(texts):
    reps = near_duplicate_clusters(texts)
    assert len(reps) == len(texts)
    for i, rep in enumerate(reps):
        assert rep <= i
        assert reps[rep] == rep


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(["", "?!", "a", "Hello world", "hello, WORLD!", "hello there world"]) | st.text()
    )
)
def test_texts_that_normalise_alike_share_a_representative(texts):
    reps = near_duplicate_clusters(texts)
    first_seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        key = normalise(text)
        if key:
            assert reps[i] == reps[first_seen.setdefault(key, i)]
        else:
            assert reps[i] == i


# --- index -------------------------------------------------------------------------------------------


@pytest.fixture
def corpus() -> list[str]:
    rng = random.Random(21)
    base = [sentence(rng, 25) for _ in range(30)]
    return base + [t + " indeed" for t in base[:10]]


def test_index_finds_near_duplicates_and_skips_the_rest(corpus):
    index = NearDuplicateIndex(threshold=0.8)
    index.add(index.signatures(corpus[:30]), [f"row{i}" for i in range(30)])
    queries = [corpus[0], corpus[30], "nothing like the indexed texts at all", ""]
    results = index.query(index.signatures(queries))
    assert results[0][0] == "row0"
    assert results[1] == ["row0"]
    assert results[2] == [] and results[3] == []


def test_index_save_load_roundtrip(corpus, tmp_path):
    index = NearDuplicateIndex(threshold=0.8, num_perm=64, k=4, seed=3)
    index.add(index.signatures(corpus[:30]), [f"row{i}" for i in range(30)])
    path = tmp_path / "near_dup_index.npz"
    index.save(path)
    loaded = NearDuplicateIndex.load(path)
    assert (loaded.threshold, loaded.num_perm, loaded.k, loaded.seed) == (0.8, 64, 4, 3)
    assert len(loaded) == 30
    queries = loaded.signatures(corpus)
    assert loaded.query(queries) == index.query(queries)
    assert sum(bool(r) for r in loaded.query(queries)) == 40


def test_index_empty_roundtrip(tmp_path):
    NearDuplicateIndex().save(tmp_path / "empty.npz")
    loaded = NearDuplicateIndex.load(tmp_path / "empty.npz")
    assert len(loaded) == 0
    assert loaded.query(loaded.signatures(["anything"])) == [[]]


def test_index_adding_in_two_batches_equals_adding_at_once(corpus):
    keys = [f"row{i}" for i in range(len(corpus))]
    once, twice = NearDuplicateIndex(threshold=0.8), NearDuplicateIndex(threshold=0.8)
    sigs = once.signatures(corpus)
    once.add(sigs, keys)
    twice.add(sigs[:17], keys[:17])
    twice.query(sigs[:3])  # a query between adds must not freeze the lookup tables
    twice.add(sigs[17:], keys[17:])
    assert twice.query(sigs) == once.query(sigs)


def test_index_load_rejects_another_format(tmp_path):
    path = tmp_path / "index.npz"
    NearDuplicateIndex().save(path)
    with np.load(path) as data:
        fields = dict(data)
    fields["format"] = np.int64(999)
    np.savez(path, **fields)
    with pytest.raises(ValueError, match="format"):
        NearDuplicateIndex.load(path)


def test_index_rejects_mismatched_input():
    index = NearDuplicateIndex(num_perm=32)
    with pytest.raises(ValueError, match="shape"):
        index.add(minhash_signatures(["a text"], num_perm=16), ["k"])
    with pytest.raises(ValueError, match="keys"):
        index.add(index.signatures(["a text", "another"]), ["k"])


# --- real data ---------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_sms_spam_near_duplicates_beyond_exact_ones():
    path = SHARED_DATA / "sms_spam" / "SMSSpamCollection"
    if not path.is_file():
        pytest.fail(f"real-data test needs {path}")
    texts = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str)["SMS"].fillna("").tolist()
    assert len(texts) == 5574
    seen: set[str] = set()
    exact_dups = 0
    for text in texts:
        key = " ".join(text.lower().split())
        exact_dups += key in seen
        seen.add(key)
    reps = near_duplicate_clusters(texts, threshold=0.85)
    near_dups = [(rep, i) for i, rep in enumerate(reps) if rep != i]
    assert len(near_dups) > exact_dups > 300
    similarities = [exact_jaccard(texts[rep], texts[i]) for rep, i in near_dups]
    assert sum(s < 1.0 for s in similarities) > 50, "real near duplicates, not just normalised copies"
    # Observed at 0.85: the loosest pair against a representative has exact Jaccard 0.67, two variants of a
    # "secret admirer" spam linked through a third; every clustered text's nearest cluster mate is >= 0.78.
    assert min(similarities) >= 0.65
    clusters: dict[int, list[int]] = {}
    for i, rep in enumerate(reps):
        clusters.setdefault(rep, []).append(i)
    for members in (m for m in clusters.values() if len(m) > 1):
        for i in members:
            assert max(exact_jaccard(texts[i], texts[j]) for j in members if j != i) >= 0.75
