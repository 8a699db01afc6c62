"""Every data set in ../shared/data goes through ingest -> clean -> split with the default cleaning.

Checked for each: the row invariant, split proportions, stratification, zero leakage (exact and near),
and for SpamAssassin that raw e-mails become readable subject + body text.
"""

from __future__ import annotations

import functools
import math
import re

import pytest

from tests.conftest import SHARED_DATA
from tunery.config import CleaningConfig, DataConfig, SplitConfig
from tunery.data.clean import clean
from tunery.data.ingest import ingest
from tunery.data.split import check_leakage, split

pytestmark = pytest.mark.realdata

CASES = {
    "sst2": ("sst2/train.tsv", {"text_columns": ["sentence"], "label_column": "label"}, "labelled_text"),
    "sms_spam": (
        "sms_spam/SMSSpamCollection",
        {"text_columns": ["SMS"], "label_column": "Label"},
        "labelled_text",
    ),
    "spam_assassin": ("spam_assassin/spam_assassin.jsonl", {"text_columns": ["text"]}, "labelled_text"),
    "ag_news": (
        "ag_news/test.csv",
        {
            "text_columns": ["title", "description"],
            "label_names": {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"},
            "labels": ["World", "Sports", "Business", "Sci/Tech"],
        },
        "labelled_text",
    ),
    "alpaca": ("alpaca_demo/alpaca_en_demo.json", {}, "instruction"),
    "gpteacher": ("gpteacher/*.json", {}, "instruction"),
}


@functools.cache
def prepare(name: str):
    """Ingest, clean and split one shared data set once per test session."""
    relpath, data_kw, kind = CASES[name]
    data_cfg = DataConfig(source=str(SHARED_DATA / relpath), **data_kw)
    rows = ingest(data_cfg, kind)
    result = clean(rows, CleaningConfig(), data_cfg.labels)
    parts, warnings = split(result.kept, SplitConfig(), near_dup_threshold=0.85)
    return name, rows, result, parts, warnings


@pytest.fixture(params=sorted(CASES))
def prepared(request, shared_data):
    return prepare(request.param)


def test_every_row_is_accounted_for(prepared):
    name, rows, result, parts, _ = prepared
    s = result.stats
    assert s["rows_in"] == len(rows) == s["kept"] + s["quarantined"] + s["deduplicated"]
    assert len(result.quarantined) == s["quarantined"] + s["deduplicated"], (
        "every row not kept is in the file"
    )
    assert sum(len(p) for p in parts.values()) == s["kept"]
    assert s["quarantined"] / s["rows_in"] < 0.05, f"{name}: default cleaning quarantines too much: {s}"


def test_split_proportions_and_stratification(prepared):
    name, _, result, parts, warnings = prepared
    n = result.stats["kept"]
    for split_name, expected in (("train", 0.70), ("validation", 0.15), ("test", 0.15)):
        share = len(parts[split_name]) / n
        assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 0.005, (
            name,
            split_name,
        )
        for label, count in result.kept["label"].value_counts().items():
            got = (parts[split_name]["label"] == label).sum() / count
            tolerance = 4 * math.sqrt(expected * (1 - expected) / count) + 0.005
            assert abs(got - expected) < tolerance, f"{name}: label {label!r} is {got:.3f} of {split_name}"
    assert not warnings, warnings


def test_no_leakage_between_splits(prepared):
    _, _, _, parts, _ = prepared
    check_leakage(parts, near_dup_threshold=0.85)  # raises LeakageError on any exact or near duplicate


def test_spam_assassin_emails_become_readable_text(shared_data):
    _, rows, result, _, _ = prepare("spam_assassin")
    kept = result.kept
    header = re.compile(r"^(?:Received|Return-Path|Message-I[Dd]|Delivered-To|X-[\w-]+): ", re.MULTILINE)
    assert kept["text"].str.contains(header).mean() < 0.01
    assert kept["text"].str.contains(r"=3D|=20\b|<td|<html", case=False).mean() < 0.01
    first = kept[kept["row"] == 1].iloc[0]  # easy-ham-1/00001: the first record of the file
    assert first["raw_text"].startswith("From exmh-workers-admin@redhat.com")
    assert first["text"].startswith("Re: New Sequences Window"), first["text"][:120]
    assert kept["text"].str.len().median() < rows["text"].str.len().median() / 2, "headers were not dropped"
