"""Model references of `tunery lineage` (the lookup itself runs against MLflow in the flow tests)."""

from __future__ import annotations

import pytest

from tunery.continual.lineage import LineageError, lineage_text, parse_reference


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("sms", ("sms", "champion", None)),
        ("sms@champion", ("sms", "champion", None)),
        ("sms@challenger", ("sms", "challenger", None)),
        ("sms@3", ("sms", None, "3")),
        ("sms/12", ("sms", None, "12")),
    ],
)
def test_references(reference, expected):
    assert parse_reference(reference) == expected


@pytest.mark.parametrize("reference", ["", "@champion", "sms@", "sms/latest", "sms/"])
def test_bad_references_say_what_is_expected(reference):
    with pytest.raises(LineageError, match="NAME@ALIAS"):
        parse_reference(reference)


def test_lineage_text_lists_every_drop():
    info = {
        "model": "sms",
        "version": "2",
        "aliases": ["champion"],
        "run_id": "r1",
        "dataset_version": 2,
        "drops": [
            {
                "id": "a" * 16,
                "sha256": "a" * 64,
                "rows": 480,
                "arrived_at": "2026-11-23T04:00:00",
                "name": "d1.tsv",
            },
            {
                "id": "b" * 16,
                "sha256": "b" * 64,
                "rows": 470,
                "arrived_at": "2026-11-23T05:00:00",
                "name": "d2.tsv",
            },
        ],
        "new_drops": ["b" * 16],
    }
    text = lineage_text(info)
    assert "sms version 2 (champion)" in text and "dataset version 2, 2 drop(s)" in text
    assert "a" * 64 in text and "b" * 64 in text and "d2.tsv" in text
