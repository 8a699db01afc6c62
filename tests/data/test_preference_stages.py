"""Preference rows through the data stages: ingest (every format, a file no format matches), clean (cleaned
messages, the reasons a pair is quarantined, duplicates and contradictions), split (by prompt, leakage) and
the recipe checks before anything is read."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunery.config import CleaningConfig, DataConfig, Recipe, SplitConfig
from tunery.data import stages
from tunery.data.clean import clean
from tunery.data.ingest import DataError, ingest
from tunery.data.split import LeakageError, check_leakage, split
from tunery.layout import RunLayout
from tunery.models import resolve_model


@pytest.fixture(scope="module")
def smollm2() -> str:
    return resolve_model("smollm2")


def write_jsonl(path, records) -> str:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def cleaned(source: str, tokenizer: str | None, max_length: int = 512, **cleaning):
    rows = ingest(DataConfig(source=source), "preference")
    cfg = CleaningConfig(max_quarantine_fraction=1.0, **cleaning)
    return rows, clean(rows, cfg, None, None, tokenizer, {"max_length": max_length})


def recipe(tmp_path, source: str, **preference) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "pref",
            "task": "preference",
            "data": {"source": source},
            "model": {"base": "smollm2", "max_length": 256},
            "method": {"name": "lora"},
            "preference": preference,
            "mlflow": {"registered_model": "pref"},
            "workdir": str(tmp_path / "work"),
        }
    )


def test_every_row_is_kept_or_quarantined_with_its_reason(tmp_path, smollm2):
    records = [
        pair("Name a colour.", "Blue.", "I like turtles."),  # kept
        pair("Name a fruit.", "Apple.", "Apple."),  # chosen_equals_rejected
        pair("Name a metal.", "Iron.", "   "),  # empty_side
        pair("", "Yes.", "No."),  # prompt_missing
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello"}],
        },
        pair("Name a planet.", "Mars. " * 400, "Venus."),  # too_long for 256 tokens
        pair("Name a tree.", "<b>Oak</b>.", "Oak."),  # equal only once the HTML is cleaned away
    ]
    source = write_jsonl(tmp_path / "pairs.jsonl", records)
    with open(source, "a") as handle:
        handle.write("{not json\n")  # a malformed line is a row too
    rows, result = cleaned(source, smollm2, max_length=256, strip_html=True)
    stats = result.stats
    assert stats["rows_in"] == len(records) + 1 == len(rows)
    assert stats["rows_in"] == stats["kept"] + stats["quarantined"] + stats["deduplicated"]
    reasons = result.quarantined.set_index("row")["reason"].to_dict()
    assert stats["kept"] == 1 and json.loads(result.kept["pair"][0])["chosen"][0]["content"] == "Blue."
    assert reasons[2] == reasons[7] == "chosen_equals_rejected"
    assert reasons[3] == "empty_side" and reasons[4] == "prompt_missing"
    assert reasons[5] == "empty_side" and reasons[6] == "too_long" and reasons[8] == "malformed_row"
    details = result.quarantined.set_index("row")["detail"]
    assert "rejected" in details[5]
    assert "tokens with the chat template > model.max_length 256" in details[6]


def test_duplicates_are_dropped_and_contradictions_quarantined(tmp_path, smollm2):
    records = [
        pair("Which is larger, 2 or 3?", "3 is larger.", "2 is larger."),
        pair("Which is larger, 2 or 3?", "3 is larger.", "2 is larger."),  # the same judgement again
        pair("Which is larger, 2 or 3?", "2 is larger.", "3 is larger."),  # the opposite judgement
        pair("Which is larger, 2 or 3?", "3 is larger.", "Neither."),  # same prompt, other answers: kept
        {"prompt": "Say hi.", "completion": "Hi!", "label": True},
    ]
    source = write_jsonl(tmp_path / "pairs.jsonl", records[:4])
    _, result = cleaned(source, smollm2)
    assert result.stats["kept"] == 2 and result.stats["exact_duplicates"] == 1
    conflicting = result.quarantined[result.quarantined["reason"] == "conflicting_duplicate"]
    assert conflicting["row"].tolist() == [3]
    assert "judges the same answers" in conflicting["detail"].iloc[0]

    kto = [
        {"prompt": "Say hi.", "completion": "Hi!", "label": True},
        {"prompt": "Say hi.", "completion": "Hi!", "label": False},
        {"prompt": "Say hi.", "completion": "Hello!", "label": False},
    ]
    _, result = cleaned(write_jsonl(tmp_path / "kto.jsonl", kto), smollm2)
    assert result.stats["kept"] == 2
    assert result.quarantined.set_index("row")["reason"].to_dict() == {2: "conflicting_duplicate"}


def test_each_real_llama_factory_file_is_read_in_its_format(shared_data):
    factory = shared_data / "llama_factory"
    for name, rows, paired in (
        ("dpo_en_demo.json", 300, True),
        ("v1_dpo_demo.jsonl", 10, True),
        ("kto_en_demo.json", 300, False),
    ):
        read = ingest(DataConfig(source=str(factory / name)), "preference")
        assert len(read) == rows and (read["error"] == "").all(), read.loc[read["error"] != "", "error"]
        first = json.loads(read["pair"].iloc[0])
        assert ("chosen" in first) is paired and first["prompt"][-1]["role"] == "user"


def test_a_file_no_preference_format_matches_is_an_error_naming_it(tmp_path):
    source = write_jsonl(tmp_path / "plain.jsonl", [{"text": "hello", "label": "x"}])
    with pytest.raises(DataError, match=r"plain.jsonl: no preference format matches the columns"):
        ingest(DataConfig(source=source), "preference")


def test_pairs_of_one_prompt_share_a_split_and_a_prompt_in_two_splits_is_leakage(tmp_path, smollm2):
    records = [
        pair(f"Question {q}: what is {q} + {q}?", f"{2 * q}, answer {a}.", f"{2 * q + 1}, answer {a}.")
        for q in range(60)
        for a in range(3)
    ]
    _, result = cleaned(write_jsonl(tmp_path / "pairs.jsonl", records), smollm2)
    parts, _ = split(result.kept, SplitConfig(), None)
    assert sum(len(p) for p in parts.values()) == 180 and all(len(p) for p in parts.values())
    where = {p: name for name, frame in parts.items() for p in frame["prompt"]}
    for name, frame in parts.items():
        assert all(where[p] == name for p in frame["prompt"])
    other_answers = parts["train"].head(1).assign(text="another pair of answers to the same prompt")
    moved = {**parts, "test": pd.concat([parts["test"], other_answers], ignore_index=True)}
    with pytest.raises(LeakageError, match="the same first user turn"):
        check_leakage(moved)


def test_paired_objectives_refuse_unpaired_data_and_kto_takes_both(tmp_path, smollm2):
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Say hi.", "completion": "Hi!", "label": True}])
    layout = RunLayout.create(tmp_path / "work", "pref")
    with pytest.raises(DataError, match=r"objective dpo learns from pairs.*1 unpaired \(KTO\) rows"):
        stages.ingest_stage(recipe(tmp_path, kto, objective="dpo"), layout)
    stages.ingest_stage(recipe(tmp_path, kto, objective="kto"), layout)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair("Say hi.", "Hi!", "Go away.")])
    stages.ingest_stage(recipe(tmp_path, pairs, objective="kto"), layout)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"method": {"name": "prompt_tuning"}}, "cannot be preference-tuned"),
        (
            {"method": {"name": "full"}, "distributed": {"deepspeed": "zero3", "num_processes": 2}},
            "explicit reference model",
        ),
        (
            {"preference": {"objective": "kto"}, "training": {"batch_size": 1}},
            "needs `training.batch_size` >= 2",
        ),
        ({"evaluation": {"gate": {"primary_metric": "rouge_l"}}}, "does not apply to task preference"),
        ({"sft": {"packing": True}}, "only applies to task sft"),
    ],
)
def test_recipes_a_preference_trainer_cannot_run_fail_before_any_data_is_read(tmp_path, update, message):
    raw = recipe(tmp_path, "unused.jsonl").model_dump(mode="json")
    for section, values in update.items():
        raw[section] = {**raw[section], **values}
    with pytest.raises(ValueError, match=message):
        Recipe.model_validate(raw)


def test_full_fine_tuning_with_orpo_needs_no_reference_and_is_allowed_under_zero3(tmp_path):
    raw = recipe(tmp_path, "unused.jsonl", objective="orpo").model_dump(mode="json")
    raw["method"]["name"] = "full"
    raw["distributed"] = {**raw["distributed"], "deepspeed": "zero3", "num_processes": 2}
    assert Recipe.model_validate(raw).evaluation.gate.metric("preference") == "preference_accuracy"
