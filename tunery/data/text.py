"""Markup to plain text: HTML to text, raw RFC 822 e-mail to subject + body, data-file bytes to text.

Pure ``str -> str`` (or ``str -> bool``, ``bytes -> str``) functions on the standard library only (plus
charset-normalizer to detect legacy encodings), so the same code runs in ingestion, in training and in
serving, and is cheap to property-test. PII placeholders are
:mod:`tunery.data.pii`; the optional normalisations are :mod:`tunery.data.wording`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.header
import email.policy
import html
import quopri
import re
import unicodedata
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
# Bytes to text (data files)
# --------------------------------------------------------------------------------------------------------

# Stands for bytes that did not decode, from decoding until ingest quarantines the row (``undecodable``):
# a Unicode noncharacter, reserved for internal use, so it never collides with text (U+FFFD in a valid
# UTF-8 file is text someone else already replaced, and is kept).
UNDECODABLE = "\ufdd0"
MARK_UNDECODABLE = "tunery-undecodable"
codecs.register_error(MARK_UNDECODABLE, lambda exc: (UNDECODABLE, exc.end))
# Legacy encodings that detection may choose (Python codec names); Latin-script code pages are not among
# them: for those the cp1252/latin-1 default is as good a guess and detection is unreliable.
LEGACY_CODECS = frozenset(
    {
        *("cp932", "shift_jis", "shift_jis_2004", "shift_jisx0213", "euc_jp", "euc_jis_2004", "iso2022_jp"),
        *("gb18030", "gbk", "gb2312", "hz", "big5", "big5hkscs", "cp950", "euc_kr", "cp949", "johab"),
        *("cp1251", "koi8_r", "koi8_u", "iso8859_5", "mac_cyrillic", "cp866", "cp855"),
        *("cp1253", "iso8859_7", "cp1255", "iso8859_8", "cp1256", "iso8859_6", "cp874", "tis_620"),
    }
)
_SIGNATURES = (
    *(b"\x89PNG", b"GIF87a", b"GIF89a", b"\xff\xd8\xff", b"PK\x03\x04", b"\x1f\x8b", b"%PDF-", b"\x7fELF"),
    *(b"\xfd7zXZ\x00", b"7z\xbc\xaf", b"PAR1", b"SQLite format 3\x00", b"\xd0\xcf\x11\xe0"),
)
# C0 control bytes other than tab, line breaks, form feed, vertical tab and ESC (ISO-2022), and DEL.
_CONTROL_BYTES = bytes(sorted(set(range(32)) - set(b"\t\n\r\f\v\x1b"))) + b"\x7f"
_HIGH_BYTES = bytes(range(128, 256))


def looks_binary(raw: bytes) -> bool:
    """A file signature (PNG, ZIP, gzip, PDF, ELF, Parquet, ...), or control bytes dense enough that this is
    no text: over 10 % of the first 64 KiB, or over 5 % when those bytes are not UTF-8 either. A stray NUL
    in text is not binary: its row is quarantined (``control_characters``) wherever it is in the file."""
    head = raw[:65536]
    if not head:
        return False
    if head.startswith(_SIGNATURES):
        return True
    share = (len(head) - len(head.translate(None, _CONTROL_BYTES))) / len(head)
    if share > 0.10:
        return True
    if share <= 0.05:
        return False
    try:  # incremental: a character cut at the end of the sample is still UTF-8
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return True
    return False


def decode_lines(raw: bytes) -> str:
    """UTF-8 lines as they are; the others in the detected legacy encoding, or cp1252/latin-1."""
    lines = raw.splitlines(keepends=True)  # bytes split at \n and \r only: safe in CJK multi-byte codes
    decoded: list[str | None] = []
    for line in lines:
        try:
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(None)
    legacy = _legacy_codec([line for line, text in zip(lines, decoded, strict=True) if text is None])
    return "".join(
        text if text is not None else _decode_legacy(line, legacy)
        for line, text in zip(lines, decoded, strict=True)
    )


def _legacy_codec(lines: list[bytes]) -> str | None:
    """The non-Western encoding of the lines that are not UTF-8 (Shift-JIS, GB18030, Big5, EUC-KR,
    cp1251, ...), or None for the Western single-byte default (cp1252, then latin-1).

    charset-normalizer names a candidate; short or Latin-script text is ambiguous (cp1252 letters next to
    ASCII ones are also valid GB18030 or Shift-JIS, as rare characters), so the candidate must be one of
    :data:`LEGACY_CODECS`, have at least 8 non-ASCII bytes of evidence, decode at least 80 % of the lines
    without error, and read as common characters of its script (:func:`_common`) for 90 % of the
    non-ASCII ones.
    """
    sample = b"".join(lines)[:200_000]
    if len(sample) - len(sample.translate(None, _HIGH_BYTES)) < 8:
        return None
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    codec = codecs.lookup(best.encoding).name if best is not None else ""
    if codec not in LEGACY_CODECS:
        return None
    if sum(_decodes(line, codec) for line in lines) < 0.8 * len(lines):
        return None
    chars = [c for c in sample.decode(codec, "replace") if not c.isascii()]
    return codec if sum(_common(c, codec) for c in chars) >= 0.9 * len(chars) else None


# The first byte of the common characters in each CJK double-byte code: symbols, kana or Hangul and the
# first level of ideographs (JIS X 0208 level 1, GB2312, Big5 level 1, KS X 1001 Hangul).
_COMMON_LEADS = {
    "shift_jis": range(0x81, 0x99),
    "gb2312": range(0xA1, 0xF8),
    "big5": range(0xA1, 0xC7),
    "euc_kr": range(0xA1, 0xC9),
}
_CODE_FAMILY = {
    **dict.fromkeys(("cp932", "shift_jis", "shift_jis_2004", "shift_jisx0213"), "shift_jis"),
    **dict.fromkeys(("euc_jp", "euc_jis_2004", "iso2022_jp"), "shift_jis"),
    **dict.fromkeys(("gb18030", "gbk", "gb2312", "hz"), "gb2312"),
    **dict.fromkeys(("big5", "big5hkscs", "cp950"), "big5"),
    **dict.fromkeys(("euc_kr", "cp949", "johab"), "euc_kr"),
}


def _common(char: str, codec: str) -> bool:
    """Whether a decoded character is an ordinary one of the candidate encoding's script."""
    family = _CODE_FAMILY.get(codec)
    if family is None:  # single-byte: anything printable but a Latin letter (a Cyrillic word, a dash, «»)
        latin = char.isalpha() and unicodedata.name(char, "").startswith("LATIN")
        return not latin and unicodedata.category(char)[0] != "C"
    try:
        encoded = char.encode(family)
    except UnicodeEncodeError:
        return False
    return len(encoded) == 2 and encoded[0] in _COMMON_LEADS[family]


def _decode_legacy(line: bytes, codec: str | None) -> str:
    return line.decode(codec, MARK_UNDECODABLE) if codec else _decode_western(line)


def _decodes(line: bytes, codec: str) -> bool:
    try:
        line.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


def _decode_western(line: bytes) -> str:
    try:
        return line.decode("cp1252")  # the usual legacy export encoding (Excel, Windows tools)
    except UnicodeDecodeError:
        return line.decode("latin-1")  # cp1252 leaves five bytes undefined; latin-1 maps every byte
