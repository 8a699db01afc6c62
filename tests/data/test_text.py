from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunery.data.pii import (
    replace_credit_cards,
    replace_emails,
    replace_ibans,
    replace_phones,
    replace_urls,
    scrub_pii,
)
from tunery.data.text import email_to_text, html_to_text, looks_like_email
from tunery.data.wording import STOPWORDS, expand_contractions, lowercase, remove_stopwords

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SPAM_ASSASSIN = SHARED_DATA / "spam_assassin" / "spam_assassin.jsonl"
SMS_SPAM = SHARED_DATA / "sms_spam" / "SMSSpamCollection"
HEADER_AT_LINE_START = re.compile(r"^(?:Received|Return-Path|Message-Id|Delivered-To|X-Mailer):", re.I | re.M)


# ---------------------------------------------------------------------------------------------- HTML


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("plain text, no markup", "plain text, no markup"),
        ("5 < 6 and 7 > 3", "5 < 6 and 7 > 3"),
        ("<p>5 < 6 and 7 > 3</p>", "5 < 6 and 7 > 3"),
        ("<p>Hello&nbsp;<b>world</b></p><p>bye</p>", "Hello world\n\nbye"),
        ("<script>var x = 1 < 2;</script>visible", "visible"),
        ("<style>p { color: red }</style><div>shown</div>", "shown"),
        ("<html><head><title>hidden</title></head><body>body text</body></html>", "body text"),
        ("before<!-- a comment <b>with tags</b> -->after", "before after"),
        ("line one<br>line two<br/>line three", "line one\nline two\nline three"),
        ("wor<b>ld</b> and <a href='x'>link</a>", "world and link"),
        ("&lt;b&gt; is a tag, &amp; so is &#60;i&#62;", "<b> is a tag, & so is <i>"),
        ("Tom &amp; Jerry\nsecond line", "Tom & Jerry\nsecond line"),
        ('<table width="720"<tr><td>cut</td></tr></table>a<br<br>b', "cut\n\na\nb"),
        ("<kre@munnari.OZ.AU> and <http://example.com>", "<kre@munnari.OZ.AU> and <http://example.com>"),
    ],
)
def test_html_to_text(html, expected):
    assert html_to_text(html) == expected


def test_html_to_text_returns_the_same_object_for_plain_text():
    text = "no markup here, 1 < 2"
    assert html_to_text(text) is text, "the quick check must skip non-HTML text entirely"


# --------------------------------------------------------------------------------------------- e-mail


def mail(*headers: str, body: str = "") -> str:
    return "\n".join(headers) + "\n\n" + body


@pytest.mark.parametrize(
    "text",
    [
        "From someone@example.com  Thu Aug 22 12:36:23 2002\nSubject: hi\n\nbody",
        "From: a@example.com\nTo: b@example.com\nSubject: hi\n\nbody",
        "Return-Path: <a@x.org>\nReceived: from x by y\n\tfor <b@y.org>; Thu, 22 Aug 2002\nX-Loop: z\n\nb",
        "\ufeff  From: a@example.com\nDate: Thu, 22 Aug 2002\nMessage-ID: <1@x>\n",
    ],
)
def test_looks_like_email_accepts_raw_messages(text):
    assert looks_like_email(text)


@pytest.mark.parametrize(
    "text",
    [
        "Note: meeting at 10",
        "Note: meeting at 10\nAgenda: budget\nRoom: 4B\n\nSee you there.",  # headers, but no mail header
        "From the start: it was a good film.\nSubject: love. Date: never.",
        "Dear John: the answer is yes.",
        "",
        "From: me",
    ],
)
def test_looks_like_email_rejects_prose(text):
    assert not looks_like_email(text)


def test_quoted_printable_utf8_body_is_decoded():
    raw = mail(
        "From: a@example.com",
        "Subject: caf\u00e9",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        body="Un caf=C3=A9 tr=C3=A8s =\nlong, a=3Db.\n",
    )
    assert email_to_text(raw) == "caf\u00e9\n\nUn caf\u00e9 tr\u00e8s long, a=b."


def test_base64_body_is_decoded_with_its_charset():
    payload = base64.encodebytes("Gr\u00fc\u00dfe aus K\u00f6ln".encode("iso-8859-1")).decode()
    raw = mail(
        "From: a@example.com",
        "Subject: greetings",
        "Content-Type: text/plain; charset=iso-8859-1",
        "Content-Transfer-Encoding: base64",
        body=payload,
    )
    assert email_to_text(raw) == "greetings\n\nGr\u00fc\u00dfe aus K\u00f6ln"


def test_mbox_line_and_headers_are_dropped():
    raw = "From a@example.com  Thu Aug 22 12:36:23 2002\n" + mail(
        "Return-Path: <a@example.com>",
        "Received: from x by y; Thu, 22 Aug 2002 12:36:23 +0100",
        "From: a@example.com",
        "Subject: Re: New Sequences Window",
        "Message-Id: <1@example.com>",
        body="Just the body.\n",
    )
    assert email_to_text(raw) == "Re: New Sequences Window\n\nJust the body."


def multipart(subtype: str, *parts: str, boundary: str = "XYZ") -> str:
    head = (
        "From: a@example.com\nSubject: multi\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"'
    )
    body = "".join(f"--{boundary}\n{part}\n" for part in parts) + f"--{boundary}--\n"
    return head + "\n\nThis is a multi-part message in MIME format.\n\n" + body


PLAIN_PART = "Content-Type: text/plain; charset=us-ascii\n\nThe plain version."
HTML_PART = (
    "Content-Type: text/html\n\n"
    "<html><body><p>The <b>HTML</b> version</p><table><tr><td>cell</td></tr></table></body></html>"
)


def test_multipart_alternative_prefers_plain():
    assert email_to_text(multipart("alternative", PLAIN_PART, HTML_PART)) == "multi\n\nThe plain version."


def test_html_only_multipart_is_converted():
    assert email_to_text(multipart("alternative", HTML_PART)) == "multi\n\nThe HTML version\n\ncell"
    assert email_to_text(multipart("mixed", HTML_PART)) == "multi\n\nThe HTML version\n\ncell"


def test_stub_plain_alternative_loses_to_a_real_html_one():
    stub = "Content-Type: text/plain\n\n*** This is an HTML message ***"
    long_html = "Content-Type: text/html\n\n<p>" + "Real content here. " * 20 + "</p>"
    assert "Real content here." in email_to_text(multipart("alternative", stub, long_html))


def test_attachments_are_skipped():
    attachment_b64 = base64.b64encode(b"%PDF-1.4 binary junk").decode()
    raw = multipart(
        "mixed",
        PLAIN_PART,
        f'Content-Type: application/pdf; name="x.pdf"\nContent-Transfer-Encoding: base64\n\n{attachment_b64}',
        'Content-Type: text/plain; name="notes.txt"\n'
        'Content-Disposition: attachment; filename="notes.txt"\n\nSECRET',
    )
    assert email_to_text(raw) == "multi\n\nThe plain version."


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("=?utf-8?q?Caf=C3=A9_au_lait?=", "Caf\u00e9 au lait"),
        ("=?iso-8859-1?B?R3L832U=?= und mehr", "Gr\u00fc\u00dfe und mehr"),
        ("=?utf-8?b?5pel5pys?=", "\u65e5\u672c"),
        ("folded\n  over two lines", "folded over two lines"),
        ("=?x-unknown?q?caf=E9?=", "caf\u00e9"),
    ],
)
def test_encoded_subjects_are_decoded(header, expected):
    raw = mail("From: a@example.com", f"Subject: {header}", "To: b@example.com", body="body")
    assert email_to_text(raw) == expected + "\n\nbody"


def test_unknown_charset_does_not_crash_and_falls_back():
    raw = mail(
        "From: a@example.com",
        "Subject: broken",
        "Content-Type: text/plain; charset=x-unknown",
        "Content-Transfer-Encoding: quoted-printable",
        body="caf=E9 =E0 la carte",
    )
    assert email_to_text(raw) == "broken\n\ncaf\u00e9 \u00e0 la carte"


def test_wrongly_declared_charset_falls_back():
    raw = mail(
        "From: a@example.com",
        "Subject: wrong label",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        body="na=EFve =93quotes=94",  # cp1252 bytes, not UTF-8
    )
    assert email_to_text(raw) == "wrong label\n\nna\u00efve \u201cquotes\u201d"


def test_html_sent_as_text_plain_is_converted():
    raw = mail(
        "From: a@x.org", "Subject: s", "Date: x", body="<html><body><p>Buy <b>now</b></p></body></html>"
    )
    assert email_to_text(raw) == "s\n\nBuy now"


@pytest.mark.parametrize("text", ["Note: meeting at 10", "just some words", ""])
def test_non_email_text_is_returned_as_is(text):
    assert email_to_text(text) == text


@pytest.mark.parametrize(
    "raw",
    [
        "Subject: =?utf-8?b?!!!?=\n\nbody",
        "Content-Type: multipart/mixed; boundary=\n\n--\n--",
        "Content-Type: multipart/mixed\n\nno boundary at all",
        "Content-Transfer-Encoding: base64\n\n@@@not base64@@@",
        'Content-Type: text/plain; charset=""\nContent-Transfer-Encoding: quoted-printable\n\n=ZZ=',
        "From: a\n" * 5000,
        "\x00\r\n\r\n\x00",
    ],
)
def test_broken_messages_do_not_raise(raw):
    assert isinstance(email_to_text(raw), str)


# ------------------------------------------------------------------------------------------ real data


def spam_assassin_rows(limit: int) -> list[dict]:
    with SPAM_ASSASSIN.open(encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(limit), strict=False)]


@pytest.fixture(scope="module")
def first_300() -> list[tuple[dict, str]]:
    rows = spam_assassin_rows(300)
    assert len(rows) == 300
    return [(row, email_to_text(row["text"])) for row in rows]


@pytest.mark.realdata
def test_real_emails_are_recognised_and_reduced_to_text(first_300):
    assert all(looks_like_email(row["text"]) for row, _ in first_300)
    assert all(isinstance(text, str) for _, text in first_300)
    with_headers = [row["id"] for row, text in first_300 if HEADER_AT_LINE_START.search(text)]
    assert with_headers == [], "header lines survived"
    non_empty = sum(bool(text.strip()) for _, text in first_300)
    assert non_empty >= 0.98 * len(first_300)


@pytest.mark.realdata
def test_real_emails_have_no_quoted_printable_left(first_300):
    # A few "=\n" occur naturally (PGP armour, "==== rules"); undecoded QP shows as many of them or "=3D".
    leftover = [
        row["id"] for row, text in first_300 if "=3D" in text or len(re.findall(r"[^=\s]=\n", text)) >= 3
    ]
    assert len(leftover) <= 0.01 * len(first_300), leftover


@pytest.mark.realdata
def test_real_html_emails_lose_their_markup(first_300):
    html_rows = [(row, text) for row, text in first_300 if _has_html_part(row["text"])]
    html_rows += [(row, email_to_text(row["text"])) for row in _html_rows_beyond(300, want=40)]
    assert len(html_rows) >= 40
    for row, text in html_rows:
        assert not re.search(r"<html|<td\b|<body|<table", text, re.I), row["id"]
        assert text.strip(), row["id"]


def _has_html_part(raw: str) -> bool:
    return bool(re.search(r"^Content-Type:\s*text/html", raw, re.I | re.M))


def _html_rows_beyond(skip: int, want: int) -> list[dict]:
    """Spam rows (further into the file) that declare an HTML body, to cover what easy ham lacks."""
    found = []
    with SPAM_ASSASSIN.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            if i >= skip and row["label"] == "spam" and _has_html_part(row["text"]):
                found.append(row)
                if len(found) == want:
                    break
    return found


@pytest.mark.realdata
def test_known_real_email_starts_with_its_subject(first_300):
    texts = {row["id"]: text for row, text in first_300}
    text = texts["easy-ham-1/00001.7c53336b37003a9286aba55d2945844c.txt"]
    assert text.startswith("Re: New Sequences Window\n\n")
    assert "For me it is very repeatable" in text
    assert "Return-Path" not in text and "Delivered-To" not in text


@pytest.mark.realdata
def test_sms_messages_are_not_emails():
    with SMS_SPAM.open(encoding="utf-8") as f:
        assert next(f).rstrip("\n").split("\t") == ["Label", "SMS"]
        messages = [line.rstrip("\n").split("\t", 1)[1] for line, _ in zip(f, range(20), strict=False)]
    assert len(messages) == 20
    assert not any(looks_like_email(m) for m in messages)


# -------------------------------------------------------------------------------------------- PII


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see http://example.com/a?b=1.", "see [URL]."),
        ("go to https://x.org/p/(y) now", "go to [URL]) now"),
        ("visit www.example.co.uk, then", "visit [URL], then"),
        ("FTP://files.example.com/pub", "[URL]"),
        ("(www.example.org)", "([URL])"),
        ("a plain sentence. no links", "a plain sentence. no links"),
        ("awww.cute", "awww.cute"),
    ],
)
def test_replace_urls(text, expected):
    assert replace_urls(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail john.doe+tag@example.co.uk.", "mail [EMAIL]."),
        ("<kre@munnari.OZ.AU>", "<[EMAIL]>"),
        ("a@b.c", "a@b.c"),
        ("follow @user on social", "follow @user on social"),
        ("user@localhost", "user@localhost"),
    ],
)
def test_replace_emails(text, expected):
    assert replace_emails(text) == expected


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+1 (555) 123-4567",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "07700 900123",
        "09061701461",
        "0800 169 6031",
    ],
)
def test_replace_phones_positive(phone):
    assert replace_phones(f"call {phone} now") == "call [PHONE] now"


@pytest.mark.parametrize(
    "text",
    [
        "back in 2002 it was",
        "text WIN to 87121 today",
        "at 12:36:23 on Thu, 22 Aug 2002 07:36:16 -0400",
        "win \u00a31000 or $1234567890",
        "host 192.168.100.200 is up",
        "pi is 3.14159265358",
        "1,000,000,000 people",
        "id g7MBYrZ04811 for",
        "12345678",
        "2002-08-22",
    ],
)
def test_replace_phones_negative(text):
    assert replace_phones(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("4111111111111111", "[CARD]"),
        ("amex 378282246310005.", "amex [CARD]."),
        ("mc 5500 0000 0000 0004", "mc [CARD]"),
        ("card 4111 1111 1111 1112 ok", "card 4111 1111 1111 1112 ok"),  # wrong check digit
        ("order 1234567812345678", "order 1234567812345678"),  # not Luhn-valid
        ("short 411111111111", "short 411111111111"),
    ],
)
def test_replace_credit_cards(text, expected):
    assert replace_credit_cards(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pay to GB82 WEST 1234 5698 7654 32 today", "pay to [IBAN] today"),
        ("DE89370400440532013000", "[IBAN]"),
        ("IBAN: FR1420041010050500013M02606.", "IBAN: [IBAN]."),
        ("GB82 WEST 1234 5698 7654 32 ABCD", "[IBAN] ABCD"),
        ("GB82 WEST 1234 5698 7654 33", "GB82 WEST 1234 5698 7654 33"),  # check digits do not match
        ("DE89370400440532013001", "DE89370400440532013001"),
        ("GB82 WEST 1234 5698 7654", "GB82 WEST 1234 5698 7654"),  # too short for GB
        ("AB12 CDEF GHIJ KLMN", "AB12 CDEF GHIJ KLMN"),
    ],
)
def test_replace_ibans(text, expected):
    assert replace_ibans(text) == expected


def test_scrub_pii_replaces_everything_in_a_safe_order():
    text = (
        "Mail jo@example.com or see https://example.com/jo, card 4111 1111 1111 1111, "
        "IBAN GB82 WEST 1234 5698 7654 32, phone +44 20 7946 0958."
    )
    assert scrub_pii(text) == "Mail [EMAIL] or see [URL], card [CARD], IBAN [IBAN], phone [PHONE]."


def test_scrub_pii_card_is_not_half_replaced_as_a_phone():
    assert scrub_pii("4111 1111 1111 1111") == "[CARD]"
    assert scrub_pii("5500-0000-0000-0004") == "[CARD]"


@pytest.mark.parametrize(
    ("flag", "kept"),
    [
        ("emails", "jo@example.com"),
        ("urls", "https://x.org"),
        ("phones", "555-123-4567"),
        ("cards", "4111111111111111"),
        ("ibans", "DE89370400440532013000"),
    ],
)
def test_scrub_pii_flags_turn_single_replacements_off(flag, kept):
    text = "jo@example.com https://x.org 555-123-4567 4111111111111111 DE89370400440532013000"
    scrubbed = scrub_pii(text, **{flag: False})
    assert kept in scrubbed
    assert scrubbed.count("[") == 4


def test_scrub_pii_leaves_ordinary_text_alone():
    text = "a gripping , funny film from 2002 , 10 out of 10 !"
    assert scrub_pii(text) == text


# ----------------------------------------------------------------------------------- normalisations


def test_lowercase():
    assert lowercase("Hello WORLD") == "hello world"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I can't go", "I cannot go"),
        ("Won't you?", "Will not you?"),
        ("they're here and I'm late", "they are here and I am late"),
        ("we've, you'll, he'd", "we have, you will, he would"),
        ("don't isn't couldn't", "do not is not could not"),
        ("DON'T", "DO NOT"),
        ("let's go", "let us go"),
        ("it\u2019s fine, isn\u2019t it", "it\u2019s fine, is not it"),  # "'s" is ambiguous: kept
        ("John's car", "John's car"),
        ("O'Reilly and 'dogs'", "O'Reilly and 'dogs'"),
    ],
)
def test_expand_contractions(text, expected):
    assert expand_contractions(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The movie is not good, and I don't like it.", "movie not good, don't like."),
        ("No way, it was never fun.\nNor was the sequel.", "No way, never fun.\nNor sequel."),
        ("nothing to remove", "nothing remove"),
    ],
)
def test_remove_stopwords_keeps_negations(text, expected):
    assert remove_stopwords(text) == expected


def test_stopword_list_has_no_negations():
    assert STOPWORDS.isdisjoint({"not", "no", "nor", "never", "don't", "isn't", "won't", "can't", "cannot"})


# ----------------------------------------------------------------------------------------- properties

PII_ALPHABET = "0123456789 +-().,:/@[]wWhtpsfHTPSGBDE\u00a3$\n\t=_abc"
pii_text = st.one_of(st.text(), st.text(alphabet=PII_ALPHABET, max_size=80))
header_line = st.sampled_from(
    [
        "From: a@example.com",
        "Subject: =?utf-8?q?caf=C3=A9?=",
        "Subject: =?x-unknown?b?@@?=",
        "Content-Type: multipart/mixed; boundary=B",
        'Content-Type: multipart/alternative; boundary="B"',
        "Content-Type: text/html; charset=x-unknown",
        'Content-Type: text/plain; charset="utf-8',
        "Content-Transfer-Encoding: base64",
        "Content-Transfer-Encoding: quoted-printable",
        "Content-Disposition: attachment",
        "--B",
        "--B--",
        "",
    ]
)
email_like = st.builds(
    lambda lines, body: "\n".join(lines) + "\n\n" + body, st.lists(header_line, max_size=12), st.text()
)


@settings(deadline=None, max_examples=300)
@given(st.one_of(st.text(), email_like))
def test_email_to_text_never_raises(raw):
    assert isinstance(email_to_text(raw), str)


@settings(deadline=None, max_examples=300)
@given(st.text())
def test_html_to_text_never_raises(text):
    assert isinstance(html_to_text(text), str)


@settings(deadline=None, max_examples=500)
@given(pii_text)
def test_scrub_pii_is_idempotent(text):
    once = scrub_pii(text)
    assert isinstance(once, str)
    assert scrub_pii(once) == once
