"""Behavioural tests of the bundled synthetic help-desk data set and its generator."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

from tunery.demo.helpdesk import QUEUES, generate_helpdesk_tickets, write_helpdesk_tickets

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_CSV = REPO_ROOT / "data" / "samples" / "helpdesk_tickets.csv"
HTML_MARKUP = re.compile(r"<p>|<br>|&amp;")
UNICODE_ODDITY = re.compile("[\u00a0\u200b\ufeff\u3000\uff01-\uff5e]")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV back with the standard library.

    Args:
        path: CSV file.

    Returns:
        The header and the rows.
    """
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def default_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CSV written with the default arguments, once per module."""
    return write_helpdesk_tickets(tmp_path_factory.mktemp("tickets") / "tickets.csv")


@pytest.fixture(scope="module")
def rows(default_csv: Path) -> list[dict[str, str]]:
    """The default data set as read back from disk."""
    return _read_csv(default_csv)[1]


def test_header_row_count_and_unique_ids(default_csv: Path, rows: list[dict[str, str]]) -> None:
    header, _ = _read_csv(default_csv)
    assert header == ["ticket_id", "subject", "body", "queue"]
    assert len(rows) == 600
    assert len({r["ticket_id"] for r in rows}) == 600


def test_write_returns_path_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "t.csv"
    assert write_helpdesk_tickets(str(target), n=30) == target
    assert len(_read_csv(target)[1]) == 30


def test_same_seed_gives_byte_identical_file(tmp_path: Path) -> None:
    first = write_helpdesk_tickets(tmp_path / "one.csv", n=200, seed=3)
    second = write_helpdesk_tickets(tmp_path / "two.csv", n=200, seed=3)
    assert first.read_bytes() == second.read_bytes()


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    first = write_helpdesk_tickets(tmp_path / "one.csv", n=200, seed=3)
    second = write_helpdesk_tickets(tmp_path / "two.csv", n=200, seed=4)
    assert first.read_bytes() != second.read_bytes()


def test_generate_and_write_agree(rows: list[dict[str, str]]) -> None:
    assert generate_helpdesk_tickets() == rows


def test_queue_set_is_five_queues_plus_missing(rows: list[dict[str, str]]) -> None:
    assert set(QUEUES) == {"access", "hardware", "network", "software", "billing"}
    assert {r["queue"] for r in rows} == set(QUEUES) | {""}


def test_queues_are_mildly_imbalanced(rows: list[dict[str, str]]) -> None:
    counts = Counter(r["queue"] for r in rows if r["queue"])
    ordered = [counts[q] for q in ("access", "hardware", "network", "software", "billing")]
    assert ordered == sorted(ordered, reverse=True)
    assert counts["billing"] / len(rows) > 0.08
    assert counts["access"] / len(rows) < 0.32


def test_dirty_kinds_are_present(rows: list[dict[str, str]]) -> None:
    html = [r for r in rows if HTML_MARKUP.search(r["body"])]
    empty = [r for r in rows if r["subject"] == "" and r["body"] == ""]
    no_queue = [r for r in rows if r["queue"] == ""]
    long_bodies = [r for r in rows if len(r["body"]) > 6000]
    oddities = [r for r in rows if UNICODE_ODDITY.search(r["subject"] + r["body"])]
    pairs = Counter((r["subject"], r["body"]) for r in rows if r["subject"] or r["body"])
    duplicates = [key for key, count in pairs.items() if count > 1]
    assert html and empty and no_queue and long_bodies and oddities and duplicates
    dirty = len(html) + len(empty) + len(no_queue) + len(long_bodies) + len(oddities) + len(duplicates)
    assert 0.05 * len(rows) <= dirty <= 0.09 * len(rows)


def test_duplicates_copy_an_earlier_ticket_under_a_new_id(rows: list[dict[str, str]]) -> None:
    first_seen: dict[tuple[str, str], dict[str, str]] = {}
    copies = 0
    for row in rows:
        key = (row["subject"], row["body"])
        if key == ("", ""):
            continue
        if key in first_seen:
            copies += 1
            assert row["ticket_id"] != first_seen[key]["ticket_id"]
            assert row["queue"] == first_seen[key]["queue"]
        else:
            first_seen[key] = row
    assert copies >= 1


def test_clean_rows_have_text_and_sane_length(rows: list[dict[str, str]]) -> None:
    clean = [
        r
        for r in rows
        if r["queue"] and r["body"] and not HTML_MARKUP.search(r["body"]) and len(r["body"]) <= 6000
    ]
    assert len(clean) > 0.9 * len(rows)
    assert all(r["subject"].strip() and len(r["body"]) < 1000 for r in clean)


def test_small_n_has_no_dirty_rows() -> None:
    tickets = generate_helpdesk_tickets(n=10, seed=1)
    assert len(tickets) == 10
    assert all(t["queue"] in QUEUES and t["subject"] and t["body"] for t in tickets)


def test_committed_file_matches_generator(default_csv: Path) -> None:
    assert COMMITTED_CSV.exists(), "run: python -m tunery.demo.helpdesk"
    assert COMMITTED_CSV.read_bytes() == default_csv.read_bytes(), (
        "data/samples/helpdesk_tickets.csv is stale; regenerate it with: python -m tunery.demo.helpdesk"
    )


def test_committed_file_is_small() -> None:
    assert COMMITTED_CSV.stat().st_size < 300_000
