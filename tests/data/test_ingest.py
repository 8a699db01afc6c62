from __future__ import annotations

import json

import pytest

from tunery.config import DataConfig
from tunery.data.ingest import DataError, expand_source, ingest


def cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


def test_csv_with_quoted_commas_and_two_text_columns(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text('label,title,description\n1,"Hello, world",Body one\n2,,Only body\n')
    rows = ingest(cfg(path, text_columns=["title", "description"], text_separator=" - "))
    assert rows["text"].tolist() == ["Hello, world - Body one", "Only body"]
    assert rows["label"].tolist() == ["1", "2"]
    assert rows["row"].tolist() == [2, 3], "CSV rows are located by line number"
    assert set(rows["source"]) == {str(path)}


def test_tsv_without_extension_is_sniffed_and_quotes_are_text(tmp_path):
    path = tmp_path / "SMSCollection"
    path.write_text('Label\tSMS\nham\tHe said "hi" to me\nspam\tWIN now\n')
    rows = ingest(cfg(path, text_columns=["SMS"], label_column="Label"))
    assert rows["text"].tolist() == ['He said "hi" to me', "WIN now"]


def test_ragged_rows_are_kept_as_malformed_not_dropped(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\ngood row,a\ntoo,many,fields,here\nanother,b\n")
    rows = ingest(cfg(path))
    assert len(rows) == 3
    malformed = rows[rows["error"] != ""]
    assert len(malformed) == 1
    assert "too,many,fields,here" in malformed["text"].iloc[0]


def test_jsonl_with_a_broken_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{broken\n\n{"text": "b", "label": "y"}\n')
    rows = ingest(cfg(path))
    assert rows[rows["error"] == ""]["text"].tolist() == ["a", "b"]
    bad = rows[rows["error"] != ""]
    assert bad["row"].tolist() == [2] and bad["text"].tolist() == ["{broken"]


def test_json_array_and_parquet(tmp_path):
    import pandas as pd

    (tmp_path / "a.json").write_text(
        json.dumps([{"text": "one", "label": 1}, {"text": "two", "label": None}])
    )
    pd.DataFrame({"text": ["three"], "label": ["3"]}).to_parquet(tmp_path / "b.parquet")
    rows = ingest(cfg(tmp_path / "*"))
    assert rows["text"].tolist() == ["one", "two", "three"]
    assert rows["label"].tolist() == ["1", "", "3"]


def test_latin1_file_decodes_without_mojibake(tmp_path):
    path = tmp_path / "legacy.csv"
    path.write_bytes("text,label\nCafé crème à Zürich,a\n".encode("latin-1"))
    assert ingest(cfg(path))["text"].tolist() == ["Café crème à Zürich"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"", "file is empty"), (b"\x00\x01\x02binary\x00", "binary file"), (b"a,b\n1,2\n", "missing column")],
)
def test_unreadable_files_name_the_file_and_problem(tmp_path, content, fragment):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        ingest(cfg(path))
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_missing_column_message_lists_available_columns(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("body,queue\nhello,a\n")
    with pytest.raises(DataError, match="missing column\\(s\\) text, label; the file has: body, queue"):
        ingest(cfg(path))


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="data source not found"):
        expand_source(str(tmp_path / "nothing-*.csv"))


def test_fsspec_memory_and_file_uris(tmp_path):
    import fsspec

    with fsspec.open("memory://bucket/d.csv", "w") as fh:
        fh.write("text,label\nfrom memory,a\n")
    assert ingest(cfg("memory://bucket/d.csv"))["text"].tolist() == ["from memory"]
    (tmp_path / "f.csv").write_text("text,label\nfrom file,b\n")
    assert ingest(cfg(f"file://{tmp_path}/f.csv"))["text"].tolist() == ["from file"]


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("relpath", "text_columns", "label_column", "rows"),
    [
        ("sms_spam/SMSSpamCollection", ["SMS"], "Label", 5574),
        ("sst2/train.tsv", ["sentence"], "label", 67349),
        ("ag_news/test.csv", ["title", "description"], "label", 7600),
        ("spam_assassin/spam_assassin.jsonl", ["text"], "label", 6046),
    ],
)
def test_real_datasets_load_every_row(shared_data, relpath, text_columns, label_column, rows):
    frame = ingest(cfg(shared_data / relpath, text_columns=text_columns, label_column=label_column))
    assert len(frame) == rows
    assert (frame["error"] == "").all()
