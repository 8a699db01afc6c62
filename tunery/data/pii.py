"""PII placeholders: URLs, e-mail addresses, phone numbers, Luhn-valid card numbers and mod-97-valid IBANs
become fixed placeholders. Pure ``str -> str`` functions on the standard library only."""

from __future__ import annotations

import re
from collections.abc import Callable

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
