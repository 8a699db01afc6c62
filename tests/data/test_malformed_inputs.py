"""Malformed inputs through ingest -> clean: a clear DataError or quarantined rows, never anything else.

Every test checks the same contract: an input gives EITHER a ``DataError`` whose message names the file
and the problem, OR rows that all end up kept, quarantined (with a reason) or deduplicated, with
``rows_in == kept + quarantined + deduplicated``. No other exception type (KeyError, UnicodeDecodeError,
csv.Error, pyarrow errors, ...) may escape, and no record of a delimited file may be lost silently.
"""

from __future__ import annotations

import csv
import io
import json
import string
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunery.config import CleaningConfig, DataConfig
from tunery.data.clean import CleanResult, clean
from tunery.data.ingest import DataError, ingest

# Quarantine everything rather than stop: these tests look at where each row goes.
LENIENT = CleaningConfig(max_quarantine_fraction=1.0)
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def write(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def csv_text(rows: list[list[str]], lineterminator: str = "\n", quoting: int = csv.QUOTE_MINIMAL) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=lineterminator, quoting=quoting).writerows(rows)
    return buf.getvalue()


def parquet_bytes_of(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf)
    return buf.getvalue()


def check_accounting(rows: pd.DataFrame, result: CleanResult) -> None:
    """Every ingested row is kept, quarantined or deduplicated; malformed ones as `malformed_row`."""
    stats = result.stats
    assert stats["rows_in"] == len(rows)
    assert stats["rows_in"] == stats["kept"] + stats["quarantined"] + stats["deduplicated"]
    assert len(result.quarantined) == stats["quarantined"] + stats["deduplicated"]
    assert (result.quarantined["reason"] != "").all()
    malformed = rows[rows["error"] != ""]
    quarantined = result.quarantined[result.quarantined["reason"] == "malformed_row"]
    assert sorted(zip(malformed["source"], malformed["row"], strict=True)) == sorted(
        zip(quarantined["source"], quarantined["row"], strict=True)
    )


def ingest_or_error(path: Path, kind: str = "labelled_text", **data) -> pd.DataFrame | DataError:
    """Ingest and clean one file; a DataError is returned (it must name the file), anything else raises."""
    cfg = DataConfig(source=str(path), **data)
    try:
        rows = ingest(cfg, kind=kind)
    except DataError as exc:
        assert str(path) in str(exc), f"the message does not name the file: {exc}"
        return exc
    check_accounting(rows, clean(rows, LENIENT, labels=cfg.labels))
    return rows


def data_error(path: Path, *fragments: str, **data) -> str:
    """The DataError message for a file; it must name the file and contain every fragment."""
    with pytest.raises(DataError) as err:
        ingest(DataConfig(source=str(path), **data))
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- ragged rows -----------------------------------------------------------------------------------------

_cell = st.text(alphabet=string.ascii_letters + ' ,;|\t"\n', max_size=10)
_record = st.lists(_cell, min_size=1, max_size=5).filter(lambda r: any(c.isalpha() for c in "".join(r)))


@FEW
@given(records=st.lists(st.tuples(_record, st.integers(0, 2)), min_size=1, max_size=12))
def test_ragged_csv_rows_are_quarantined_at_their_line(records):
    """Too many / too few fields: one malformed row per record, located at the line where it starts."""
    lines = ["text,label\n"]
    expected = []  # (line, error) for each record
    line_no = 2
    for fields, blank_lines_before in records:
        lines.append("\n" * blank_lines_before)
        line_no += blank_lines_before
        written = csv_text([fields])
        lines.append(written)
        span = written.count("\n")
        error = "" if len(fields) == 2 else f"expected 2 fields, got {len(fields)}"
        if error and span > 1:
            error += f" (the record runs over lines {line_no}-{line_no + span - 1})"
        expected.append((line_no, error))
        line_no += span
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "ragged.csv", "".join(lines))
        rows = ingest(DataConfig(source=str(path)))
        assert len(rows) == len(records), "every record is a row, none is lost"
        assert sorted(zip(rows["row"], rows["error"], strict=True)) == sorted(expected)
        result = clean(rows, LENIENT)
        check_accounting(rows, result)
        quarantined = result.quarantined[result.quarantined["reason"] == "malformed_row"]
        assert sorted(zip(quarantined["row"], quarantined["detail"], strict=True)) == sorted(
            (line, error) for line, error in expected if error
        )


@pytest.mark.parametrize(
    ("body", "malformed"),
    [
        ("a,x\ntoo,many,fields,here\nb,y\n", [(3, "expected 2 fields, got 4")]),
        ("a,x\ntoo few\nb,y\n", [(3, "expected 2 fields, got 1")]),
        ("a,x\n,,,\nb,y\n", [(3, "expected 2 fields, got 4")]),  # empty fields are a record, not blank
        ("a,x\n\n   \nb,y\n", []),  # blank and whitespace-only lines are not records
        ('a,x\n"multi\nline",y,z\nb,y\n', [(3, "expected 2 fields, got 3 (the record runs over lines 3-4)")]),
        (
            'a,x\n"unclosed,y\nb,y\nc,z\n',  # an unbalanced quote swallows the rest of the file
            [(3, "expected 2 fields, got 1 (the record runs over lines 3-5)")],
        ),
    ],
)
def test_ragged_rows_table(tmp_path, body, malformed):
    path = write(tmp_path, "d.csv", "text,label\n" + body)
    rows = ingest_or_error(path)
    assert isinstance(rows, pd.DataFrame)
    bad = rows[rows["error"] != ""]
    assert sorted(zip(bad["row"], bad["error"], strict=True)) == malformed


# --- delimiters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "fmt"),
    [
        ("semi.csv", "text;label\nhello, world;a\nbye;b\n", "auto"),
        ("semi", "text;label\nhello, world;a\nbye;b\n", "csv"),
        ("pipe.csv", "text|label\nhello, world|a\nbye|b\n", "auto"),
        ("tabs.txt", "text\tlabel\nhello, world\ta\nbye\tb\n", "csv"),
        ("tabs.csv", "text\tlabel\nhello, world\ta\nbye\tb\n", "auto"),
        # commas stay the delimiter when quoted text is full of other candidates (csv.Sniffer says ";")
        (
            "commas.csv",
            csv_text([["text", "label"], ['say "hi"; then "bye"', "a"], ['"yes"; "no"|s\tt', "b"]]),
            "auto",
        ),
        ("blank-first.csv", "\n\ntext,label\nhello, world,a\n", "auto"),  # too many fields: malformed
    ],
)
def test_delimiter_is_sniffed_from_the_header(tmp_path, name, content, fmt):
    rows = ingest_or_error(write(tmp_path, name, content), format=fmt)
    assert isinstance(rows, pd.DataFrame), rows
    if name == "blank-first.csv":
        assert rows[["row", "error"]].values.tolist() == [[4, "expected 2 fields, got 3"]]
    elif name == "commas.csv":
        assert rows["text"].tolist() == ['say "hi"; then "bye"', '"yes"; "no"|s\tt']
    else:
        assert rows["text"].tolist() == ["hello, world", "bye"]
        assert rows["label"].tolist() == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "content", "fmt", "has"),
    [
        ("csv-as-tsv.csv", "text,label\nhello,a\n", "tsv", "the file has: text,label"),
        ("semi-as-tsv.txt", "text;label\nhello;a\n", "tsv", "the file has: text;label"),
    ],
)
def test_wrong_declared_delimiter_names_the_file_and_its_columns(tmp_path, name, content, fmt, has):
    data_error(write(tmp_path, name, content), "missing column(s) text, label", has, format=fmt)


# --- binary garbage --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage=st.binary(max_size=400),
    suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".parquet", ""]),
    prefix=st.sampled_from([b"", b"text,label\n", b'{"text": "a", "label": "b"}\n', b"PAR1", b"\xff\xfe"]),
)
def test_binary_garbage_is_a_data_error_or_accounted_rows(garbage, suffix, prefix):
    with tempfile.TemporaryDirectory() as folder:
        ingest_or_error(write(Path(folder), "garbage" + suffix, prefix + garbage))


# Text made of the characters parsers care about, behind a plausible first line, in several encodings.
_structured = st.text(alphabet=" ,;|\t\"'\r\n\\{}[]:ab1é\ufeff\u2028\x85", max_size=150)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=_structured,
    suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ""]),
    first=st.sampled_from(
        ["", "text,label\n", "text\tlabel\n", "text;label\n", '{"text": "a", "label": "b"}\n']
    ),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]),
    header=st.booleans(),
    kind=st.sampled_from(["labelled_text", "instruction"]),
)
def test_structured_garbage_is_a_data_error_or_accounted_rows(body, suffix, first, encoding, header, kind):
    raw = (first + body).encode(encoding, errors="replace")
    names = {} if header else {"has_header": False, "column_names": ["text", "label"]}
    with tempfile.TemporaryDirectory() as folder:
        ingest_or_error(write(Path(folder), "fuzz" + suffix, raw), kind=kind, **names)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\x00\x01\x02\x03", "binary file"),
        (b"\xff\xfetext,label\n", "not UTF-16 text"),  # a BOM, then an odd number of bytes
        (b"\xff\xfe" + "text,label\n".encode("utf-16-le") + b"\x00\xd8\x00\x00", "not UTF-16 text"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_undecodable_bytes_name_the_file(tmp_path, content, fragment):
    data_error(write(tmp_path, "x.json" if content.startswith(b"[") else "x.csv", content), fragment)


# --- empty files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet", ""])
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b" ",
        b"\n\n\r\n",
        b"\t \n  ",
        b"\xef\xbb\xbf",
        b"\xff\xfe",
        b"\xef\xbb\xbf \n",
        "\u3000\n".encode(),
    ],
    ids=["empty", "space", "newlines", "tabs", "utf8-bom", "utf16-bom", "bom-space", "ideographic-space"],
)
def test_empty_and_whitespace_files(tmp_path, suffix, content):
    path = write(tmp_path, "empty" + suffix, content)
    if suffix == ".parquet" and content:
        data_error(path, "not a readable Parquet file")
    else:
        data_error(path, "file is empty")


# --- header only -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("h.csv", "text,label\n", "no records (only the column names: text, label)"),
        ("h2.csv", "text,label\n\n  \n\n", "no records (only the column names: text, label)"),
        ("h.tsv", "text\tlabel\r\n", "no records (only the column names: text, label)"),
        (
            "h.parquet",
            parquet_bytes_of(pd.DataFrame({"text": [], "label": []})),
            "no records (only the column",
        ),
        ("e.json", "[]", "no records"),
        ("e2.json", '{"data": []}', "no records"),
    ],
)
def test_a_file_without_records_is_a_clear_error(tmp_path, name, content, fragment):
    data_error(write(tmp_path, name, content), fragment)


def test_a_header_only_shard_next_to_real_data_is_fine(tmp_path):
    write(tmp_path, "part-0.csv", "text,label\n")
    write(tmp_path, "part-1.csv", "text,label\nhello,a\n")
    rows = ingest(DataConfig(source=str(tmp_path / "part-*.csv")))
    assert rows["text"].tolist() == ["hello"]
    write(tmp_path, "part-1.csv", "text,label\n")
    data_error(tmp_path / "part-*.csv", "no records", str(tmp_path / "part-0.csv"))


# --- missing and repeated columns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "kind", "fragment"),
    [
        (
            "a.csv",
            "body,queue\nhi,x\n",
            "labelled_text",
            "missing column(s) text, label; the file has: body, queue",
        ),
        (
            "a.tsv",
            "text\tqueue\nhi\tx\n",
            "labelled_text",
            "missing column(s) label; the file has: text, queue",
        ),
        ("a.jsonl", '{"body": "hi"}\n', "labelled_text", "missing column(s) text, label; the file has: body"),
        ("a.json", '[{"text": "hi"}]', "labelled_text", "missing column(s) label; the file has: text"),
        ("a.parquet", parquet_bytes_of(pd.DataFrame({"x": ["hi"]})), "labelled_text", "the file has: x"),
        ("i.jsonl", '{"instruction": "do"}\n', "instruction", "missing column(s) output or response"),
        (
            "i.json",
            '[{"output": "done"}]',
            "instruction",
            "missing column(s) instruction; the file has: output",
        ),
        ("d.csv", "text,text,label\na,b,c\n", "labelled_text", "column(s) text appear more than once"),
    ],
)
def test_missing_or_repeated_columns_list_what_the_file_has(tmp_path, name, content, kind, fragment):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        ingest(DataConfig(source=str(path)), kind=kind)
    assert str(path) in str(err.value) and fragment in str(err.value)


# --- labels ----------------------------------------------------------------------------------------------


@FEW
@given(
    labels=st.lists(
        st.text(alphabet=string.ascii_letters + string.digits + " -_'é", min_size=1, max_size=8).map(
            str.strip
        ),
        min_size=1,
        max_size=8,
    )
    .map(lambda xs: [x for x in xs if x])
    .filter(bool)
)
def test_unknown_labels_are_quarantined_with_the_label(labels):
    allowed = ["pos", "neg"]
    body = [["text", "label"]] + [[f"row number {i} {'x' * i}", lab] for i, lab in enumerate(labels)]
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "l.csv", csv_text(body))
        rows = ingest(DataConfig(source=str(path), labels=allowed))
        result = clean(
            rows, CleaningConfig(max_quarantine_fraction=1.0, near_duplicates=False), labels=allowed
        )
        check_accounting(rows, result)
        unknown = result.quarantined[result.quarantined["reason"] == "unknown_label"]
        expected = [(i + 2, f"label {lab!r}") for i, lab in enumerate(labels) if lab not in allowed]
        assert sorted(zip(unknown["row"], unknown["detail"], strict=True)) == expected


# --- a huge field ----------------------------------------------------------------------------------------


def test_a_10mb_field_is_read_and_quarantined_as_too_long(tmp_path):
    huge = ('word, and "quoted" text\n' * 500_000)[:10_000_000]
    path = write(tmp_path, "big.csv", csv_text([["text", "label"], ["short", "a"], [huge, "a"], ["x", "b"]]))
    rows = ingest(DataConfig(source=str(path)))
    assert rows["text"].str.len().tolist() == [5, len(huge.strip()), 1]
    result = clean(rows, LENIENT)
    check_accounting(rows, result)
    too_long = result.quarantined[result.quarantined["reason"] == "too_long"]
    assert too_long["row"].tolist() == [3]
    assert too_long["detail"].iloc[0].endswith("characters")


# --- encodings -------------------------------------------------------------------------------------------


def _assert_no_mojibake(texts: list[str]) -> None:
    for text in texts:
        assert "\ufffd" not in text and "Ã" not in text and "Â" not in text, text


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (
            "alternating.csv",
            b"text,label\n"
            + "café au lait,a\n".encode()
            + "café au lait,b\n".encode("latin-1")
            + "naïve – €5,a\n".encode()
            + "naïve – €5,b\n".encode("cp1252"),
        ),
        ("latin1.csv", "text,label\ncafé au lait,a\nnaïve,b\n".encode("latin-1")),
        ("utf8-bom.csv", b"\xef\xbb\xbf" + "text,label\ncafé au lait,a\n".encode()),
        ("bom-then-latin1.csv", b"\xef\xbb\xbf" + "text,label\ncafé au lait,a\n".encode("latin-1")),
        ("utf16.csv", "text,label\r\ncafé au lait,a\r\n".encode("utf-16")),
        ("utf16be.csv", b"\xfe\xff" + "text,label\ncafé au lait,a\n".encode("utf-16-be")),
        ("utf32.csv", "text,label\ncafé au lait,a\n".encode("utf-32")),
        ("utf8.tsv", "text\tlabel\ncafé au lait\ta\n".encode()),
        ("latin1.tsv", "text\tlabel\ncafé au lait\ta\n".encode("latin-1")),
        ("latin1.jsonl", '{"text": "café au lait", "label": "a"}\n'.encode("latin-1")),
    ],
)
def test_encodings_decode_without_mojibake(tmp_path, name, content):
    rows = ingest_or_error(write(tmp_path, name, content))
    assert isinstance(rows, pd.DataFrame), rows
    assert (rows["error"] == "").all()
    _assert_no_mojibake(rows["text"].tolist())
    assert rows["text"].iloc[0] in ("café au lait", "naïve – €5")
    if name == "alternating.csv":
        assert rows["text"].tolist() == ["café au lait", "café au lait", "naïve – €5", "naïve – €5"]


# Non-ASCII letters whose cp1252 bytes are all >= 0xC0: never UTF-8 continuation bytes, so a cp1252 line
# with one of them can never be mistaken for valid UTF-8 (which would be a genuine ambiguity).
_LATIN = "àáâäæçèéêëìíîïñòóôöøùúûüýÿßÀÉÖÜ"


@FEW
@given(
    lines=st.lists(
        st.tuples(
            st.text(alphabet=string.ascii_letters + " " + _LATIN, min_size=1, max_size=20).filter(str.strip),
            st.sampled_from(["utf-8", "cp1252", "latin-1"]),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_lines_in_different_encodings_each_decode_correctly(lines):
    raw = b"text,label\n" + b"".join(f"{text},a\n".encode(enc) for text, enc in lines)
    with tempfile.TemporaryDirectory() as folder:
        rows = ingest(DataConfig(source=str(write(Path(folder), "mixed.csv", raw))))
    assert rows["text"].tolist() == [text.strip() for text, _ in lines]


# --- JSON shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("n.json", "5", "expected a JSON array of objects, got 5"),
        ("s.json", '"just text"', 'expected a JSON array of objects, got "just text"'),
        ("null.json", "null", "expected a JSON array of objects, got null"),
        ("obj.json", '{"a": 1, "b": 2}', "missing column(s) text, label; the file has: a, b"),
        ("scalars.json", "[1, 2, 3]", "no record is a JSON object (record 1: record is not an object)"),
        ("broken.json", '[{"text": "a", "label": "b"},', "invalid JSON"),
        ("lines.json", '{"text": "a", "label": "b"}\n{"text": "c", "label": "d"}\n', "invalid JSON"),
        ("allbroken.jsonl", "{broken\nnot json\n", "no record is a JSON object (line 1: "),
        ("scalars.jsonl", "1\n\n[2]\n", "no record is a JSON object (line 1: record is not an object)"),
    ],
)
def test_json_that_is_not_records_is_a_data_error(tmp_path, name, content, fragment):
    data_error(write(tmp_path, name, content), fragment)


def test_json_array_with_scalars_quarantines_them_by_position(tmp_path):
    content = json.dumps([{"text": "a", "label": "x"}, 5, "s", None, {"text": "b", "label": "y"}])
    rows = ingest_or_error(write(tmp_path, "mixed.json", content))
    assert sorted(zip(rows["row"], rows["error"], strict=True)) == [
        (1, ""),
        (2, "record is not an object"),
        (3, "record is not an object"),
        (4, "record is not an object"),
        (5, ""),
    ]


@pytest.mark.parametrize("kind", ["labelled_text", "instruction"])
def test_jsonl_broken_and_non_object_lines_are_quarantined_at_their_line(tmp_path, kind):
    good = {"text": "a", "label": "x", "instruction": "do", "output": "done"}
    content = "\n".join(
        [
            json.dumps(good),
            "{broken",
            "",
            "[1, 2]",
            '"a string"',
            json.dumps(
                {**good, "text": "line\u2028separator\u0085inside", "instruction": "again\u2028"},
                ensure_ascii=False,
            ),
            "[" * 50_000,
            json.dumps({**good, "text": "b", "instruction": "last"}),
        ]
    )
    rows = ingest_or_error(write(tmp_path, "d.jsonl", content), kind=kind)
    assert isinstance(rows, pd.DataFrame), rows
    located = {row: error for row, error in zip(rows["row"], rows["error"], strict=True)}
    assert set(located) == {1, 2, 4, 5, 6, 7, 8}, "good records too are located by their line"
    assert located[1] == located[6] == located[8] == ""
    assert located[2].startswith("Expecting property name")
    assert located[4] == located[5] == "record is not an object"
    assert located[7] == "JSON nested too deeply"
    if kind == "labelled_text":  # raw U+2028 / U+0085 are valid inside JSON strings: not line breaks
        assert rows.loc[rows["row"] == 6, "text"].item() == "line\u2028separator\u0085inside"


# --- Parquet ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parquet_bytes() -> bytes:
    return parquet_bytes_of(pd.DataFrame({"text": [f"row {i}" for i in range(200)], "label": "a"}))


@pytest.mark.parametrize("cut", ["half", "minus-one", "footer-only", "magic-only", "garbled-middle"])
def test_corrupt_parquet_names_the_file(tmp_path, parquet_bytes, cut):
    data = {
        "half": parquet_bytes[: len(parquet_bytes) // 2],
        "minus-one": parquet_bytes[:-1],
        "footer-only": b"PAR1" + parquet_bytes[-64:],
        "magic-only": b"PAR1PAR1",
        "garbled-middle": parquet_bytes[:8] + b"\xff" * (len(parquet_bytes) - 16) + parquet_bytes[-8:],
    }[cut]
    assert data[:4] == b"PAR1"
    path = write(tmp_path, "corrupt.parquet", data)
    outcome = ingest_or_error(path)
    assert isinstance(outcome, DataError) and "not a readable Parquet file" in str(outcome)
    data_error(write(tmp_path, "corrupt.data", data), "not a readable Parquet file", format="parquet")


# --- sources that match nothing --------------------------------------------------------------------------


def test_folder_without_data_files_and_glob_matching_nothing(tmp_path):
    (tmp_path / "folder").mkdir()
    write(tmp_path / "folder", "notes.txt", "not data")
    (tmp_path / "folder" / "sub.csv").mkdir()  # a folder named like a data file is not one
    for source in [
        tmp_path / "folder",
        tmp_path / "folder" / "*.csv",
        tmp_path / "nothing-*.jsonl",
        tmp_path / "missing.csv",
        tmp_path / "**" / "*.parquet",
    ]:
        with pytest.raises(DataError, match="data source not found") as err:
            ingest(DataConfig(source=str(source)))
        assert str(source) in str(err.value)


_CONTROLS = "".join(map(chr, [*range(0x09), *range(0x0E, 0x1C), 0x7F]))

# --- round trip of arbitrary text ------------------------------------------------------------------------

# Control characters other than line breaks are left out: a file dense with them is binary (a DataError),
# and rows holding them are quarantined (test_control_characters_are_quarantined_wherever_they_are).
_any_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=_CONTROLS), max_size=30
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cells=st.lists(st.tuples(_any_text, _any_text), min_size=1, max_size=12),
    # csv.writer quotes a field holding \r or \n only when that character is in its line terminator, so
    # with a bare "\n" or "\r" terminator every field is quoted: otherwise the file really has a line break
    dialect=st.sampled_from([("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL), ("\r", csv.QUOTE_ALL)]),
)
def test_arbitrary_text_cells_round_trip(cells, dialect):
    """Quotes, delimiters, newlines and \\r inside cells come back exactly (minus surrounding spaces)."""
    records = [csv_text([list(cell)], *dialect) for cell in cells]
    content = csv_text([["text", "label"]], *dialect) + "".join(records)
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "round.csv", content)
        # arbitrary labels may be numbers and names at once: listing them says they are all classes
        labels = sorted({label.strip() for _, label in cells} - {""})
        rows = ingest(DataConfig(source=str(path), labels=labels or None))
        assert (rows["error"] == "").all()
        assert rows["text"].tolist() == [text.strip() for text, _ in cells]
        assert rows["label"].tolist() == [label.strip() for _, label in cells]
        # each record is located at the physical line it starts on (\r, \n and \r\n all end a line)
        starts, line = [], 2
        for record in records:
            starts.append(line)
            line += len(io.StringIO(record, newline="").readlines())
        assert rows["row"].tolist() == starts
        check_accounting(rows, clean(rows, LENIENT))
