"""No silent coercion of data: non-text cells, NUL bytes, legacy encodings, the failed run's quarantine,
line structure of answers and ignored alpaca history (each on real files written here)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunery.config import CleaningConfig, DataConfig, Recipe
from tunery.data.clean import QUARANTINE_REASONS, QuarantineLimitExceeded, clean, clean_text
from tunery.data.ingest import DataError, ingest
from tunery.data.normalise import normalise_many
from tunery.data.stages import clean_stage, ingest_stage, split_stage
from tunery.layout import RunLayout

LENIENT = CleaningConfig(max_quarantine_fraction=1.0, near_duplicates=False)


def _accounted(rows, result):
    s = result.stats
    assert s["rows_in"] == len(rows) == s["kept"] + s["quarantined"] + s["deduplicated"]


def _reasons(result) -> dict[int, str]:
    return dict(zip(result.quarantined["row"], result.quarantined["reason"], strict=True))


# --- 1. a text column must hold text --------------------------------------------------------------------


def test_json_objects_lists_and_numbers_in_a_text_column_are_quarantined_not_text(tmp_path):
    path = tmp_path / "d.jsonl"
    records = [
        {"text": "plain words", "label": "a"},
        {"text": {"html": "<p>hi</p>"}, "label": "a"},
        {"text": ["one", "two"], "label": "b"},
        {"text": 42, "label": "b"},
        {"text": "more words", "label": "b"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = ingest(DataConfig(source=str(path)))
    result = clean(rows, LENIENT)
    _accounted(rows, result)
    assert result.kept["text"].tolist() == ["plain words", "more words"]
    assert _reasons(result) == {2: "not_text", 3: "not_text", 4: "not_text"}
    q = result.quarantined.set_index("row")
    assert q.loc[2, "raw_text"] == '{"html": "<p>hi</p>"}' and "JSON object" in q.loc[2, "detail"]
    assert "{'html'" not in " ".join(result.kept["text"])


def test_parquet_bytes_are_decoded_and_lists_structs_and_binary_quarantined(tmp_path):
    path = tmp_path / "d.parquet"
    frame = pd.DataFrame(
        {
            "text": [
                "Grüße aus Köln".encode(),
                "café crème".encode("cp1252"),
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
                "fine",
            ],
            "label": ["a", "a", "b", "b"],
        }
    )
    frame.to_parquet(path)
    lists = tmp_path / "lists.parquet"
    pd.DataFrame({"text": [["x", "y"], ["z"]], "label": ["a", "b"]}).to_parquet(lists)
    structs = tmp_path / "structs.parquet"
    pd.DataFrame({"text": [{"html": "x"}, {"html": "y"}], "label": ["a", "b"]}).to_parquet(structs)
    rows = ingest(DataConfig(source=str(tmp_path / "*.parquet")))
    result = clean(rows, LENIENT)
    _accounted(rows, result)
    assert result.kept["text"].tolist() == ["Grüße aus Köln", "café crème", "fine"]
    assert (result.quarantined["reason"] == "not_text").sum() == 5
    assert not any(t.startswith(("b'", 'b"', "[", "{")) for t in result.kept["text"])


def test_labels_that_mix_numbers_and_names_are_an_error_naming_both(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("text,label\none,0\ntwo,1\nthree,positive\nfour,negative\n")
    with pytest.raises(DataError, match=r"mixes numbers \(0, 1\) and names \(negative, positive\)"):
        ingest(DataConfig(source=str(path)))
    listed = ingest(DataConfig(source=str(path), labels=["positive", "negative"]))
    assert len(listed) == 4  # with a label list, the numbers are unknown labels (quarantined by clean)


# --- 2. NUL bytes ----------------------------------------------------------------------------------------


def test_nul_is_quarantined_the_same_in_the_first_8kb_and_later(tmp_path):
    filler = "".join(f"ordinary row number {i},a\n" for i in range(600))  # > 8 KiB
    path = tmp_path / "nul.csv"
    path.write_bytes(b"text,label\nearly \x00 nul,a\n" + filler.encode() + b"late \x00 nul,b\n")
    rows = ingest(DataConfig(source=str(path)))
    result = clean(rows, LENIENT)
    _accounted(rows, result)
    bad = result.quarantined[result.quarantined["reason"] == "control_characters"]
    assert bad["row"].tolist() == [2, 603] and set(bad["detail"]) == {"U+0000"}
    assert not result.kept["text"].str.contains("\x00").any()


def test_a_really_binary_file_is_still_refused(tmp_path):
    for name, content in [("img.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), ("z.csv", bytes(400))]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match="binary file"):
            ingest(DataConfig(source=str(tmp_path / name)))


# --- 3. encodings ----------------------------------------------------------------------------------------

JAPANESE = ["吾輩は猫である。名前はまだ無い。", "どこで生れたかとんと見当がつかぬ。"]
CHINESE = ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]


RUSSIAN = ["Все счастливые семьи похожи друг на друга.", "Каждая несчастливая семья несчастлива по-своему."]


@pytest.mark.parametrize(
    ("codec", "texts"), [("shift_jis", JAPANESE), ("gb18030", CHINESE), ("cp1251", RUSSIAN)]
)
def test_cjk_legacy_encodings_are_detected(tmp_path, codec, texts):
    path = tmp_path / f"{codec}.csv"
    path.write_bytes(("text,label\n" + "".join(f"{t},a\n" for t in texts)).encode(codec))
    rows = ingest(DataConfig(source=str(path)))
    assert rows["text"].tolist() == texts and (rows["error"] == "").all()


def test_forced_encoding_and_undecodable_lines_are_quarantined(tmp_path):
    path = tmp_path / "sjis.csv"
    body = "text,label\n" + "".join(f"{t},a\n" for t in JAPANESE)
    path.write_bytes(body.encode("shift_jis") + b"broken \x82 line,a\n")
    rows = ingest(DataConfig(source=str(path), encoding="shift_jis"))
    result = clean(rows, LENIENT)
    _accounted(rows, result)
    assert result.kept["text"].tolist() == JAPANESE
    assert _reasons(result) == {4: "undecodable"}
    assert "\ufffd" in result.quarantined["raw_text"].iloc[0]
    with pytest.raises(ValueError, match="unknown encoding"):
        DataConfig(source="x.csv", encoding="no-such-codec")


def test_replacement_characters_already_in_utf8_text_are_text(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("text,label\nalready \ufffd replaced,a\n", encoding="utf-8")
    rows = ingest(DataConfig(source=str(path)))
    assert (rows["error"] == "").all() and rows["text"].tolist() == ["already \ufffd replaced"]


# --- 4. a failed quarantine limit still shows the bad rows ----------------------------------------------


def _recipe(source, workdir, task="classification", **sections) -> Recipe:
    data = {"source": str(source)}
    return Recipe.model_validate(
        {
            "name": "coercion",
            "task": task,
            "data": data,
            "mlflow": {"registered_model": "c"},
            "workdir": str(workdir),
            **sections,
        }
    )


def test_quarantine_limit_still_writes_quarantine_file_and_report(tmp_path):
    path = tmp_path / "d.jsonl"
    records = [{"text": "ok", "label": "a"}, {"text": "", "label": "a"}, {"text": {"x": 1}, "label": "a"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = _recipe(path, tmp_path, cleaning={"max_quarantine_fraction": 0.1})
    layout = RunLayout.create(tmp_path, "limit")
    ingest_stage(recipe, layout)
    with pytest.raises(QuarantineLimitExceeded):
        clean_stage(recipe, layout)
    quarantined = [json.loads(line) for line in layout.quarantine.read_text().splitlines()]
    assert sorted(q["reason"] for q in quarantined) == ["empty_text", "not_text"]
    report = json.loads(layout.data_report.read_text())
    assert report["clean"]["quarantined"] == 2 and "max_quarantine_fraction" in report["error"]
    assert not layout.cleaned.exists()


# --- 5. line structure of answers ------------------------------------------------------------------------


def test_collapse_whitespace_keeps_lines_and_indentation():
    cfg = CleaningConfig()
    gsm8k = "Janet sells 16 eggs.\nSo the revenue is   $360000 in total revenue.\n#### 360000"
    expected = "Janet sells 16 eggs.\nSo the revenue is $360000 in total revenue.\n#### 360000"
    assert clean_text(gsm8k, cfg) == expected
    code = "def f(x):\r\n    if x:\t\treturn  1\r\n\r\n\r\n\r\n    return 0  \n"
    assert clean_text(code, cfg) == "def f(x):\n    if x: return 1\n\n    return 0"
    assert clean_text("a \u00a0 b\u2028c", cfg) == "a b\nc"
    # near-duplicate keys still ignore all whitespace
    assert normalise_many(["a\nb  c"]) == normalise_many(["a b c"])


def test_sft_answers_keep_their_lines_through_clean(tmp_path):
    rows = pd.DataFrame(
        {
            "text": "x",
            "label": "",
            "instruction": ["How much?"],
            "input": [""],
            "output": ["Step one.\n#### 360000"],
            "source": "g.json",
            "row": [1],
            "error": "",
        }
    )
    kept = clean(rows, LENIENT).kept.iloc[0]
    assert kept["output"] == "Step one.\n#### 360000"


# --- 6. alpaca history -----------------------------------------------------------------------------------


def test_alpaca_history_is_counted_and_warned(tmp_path):
    records = [
        {
            "instruction": "And in French?",
            "input": "",
            "output": "Bonjour.",
            "history": [["Say hello", "Hello."]],
        },
        {"instruction": "Name a colour", "input": "", "output": "Blue.", "history": []},
        {
            "instruction": "Count to two",
            "input": "",
            "output": "One, two.",
            "history": [["Hi", "Hi!"], ["Ready?", "Yes."]],
        },
    ]
    records += [{"instruction": f"Question {i}: {i * 7}", "input": "", "output": f"A{i}"} for i in range(20)]
    path = tmp_path / "lima_like.json"
    path.write_text(json.dumps(records))
    recipe = _recipe(path, tmp_path, task="sft", model={"base": "smollm2"})
    layout = RunLayout.create(tmp_path, "history")
    ingest_stage(recipe, layout)
    clean_stage(recipe, layout)
    split_stage(recipe, layout)
    report = json.loads(layout.data_report.read_text())
    assert report["clean"]["history_ignored"] == {"rows": 2, "kept": 2, "turns": 3}
    assert any("2 of 23 rows have a `history`" in w for w in report["warnings"])
    assert "dropped_turns" not in pd.read_parquet(layout.cleaned).columns


def test_every_reason_is_documented():
    readme = (__import__("tests.conftest", fromlist=["REPO"]).REPO / "README.md").read_text()
    for reason in QUARANTINE_REASONS:
        assert f"`{reason}`" in readme, reason
