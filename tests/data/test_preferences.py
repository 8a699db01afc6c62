"""Preference rows: every format read into one canonical pair, and every refusal a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunery.data import preferences as P


def _load(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "fmt", "rows"),
    [
        ("dpo_en_demo.json", "sharegpt", 300),
        ("v1_dpo_demo.jsonl", "messages", 10),
        ("kto_en_demo.json", "kto", 300),
    ],
)
def test_llama_factory_files_are_read_whole(shared_data, name, fmt, rows):
    records = _load(shared_data / "llama_factory" / name)
    assert P.detect_format(records[0]) == fmt
    table = P.table(records, records[0].keys())
    assert len(table["pair"]) == rows and table["error"] == [""] * rows
    row = json.loads(table["pair"][0])
    assert row["prompt"][-1]["role"] == "user"
    if fmt == "kto":
        assert isinstance(row["label"], bool) and row["completion"][0]["role"] == "assistant"
        # kto_en_demo holds both kinds of answer
        labels = {json.loads(p)["label"] for p in table["pair"]}
        assert labels == {True, False}
    else:
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["chosen"] != row["rejected"]
    if fmt == "messages":
        # typed content parts became text, the system turn stays in the prompt
        assert row["prompt"][0]["role"] == "system" and isinstance(row["prompt"][0]["content"], str)
        assert row["chosen"][0]["content"].startswith("Abdulah Hasanagic is the proud owner")
        assert all("loss_weight" not in m and "weight" not in m for m in row["prompt"] + row["chosen"])


def test_the_formats_agree_on_one_pair():
    """The same preference written in each paired format reads to the same canonical pair."""
    q, good, bad = "What is 2 + 2?", "4.", "5."
    system = {"role": "system", "content": "Be brief."}
    records = {
        "trl": {
            "prompt": [system, {"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        },
        "openai": {
            "input": {"messages": [system, {"role": "user", "content": q}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}],
        },
        "sharegpt": {
            "conversations": [{"from": "human", "value": q}],
            "system": "Be brief.",
            "chosen": {"from": "gpt", "value": good},
            "rejected": {"from": "gpt", "value": bad},
        },
        "messages": {
            "chosen_messages": [
                {"role": "system", "content": [{"type": "text", "value": "Be brief."}], "loss_weight": 0.0},
                {"role": "user", "content": [{"type": "text", "value": q}], "loss_weight": 0.0},
                {"role": "assistant", "content": [{"type": "text", "value": good}], "loss_weight": 1.0},
            ],
            "rejected_messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": bad},
            ],
        },
        # TRL's implicit prompt: two whole conversations
        "implicit": {
            "chosen": [system, {"role": "user", "content": q}, {"role": "assistant", "content": good}],
            "rejected": [system, {"role": "user", "content": q}, {"role": "assistant", "content": bad}],
        },
    }
    pairs = {name: P.read(r, P.detect_format(r)) for name, r in records.items()}
    first = pairs["trl"]
    assert first == {
        "prompt": [system, {"role": "user", "content": q}],
        "chosen": [{"role": "assistant", "content": good}],
        "rejected": [{"role": "assistant", "content": bad}],
        "tools": [],
    }
    assert all(pair == first for pair in pairs.values()), pairs


def test_plain_text_pairs_become_one_user_and_one_assistant_turn():
    pair = P.read({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}, "trl")
    assert pair["prompt"] == [{"role": "user", "content": "Capital of France?"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert P.prompt_key(pair) == "user: Capital of France?"
    assert P.key(pair) != P.key({**pair, "rejected": [{"role": "assistant", "content": "Nice."}]})


def test_tool_calls_in_an_answer_are_kept_and_checked():
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
    record = {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "", "tool_calls": [call]}],
        "rejected": [{"role": "assistant", "content": "5"}],
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    }
    pair = P.read(record, "trl")
    assert pair["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 2}
    assert pair["tools"][0]["function"]["name"] == "add"
    assert P.answer_text(pair["chosen"]) == 'add({"a": 2, "b": 2})'
    broken = {
        **record,
        "chosen": [
            {"role": "assistant", "tool_calls": [{**call, "function": {"name": "add", "arguments": "{oops"}}]}
        ],
    }
    with pytest.raises(P.PreferenceError) as err:
        P.read(broken, "trl")
    assert err.value.reason == "tool_arguments_not_json"


def test_kto_rows_from_messages_or_prompt_and_completion():
    messages = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "label": False,
    }
    text = {"prompt": "hi", "completion": "hello", "label": False}
    assert (
        P.read(messages, "kto")
        == P.read(text, "kto")
        == {
            "prompt": [{"role": "user", "content": "hi"}],
            "completion": [{"role": "assistant", "content": "hello"}],
            "label": False,
            "tools": [],
        }
    )


HOSTILE = [
    # (record, format, reason)
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "trl", "chosen_equals_rejected"),
    ({"prompt": "q", "chosen": "a", "rejected": "   "}, "trl", "empty_side"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "trl", "empty_side"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "trl", "prompt_missing"),
    ({"chosen": "a", "rejected": "b"}, "trl", "prompt_missing"),  # text answers need a prompt
    (
        {
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "trl",
        "prompt_missing",
    ),
    (
        {
            "chosen_messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
            "rejected_messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}],
        },
        "messages",
        "prompt_mismatch",
    ),
    (
        {
            "chosen_messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
            "rejected_messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
        },
        "messages",
        "not_a_conversation",
    ),
    (
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "gpt", "value": ""},
            "rejected": {"from": "gpt", "value": "b"},
        },
        "sharegpt",
        "empty_side",
    ),
    (
        {
            "conversations": [{"from": "alien", "value": "q"}],
            "chosen": {"from": "gpt", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"},
        },
        "sharegpt",
        "unknown_role",
    ),
    (
        {"input": {"messages": []}, "preferred_output": "a", "non_preferred_output": "b"},
        "openai",
        "prompt_missing",
    ),
    ({"input": "q", "preferred_output": [], "non_preferred_output": "b"}, "openai", "empty_side"),
    (
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "label": "yes",
        },
        "kto",
        "bad_label",
    ),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": 1},
        "kto",
        "bad_label",
    ),
    ({"prompt": "q", "completion": "", "label": True}, "kto", "empty_side"),
    # a given prompt that does not ask for the answer, or an answer that holds a user turn: refused, the
    # boundary is never moved
    (
        {
            "input": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}],
        },
        "openai",
        "not_a_conversation",
    ),
    (
        {
            "prompt": "q",
            "completion": [
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "b"},
            ],
            "label": True,
        },
        "kto",
        "not_a_conversation",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "trl",
        "not_a_conversation",
    ),
    # an empty turn inside the prompt is the conversation's fault, not an empty answer
    (
        {
            "prompt": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "q2"},
            ],
            "chosen": "a",
            "rejected": "b",
        },
        "trl",
        "empty_assistant",
    ),
    (
        {
            "prompt": [
                {"role": "user", "content": "q"},
                {"role": "tool", "tool_call_id": ["z"], "content": "1"},
            ],
            "chosen": "a",
            "rejected": "b",
        },
        "trl",
        "not_a_conversation",
    ),
    ({"input": "q", "preferred_output": "a", "non_preferred_output": "b"}, "openai", "not_a_conversation"),
    ({"messages": [{"role": "user", "content": "q"}], "label": True}, "kto", "not_ending_on_assistant"),
]


@pytest.mark.parametrize(("record", "fmt", "reason"), HOSTILE)
def test_a_row_that_cannot_be_learnt_from_is_refused_with_its_reason(record, fmt, reason):
    with pytest.raises(P.PreferenceError) as err:
        P.read(record, fmt)
    assert err.value.reason == reason, err.value
    table = P.table([record], record.keys(), fmt)
    assert table["error"][0].startswith(f"{reason}: ") and table["pair"] == [""]
    assert json.loads(table["text"][0]) == record, "the refused row is kept as it came, for the quarantine"


def test_the_same_tool_call_under_other_ids_is_the_same_answer():
    def call(call_id):
        function = {"name": "add", "arguments": {"a": 1}}
        return [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": call_id, "type": "function", "function": function}],
            }
        ]

    record = {"prompt": "1+?", "chosen": call("x"), "rejected": call("y")}
    with pytest.raises(P.PreferenceError) as err:
        P.read(record, "trl")
    assert err.value.reason == "chosen_equals_rejected"


def test_a_prompt_may_end_on_a_tool_result_and_weights_are_dropped():
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    prompt = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call], "weight": 0.5},
        {"role": "tool", "tool_call_id": "c1", "content": "20C"},
    ]
    pair = P.read({"prompt": prompt, "chosen": "It is 20C.", "rejected": "No idea."}, "trl")
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "tool"]
    assert "weight" not in pair["prompt"][1] and pair["chosen"] == [
        {"role": "assistant", "content": "It is 20C."}
    ]


def test_unknown_columns_name_the_formats():
    with pytest.raises(ValueError, match="chosen_messages/rejected_messages"):
        P.detect_format(["question", "answer"])


# JSON values shaped like messages often enough to get past the first checks: role names, message keys
_KEYS = ["role", "content", "from", "value", "type", "text", "tool_calls", "tool_call_id", "function", "name"]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(["user", "assistant", "tool", "system", "human", "gpt", "function"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=600, deadline=None)
@given(
    fmt=st.sampled_from(P.FORMATS),
    record=st.dictionaries(
        st.sampled_from(
            [
                "prompt",
                "chosen",
                "rejected",
                "input",
                "preferred_output",
                "non_preferred_output",
                "conversations",
                "chosen_messages",
                "rejected_messages",
                "messages",
                "completion",
                "label",
                "tools",
                "system",
            ]
        ),
        _json,
        max_size=5,
    ),
)
def test_any_json_row_is_read_or_refused_never_a_traceback(fmt, record):
    table = P.table([record], record.keys(), fmt)
    assert len(table["error"]) == 1
    assert bool(table["error"][0]) != bool(table["pair"][0])
    if table["error"][0]:
        assert table["error"][0].split(":")[0] in P.REASONS


def test_a_pair_longer_than_max_length_is_too_long_with_the_template(smollm2_tokenizer):
    short = P.read({"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}, "trl")
    long = {**short, "rejected": [{"role": "assistant", "content": "word " * 300}]}
    n_short = P.check_length(smollm2_tokenizer, short, 64)
    assert 10 < n_short <= 64
    # the longer answer decides: the chosen side alone would fit
    assert P.rendered_length(smollm2_tokenizer, long) > 300
    with pytest.raises(P.PreferenceError) as err:
        P.check_length(smollm2_tokenizer, long, 256)
    assert err.value.reason == "too_long" and "> model.max_length 256" in str(err.value)
