"""The golden chat-template test: what a model is trained on, turn by turn, is exactly what it is prompted
with at inference, and every learned answer ends with the end-of-turn token. Three templates: the packaged
SmolLM2 tokenizer's own, one that injects a default system message, one with Llama-3-style header tokens.
"""

from __future__ import annotations

import copy
import json

import pytest

from tunery.data import conversations, templates
from tunery.training import chat
from tunery.training.chat import IGNORE_INDEX, TemplateMismatch

# a Zephyr-like template that writes its own default system message when the data has none
DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|system|>\\nYou are the default assistant.<|endoftext|>\\n' }}"
    "{% endif %}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|endoftext|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Llama-3 style: header tokens around the role, <|eot_id|> ends each turn, a BOS first; renders tools and
# tool calls itself
LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% if tools %}{{ '<|start_header_id|>system<|end_header_id|>\\n\\nTools: ' + "
    "(tools | tojson) + '<|eot_id|>' }}{% endif %}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] }}"
    "{% for c in m.get('tool_calls', []) %}{{ '<|python_tag|>' + c['function']['name'] + ' ' + "
    "(c['function']['arguments'] | tojson) }}{% endfor %}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA3_TOKENS = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]


@pytest.fixture(scope="module", params=["smollm2", "default-system", "llama3-headers"])
def tokenizer(request, smollm2_tokenizer):
    tok = copy.deepcopy(smollm2_tokenizer)
    if request.param == "default-system":
        tok.chat_template = DEFAULT_SYSTEM
    elif request.param == "llama3-headers":
        tok.add_special_tokens({"additional_special_tokens": LLAMA3_TOKENS})
        tok.chat_template = LLAMA3
        tok.eos_token = "<|eot_id|>"
    return tok


def template_ids(tokenizer, messages, tools, generation_prompt):
    return list(
        tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
    )


def spans(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of learned positions."""
    out, start = [], None
    for k, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = k
        elif label == IGNORE_INDEX and start is not None:
            out.append((start, k))
            start = None
    return out


PLAIN = conversations.read(
    {
        "messages": [
            {"role": "user", "content": "My order #4411 has not arrived."},
            {"role": "assistant", "content": "Sorry to hear that! Could you confirm the delivery address?"},
            {"role": "user", "content": "12 Rue de Rivoli,\nParis"},
            {"role": "assistant", "content": "Thanks. It is on its way:\n- shipped Monday\n- due Thursday"},
            {"role": "user", "content": "Great, thanks"},
            {"role": "assistant", "content": "You're welcome!"},
        ]
    },
    "openai",
)


def golden(tokenizer, conversation, train_on="all") -> dict:
    """Check the contract for every assistant turn; return, per turn, (learned, answer text)."""
    encoded = chat.encode(tokenizer, conversation, train_on=train_on)
    messages, tools = templates.prepared(tokenizer, conversation)
    ends = chat.end_of_turn_ids(tokenizer)
    examples = encoded["examples"]
    for example in examples:
        assert len(example["input_ids"]) == len(example["labels"])
        pairs = zip(example["labels"], example["input_ids"], strict=True)
        assert all(label in (IGNORE_INDEX, token) for label, token in pairs), "labels are the input ids"
    turns = {}
    learned_spans = sum(len(spans(e["labels"])) for e in examples)
    for i in (k for k, m in enumerate(messages) if m["role"] == "assistant"):
        prompt = template_ids(tokenizer, messages[:i], tools, True)
        # the example that learns (or holds) this turn starts with its inference prompt, exactly
        holders = [e for e in examples if e["input_ids"][: len(prompt)] == prompt]
        learned = [e for e in holders if len(prompt) in dict(spans(e["labels"]))]
        if not learned:
            turns[i] = (False, None)
            continue
        example = learned[0]
        end = dict(spans(example["labels"]))[len(prompt)]
        answer = example["labels"][len(prompt) : end]
        assert answer[-1] in ends, "the learned answer ends with the end-of-turn token"
        assert all(t not in ends for t in answer[:-1])
        turns[i] = (True, tokenizer.decode(answer))
    assert learned_spans == sum(learned for learned, _ in turns.values()) == encoded["trained_turns"]
    return {"turns": turns, "examples": examples, "messages": messages}


def test_every_assistant_turn_is_learned_from_its_exact_inference_prompt_and_ends_with_end_of_turn(
    tokenizer, smollm2_tokenizer
):
    checked = golden(tokenizer, PLAIN)
    answers = [answer for learned, answer in checked["turns"].values() if learned]
    assert len(answers) == 3
    assert answers[1].startswith("Thanks. It is on its way:\n- shipped Monday\n- due Thursday")
    if (
        tokenizer.chat_template == smollm2_tokenizer.chat_template
    ):  # ChatML: one example holds the whole conversation
        messages = checked["messages"]
        assert checked["examples"][0]["input_ids"] == template_ids(tokenizer, messages, None, False)
        assert len(checked["examples"]) == 1


def test_weight_zero_and_last_only_turns_are_context(tokenizer):
    weighted = copy.deepcopy(PLAIN)
    weighted["messages"][1]["weight"] = 0
    learned = [flag for flag, _ in golden(tokenizer, weighted)["turns"].values()]
    assert learned == [False, True, True]
    learned = [flag for flag, _ in golden(tokenizer, PLAIN, train_on="last")["turns"].values()]
    assert learned == [False, False, True]


def test_tool_conversations_keep_the_contract(tokenizer, shared_data):
    rows = json.loads((shared_data / "llama_factory" / "glaive_toolcall_en_demo.json").read_text())
    with_calls = [
        conversations.read(r, "sharegpt")
        for r in rows
        if any(t["from"] == "function_call" for t in r["conversations"])
    ]
    for conversation in with_calls[:5]:
        checked = golden(tokenizer, conversation)
        assert all(learned for learned, _ in checked["turns"].values())
        calls = [m for m in conversation["messages"] if m.get("tool_calls")]
        name = calls[0]["tool_calls"][0]["function"]["name"]
        assert any(name in answer for _, answer in checked["turns"].values()), "the model learns the call"
        prompt_text = tokenizer.decode(checked["examples"][0]["input_ids"])
        assert conversation["tools"][0]["function"]["name"] in prompt_text, "the tools are in the prompt"


def test_text_tools_for_templates_without_them_round_trip():
    class NoTools:  # SmolLM2's template: no tools, no tool calls
        pass

    conversation = conversations.read(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "a", "content": '{"temp_c": 18}'},
                {"role": "assistant", "content": "18 °C."},
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
            ],
        },
        "openai",
    )
    written = templates.as_text_tools(conversation)
    assert (
        written["messages"][0]["role"] == "system"
        and '"name": "weather"' in written["messages"][0]["content"]
    )
    content, calls = templates.parse_tool_calls(written["messages"][2]["content"])
    assert content == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("weather", {"city": "Paris"})
    ]
    broken, none = templates.parse_tool_calls("<tool_call>\nnot json\n</tool_call> ok")
    assert none == [] and "not json" in broken, "an unparsable block stays in the content"


def test_tool_style_tells_native_templates_from_the_others(smollm2_tokenizer):
    assert templates.tool_style(smollm2_tokenizer) == templates.TEXT
    tok = copy.deepcopy(smollm2_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_TOKENS})
    tok.chat_template = LLAMA3
    assert templates.tool_style(tok) == templates.NATIVE


def test_templates_that_cannot_keep_the_contract_are_refused(smollm2_tokenizer):
    tok = copy.deepcopy(smollm2_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    with pytest.raises(TemplateMismatch, match="no end-of-turn token"):
        chat.encode(tok, PLAIN)


def test_a_template_that_rewrites_earlier_turns_learns_each_turn_from_its_own_prompt(smollm2_tokenizer):
    """As reasoning templates do, this one shows earlier answers shortened once a later turn follows: one
    example cannot hold both the full answer and the later prompt, so each turn gets its own example."""
    tok = copy.deepcopy(smollm2_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n...<|im_end|>\\n' }}{% else %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    checked = golden(tok, PLAIN)
    assert len(checked["examples"]) == 3
    assert [
        answer.startswith(m["content"])
        for (_, answer), m in zip(
            checked["turns"].values(), [PLAIN["messages"][k] for k in (1, 3, 5)], strict=True
        )
    ] == [True] * 3


def test_long_conversations_drop_their_oldest_exchanges_keeping_the_system_message(smollm2_tokenizer):
    system = {"role": "system", "content": "You are a help-desk agent."}
    long = {**PLAIN, "messages": [system, *PLAIN["messages"]]}
    full = chat.length(smollm2_tokenizer, long)
    fitted, dropped = templates.fit(smollm2_tokenizer, long, max_length=full - 1)
    assert dropped == 2 and fitted["messages"][0] == system
    assert fitted["messages"][1:] == PLAIN["messages"][2:]
    assert templates.fit(smollm2_tokenizer, long, max_length=full) == (long, 0)
    with pytest.raises(ValueError, match="too_long"):
        templates.fit(smollm2_tokenizer, long, max_length=full - 1, policy="quarantine")
    with pytest.raises(ValueError, match="too_long"):
        templates.fit(smollm2_tokenizer, long, max_length=10)
