from __future__ import annotations

import pandas as pd
import pytest

from tunery.config import CleaningConfig
from tunery.data.clean import QuarantineLimitExceeded, clean, clean_text


def rows(*items: tuple[str, str], error: str = "") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [t for t, _ in items],
            "label": [lab for _, lab in items],
            "source": "f.csv",
            "row": range(1, len(items) + 1),
            "error": error,
        }
    )


def test_clean_text_normalises_html_unicode_and_whitespace():
    cfg = CleaningConfig()
    # block tags are line breaks, and line breaks are kept (at most one blank line in a row)
    assert clean_text("<p>Hello&nbsp;<b>world</b></p><br>bye", cfg) == "Hello world\n\nbye"
    assert clean_text("ｆｕｌｌｗｉｄｔｈ\u200b text\u00a0\u00a0 here ", cfg) == "fullwidth text here"
    assert clean_text("<script>var x=1;</script>visible", cfg) == "visible"
    assert clean_text("5 < 6 and 7 > 3", cfg) == "5 < 6 and 7 > 3", "comparison signs are not tags"


def test_clean_text_replaces_urls_and_pii_with_placeholders():
    cfg = CleaningConfig()
    text = "Mail jo@example.com or call +44 20 7946 0958, see https://x.io/a, card 4111 1111 1111 1111"
    assert clean_text(text, cfg) == "Mail [EMAIL] or call [PHONE], see [URL], card [CARD]"
    off = CleaningConfig(
        replace_emails=False, replace_phones=False, replace_urls=False, replace_credit_cards=False
    )
    assert clean_text(text, off) == text


def test_optional_normalisations_are_off_by_default():
    text = "This isn't GOOD at all"
    assert clean_text(text, CleaningConfig()) == text
    on = CleaningConfig(lowercase=True, expand_contractions=True, remove_stopwords=True)
    assert clean_text(text, on) == "not good"


def test_raw_email_becomes_subject_and_body():
    raw = (
        "From: a@b.com\nTo: c@d.com\nSubject: =?utf-8?q?Caf=C3=A9_meeting?=\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        "See you at the caf=C3=A9 at ten.=\n Bring the slides.\n"
    )
    expected = "Café meeting\n\nSee you at the café at ten. Bring the slides."
    assert clean_text(raw, CleaningConfig()) == expected


def test_every_row_is_accounted_for_with_a_reason():
    data = rows(
        ("fine text", "a"),
        ("Fine  text.", "a"),  # duplicate after normalisation
        ("fine text", "b"),  # same text, other label: conflict
        ("no label", ""),
        ("   ", "a"),
        ("x" * 50, "a"),
        ("odd label", "zzz"),
        ("other", "b"),
    )
    cfg = CleaningConfig(max_chars=40, max_quarantine_fraction=1.0)
    result = clean(data, cfg, labels=["a", "b"])
    s = result.stats
    assert s["rows_in"] == s["kept"] + s["quarantined"] + s["deduplicated"] == 8
    assert result.kept["text"].tolist() == ["fine text", "other"]
    reasons = dict(zip(result.quarantined["row"], result.quarantined["reason"], strict=True))
    assert reasons == {
        2: "duplicate",
        3: "conflicting_duplicate",
        4: "missing_label",
        5: "empty_text",
        6: "too_long",
        7: "unknown_label",
    }
    details = dict(zip(result.quarantined["row"], result.quarantined["detail"], strict=True))
    assert details[2] == "exact duplicate of f.csv:1", "a removed duplicate names the row it duplicates"
    assert details[3] == "label 'b' but f.csv:1 has 'a'"
    assert (result.quarantined["raw_text"] != "").sum() >= 5, "quarantined rows keep their original text"


def test_near_duplicates_are_removed_and_point_at_the_kept_row():
    base = "my laptop docking station stopped charging after the firmware update yesterday afternoon"
    data = rows((base, "hardware"), (base + " again", "hardware"), ("the vpn is down", "network"))
    result = clean(data, CleaningConfig(near_duplicate_threshold=0.8))
    assert result.stats["near_duplicates"] == 1 and result.stats["exact_duplicates"] == 0
    removed = result.quarantined.iloc[0]
    assert (removed["row"], removed["reason"], removed["detail"]) == (
        2,
        "duplicate",
        "near-duplicate of f.csv:1",
    )
    kept_without = clean(data, CleaningConfig(near_duplicates=False))
    assert len(kept_without.kept) == 3


def test_malformed_rows_are_quarantined():
    data = pd.concat([rows(("good", "a")), rows(("x,y,z", ""), error="expected 2 fields, got 3")])
    result = clean(data.reset_index(drop=True), CleaningConfig(max_quarantine_fraction=1.0))
    assert result.quarantined["reason"].tolist() == ["malformed_row"]
    assert result.quarantined["detail"].tolist() == ["expected 2 fields, got 3"]


def test_instruction_rows_are_cleaned_per_field():
    data = pd.DataFrame(
        {
            "text": ["x", "y"],
            "label": "",
            "instruction": ["<b>Summarise</b>", "Translate"],
            "input": ["Mail me at jo@example.com", ""],
            "output": ["Done.", ""],
            "source": "a.json",
            "row": [1, 2],
            "error": "",
        }
    )
    result = clean(data, CleaningConfig(max_quarantine_fraction=1.0))
    kept = result.kept.iloc[0]
    assert (kept["instruction"], kept["input"], kept["output"]) == (
        "Summarise",
        "Mail me at [EMAIL]",
        "Done.",
    )
    assert kept["text"] == "Summarise\n\nMail me at [EMAIL]\n\nDone."
    assert result.quarantined[["row", "reason", "detail"]].values.tolist() == [
        [2, "missing_answer", "empty answer"]
    ]


def test_token_limit_uses_the_model_tokenizer(tiny_bert):
    data = rows(("short one", "a"), ("word " * 40, "a"))
    result = clean(
        data, CleaningConfig(max_tokens=20, max_quarantine_fraction=1.0), tokenizer_path=str(tiny_bert)
    )
    assert result.quarantined["reason"].tolist() == ["too_long"]
    assert result.quarantined["detail"].tolist() == ["42 tokens"]
    with pytest.raises(ValueError, match="needs a tokenizer"):
        clean(data, CleaningConfig(max_tokens=20))


def test_parallel_cleaning_gives_the_same_result():
    data = rows(
        *[(f"<p>Ticket {i}: call 020 7946 0{i % 1000:03d} about   the VPN</p>", "n") for i in range(400)]
    )
    serial = clean(data, CleaningConfig(num_proc=1, near_duplicates=False))
    parallel = clean(data, CleaningConfig(num_proc=2, near_duplicates=False))
    pd.testing.assert_frame_equal(serial.kept, parallel.kept)
    assert serial.kept["text"].iloc[0] == "Ticket 0: call [PHONE] about the VPN"


def test_duplicates_kept_when_dedup_disabled():
    result = clean(
        rows(("same", "a"), ("same", "a")), CleaningConfig(drop_duplicates=False, near_duplicates=False)
    )
    assert len(result.kept) == 2 and result.stats["deduplicated"] == 0


def test_quarantine_threshold_fails_the_run_with_counts():
    data = rows(("ok", "a"), ("", "a"), ("", "a"))
    with pytest.raises(QuarantineLimitExceeded, match=r"2 of 3 rows \(66.7%\)"):
        clean(data, CleaningConfig(max_quarantine_fraction=0.2))
