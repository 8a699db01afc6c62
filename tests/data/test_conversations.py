"""tunery.data.conversations: every chat format read into one shape, and what a template cannot train on
refused with a reason (real LLaMA-Factory data, and small hand-written OpenAI-format records)."""

from __future__ import annotations

import json

import pytest

from tunery.data import conversations as conv
from tunery.data.conversations import ConversationError, Mapping


def reason(record, fmt, mapping=None) -> str:
    with pytest.raises(ConversationError) as caught:
        conv.read(record, fmt, mapping)
    return caught.value.reason


def openai(*messages, tools=None) -> dict:
    return {"messages": list(messages), **({"tools": tools} if tools is not None else {})}


U = {"role": "user", "content": "What's the weather in Paris?"}
CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    ],
}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 18}'}
A = {"role": "assistant", "content": "It is 18 °C in Paris."}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


def test_openai_tool_conversation_is_read_with_parsed_arguments_and_named_result():
    read = conv.read(
        openai({"role": "system", "content": "Be brief."}, U, CALL, RESULT, A, tools=TOOLS), "openai"
    )
    roles = [m["role"] for m in read["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert read["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert read["messages"][3] == {**RESULT, "name": "weather"}
    assert read["tools"] == TOOLS


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "narrator", "content": "x"}, A], "unknown_role"),
        ([U, A, U], "not_ending_on_assistant"),
        ([U, {"role": "assistant", "content": "   "}], "empty_assistant"),
        ([U, {"role": "tool", "tool_call_id": "zz", "content": "{}"}, A], "orphan_tool_result"),
        ([U, {"role": "tool", "content": "{}"}, A], "orphan_tool_result"),  # no call at all to answer
        ([U, CALL, {**RESULT, "tool_call_id": ["z"]}, A], "not_a_conversation"),  # an id that is not text
        (
            [
                U,
                {
                    **CALL,
                    "tool_calls": [
                        {
                            **CALL["tool_calls"][0],
                            "function": {"name": "weather", "arguments": "{city: Paris"},
                        }
                    ],
                },
                RESULT,
                A,
            ],
            "tool_arguments_not_json",
        ),
        (
            [
                U,
                {
                    **CALL,
                    "tool_calls": [
                        {**CALL["tool_calls"][0], "function": {"name": "weather", "arguments": "[1, 2]"}}
                    ],
                },
                RESULT,
                A,
            ],
            "tool_arguments_not_json",
        ),
        ([U, {**A, "weight": 0.5}], "bad_weight"),
        ([U, {**A, "weight": True}], "bad_weight"),
        ([U, {**A, "weight": 0}], "no_trained_turn"),
        ([{"role": "system", "content": "s"}, A], "not_a_conversation"),  # no user turn
        ([U, {"role": "assistant", "content": {"text": "x"}}], "not_a_conversation"),
        ([], "not_a_conversation"),
    ],
)
def test_openai_conversations_a_template_cannot_train_on_get_their_reason(messages, expected):
    assert reason(openai(*messages), "openai") == expected


def test_every_reason_has_an_explanation():
    assert set(conv.REASONS) >= {
        "unknown_role",
        "consecutive_user",
        "not_ending_on_assistant",
        "empty_assistant",
        "orphan_tool_result",
        "tool_arguments_not_json",
    }
    assert all(text and text[0].islower() for text in conv.REASONS.values())


def test_consecutive_user_turns_are_read_and_refused_where_the_template_forbids_them():
    doubled = conv.read(openai(U, U, A), "openai")  # structure is fine: the template decides (clean)
    conv.check(doubled, consecutive_user=True)
    with pytest.raises(ConversationError) as caught:
        conv.check(doubled)
    assert caught.value.reason == "consecutive_user"


def test_weight_zero_turns_are_kept_as_context():
    read = conv.read(openai(U, {**A, "weight": 0}, {**U, "content": "And Rome?"}, A), "openai")
    assert [m.get("weight", 1) for m in read["messages"] if m["role"] == "assistant"] == [0, 1]


def test_roles_and_columns_are_mapped_from_the_recipe():
    record = {"chat": [{"speaker": "customer", "text": "Hi"}, {"speaker": "agent", "text": "Hello!"}]}
    mapping = Mapping(
        messages="chat",
        role_key="speaker",
        content_key="text",
        roles={"customer": "user", "agent": "assistant"},
    )
    read = conv.read(record, "openai", mapping)
    assert read["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert (
        reason(record, "openai", Mapping(messages="chat", role_key="speaker", content_key="text"))
        == "unknown_role"
    )


@pytest.mark.realdata
def test_sharegpt_real_tool_call_demo_reads_every_conversation(shared_data):
    rows = json.loads((shared_data / "llama_factory" / "glaive_toolcall_en_demo.json").read_text())
    read = [conv.read(row, "sharegpt") for row in rows]
    assert len(read) == len(rows) == 300
    calls = [m for c in read for m in c["messages"] if m.get("tool_calls")]
    results = [m for c in read for m in c["messages"] if m["role"] == "tool"]
    function_calls = sum(t["from"] == "function_call" for r in rows for t in r["conversations"])
    assert len(calls) == len(results) == function_calls == 211
    assert all(isinstance(c["tool_calls"][0]["function"]["arguments"], dict) for c in calls)
    # each result answers the call just before it, and is named after its function
    for c in read:
        for i, m in enumerate(c["messages"]):
            if m["role"] == "tool":
                before = c["messages"][i - 1]["tool_calls"][0]
                assert m["tool_call_id"] == before["id"] and m["name"] == before["function"]["name"]
    with_tools = [c for c in read if c["tools"]]
    assert with_tools and all(
        t["type"] == "function" and t["function"]["name"] for c in with_tools for t in c["tools"]
    )


def test_sharegpt_system_column_and_bad_calls():
    row = {
        "system": "You are a travel agent.",
        "conversations": [{"from": "human", "value": "Book Paris"}, {"from": "gpt", "value": "Done."}],
    }
    assert conv.read(row, "sharegpt")["messages"][0] == {
        "role": "system",
        "content": "You are a travel agent.",
    }
    bad_json = {
        "conversations": [
            {"from": "human", "value": "x"},
            {"from": "function_call", "value": "{name: f"},
            {"from": "observation", "value": "{}"},
            {"from": "gpt", "value": "ok"},
        ]
    }
    assert reason(bad_json, "sharegpt") == "tool_arguments_not_json"
    orphan = {
        "conversations": [
            {"from": "human", "value": "x"},
            {"from": "observation", "value": "{}"},
            {"from": "gpt", "value": "ok"},
        ]
    }
    assert reason(orphan, "sharegpt") == "orphan_tool_result"
    unknown = {"conversations": [{"from": "bot", "value": "x"}]}
    assert reason(unknown, "sharegpt") == "unknown_role"


def test_lima_alternates_user_and_assistant():
    read = conv.read(["Hi", "Hello!", "Tell me a joke", "No."], "lima")
    assert [m["role"] for m in read["messages"]] == ["user", "assistant", "user", "assistant"]
    assert reason(["Hi", "Hello!", "And?"], "lima") == "not_ending_on_assistant"
    assert reason("Hi", "lima") == "not_a_conversation"


def test_alpaca_history_becomes_earlier_turns():
    row = {
        "instruction": "And in Rome?",
        "input": "",
        "output": "21 °C.",
        "history": [["Weather in Paris?", "18 °C."]],
    }
    read = conv.read(row, "alpaca")
    assert [m["content"] for m in read["messages"]] == [
        "Weather in Paris?",
        "18 °C.",
        "And in Rome?",
        "21 °C.",
    ]
    with_input = conv.read({"instruction": "Translate", "input": "bonjour", "output": "hello"}, "alpaca")
    assert with_input["messages"][0]["content"] == "Translate\n\nbonjour"
    assert reason({**row, "history": [["only a prompt"]]}, "alpaca") == "not_a_conversation"


def test_the_format_of_a_table_is_detected_from_its_columns():
    assert conv.detect_format(["messages", "tools"]) == "openai"
    assert conv.detect_format(["conversations", "tools"]) == "sharegpt"
    assert conv.detect_format(["instruction", "input", "output", "history"]) == "alpaca"
    assert conv.detect_format(["chat"], Mapping(messages="chat")) == "openai"
    with pytest.raises(ValueError, match="data.format"):
        conv.detect_format(["text", "label"])


def test_dedup_key_and_texts_cover_content_but_not_tool_json_keys():
    read = conv.read(openai(U, CALL, RESULT, A, tools=TOOLS), "openai")
    assert conv.texts(read) == [U["content"], RESULT["content"], A["content"]]
    assert "weather" in conv.key(read) and conv.first_user_turn(read) == U["content"]
    same_words_other_order = conv.read(
        openai({**U, "content": A["content"]}, {**A, "content": U["content"]}), "openai"
    )
    assert conv.key(same_words_other_order) != conv.key(conv.read(openai(U, A), "openai"))
