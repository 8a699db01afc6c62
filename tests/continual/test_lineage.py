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


def test_lineage_text_names_the_parent_of_a_version_trained_from_a_registered_model():
    parent = {"reference": "assistant-sft version 3 (run r0)", "model": "assistant-sft", "version": "3"}
    info = {"model": "assistant-dpo", "version": "1", "aliases": ["champion"], "run_id": "r1"}
    info |= {"parent": {**parent, "run_id": "r0"}, "dataset_version": None, "drops": [], "new_drops": []}
    text = lineage_text(info)
    assert text.splitlines()[:2] == [
        "assistant-dpo version 1 (champion): run r1",
        "trained from assistant-sft version 3 (run r0)",
    ]
    assert "no drops" in text and "sha256" not in text


def test_lineage_text_shows_what_the_versions_run_cost():
    info = {"model": "sms", "version": "4", "aliases": [], "run_id": "r4", "parent": None}
    info |= {"dataset_version": None, "drops": [], "new_drops": []}
    assert "cost" not in lineage_text(info)  # a version registered before tunery measured costs
    info["cost"] = "wall 84.2 s, CPU 131.0 s, GPU 0.0 s, peak 1,830 MB, 0.00036 kWh, 0.0018 USD"
    assert lineage_text(info).splitlines()[1] == f"cost of its run: {info['cost']}"
