"""What a chat template is handed: conversations prepared for a model's template, and their length.

Templates without tool support (SmolLM2's renders neither ``tools`` nor ``tool_calls``) get them as text,
in the Hermes format most tool-calling models use: the tool list in the system message inside
``<tools></tools>``, each call as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` in the
assistant's content. :func:`tool_style` decides once per tokenizer; serving parses the calls back with
:func:`parse_tool_calls`. :func:`fit` shortens a conversation to the model's length (the clean stage
quarantines what cannot be shortened, ``too_long``).

Conversations are the canonical shape of :mod:`tunery.data.conversations`.
"""

from __future__ import annotations

import json
import re

# tool_style: the template renders tools itself, or tunery writes them as text
NATIVE, TEXT = "native", "text"

# special tokens that end a turn in the common template families (ChatML, Llama 3, Gemma, Phi, Zephyr)
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")
_PROBE_TOOL = "tunery_probe_tool_7f3a"
TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query. The functions are listed "
    "in <tools></tools>:\n<tools>\n{tools}\n</tools>\n\nFor each call, answer with a JSON object of the "
    'function name and arguments inside <tool_call></tool_call>:\n<tool_call>\n{{"name": <function-name>, '
    '"arguments": <args-json-object>}}\n</tool_call>'
)
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def tool_style(tokenizer) -> str:
    """:data:`NATIVE` when the template renders both a tool list and an assistant's tool calls, else
    :data:`TEXT` (tunery renders them, see the module docstring)."""
    probe = [
        {"role": "user", "content": "probe"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": _PROBE_TOOL, "arguments": {"x": 1}}}
            ],
        },
    ]
    tools = [{"type": "function", "function": {"name": _PROBE_TOOL + "_def", "parameters": {}}}]
    try:
        text = tokenizer.apply_chat_template(probe, tools=tools, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that raises on tools has no tool support
        return TEXT
    listed = text.count(_PROBE_TOOL + "_def")  # the tool list shows the definition's name
    called = text.count(_PROBE_TOOL) - listed  # the call shows the bare name
    return NATIVE if listed and called else TEXT


def allows_consecutive_user(tokenizer) -> bool:
    """Whether the template renders two user turns in a row (some raise on them, as Llama 2's does)."""
    probe = [
        {"role": "user", "content": "tunery probe one"},
        {"role": "user", "content": "tunery probe two"},
        {"role": "assistant", "content": "tunery probe answer"},
    ]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # noqa: BLE001 - jinja's raise_exception, or any error the template raises
        return False
    return "tunery probe one" in text and "tunery probe two" in text


def as_text_tools(conversation: dict) -> dict:
    """The conversation with its tools and tool calls written as Hermes-format text (module docstring)."""
    messages = [dict(m) for m in conversation["messages"]]
    tools = conversation.get("tools") or []
    if tools:
        listed = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        header = TOOLS_HEADER.format(tools=listed)
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = (
                f"{messages[0]['content']}\n\n{header}" if messages[0]["content"] else header
            )
        else:
            messages.insert(0, {"role": "system", "content": header})
    for message in messages:
        calls = message.pop("tool_calls", None)
        if calls:
            written = [
                "<tool_call>\n"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                    ensure_ascii=False,
                )
                + "\n</tool_call>"
                for c in calls
            ]
            message["content"] = "\n".join([message["content"], *written] if message["content"] else written)
        message.pop("tool_call_id", None)
        message.pop("name", None)
    return {"messages": messages, "tools": []}


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """An answer in the Hermes text format split into its content and OpenAI-style tool calls. A block
    that is not a JSON object with a ``name`` stays in the content (nothing is dropped)."""
    calls, kept, last = [], [], 0
    for n, match in enumerate(_CALL.finditer(text), 1):
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        arguments = call.get("arguments", {})
        calls.append(
            {
                "id": f"call_{n}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": arguments
                    if isinstance(arguments, str)
                    else json.dumps(arguments, ensure_ascii=False),
                },
            }
        )
    kept.append(text[last:])
    return "".join(kept).strip(), calls


def prepared(tokenizer, conversation: dict, style: str | None = None) -> tuple[list[dict], list[dict] | None]:
    """The messages and tools handed to the template (text tools where the template has none)."""
    style = style or tool_style(tokenizer)
    if style == TEXT and (
        conversation.get("tools") or any(m.get("tool_calls") for m in conversation["messages"])
    ):
        conversation = as_text_tools(conversation)
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in conversation["messages"]]
    return messages, conversation.get("tools") or None


def rendered_length(tokenizer, conversation: dict, style: str | None = None) -> int:
    """Tokens of the whole conversation as the template writes it."""
    messages, tools = prepared(tokenizer, conversation, style)
    ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False)
    return len(ids)


def fit(
    tokenizer, conversation: dict, max_length: int, policy: str = "drop_oldest", style: str | None = None
) -> tuple[dict, int]:
    """The conversation shortened to ``max_length`` tokens, and how many turns were dropped.

    ``drop_oldest`` removes whole exchanges from the start (a user turn and everything up to the next user
    turn), keeping a leading system message and the last exchange; ``quarantine`` drops nothing. Raises
    ``ValueError("too_long")`` when the conversation still does not fit."""
    messages = list(conversation["messages"])
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(system) :]
    dropped = 0
    while True:
        candidate = {**conversation, "messages": system + body}
        if rendered_length(tokenizer, candidate, style) <= max_length:
            return candidate, dropped
        users = [k for k, m in enumerate(body) if m["role"] == "user"]
        if policy != "drop_oldest" or len(users) < 2:
            raise ValueError("too_long")
        dropped += users[1]
        body = body[users[1] :]


def end_of_turn_ids(tokenizer) -> set[int]:
    """Token ids that end an assistant turn: the eos token and the template's end-of-turn specials."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    specials = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids.update(specials[token] for token in END_OF_TURN_TOKENS if token in specials)
    return ids


def check_template(tokenizer) -> None:
    """Refuse a tokenizer whose chat template cannot be trained on conversations: none at all, or one that
    writes no end-of-turn token after an assistant answer (a model trained on it would never stop).

    Raises:
        ValueError: what is wrong, for ``tunery validate`` and the start of a run.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template: conversations cannot be rendered")
    probe = [{"role": "user", "content": "tunery probe"}, {"role": "assistant", "content": "tunery answer"}]
    prompt = tokenizer.apply_chat_template(
        probe[:1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    full = tokenizer.apply_chat_template(probe, tokenize=True, return_dict=False)
    if not set(full[len(prompt) :]) & end_of_turn_ids(tokenizer):
        raise ValueError(
            "the chat template writes no end-of-turn token after an assistant answer (looked for the eos "
            f"token and {', '.join(END_OF_TURN_TOKENS)}): a model trained on it would not stop"
        )
