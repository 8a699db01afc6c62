"""Synthetic IT help-desk tickets: the demo data set bundled with tunery.

Every ticket in ``data/samples/helpdesk_tickets.csv`` was made up by this module, written by the tunery
project; none of it comes from a real help desk, a real company or a real person. The generator is
deterministic: the same ``n`` and ``seed`` always give byte-identical output, so the committed CSV can be
checked against the code that produced it (see ``tests/test_sample_data.py``).

Each row has the columns ``ticket_id,subject,body,queue``. The label ``queue`` is one of five routing
queues, mildly imbalanced (about 28/22/20/18/12 %):

* ``access``   - accounts, passwords, MFA, permissions
* ``hardware`` - laptops, monitors, printers, docking stations
* ``network``  - VPN, Wi-Fi, DNS, slow connections
* ``software`` - installing, licensing and crashing applications
* ``billing``  - invoices, refunds, purchase orders, subscriptions

The texts are built from many templates per queue, filled with product names, offices, error codes,
device models and first names, with polite or curt openers and closers, urgency phrases, casual style and
typos. About one clean ticket in ten deliberately uses the vocabulary of another queue (a refund for
unused software licences is still ``billing``), so no single keyword decides the label.

About 6-8 % of the rows are deliberately dirty, for the cleaning step to find:

* ``html``      - body wrapped in HTML markup (``<p>``, ``<br>``, ``&amp;``)
* ``duplicate`` - exact copy of an earlier ticket's subject, body and queue under a new ticket_id
* ``empty``     - empty subject and empty body
* ``no_queue``  - queue is the empty string
* ``unicode``   - stray whitespace, non-breaking and zero-width spaces, fullwidth characters
* ``long``      - a body over 6,000 characters (a pasted log dump)

Dirty kinds never overlap: each dirty row has exactly one of them. With fewer than 20 rows none are made.

Run ``python -m tunery.demo.helpdesk [PATH]`` to (re)write the CSV (default
``data/samples/helpdesk_tickets.csv``).
"""

from __future__ import annotations

import csv
import io
import random
import re
import sys
from pathlib import Path

from tunery.demo.vocabulary import (
    BODIES,
    CASUAL_SWAPS,
    CROSS_BODIES,
    DETAILS,
    GENERIC_SUBJECTS,
    LOG_LINES,
    ONE_LINERS,
    SLOTS,
)

FIELDS: tuple[str, ...] = ("ticket_id", "subject", "body", "queue")
QUEUES: tuple[str, ...] = ("access", "hardware", "network", "software", "billing")
QUEUE_SHARES: dict[str, float] = {
    "access": 0.28,
    "hardware": 0.22,
    "network": 0.20,
    "software": 0.18,
    "billing": 0.12,
}
# Share of rows of each dirty kind (with n=600: 8 + 9 + 4 + 7 + 9 + 2 = 39 rows, 6.5 %).
DIRTY_SHARES: dict[str, float] = {
    "html": 8 / 600,
    "duplicate": 9 / 600,
    "empty": 4 / 600,
    "no_queue": 7 / 600,
    "unicode": 9 / 600,
    "long": 2 / 600,
}
MIN_ROWS_FOR_DIRTY = 20
LONG_BODY_MIN_CHARS = 6500
DEFAULT_PATH = Path("data/samples/helpdesk_tickets.csv")

# --------------------------------------------------------------------------------------------------------
# Clean tickets
# --------------------------------------------------------------------------------------------------------


def _pick(rng: random.Random, options: tuple[str, ...]) -> str:
    """Choose one option.

    Args:
        rng: The random generator.
        options: Non-empty tuple of strings.

    Returns:
        One of the options.
    """
    return options[rng.randrange(len(options))]


def _random_slots(rng: random.Random) -> dict[str, str]:
    """Draw a value for every template slot.

    Args:
        rng: The random generator.

    Returns:
        Mapping from slot name to filler text.
    """
    slots = {key: _pick(rng, values) for key, values in SLOTS.items()}
    slots["name2"] = _pick(rng, tuple(name for name in SLOTS["name"] if name != slots["name"]))
    slots["app2"] = _pick(rng, SLOTS["app"])
    slots["user"] = f"{slots['name'].lower()}.{slots['surname'].lower()}"
    slots["floor"] = str(rng.randint(1, 7))
    slots["desk"] = f"{slots['floor']}.{rng.randint(1, 60):02d}"
    slots["room"] = _pick(rng, ("Everest", "Kilimanjaro", "3B", "Blue", "Galileo", "the big boardroom"))
    slots["ip"] = f"10.{rng.randint(0, 40)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
    slots["ip2"] = f"10.{rng.randint(0, 40)}.{rng.randint(0, 3)}.{rng.randint(1, 2)}"
    slots["version"] = f"{rng.randint(1, 24)}.{rng.randint(0, 12)}.{rng.randint(0, 9999)}"
    slots["inv"] = f"INV-{rng.randint(2023, 2025)}-{rng.randint(1, 99999):05d}"
    slots["po"] = f"PO-4500{rng.randint(0, 999999):06d}"
    slots["cc"] = f"CC-{rng.randint(1000, 9999)}"
    slots["asset"] = f"AT-{rng.randint(10000, 99999)}"
    slots["serial"] = "".join(_pick(rng, tuple("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789")) for _ in range(7))
    currency = _pick(rng, ("€", "$", "£", "EUR ", "USD "))
    slots["amount"] = f"{currency}{rng.randint(20, 48000):,}.{rng.randint(0, 99):02d}"
    slots["n_small"] = str(rng.randint(2, 15))
    slots["n_big"] = str(rng.randint(20, 250))
    return slots


def _fill(template: str, slots: dict[str, str]) -> str:
    """Fill the ``{slot}`` placeholders of a template.

    Args:
        template: Text with ``str.format`` style named placeholders.
        slots: Values for the placeholders.

    Returns:
        The filled text.
    """
    return template.format_map(slots)


def _make_subject(subjects: str, slots: dict[str, str], rng: random.Random, generic_share: float) -> str:
    """Write a ticket subject line.

    Args:
        subjects: The template's subject options, separated by ``|``.
        slots: Slot values for this ticket.
        rng: The random generator.
        generic_share: Probability of a vague subject ("Help", "Issue") instead of a fitting one.

    Returns:
        The subject.
    """
    pool = GENERIC_SUBJECTS if rng.random() < generic_share else tuple(subjects.split("|"))
    subject = _fill(_pick(rng, pool), slots)
    roll = rng.random()
    if roll < 0.06:
        subject = "URGENT: " + subject
    elif roll < 0.10:
        subject = _pick(rng, ("RE: ", "Fwd: ", "FW: ")) + subject
    elif roll < 0.18:
        subject = subject.lower()
    return subject


def _signoff(slots: dict[str, str], rng: random.Random) -> str:
    """Write a closing line, sometimes with the sender's name.

    Args:
        slots: Slot values for this ticket.
        rng: The random generator.

    Returns:
        The sign-off text (may contain a newline).
    """
    closer = slots["closer"]
    roll = rng.random()
    if roll < 0.35:
        return f"{closer},\n{slots['name']}"
    if roll < 0.5:
        return f"{closer}\n{slots['name']} {slots['surname']} | {slots['office']}"
    if roll < 0.6:
        return f"- {slots['name']}"
    return closer


def _compose_body(
    core: str, detail_queues: tuple[str, ...], slots: dict[str, str], rng: random.Random
) -> str:
    """Assemble a ticket body of varied length around a core sentence: opener, details, urgency, sign-off.

    Args:
        core: The filled core sentence(s).
        detail_queues: Queues whose detail sentences may be added (the ticket's own, plus the borrowed
            one for cross-queue tickets).
        slots: Slot values for this ticket.
        rng: The random generator.

    Returns:
        The body text.
    """
    size = rng.random()
    if size < 0.2:
        return core
    parts = [core]
    n_details = 1 if size < 0.55 else rng.randint(1, 3)
    for detail in rng.sample([d for q in detail_queues for d in DETAILS[q]], n_details):
        parts.append(_fill(detail, slots))
    if rng.random() < 0.3:
        parts.insert(1 if rng.random() < 0.5 else len(parts), slots["urgency"])
    if rng.random() < 0.25 and "{since}" not in core:
        parts.insert(1, f"It's been like this {slots['since']}.")
    text = " ".join(parts)
    if rng.random() < 0.7:
        text = slots["opener"] + _pick(rng, (" ", "\n", "\n\n")) + text
    if rng.random() < 0.75:
        text = text + _pick(rng, ("\n", "\n\n", " ")) + _signoff(slots, rng)
    return text


def _typo(word: str, rng: random.Random) -> str:
    """Introduce one typing mistake into a word (swap, drop or double a letter).

    Args:
        word: A word of at least four letters.
        rng: The random generator.

    Returns:
        The misspelt word.
    """
    i = rng.randint(1, len(word) - 2)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _roughen(text: str, rng: random.Random) -> str:
    """Make a text look hastily typed: casual abbreviations, lower case and a few typos.

    Args:
        text: Clean text.
        rng: The random generator.

    Returns:
        The roughened text (unchanged for most tickets).
    """
    if rng.random() < 0.25:
        for formal, casual in CASUAL_SWAPS:
            if rng.random() < 0.6:
                text = re.sub(rf"\b{re.escape(formal)}\b", casual, text)
        if rng.random() < 0.4:
            text = text.lower()
    if rng.random() < 0.22:
        words = text.split(" ")
        for _ in range(rng.randint(1, 3)):
            j = rng.randrange(len(words))
            if len(words[j]) >= 4 and words[j].isalpha():
                words[j] = _typo(words[j], rng)
        text = " ".join(words)
    return text


def _queue_plan(n: int, rng: random.Random) -> list[str]:
    """Lay out the queue label of every row: shares from ``QUEUE_SHARES``, shuffled.

    Args:
        n: Number of rows.
        rng: The random generator.

    Returns:
        ``n`` queue names.
    """
    exact = {q: n * share for q, share in QUEUE_SHARES.items()}
    counts = {q: int(v) for q, v in exact.items()}
    by_remainder = sorted(QUEUES, key=lambda q: (counts[q] - exact[q], QUEUES.index(q)))
    for q in by_remainder[: n - sum(counts.values())]:
        counts[q] += 1
    plan = [q for q in QUEUES for _ in range(counts[q])]
    rng.shuffle(plan)
    return plan


def _clean_ticket(queue: str, rng: random.Random) -> dict[str, str]:
    """Generate one clean ticket (without ticket_id).

    About 10 % are cross-queue tickets (vocabulary of another queue) and 7 % terse one-liners.

    Args:
        queue: The ticket's queue.
        rng: The random generator.

    Returns:
        Dict with ``subject``, ``body`` and ``queue``.
    """
    slots = _random_slots(rng)
    roll = rng.random()
    cross, one_liner = roll < 0.10, 0.10 <= roll < 0.17
    if cross:
        borrowed, subjects, core = CROSS_BODIES[queue][rng.randrange(len(CROSS_BODIES[queue]))]
        detail_queues = (queue, borrowed)
    else:
        subjects, core = _pick(rng, (ONE_LINERS if one_liner else BODIES)[queue])
        detail_queues = (queue,)
    subject = _make_subject(subjects, slots, rng, generic_share=0.4 if cross else 0.12)
    body = _fill(core, slots)
    if not one_liner:
        body = _compose_body(body, detail_queues, slots, rng)
    return {"subject": subject, "body": _roughen(body, rng), "queue": queue}


def _unique_ticket(queue: str, seen: set[tuple[str, str]], rng: random.Random) -> dict[str, str]:
    """Generate a clean ticket whose subject and body are not already taken (only dirty rows duplicate).

    Args:
        queue: The ticket's queue.
        seen: The (subject, body) pairs generated so far.
        rng: The random generator.

    Returns:
        Dict with ``subject``, ``body`` and ``queue``.
    """
    ticket = _clean_ticket(queue, rng)
    for _ in range(50):
        if (ticket["subject"], ticket["body"]) not in seen:
            break
        ticket = _clean_ticket(queue, rng)
    return ticket


# --------------------------------------------------------------------------------------------------------
# Dirty rows
# --------------------------------------------------------------------------------------------------------


def _dirty_plan(n: int, rng: random.Random) -> dict[int, str]:
    """Choose which rows become dirty and how; kinds never overlap.

    Args:
        n: Number of rows.
        rng: The random generator.

    Returns:
        Mapping from row index to dirty kind. Empty when ``n < MIN_ROWS_FOR_DIRTY``.
    """
    if n < MIN_ROWS_FOR_DIRTY:
        return {}
    counts = {kind: max(1, round(share * n)) for kind, share in DIRTY_SHARES.items()}
    # Row 0..9 stay clean so a duplicate always has an earlier clean ticket to copy.
    rows = rng.sample(range(10, n), min(sum(counts.values()), n - 10))
    plan: dict[int, str] = {}
    for kind, count in counts.items():
        for _ in range(count):
            if rows:
                plan[rows.pop()] = kind
    return plan


def _to_html(body: str, rng: random.Random) -> str:
    """Wrap a body in the kind of HTML a mail-to-ticket gateway leaves behind.

    Args:
        body: Plain body text.
        rng: The random generator.

    Returns:
        HTML-marked-up body containing ``<p>``, ``<br>`` and ``&amp;``.
    """
    escaped = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    paragraphs = [p.replace("\n", "<br>") for p in escaped.split("\n\n")]
    inner = "".join(f"<p>{p}</p>" for p in paragraphs)
    footer = _pick(rng, ("IT &amp; Facilities", "Sales &amp; Marketing", "R&amp;D", "Finance &amp; Legal"))
    html = f'{inner}<p><span style="color:#888">Sent from the {footer} team</span><br></p>'
    if rng.random() < 0.5:
        html = f'<html><body><div dir="ltr">{html}</div></body></html>'
    return html


def _fullwidth(text: str) -> str:
    """Convert printable ASCII to fullwidth Unicode forms (as IME input sometimes produces).

    Args:
        text: ASCII text.

    Returns:
        The text with ``!``..``~`` mapped to U+FF01..U+FF5E and spaces to U+3000.
    """
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)


def _unicode_oddities(text: str, rng: random.Random) -> str:
    """Sprinkle stray whitespace and invisible or fullwidth characters into a text.

    Args:
        text: Clean text.
        rng: The random generator.

    Returns:
        The text with non-breaking spaces, zero-width spaces, fullwidth words and padding.
    """
    words = text.split(" ")
    for _ in range(max(1, len(words) // 6)):
        j = rng.randrange(len(words))
        words[j] = _pick(rng, ("\u200b", "\ufeff", "")) + words[j]
    if len(words) > 2:
        j = rng.randrange(len(words))
        words[j] = _fullwidth(words[j])
    glue = _pick(rng, ("\u00a0", "  ", " \u00a0"))
    out = "".join(w + (glue if rng.random() < 0.3 else " ") for w in words).rstrip(" ")
    lead = _pick(rng, ("  ", "\t", "\u00a0", " \u200b"))
    return lead + out + _pick(rng, ("   ", "\u00a0\n", " \t", "\u3000"))


def _log_dump(queue: str, rng: random.Random) -> str:
    """Make a pasted log dump longer than ``LONG_BODY_MIN_CHARS``.

    Args:
        queue: The ticket's queue (picks the kind of log).
        rng: The random generator.

    Returns:
        Multi-line log text with increasing timestamps.
    """
    pool = LOG_LINES.get(queue, LOG_LINES["default"])
    slots = _random_slots(rng)
    slots["host"] = _pick(rng, ("intranet.acme.local", "jira.internal", "git.acme.local", "wpad.acme.local"))
    lines: list[str] = []
    size = 0
    clock_ms = rng.randint(7 * 3600, 16 * 3600) * 1000
    while size < LONG_BODY_MIN_CHARS:
        clock_ms += rng.randint(1, 9000)
        slots["k"] = str(rng.randint(1, 5))
        slots["num"] = str(rng.randint(100, 9999))
        slots["hexcode"] = _pick(rng, ("0xc0000005", "0xc0000409", "0xe0434352", "0xc0000374"))
        seconds, millis = divmod(clock_ms, 1000)
        stamp = f"2024-03-12 {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{millis:03d}"
        line = f"{stamp} {_fill(_pick(rng, pool), slots)}"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def _dirty(row: dict[str, str], kind: str, earlier: list[dict[str, str]], rng: random.Random) -> None:
    """Turn a clean row into a dirty row of the given kind, in place.

    Args:
        row: The row to spoil (ticket_id is kept).
        kind: One of the keys of ``DIRTY_SHARES``.
        earlier: Clean rows before this one (source for duplicates).
        rng: The random generator.
    """
    if kind == "html":
        row["body"] = _to_html(row["body"], rng)
    elif kind == "duplicate":
        source = _pick_row(earlier, rng)
        row.update(subject=source["subject"], body=source["body"], queue=source["queue"])
    elif kind == "empty":
        row.update(subject="", body="")
    elif kind == "no_queue":
        row["queue"] = ""
    elif kind == "unicode":
        row["subject"] = _unicode_oddities(row["subject"], rng)
        row["body"] = _unicode_oddities(row["body"], rng)
    elif kind == "long":
        intro = _pick(rng, ("here is the log:", "Log below, sorry it's long", "pasting the output:"))
        row["body"] = f"{row['body']}\n\n{intro}\n{_log_dump(row['queue'], rng)}"
    else:
        raise ValueError(f"unknown dirty kind: {kind}")


def _pick_row(rows: list[dict[str, str]], rng: random.Random) -> dict[str, str]:
    """Choose one row.

    Args:
        rows: Non-empty list of rows.
        rng: The random generator.

    Returns:
        One of the rows.
    """
    return rows[rng.randrange(len(rows))]


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def generate_helpdesk_tickets(n: int = 600, seed: int = 7) -> list[dict[str, str]]:
    """Generate synthetic help-desk tickets, about 6-8 % of them deliberately dirty.

    Args:
        n: Number of rows (tickets), at least 0.
        seed: Seed of the private random generator; the same ``n`` and ``seed`` give the same rows.

    Returns:
        ``n`` dicts with the keys ``ticket_id``, ``subject``, ``body`` and ``queue`` (all strings).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    plan = _queue_plan(n, rng)
    dirty = _dirty_plan(n, rng)
    rows: list[dict[str, str]] = []
    clean: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    number = 10_000 + rng.randint(0, 5000)
    for i, queue in enumerate(plan):
        number += rng.randint(1, 4)
        row = {"ticket_id": f"HD-{number}", **_unique_ticket(queue, seen, rng)}
        seen.add((row["subject"], row["body"]))
        if i in dirty:
            _dirty(row, dirty[i], clean, rng)
        else:
            clean.append(row)
        rows.append(row)
    return rows


def tickets_to_csv(rows: list[dict[str, str]]) -> str:
    """Serialise tickets as CSV text (header, ``\\n`` line endings, minimal quoting).

    Args:
        rows: Tickets as returned by :func:`generate_helpdesk_tickets`.

    Returns:
        The CSV document.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_helpdesk_tickets(path: str | Path, n: int = 600, seed: int = 7) -> Path:
    """Write synthetic help-desk tickets to a UTF-8 CSV file with header ``ticket_id,subject,body,queue``.

    Args:
        path: Destination file; parent directories are created.
        n: Number of rows.
        seed: Seed of the random generator.

    Returns:
        The path written to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tickets_to_csv(generate_helpdesk_tickets(n=n, seed=seed)).encode("utf-8"))
    return path


if __name__ == "__main__":
    target = write_helpdesk_tickets(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH)
    print(f"wrote {target}")
