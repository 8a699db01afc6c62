"""Multi-turn conversations encoded on the model's own chat template, loss on assistant turns only.

The contract, checked by a golden test for several templates: for every trained assistant turn, the
token ids the model is trained on up to that turn are exactly
``tokenizer.apply_chat_template(messages_before_it, tools=tools, add_generation_prompt=True)`` (what the
model is given at inference), and the turn's labels are its answer ending with the end-of-turn token.
What the template writes after that token (SmolLM2's newline) and every other token is context (label
-100). Where a template renders earlier turns differently once later ones follow, the later turn becomes
an example of its own (:func:`encode`). A template that writes no end-of-turn token after an answer cannot
honour the contract: :class:`TemplateMismatch` says so instead of training a model that never stops.

Templates without tool support (SmolLM2's renders neither ``tools`` nor ``tool_calls``) get them as text,
in the Hermes format most tool-calling models use: the tool list in the system message inside
``<tools></tools>``, each call as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` in the
assistant's content. :func:`tool_style` decides once per tokenizer; serving parses the calls back with
:func:`parse_tool_calls`.

Conversations are the canonical shape of ``tunery.data.conversations``.
"""

from __future__ import annotations

import json
import re
from typing import Any

IGNORE_INDEX = -100
TRAIN_ON = ("all", "last")  # which assistant turns are learned (weight-0 turns never are)
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


class TemplateMismatch(ValueError):
    """The chat template cannot train this conversation the way it is prompted at inference."""


def _ids(tokenizer, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        add_generation_prompt=generation_prompt,
        tokenize=True,
        return_dict=False,
    )
    return list(out)


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


def end_of_turn_ids(tokenizer) -> set[int]:
    """Token ids that end an assistant turn: the eos token and the template's end-of-turn specials."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    specials = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids.update(specials[token] for token in END_OF_TURN_TOKENS if token in specials)
    return ids


def prepared(tokenizer, conversation: dict, style: str | None = None) -> tuple[list[dict], list[dict] | None]:
    """The messages and tools handed to the template (text tools where the template has none)."""
    style = style or tool_style(tokenizer)
    if style == TEXT and (
        conversation.get("tools") or any(m.get("tool_calls") for m in conversation["messages"])
    ):
        conversation = as_text_tools(conversation)
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in conversation["messages"]]
    return messages, conversation.get("tools") or None


def _text(tokenizer, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=generation_prompt, tokenize=False
    )


def encode(tokenizer, conversation: dict, train_on: str = "all", style: str | None = None) -> dict[str, Any]:
    """The training examples of one conversation (see the module docstring).

    Usually one example holds every turn. Where the template's tokens for the turns so far are not a
    prefix of the next turn's inference prompt (a template that rewrites earlier turns, or a tokenizer
    that merges the generation prompt's last characters with the answer's first), the next turn starts
    a new example from its own inference prompt: each trained turn is learned from the exact ids it is
    prompted with. Examples without a trained turn are left out.

    Args:
        tokenizer: a tokenizer with a chat template.
        conversation: canonical conversation ending on an assistant turn.
        train_on: ``all`` assistant turns of weight 1, or only the ``last`` one.
        style: :func:`tool_style` of the tokenizer (computed when None).

    Returns:
        ``{"examples": [{"input_ids", "labels"}, ...], "trained_turns": int}``.
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, not {train_on!r}")
    weights = [m.get("weight", 1) for m in conversation["messages"]]
    messages, tools = prepared(tokenizer, conversation, style)
    offset = len(messages) - len(weights)  # a system message holding text tools may have been inserted
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    trained = {i for i in assistant if weights[i - offset] == 1}
    if train_on == "last":
        trained &= {assistant[-1]}
    ends = end_of_turn_ids(tokenizer)
    examples: list[dict[str, list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []

    def close() -> None:
        if any(label != IGNORE_INDEX for label in labels):
            examples.append({"input_ids": ids, "labels": labels})

    for i in assistant:
        prompt = _ids(tokenizer, messages[:i], tools, generation_prompt=True)
        if prompt[: len(ids)] != ids:  # this turn's prompt does not extend the example: start another
            close()
            ids, labels = [], []
        labels = labels + [IGNORE_INDEX] * (len(prompt) - len(ids))
        through = _ids(tokenizer, messages[: i + 1], tools, generation_prompt=False)
        if through[: len(prompt)] == prompt:
            answer = through[len(prompt) :]
        else:  # token merges across the prompt/answer boundary: the answer's text, tokenised on its own
            before = _text(tokenizer, messages[:i], tools, generation_prompt=True)
            after = _text(tokenizer, messages[: i + 1], tools, generation_prompt=False)
            if not after.startswith(before):
                raise TemplateMismatch(
                    f"assistant turn {i + 1} does not continue the template's generation prompt"
                )
            answer = list(tokenizer(after[len(before) :], add_special_tokens=False)["input_ids"])
        last_end = max((k for k, t in enumerate(answer) if t in ends), default=None)
        if last_end is None:
            raise TemplateMismatch(
                f"the chat template writes no end-of-turn token after assistant turn {i + 1}: a model "
                "trained on it would not stop"
            )
        learned = answer[: last_end + 1] if i in trained else [IGNORE_INDEX] * (last_end + 1)
        labels = labels + learned + [IGNORE_INDEX] * (len(answer) - last_end - 1)
        ids = prompt + answer
    close()
    return {"examples": examples, "trained_turns": len(trained)}


def length(tokenizer, conversation: dict, style: str | None = None) -> int:
    """Tokens of the conversation's longest training example."""
    return max(len(e["input_ids"]) for e in encode(tokenizer, conversation, style=style)["examples"])


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
        if length(tokenizer, candidate, style) <= max_length:
            return candidate, dropped
        users = [k for k, m in enumerate(body) if m["role"] == "user"]
        if policy != "drop_oldest" or len(users) < 2:
            raise ValueError("too_long")
        dropped += users[1]
        body = body[users[1] :]
