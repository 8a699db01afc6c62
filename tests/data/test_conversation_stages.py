"""Conversations through the data stages: ingest, clean (per-turn cleaning, template checks, fitting to
max_length), split (by conversation, prompt-side leakage) and the checks before a run."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from tunery.config import CleaningConfig, DataConfig, Recipe, SplitConfig
from tunery.data import preflight, templates
from tunery.data.clean import clean
from tunery.data.ingest import DataError, ingest
from tunery.data.split import LeakageError, check_leakage, split
from tunery.models import ModelError, resolve_model


def chat(user: str, answer: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        **extra,
    }


def write_jsonl(path, records) -> str:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


def settings(max_length=512, too_long="drop_oldest", consecutive_user=None) -> dict:
    return {"max_length": max_length, "too_long": too_long, "consecutive_user": consecutive_user}


def cleaned(source: str, tokenizer: str, **kw):
    rows = ingest(DataConfig(source=source, conversation={}), "conversation")
    return rows, clean(
        rows, CleaningConfig(max_quarantine_fraction=1.0), None, None, tokenizer, settings(**kw)
    )


@pytest.fixture(scope="module")
def smollm2() -> str:
    return resolve_model("smollm2")


def test_every_turn_is_cleaned_but_tool_calls_are_not(tmp_path, smollm2):
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "send_mail", "arguments": json.dumps({"to": "ops@example.com"})},
    }
    record = {
        "messages": [
            {"role": "user", "content": "<p>Mail <b>ops@example.com</b> please</p>"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"sent_to": "ops@example.com"}'},
            {"role": "assistant", "content": "Sent   to ops@example.com."},
        ]
    }
    rows, result = cleaned(write_jsonl(tmp_path / "a.jsonl", [record]), smollm2)
    kept = json.loads(result.kept["conversation"][0])["messages"]
    assert kept[0]["content"] == "Mail [EMAIL] please", "HTML and PII cleaned in a user turn"
    assert kept[3]["content"] == "Sent to [EMAIL].", "and in the assistant's"
    assert "[EMAIL]" in kept[2]["content"], "a tool result is content too"
    assert kept[1]["tool_calls"][0]["function"]["arguments"] == {"to": "ops@example.com"}, (
        "arguments untouched"
    )
    assert result.kept["prompt"][0] == "Mail [EMAIL] please"
    assert result.stats["rows_in"] == 1 == result.stats["kept"]


def test_bad_conversations_are_quarantined_with_their_reason_and_counted(tmp_path, smollm2):
    good = [chat(f"Question {i}?", f"Answer {i}.") for i in range(6)]
    bad = [
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        chat("Hello?", "<p></p>"),  # empty once its HTML is cleaned away
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": "not a list"},
    ]
    path = tmp_path / "a.jsonl"
    source = write_jsonl(path, [*good, good[0], *bad])
    path.write_text(path.read_text() + "{broken json\n")
    rows, result = cleaned(source, smollm2)
    stats = result.stats
    assert stats["rows_in"] == 12 == stats["kept"] + stats["quarantined"] + stats["deduplicated"]
    assert stats["kept"] == 6 and stats["deduplicated"] == 1
    assert stats["quarantine_reasons"] == {
        "empty_assistant": 1,
        "malformed_row": 1,
        "not_a_conversation": 1,
        "not_ending_on_assistant": 1,
        "unknown_role": 1,
    }
    unknown = result.quarantined[result.quarantined["reason"] == "unknown_role"].iloc[0]
    assert unknown["row"] == 8 and "robot" in unknown["detail"] and "robot" in unknown["raw_text"]


def test_too_long_conversations_lose_their_oldest_exchanges_or_are_quarantined(tmp_path, smollm2):
    words = "lorem ipsum " * 15
    turns = []
    for i in range(5):
        turns += [
            {"role": "user", "content": f"q{i} {words}"},
            {"role": "assistant", "content": f"a{i} {words}"},
        ]
    record = {"messages": [{"role": "system", "content": "Be kind."}, *turns]}
    source = write_jsonl(tmp_path / "a.jsonl", [record])
    _, shortened = cleaned(source, smollm2, max_length=400)
    kept = json.loads(shortened.kept["conversation"][0])["messages"]
    assert kept[0] == {"role": "system", "content": "Be kind."}
    assert kept[-1]["content"].startswith("a4") and len(kept) < 11
    assert shortened.stats["conversations_truncated"] == {"rows": 1, "turns": 11 - len(kept)}
    _, refused = cleaned(source, smollm2, max_length=400, too_long="quarantine")
    assert refused.stats["quarantine_reasons"] == {"too_long": 1}
    assert "model.max_length 400" in refused.quarantined["detail"].iloc[0]


def test_consecutive_user_turns_follow_what_the_template_allows(tmp_path, smollm2_tokenizer):
    record = {
        "messages": [
            {"role": "user", "content": "One thing."},
            {"role": "user", "content": "And another."},
            {"role": "assistant", "content": "Both done."},
        ]
    }
    source = write_jsonl(tmp_path / "a.jsonl", [record])
    assert templates.allows_consecutive_user(smollm2_tokenizer)
    strict = copy.deepcopy(smollm2_tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    )
    assert not templates.allows_consecutive_user(strict)
    folder = tmp_path / "strict"
    strict.save_pretrained(folder)
    _, allowed = cleaned(source, resolve_model("smollm2"))
    _, refused = cleaned(source, str(folder))
    assert allowed.stats["kept"] == 1
    assert refused.stats["quarantine_reasons"] == {"consecutive_user": 1}
    _, forced = cleaned(source, resolve_model("smollm2"), consecutive_user=False)
    assert forced.stats["quarantine_reasons"] == {"consecutive_user": 1}


def test_conversations_opening_with_the_same_request_share_a_split():
    rows = []
    for i in range(60):
        for variant in ("A", "B"):
            rows.append(
                {
                    "text": f"user: request {i}\nassistant: reply {variant} {i} " + "x" * (i % 7),
                    "prompt": f"request {i}",
                    "label": "",
                }
            )
    parts, _ = split(pd.DataFrame(rows), SplitConfig(), near_dup_threshold=None)
    where = {p: name for name, frame in parts.items() for p in frame["prompt"]}
    for name, frame in parts.items():
        assert all(where[p] == name for p in frame["prompt"])
    assert all(len(frame) for frame in parts.values())
    leaking = {
        "train": pd.DataFrame({"text": ["user: hi\nassistant: a"], "prompt": ["hi"]}),
        "test": pd.DataFrame({"text": ["user: hi\nassistant: b"], "prompt": ["hi"]}),
    }
    with pytest.raises(LeakageError, match="first user turn"):
        check_leakage(leaking)


def test_validate_names_a_file_of_conversations_the_recipe_cannot_read(tmp_path, tiny_llama):
    source = write_jsonl(tmp_path / "a.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}] * 5)
    recipe = Recipe.model_validate(
        {
            "name": "c",
            "task": "sft",
            "data": {"source": source, "conversation": {}},
            "model": {"base": str(tiny_llama), "max_length": 256},
            "mlflow": {"registered_model": "c"},
        }
    )
    with pytest.raises(DataError, match=r"5 of the first 5 records are conversations .* unknown_role \(5\)"):
        preflight.check_sources(recipe)
    fixed = recipe.model_copy(
        update={
            "data": recipe.data.model_copy(
                update={
                    "conversation": recipe.data.conversation.model_copy(
                        update={"roles": {"bot": "assistant"}}
                    )
                }
            )
        }
    )
    with pytest.raises(DataError, match="not_a_conversation"):  # no user turn, still refused
        preflight.check_sources(fixed)
    preflight.check_model(recipe)  # SmolLM2's template ends turns with <|im_end|>


def test_a_template_without_an_end_of_turn_token_fails_before_the_run(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    folder = tmp_path / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    )
    with pytest.raises(ValueError, match="no end-of-turn token"):
        templates.check_template(tokenizer)
    import shutil

    shutil.copytree(tiny_llama, folder)
    tokenizer.save_pretrained(folder)
    recipe = Recipe.model_validate(
        {
            "name": "c",
            "task": "sft",
            "data": {"source": str(tmp_path), "conversation": {}},
            "model": {"base": str(folder), "max_length": 256},
            "mlflow": {"registered_model": "c"},
        }
    )
    with pytest.raises(ModelError, match="would not stop"):
        preflight.check_model(recipe)
