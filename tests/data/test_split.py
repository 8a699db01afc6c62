from __future__ import annotations

import random

import pandas as pd
import pytest

from tunery.config import SplitConfig
from tunery.data.split import LeakageError, check_leakage, split

WORDS = [
    f"{a}{b}"
    for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to")
    for b in ("b", "d", "g", "k", "m", "p")
]


def frame(n_per_class: dict[str, int], offset: int = 0) -> pd.DataFrame:
    """Distinct random-word texts (not near-duplicates of each other)."""
    rng = random.Random(offset)
    texts, labels = [], []
    for label, n in n_per_class.items():
        texts += [" ".join(rng.choices(WORDS, k=12)) + f" {label}{i}" for i in range(offset, offset + n)]
        labels += [label] * n
    return pd.DataFrame({"text": texts, "label": labels})


def test_proportions_and_stratification():
    data = frame({"ham": 4000, "spam": 700})
    parts, warnings = split(data, SplitConfig())
    assert not warnings
    assert sum(len(p) for p in parts.values()) == len(data)
    for name, expected in (("train", 0.70), ("validation", 0.15), ("test", 0.15)):
        assert abs(len(parts[name]) / len(data) - expected) < 0.02, name
        for label, n in (("ham", 4000), ("spam", 700)):
            share = (parts[name]["label"] == label).sum() / n
            assert abs(share - expected) < 0.04, f"{label} is not split {expected:.0%} in {name}: {share:.3f}"


def test_a_row_keeps_its_split_across_reruns_reordering_and_growth():
    base = frame({"a": 300, "b": 200})
    first, _ = split(base, SplitConfig(seed=1))
    grown = pd.concat([base.sample(frac=1.0, random_state=3), frame({"a": 200, "c": 50}, offset=1000)])
    second, _ = split(grown, SplitConfig(seed=1))
    for name in first:
        assert set(first[name]["text"]) <= set(second[name]["text"]), f"{name} lost or moved rows"
    other_seed, _ = split(base, SplitConfig(seed=2))
    assert set(other_seed["test"]["text"]) != set(first["test"]["text"])


def test_near_duplicates_land_in_the_same_split():
    base = "the quarterly invoice for the printer lease was charged twice to cost centre {}"
    rows = pd.DataFrame(
        {
            "text": [base.format(i) + suffix for i in range(60) for suffix in ("", " !", " please")],
            "label": "billing",
        }
    )
    parts, _ = split(rows, SplitConfig(), near_dup_threshold=0.8)
    where = {t: name for name, p in parts.items() for t in p["text"]}
    for i in range(60):
        variants = {where[base.format(i) + s] for s in ("", " !", " please")}
        assert len(variants) == 1, f"cluster {i} straddles {variants}"


def test_tiny_class_is_reported_not_lost():
    parts, warnings = split(frame({"a": 100, "rare": 2}), SplitConfig())
    assert sum((p["label"] == "rare").sum() for p in parts.values()) == 2
    assert any("'rare' has no rows in" in w for w in warnings)


def test_leakage_check_catches_exact_and_near_duplicates():
    parts = {"train": pd.DataFrame({"text": ["x", "y"]}), "test": pd.DataFrame({"text": ["Y "]})}
    with pytest.raises(LeakageError, match="the same text is in train and test"):
        check_leakage(parts)
    sentence = "the vpn client disconnects every few minutes when i am on the office wifi network"
    near = {
        "train": pd.DataFrame({"text": [sentence, "something else entirely"]}),
        "validation": pd.DataFrame({"text": [sentence + " today"]}),
    }
    check_leakage(near)  # exact check alone does not see it
    with pytest.raises(LeakageError, match="near-duplicate texts in train and validation"):
        check_leakage(near, near_dup_threshold=0.8)
