"""Pure text-cleaning functions: HTML to text, raw e-mail to text, PII placeholders, optional normalisations.

Everything here is a pure ``str -> str`` (or ``str -> bool``) function built on the standard library only, so
the same code runs in ingestion, in training and in serving, and is cheap to property-test.

The optional normalisations at the end (:func:`lowercase`, :func:`expand_contractions`,
:func:`remove_stopwords`) are OFF by default in the pipeline, on purpose: pretrained transformer tokenizers
were trained on natural, cased, unexpanded text. Lower-casing destroys information a cased model uses
(proper nouns, emphasis, sentence starts), stop-word removal destroys meaning ("not good" becomes "good"
with most stop-word lists) and expanding contractions moves the text away from the distribution the model
was pretrained on. They exist for classical bag-of-words baselines and for explicit recipe opt-in.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.header
import email.policy
import html
import quopri
import re
from collections.abc import Callable
from email.message import Message

# --------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------

# A real tag starts with a letter right after "<" (or "</"), so "5 < 6 and 7 > 3" is never taken for markup.
_TAG_PATTERN = r"</?[a-zA-Z][\w:-]*(?:\s[^<>]*)?/?>"
_HTML_HINT = re.compile(_TAG_PATTERN + r"|<!--|&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z][a-zA-Z0-9]*);")
_TAG_HINT = re.compile(_TAG_PATTERN + r"|<!--")
_TAG = re.compile(_TAG_PATTERN + r"|<![^<>]*>|<\?[^<>]*>")
# A tag cut short by the next tag, '<br<br>' or '<table width="720"<tr>' (broken spam markup).
_CUT_TAG = re.compile(
    r"""</?[a-zA-Z][\w:-]*(?:\s+[\w:-]+(?:=(?:"[^"<>]*"|'[^'<>]*'|[^\s<>"']+))?)*\s*(?=<)"""
)
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_HIDDEN_START = re.compile(r"<!--|<(script|style|head)\b[^<>]*>", re.IGNORECASE)
_BLOCK_TAG = re.compile(
    r"</?(?:address|article|aside|blockquote|br|center|dd|div|dl|dt|fieldset|figcaption|figure|footer|form"
    r"|h[1-6]|header|hr|li|main|nav|ol|p|pre|section|table|tbody|tfoot|thead|title|tr|ul)\b[^<>]*>",
    re.IGNORECASE,
)
# Inline formatting tags vanish without a space, as a browser renders them ("wor<b>ld</b>" is "world").
_INLINE_TAG = re.compile(
    r"</?(?:a|abbr|b|big|code|em|font|i|mark|o:p|s|small|span|strike|strong|sub|sup|tt|u)\b[^<>]*>",
    re.IGNORECASE,
)
_ANY_WHITESPACE = re.compile(r"\s+")
_SPACES = re.compile(r"[ \t\xa0]+")
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def html_to_text(text: str) -> str:
    """Turn HTML markup into plain text.

    Scripts, styles, ``<head>`` and comments are dropped, block tags become line breaks, other tags vanish
    and entities are unescaped. Text without markup is returned unchanged (one quick regex search).

    Args:
        text: HTML or plain text.

    Returns:
        The visible text, with runs of spaces collapsed and at most one blank line in a row.
    """
    if not _HTML_HINT.search(text):
        return text
    if not _TAG_HINT.search(text):
        return html.unescape(text)  # only entities: the line structure is real, keep it
    text = _CUT_TAG.sub("", _drop_hidden(text))
    # Whitespace in HTML source is not significant; line breaks come from block tags only.
    text = _ANY_WHITESPACE.sub(" ", text)
    text = _BLOCK_TAG.sub("\n", text)
    text = _INLINE_TAG.sub("", text)
    text = _TAG.sub(" ", text)
    # Unescape last so that "&lt;b&gt;" stays visible text instead of becoming a tag that is then stripped.
    return _tidy(html.unescape(text))


def _drop_hidden(text: str) -> str:
    """Remove comments and the contents of script, style and head elements.

    A scan with ``str.find`` instead of one lazy ``<script>.*?</script>`` regex: with many unclosed openers
    the regex rescans to the end of the text for each of them, which is quadratic (tens of seconds on
    200 kB of hostile input). An unclosed element keeps its content: ``</head>`` is optional in HTML and
    the body follows it.
    """
    lower = text.translate(_ASCII_LOWER)  # str.lower() may change the length ("\u0130"), breaking indices
    parts: list[str] = []
    pos = 0
    absent: set[str] = set()  # closers known to be missing from here to the end
    while match := _HIDDEN_START.search(text, pos):
        name = match.group(1)
        closer = "-->" if name is None else "</" + name.lower()
        end = -1 if closer in absent else lower.find(closer, match.end())
        if end < 0:  # unclosed: drop the opener only
            absent.add(closer)
            parts.append(text[pos : match.start()] + " ")
            pos = match.end()
            continue
        parts.append(text[pos : match.start()] + " ")
        pos = end + len(closer) if name is None else _after_tag(lower, end)
    parts.append(text[pos:])
    return "".join(parts)


def _after_tag(lower: str, start: int) -> int:
    """The index just past the ``>`` that closes the tag starting at ``start`` (or the end of the text)."""
    end = lower.find(">", start)
    return len(lower) if end < 0 else end + 1


def _tidy(text: str) -> str:
    """Collapse spaces, trim spaces around line breaks and keep at most one blank line in a row."""
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _MANY_NEWLINES.sub("\n\n", text).strip()


# --------------------------------------------------------------------------------------------------------
# E-mail
# --------------------------------------------------------------------------------------------------------

_MBOX_FROM = re.compile(
    r"From \S+ +(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +"
    r"\d{1,2} \d{1,2}:\d{2}"
)
_HEADER_LINE = re.compile(r"([A-Za-z][A-Za-z0-9-]*):(?:[ \t]|$)")
_KEY_HEADERS = frozenset(
    {"from", "subject", "received", "return-path", "message-id", "date", "content-type", "delivered-to"}
)
_MIN_HEADERS = 3
_MAX_HEADER_LINES = 500  # long Received chains are real, but looking further only wastes time
# HTML sent as text/plain (common in spam): it starts with document markup, or is a full document that is
# mostly markup. Mailing-list posts that merely quote "<body>" stay plain text.
_STARTS_WITH_MARKUP = re.compile(
    r"\s*<(?:!doctype|!--|html|head|body|meta|title|style|table|div|p|font|center)\b", re.IGNORECASE
)
_HTML_DOCUMENT = re.compile(r"<(?:html|body)\b", re.IGNORECASE)
_MIN_MARKUP_FRACTION = 0.1
_PLACEHOLDER_PLAIN_RATIO = 0.2  # "this message is in HTML" plain parts are far shorter than the HTML one
_QP_SOFT_LINE = re.compile(r"^[^\n]{60,76}=\r?$", re.MULTILINE)
_QP_SOFT_BREAK = re.compile(r"=\r?\n")
_QP_ESCAPE = re.compile(r"=[0-9A-F]{2}")
_MIN_QP_EVIDENCE = 3
_MAX_DEPTH = 50  # MIME nesting deeper than this is an attack or garbage, not a message
# Labels mail clients get wrong in practice, mapped the way browsers (WHATWG) map them.
_CHARSET_ALIASES = {
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
}
_WESTERN = frozenset({"cp1252", "utf-8", "utf8"})


def looks_like_email(text: str) -> bool:
    """Tell whether ``text`` is a raw RFC 822 message rather than ordinary prose.

    Args:
        text: any string.

    Returns:
        True when it starts with an mbox ``From `` line, or with a block of at least three ``Name: value``
        header lines that includes a typical mail header (From, Subject, Received, Date, ...).
    """
    text = text.lstrip("\ufeff \t\r\n")
    if _MBOX_FROM.match(text):
        return True
    names = _leading_header_names(_strip_mbox_line(text))
    return len(names) >= _MIN_HEADERS and not _KEY_HEADERS.isdisjoint(names)


def _leading_header_names(text: str) -> list[str]:
    """The header names of the header block at the very start of ``text`` (continuation lines allowed)."""
    names: list[str] = []
    for line in text.split("\n", _MAX_HEADER_LINES)[:_MAX_HEADER_LINES]:
        if not line.strip():
            break
        if line[0] in " \t" and names:
            continue  # folded continuation of the previous header
        match = _HEADER_LINE.match(line)
        if not match:
            break
        names.append(match.group(1).lower())
    return names


def email_to_text(raw: str) -> str:
    """Extract the human-readable text of a raw e-mail: the decoded subject, a blank line, then the body.

    Headers are dropped; quoted-printable and base64 bodies are decoded with the declared charset (with
    fallbacks for unknown or wrong ones); multipart messages prefer text/plain and fall back to text/html
    converted with :func:`html_to_text`; attachments are skipped. It never raises.

    Args:
        raw: the raw message, optionally starting with an mbox ``From `` line.

    Returns:
        ``subject + "\\n\\n" + body`` (either part omitted when empty). A string that is not an e-mail and
        yields nothing when parsed as one is returned stripped but otherwise unchanged.
    """
    try:
        text = _email_to_text(raw)
    except Exception:  # the contract is "never raise": fall back to a manual header/body split
        text = _manual_email_to_text(raw)
    if not text and not looks_like_email(raw):
        return raw.strip()  # e.g. "Note: meeting at 10" parses as one header and no body
    return text


def _email_to_text(raw: str) -> str:
    """Parse the MIME structure with compat32 and decode every part explicitly.

    compat32 is used for the structure because the modern policy parses every Content-Type header through
    its header registry, which made the whole function five times slower on the SpamAssassin corpus, while
    bodies are decoded here anyway (with charset fallbacks the policy does not have). The modern policy is
    still used where it adds correctness: decoding the subject (see :func:`_subject`).
    """
    raw = _strip_mbox_line(raw.lstrip("\ufeff \t\r\n"))
    msg = email.message_from_string(raw, policy=email.policy.compat32)
    subject = _subject(_raw_header(msg, "subject"))
    body = _tidy_body("\n\n".join(t for t in _part_texts(msg, 0) if t))
    return "\n\n".join(p for p in (subject, body) if p)


def _strip_mbox_line(raw: str) -> str:
    """Drop a leading mbox ``From `` line; a header is ``From:``, so any ``From `` line is the envelope."""
    if raw.startswith("From "):
        return raw.split("\n", 1)[1] if "\n" in raw else ""
    return raw


def _raw_header(msg: Message, name: str) -> str:
    """The header's source text (empty when absent)."""
    for key, value in msg.raw_items():
        if key.lower() == name:
            return str(value)
    return ""


def _subject(value: str) -> str:
    """Decode a raw Subject value (RFC 2047 encoded-words, folding) to one line.

    The modern policy decodes first; when it raises on a broken header or gives up on a charset (U+FFFD),
    the encoded-words are decoded by hand with the charset fallbacks of :func:`_decode_bytes`.
    """
    if not value:
        return ""
    try:
        subject = str(email.policy.default.header_factory("subject", value))
    except Exception:  # a malformed header can raise inside the header registry
        subject = "\ufffd"
    if "\ufffd" in subject:
        subject = _decode_header_value(value)
    return " ".join(subject.split())


def _decode_header_value(value: str) -> str:
    """Decode RFC 2047 encoded-words chunk by chunk, each with charset fallbacks."""
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # bad base64 inside an encoded-word
        return value
    return "".join(_decode_bytes(c, cs) if isinstance(c, bytes) else c for c, cs in chunks)


def _part_texts(part: Message, depth: int) -> list[str]:
    """The texts of a message part, recursively; attachments and non-text parts give nothing."""
    if depth > _MAX_DEPTH or part.get_content_disposition() == "attachment":
        return []
    ctype = part.get_content_type()
    if part.is_multipart():
        children = [c for c in part.get_payload() if isinstance(c, Message)]
        if ctype == "multipart/alternative":
            return _best_alternative(children, depth + 1)
        return [t for child in children for t in _part_texts(child, depth + 1)]
    if not ctype.startswith(("text/", "multipart/")):  # a multipart without usable boundary is still text
        return []
    text = _decode_payload(part)
    return [html_to_text(text) if ctype == "text/html" or _looks_like_html(text) else text]


def _looks_like_html(text: str) -> bool:
    """HTML labelled as plain text: starts with document markup, or is a full document mostly of markup."""
    if _STARTS_WITH_MARKUP.match(text):
        return True
    if not _HTML_DOCUMENT.search(text):
        return False
    return sum(len(tag) for tag in _TAG.findall(text)) >= _MIN_MARKUP_FRACTION * len(text)


def _best_alternative(children: list[Message], depth: int) -> list[str]:
    """text/plain wins, unless it is only a stub next to a much longer HTML alternative."""
    candidates = [(c.get_content_type(), _part_texts(c, depth)) for c in children]
    candidates = [(ctype, texts) for ctype, texts in candidates if any(t.strip() for t in texts)]
    if not candidates:
        return []
    plain = next((texts for ctype, texts in candidates if ctype == "text/plain"), None)
    richest = candidates[-1][1]  # RFC 2046: alternatives come in increasing order of faithfulness
    if plain is not None and _length(plain) >= _PLACEHOLDER_PLAIN_RATIO * _length(richest):
        return plain
    return richest


def _length(texts: list[str]) -> int:
    return sum(len(t.strip()) for t in texts)


def _decode_payload(part: Message) -> str:
    """Decode one leaf part's body by its Content-Transfer-Encoding and charset."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return ""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    charset = part.get_content_charset()
    if cte == "base64":
        return _decode_bytes(_b64decode(payload), charset)
    if cte == "quoted-printable" or _looks_quoted_printable(payload):
        return _decode_bytes(quopri.decodestring(_to_bytes(payload)), charset)
    return payload  # 7bit/8bit: the string already is text


def _looks_quoted_printable(payload: str) -> bool:
    """Undeclared quoted-printable (forwarded or mislabelled mail): full soft-broken lines or escapes."""
    if "=\n" not in payload and "=\r\n" not in payload:
        return False
    if len(_QP_SOFT_LINE.findall(payload)) >= _MIN_QP_EVIDENCE:
        return True
    soft_breaks = len(_QP_SOFT_BREAK.findall(payload))
    return soft_breaks >= _MIN_QP_EVIDENCE and len(_QP_ESCAPE.findall(payload)) >= _MIN_QP_EVIDENCE


def _to_bytes(text: str) -> bytes:
    # The corpus strings were decoded from the original bytes as UTF-8, so re-encoding recovers those bytes.
    return text.encode("utf-8", "replace")


def _b64decode(payload: str) -> bytes:
    """Lenient base64: ignore junk characters and bad padding instead of failing."""
    data = re.sub(r"[^A-Za-z0-9+/]", "", payload)
    data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data + "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data)
    except (binascii.Error, ValueError):
        return b""


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset and UTF-8 (best first), then cp1252, then latin-1 (never fails)."""
    if data.isascii():
        return data.decode("ascii")
    declared = (charset or "").strip().strip("\"'").lower()
    declared = _CHARSET_ALIASES.get(declared, declared)
    # Western labels are often wrong about UTF-8 content, and valid UTF-8 is a strong signal: try it first.
    order = ["utf-8", declared] if declared in _WESTERN or not declared else [declared, "utf-8"]
    for codec in [*order, "cp1252"]:
        try:
            return data.decode(codec)
        except (LookupError, UnicodeError, ValueError):
            continue
    return data.decode("latin-1")


def _tidy_body(text: str) -> str:
    """Normalise line ends, drop trailing spaces and keep at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def _manual_email_to_text(raw: str) -> str:
    """Last resort when the email package fails: split headers from body at the first blank line."""
    try:
        text = _strip_mbox_line(raw.lstrip("\ufeff \t\r\n")).replace("\r\n", "\n")
        head, _, body = text.partition("\n\n")
        match = re.search(r"^subject:[ \t]*(.*(?:\n[ \t].*)*)", head, re.IGNORECASE | re.MULTILINE)
        subject = " ".join(_decode_header_value(match.group(1)).split()) if match else ""
        body = _tidy_body(html_to_text(body) if _looks_like_html(body) else body)
        return "\n\n".join(p for p in (subject, body) if p)
    except Exception:  # never raise: the raw text is still better than nothing
        return raw.strip()


# --------------------------------------------------------------------------------------------------------
# PII placeholders
# --------------------------------------------------------------------------------------------------------

_URL = re.compile(
    r"(?<![\w@.])(?:(?:https?|ftp)://|www\.)[^\s<>\"'\[\]{}|\\^`]*[^\s<>\"'\[\]{}|\\^`.,;:!?()]",
    re.IGNORECASE,
)
# Lookarounds make every match maximal (the whole address or nothing), which keeps replacement idempotent.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-]|\.[A-Za-z0-9])", re.ASCII
)
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])", re.ASCII
)
# Printed card layouts only (contiguous, 4-4-4-4[-3], Amex 4-6-5, Diners 4-6-4), so that a card next to
# other numbers ("555-123-4567 4111111111111111") is still found on its own.
_CARD = re.compile(
    r"(?<![\w-])(?:[0-9]{13,19}|[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?:\1[0-9]{3})?"
    r"|[0-9]{4}([ -])[0-9]{6}\2[0-9]{4,5})(?![0-9])",
    re.ASCII,
)
_PHONE = re.compile(
    r"""
    (?<![\w+.,/$£€-])                     # not the tail of a longer number, a price, a path or a version
    (?:\+[0-9]{1,3}[ .-]?)?               # country code
    (?:\([0-9]{1,5}\)[ .-]?)?             # area code in brackets, also the UK "(0)"
    [0-9]{2,14}(?:[ .-][0-9]{2,14}){0,5}  # digit groups; longer digit runs are not phone numbers
    (?![0-9]|[.,/:-][0-9])                # not followed by more digits, decimals or a time
    """,
    re.VERBOSE,
)
_IP_ADDRESS = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_MIN_PHONE_DIGITS, _MAX_PHONE_DIGITS = 9, 15  # E.164 allows at most 15 digits
_DIGIT = re.compile(r"[0-9]")
_TRIGGER = re.compile(r"[0-9@]|://|www\.", re.IGNORECASE)
# ISO 13616 IBAN lengths per country; an unknown country only needs a plausible length (15..34).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def replace_urls(text: str) -> str:
    """Replace http(s)/ftp URLs and bare ``www.`` addresses with ``[URL]``.

    Args:
        text: any string.

    Returns:
        The text with each URL (trailing sentence punctuation excluded) replaced.
    """
    if "://" not in text and "www." not in text.lower():
        return text
    return _URL.sub("[URL]", text)


def replace_emails(text: str) -> str:
    """Replace e-mail addresses with ``[EMAIL]``.

    Args:
        text: any string.

    Returns:
        The text with each whole address replaced.
    """
    return _EMAIL.sub("[EMAIL]", text) if "@" in text else text


def replace_phones(text: str) -> str:
    """Replace phone numbers (9 to 15 digits, international or national formats) with ``[PHONE]``.

    Years, short codes, times, prices and IP addresses are left alone.

    Args:
        text: any string.

    Returns:
        The text with each phone number replaced.
    """
    return _PHONE.sub(_phone_or_same, text) if _has_digit(text) else text


def _phone_or_same(match: re.Match[str]) -> str:
    span = match.group()
    digits = sum(c.isdigit() for c in span)
    if not _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS or _IP_ADDRESS.fullmatch(span):
        return span
    return "[PHONE]"


def replace_credit_cards(text: str) -> str:
    """Replace Luhn-valid payment card numbers with ``[CARD]``.

    Numbers are found in their printed layouts: 13 to 19 digits in a row, or groups of 4-4-4-4(-3), 4-6-5
    or 4-6-4 separated by spaces or dashes.

    Args:
        text: any string.

    Returns:
        The text with each Luhn-valid card number replaced; other long numbers are kept.
    """
    return _CARD.sub(_card_or_same, text) if _has_digit(text) else text


def _card_or_same(match: re.Match[str]) -> str:
    digits = [int(c) for c in match.group() if c.isdigit()]
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_valid(digits) else match.group()


def _luhn_valid(digits: list[int]) -> bool:
    """The Luhn checksum: double every second digit from the right, the sum must end in 0."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def replace_ibans(text: str) -> str:
    """Replace IBANs (country code, check digits, BBAN; spaces allowed) that pass the mod-97 check.

    Args:
        text: any string.

    Returns:
        The text with each valid IBAN replaced with ``[IBAN]``.
    """
    return _IBAN.sub(_iban_or_same, text) if _has_digit(text) else text


def _iban_or_same(match: re.Match[str]) -> str:
    span = match.group()
    length = _IBAN_LENGTHS.get(span[:2])
    if length is None:
        compact = span.replace(" ", "")
        return "[IBAN]" if 15 <= len(compact) <= 34 and _iban_valid(compact) else span
    # The pattern may run into a following code word ("GB82 WEST ... 32 ABCD"): cut at the country length.
    end, seen = 0, 0
    while end < len(span) and seen < length:
        seen += span[end] != " "
        end += 1
    compact = span[:end].replace(" ", "")
    return "[IBAN]" + span[end:] if len(compact) == length and _iban_valid(compact) else span


def _iban_valid(compact: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, the number mod 97 is 1."""
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _has_digit(text: str) -> bool:
    return _DIGIT.search(text) is not None


def scrub_pii(
    text: str,
    *,
    emails: bool = True,
    phones: bool = True,
    cards: bool = True,
    ibans: bool = True,
    urls: bool = True,
) -> str:
    """Replace personal data with placeholders (``[URL]``, ``[EMAIL]``, ``[IBAN]``, ``[CARD]``, ``[PHONE]``).

    URLs go first (they may contain addresses and digits), then e-mails, then IBANs and cards before phones so
    that a card number is not half-replaced as a phone number.

    Args:
        text: any string.
        emails: replace e-mail addresses.
        phones: replace phone numbers.
        cards: replace Luhn-valid payment card numbers.
        ibans: replace mod-97-valid IBANs.
        urls: replace URLs.

    Returns:
        The scrubbed text; ``scrub_pii(scrub_pii(x)) == scrub_pii(x)``.
    """
    if not _TRIGGER.search(text):
        return text  # most short texts have no digit, "@" or URL: skip every regex
    steps = [
        step
        for step, on in (
            (replace_urls, urls),
            (replace_emails, emails),
            (replace_ibans, ibans),
            (replace_credit_cards, cards),
            (replace_phones, phones),
        )
        if on
    ]
    return _until_stable(text, steps)


def _until_stable(text: str, steps: list[Callable[[str], str]]) -> str:
    """Apply the steps until nothing changes, so the result is idempotent by construction.

    This terminates: every replacement removes at least one digit, "@", "://" or "www." (in any case) and
    placeholders contain none of them, nor can they join their neighbours into one.
    """
    while True:
        before = text
        for step in steps:
            text = step(text)
        if text == before:
            return text


# --------------------------------------------------------------------------------------------------------
# Optional normalisations (off by default, see the module docstring)
# --------------------------------------------------------------------------------------------------------

_APOSTROPHE = "['\u2019]"
_SPECIAL_CONTRACTIONS = {
    "can't": "cannot",
    "won't": "will not",
    "shan't": "shall not",
    "ain't": "am not",
    "let's": "let us",
    "y'all": "you all",
}
_SPECIAL = re.compile(
    r"\b(?:" + "|".join(w.replace("'", _APOSTROPHE) for w in _SPECIAL_CONTRACTIONS) + r")\b", re.IGNORECASE
)
_SUFFIX = re.compile(
    r"\b(\w+?)(n" + _APOSTROPHE + r"t|" + _APOSTROPHE + r"(?:m|re|ve|ll|d))\b", re.IGNORECASE
)
_SUFFIX_EXPANSIONS = {"n't": "not", "'m": "am", "'re": "are", "'ve": "have", "'ll": "will", "'d": "would"}
# "'s" is not expanded: it may be "is", "has" or a possessive.

# A small English stop-word list. Negations ("not", "no", "nor", "never", "n't" forms) are deliberately
# absent: removing them flips the meaning of the sentence.
_STOPWORD_TEXT = """
    a about above after again all am an and any are as at be because been before being below between both
    but by could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just let me more most my myself of off on
    once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    i'm you're he's she's it's we're they're i've you've we've they've i'd you'd he'd she'd we'd they'd
    i'll you'll he'll she'll we'll they'll that's there's here's what's let's
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
# A word with the spaces before it, so that removing it leaves no space before the next punctuation.
_SPACED_WORD = re.compile(r"[ \t]*([A-Za-z]+(?:['\u2019][A-Za-z]+)?)")


def lowercase(text: str) -> str:
    """Lower-case the text (off by default: cased models use case).

    Args:
        text: any string.

    Returns:
        ``text.lower()``.
    """
    return text.lower()


def expand_contractions(text: str) -> str:
    """Expand English contractions ("can't" -> "cannot", "they're" -> "they are"); "'s" is left alone.

    Args:
        text: any string.

    Returns:
        The text with contractions expanded, keeping the case of the word (``DON'T`` -> ``DO NOT``).
    """
    if "'" not in text and "\u2019" not in text:
        return text
    text = _SPECIAL.sub(_expand_special, text)
    return _SUFFIX.sub(_expand_suffix, text)


def _expand_special(match: re.Match[str]) -> str:
    word = match.group()
    return _match_case(word, _SPECIAL_CONTRACTIONS[word.lower().replace("\u2019", "'")])


def _expand_suffix(match: re.Match[str]) -> str:
    stem, suffix = match.group(1), match.group(2)
    expansion = _SUFFIX_EXPANSIONS[suffix.lower().replace("\u2019", "'")]
    return stem + " " + (expansion.upper() if match.group().isupper() else expansion)


def _match_case(word: str, expansion: str) -> str:
    if word.isupper():
        return expansion.upper()
    return expansion[0].upper() + expansion[1:] if word[0].isupper() else expansion


def remove_stopwords(text: str) -> str:
    """Remove English stop words (:data:`STOPWORDS`), keeping negations and punctuation.

    Args:
        text: any string.

    Returns:
        The text without stop words (and the spaces before them); line breaks are kept.
    """
    text = _SPACED_WORD.sub(_drop_stopword, text)
    return "\n".join(line.lstrip(" \t") for line in text.split("\n"))


def _drop_stopword(match: re.Match[str]) -> str:
    return "" if match.group(1).lower().replace("\u2019", "'") in STOPWORDS else match.group()
