"""Conversations: one canonical shape for every chat data format tunery reads, and the checks that
quarantine a conversation a chat template cannot train on.

The canonical conversation is OpenAI's chat shape, the one transformers' chat templates take::

    {"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": str,
                   "tool_calls": [{"id", "type": "function", "function": {"name", "arguments": dict}}],
                   "tool_call_id": str, "name": str, "weight": 0 | 1}, ...],
     "tools": [{"type": "function", "function": {"name", "description", "parameters"}}, ...]}

``tool_calls`` and ``weight`` (1 unless the data says 0: context only, never trained on) only on assistant
turns; ``tool_call_id`` and the called function's ``name`` only on tool turns. Tool-call arguments are
parsed JSON objects (templates serialise them themselves).

Readers, one per format (:data:`FORMATS`): ``openai`` (``messages`` + ``tools``), ``sharegpt`` (LLaMA-
Factory's ``conversations`` of ``from``/``value`` with ``human``/``gpt``/``system``/``function_call``/
``observation``, optional ``system`` and ``tools`` columns), ``lima`` (a list of alternating user/
assistant strings) and ``alpaca`` (instruction/input/output with a ``history`` of earlier
``[user, assistant]`` pairs). Column and role names are mapped through :class:`Mapping`. A reader raises
:class:`ConversationError` with a reason of :data:`REASONS`; nothing is repaired silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("openai", "sharegpt", "lima", "alpaca")
ROLES = ("system", "user", "assistant", "tool")

REASONS = {
    "not_a_conversation": "the record is not a conversation of the declared format",
    "unknown_role": "a turn has a role the recipe does not map",
    "consecutive_user": "two user turns in a row, which the chat template does not allow",
    "not_ending_on_assistant": "the conversation does not end on an assistant turn",
    "empty_assistant": "an assistant turn has neither content nor a tool call",
    "orphan_tool_result": "a tool result answers no earlier tool call",
    "tool_arguments_not_json": "a tool call's arguments are not a JSON object",
    "bad_weight": "an assistant weight is not 0 or 1",
    "no_trained_turn": "every assistant turn has weight 0: nothing to train on",
}

# LLaMA-Factory's ShareGPT tags (data/README.md) and the role each one is
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "function_call",  # an assistant turn that calls tools
    "observation": "tool",
    "tool": "tool",
}


class ConversationError(ValueError):
    """A conversation tunery will not train on; ``reason`` is a key of the class's ``reasons`` (here
    :data:`REASONS`; a subclass for other data brings its own table)."""

    reasons = REASONS

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.reasons, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Mapping:
    """Where a format keeps its parts, and how its role names map onto :data:`ROLES`.

    ``roles`` adds to (or overrides) the format's own names: ``{"bot": "assistant"}``."""

    messages: str | None = None  # default: "messages" (openai), "conversations" (sharegpt, lima)
    tools: str = "tools"
    system: str = "system"
    role_key: str | None = None  # default: "role" (openai), "from" (sharegpt)
    content_key: str | None = None  # default: "content" (openai), "value" (sharegpt)
    roles: dict[str, str] = field(default_factory=dict)
    instruction: str = "instruction"  # alpaca
    input: str = "input"
    output: str = "output"
    history: str = "history"


def detect_format(columns: Iterable[str], mapping: Mapping | None = None, sample: Any = None) -> str:
    """The format of a table with these columns (the first match of openai, sharegpt, alpaca); ``sample``,
    a first value of the turns column, tells LIMA's plain strings from ShareGPT's turn objects."""
    mapping = mapping or Mapping()
    names = set(columns)
    if (mapping.messages or "messages") in names:
        return "openai"
    if (mapping.messages or "conversations") in names:
        turns = plain(sample)
        return "lima" if isinstance(turns, list) and turns and isinstance(turns[0], str) else "sharegpt"
    if mapping.instruction in names and mapping.output in names:
        return "alpaca"
    raise ValueError(
        f"no conversation format matches the columns {sorted(names)}: expected 'messages' (openai), "
        "'conversations' (sharegpt), or instruction/output (alpaca); name it with data.format"
    )


def read(record: MappingABC[str, Any] | list, fmt: str, mapping: Mapping | None = None) -> dict:
    """The canonical conversation of one record of format ``fmt``, checked by :func:`check` (two user turns
    in a row pass here: whether the model's template allows them is the clean stage's decision)."""
    mapping = mapping or Mapping()
    readers = {"openai": _openai, "sharegpt": _sharegpt, "lima": _lima, "alpaca": _alpaca}
    if fmt not in readers:
        raise ValueError(f"unknown conversation format {fmt!r}; one of {FORMATS}")
    conversation = readers[fmt](record, mapping)
    check(conversation, consecutive_user=True)
    return conversation


def prompt(messages: list, tools: list | None = None) -> dict:
    """OpenAI chat messages that ask for the next assistant turn (serving), as ``{"messages", "tools"}`` in
    the canonical shape; roles, tool calls and arguments are checked as in :func:`read`.

    Raises:
        ConversationError: not a list of messages, an unknown role, arguments that are not JSON.
    """
    conversation = _openai({"messages": messages, "tools": tools}, Mapping())
    if conversation["messages"][-1]["role"] == "assistant":
        raise ConversationError(
            "not_a_conversation", "the messages end on an assistant turn: nothing to answer"
        )
    return conversation


def check(conversation: dict, consecutive_user: bool = False) -> None:
    """Raise :class:`ConversationError` for a conversation a chat template cannot train on.

    ``consecutive_user``: whether the template accepts two user turns in a row (see
    ``tunery.training.chat.allows_consecutive_user``)."""
    messages = conversation["messages"]
    if not any(m["role"] == "user" for m in messages):
        raise ConversationError("not_a_conversation", "no user turn")
    called: set[str] = set()
    previous = None
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "user" and previous == "user" and not consecutive_user:
            raise ConversationError("consecutive_user", f"turns {i} and {i + 1} are both user turns")
        if role == "assistant":
            if not message.get("content", "").strip() and not message.get("tool_calls"):
                raise ConversationError("empty_assistant", f"turn {i + 1} is empty")
            if message.get("weight", 1) not in (0, 1) or isinstance(message.get("weight"), bool):
                raise ConversationError("bad_weight", f"turn {i + 1} has weight {message.get('weight')!r}")
            called.update(call["id"] for call in message.get("tool_calls", ()))
        if role == "tool":
            answered = message.get("tool_call_id")
            if answered not in called:
                raise ConversationError(
                    "orphan_tool_result", f"turn {i + 1} answers {answered!r}, no earlier call has that id"
                )
        previous = role
    if messages[-1]["role"] != "assistant":
        raise ConversationError("not_ending_on_assistant", f"the last turn is a {messages[-1]['role']} turn")
    if not any(m.get("weight", 1) == 1 for m in messages if m["role"] == "assistant"):
        raise ConversationError("no_trained_turn", "every assistant turn has weight 0")


def texts(conversation: dict) -> list[str]:
    """The natural-language content of every turn (what PII scrubbing and length checks look at; tool-call
    names and argument keys are not text)."""
    return [m["content"] for m in conversation["messages"] if m.get("content")]


def key(conversation: dict) -> str:
    """One string for the whole conversation (exact and near dedup compare these): each turn as
    ``role: content`` with its tool calls, in order; tools offered are left out."""
    lines = []
    for m in conversation["messages"]:
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in m.get("tool_calls", ())]
        lines.append(
            f"{m['role']}: {m.get('content', '')}"
            + (f" {json.dumps(calls, sort_keys=True)}" if calls else "")
        )
    return "\n".join(lines)


def first_user_turn(conversation: dict) -> str:
    """The conversation's opening request (the leakage check compares these across splits)."""
    return next(m["content"] for m in conversation["messages"] if m["role"] == "user")


# -- readers -------------------------------------------------------------------------------------------


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConversationError("not_a_conversation", f"{where} is {type(value).__name__}, not text")
    return value


def _json_value(value: Any, where: str) -> Any:
    """A JSON value given as text (LLaMA-Factory's ``tools`` and ``function_call`` values) or as itself."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConversationError("tool_arguments_not_json", f"{where}: {exc.msg} at {exc.pos}") from None
    return value


def _arguments(value: Any, where: str) -> dict:
    parsed = _json_value(value if value not in (None, "") else "{}", where)
    if not isinstance(parsed, dict):
        raise ConversationError(
            "tool_arguments_not_json", f"{where} is {type(parsed).__name__}, not an object"
        )
    return parsed


def _tools(value: Any) -> list[dict]:
    """``tools`` as a list of OpenAI function tools (LLaMA-Factory lists bare function definitions)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConversationError("not_a_conversation", f"tools are not JSON: {exc.msg}") from None
    if not isinstance(value, list):
        raise ConversationError("not_a_conversation", f"tools is {type(value).__name__}, not a list")
    tools = []
    for tool in value:
        if not isinstance(tool, dict):
            raise ConversationError("not_a_conversation", "a tool is not an object")
        function = tool.get("function", tool) if tool.get("type", "function") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ConversationError("not_a_conversation", "a tool has no function name")
        tools.append({"type": "function", "function": function})
    return tools


def _role(raw: Any, known: dict[str, str], mapping: Mapping, turn: int) -> str:
    names = {**known, **mapping.roles}
    if not isinstance(raw, str) or raw not in names:
        raise ConversationError("unknown_role", f"turn {turn} has role {raw!r}; known: {sorted(names)}")
    return names[raw]


def _openai(record: MappingABC[str, Any], mapping: Mapping) -> dict:
    messages = record.get(mapping.messages or "messages") if isinstance(record, MappingABC) else None
    if not isinstance(messages, list) or not messages:
        raise ConversationError("not_a_conversation", "no list of messages")
    role_key, content_key = mapping.role_key or "role", mapping.content_key or "content"
    out = []
    for turn, raw in enumerate(messages, 1):
        if not isinstance(raw, dict):
            raise ConversationError("not_a_conversation", f"turn {turn} is not an object")
        role = _role(raw.get(role_key), {r: r for r in ROLES}, mapping, turn)
        message: dict[str, Any] = {"role": role, "content": _text(raw.get(content_key), f"turn {turn}")}
        if role == "assistant":
            calls = raw.get("tool_calls") or []
            if not isinstance(calls, list):
                raise ConversationError("not_a_conversation", f"turn {turn}'s tool_calls is not a list")
            message["tool_calls"] = [
                _openai_call(call, f"turn {turn} call {n}") for n, call in enumerate(calls, 1)
            ]
            if not message["tool_calls"]:
                del message["tool_calls"]
            if "weight" in raw:
                message["weight"] = raw["weight"]
        if role == "tool":
            answered = raw.get("tool_call_id")
            if answered is not None and not isinstance(answered, str):
                raise ConversationError(
                    "not_a_conversation", f"turn {turn}'s tool_call_id is {type(answered).__name__}, not text"
                )
            message["tool_call_id"] = answered
        out.append(message)
    _pair_unnamed_results(out)
    return {"messages": out, "tools": _tools(record.get(mapping.tools))}


def _openai_call(call: Any, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ConversationError("not_a_conversation", f"{where} has no function name")
    return {
        "id": str(call.get("id") or ""),
        "type": "function",
        "function": {"name": function["name"], "arguments": _arguments(function.get("arguments"), where)},
    }


def _pair_unnamed_results(messages: list[dict]) -> None:
    """Give calls without ids ids, and results without ``tool_call_id`` the id of the oldest call still
    unanswered (ShareGPT has no ids; OpenAI exports sometimes drop them). A result with nothing left to
    answer keeps ``None`` and :func:`check` quarantines it."""
    pending: list[str] = []
    names: dict[str, str] = {}
    counter = 0
    for message in messages:
        for call in message.get("tool_calls", ()):
            if not call["id"]:
                counter += 1
                call["id"] = f"call_{counter}"
            pending.append(call["id"])
            names[call["id"]] = call["function"]["name"]
        if message["role"] == "tool":
            wanted = message.get("tool_call_id")
            if wanted in pending:
                pending.remove(wanted)
            elif not wanted and pending:
                message["tool_call_id"] = wanted = pending.pop(0)
            if wanted in names:
                message.setdefault("name", names[wanted])  # some templates show the function's name


def _sharegpt(record: MappingABC[str, Any], mapping: Mapping) -> dict:
    turns = record.get(mapping.messages or "conversations") if isinstance(record, MappingABC) else None
    if not isinstance(turns, list) or not turns:
        raise ConversationError("not_a_conversation", "no list of conversation turns")
    role_key, content_key = mapping.role_key or "from", mapping.content_key or "value"
    system = _text(record.get(mapping.system), "the system column")
    out: list[dict] = [{"role": "system", "content": system}] if system.strip() else []
    for turn, raw in enumerate(turns, 1):
        if not isinstance(raw, dict):
            raise ConversationError("not_a_conversation", f"turn {turn} is not an object")
        role = _role(raw.get(role_key), SHAREGPT_ROLES, mapping, turn)
        value = _text(raw.get(content_key), f"turn {turn}")
        if role == "function_call":
            calls = _json_value(value, f"turn {turn}")
            calls = calls if isinstance(calls, list) else [calls]
            message = {
                "role": "assistant",
                "content": "",
                "tool_calls": [_sharegpt_call(call, f"turn {turn}") for call in calls],
            }
            previous = out[-1] if out else None
            if previous and previous["role"] == "assistant" and not previous.get("tool_calls"):
                previous["tool_calls"] = message["tool_calls"]  # text then call: one assistant turn
                continue
            out.append(message)
        elif role == "tool":
            out.append({"role": "tool", "content": value, "tool_call_id": None})
        else:
            out.append({"role": role, "content": value})
    _pair_unnamed_results(out)
    return {"messages": out, "tools": _tools(record.get(mapping.tools))}


def _sharegpt_call(call: Any, where: str) -> dict:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ConversationError("tool_arguments_not_json", f"{where} is not a call with a function name")
    return {
        "id": "",
        "type": "function",
        "function": {"name": call["name"], "arguments": _arguments(call.get("arguments"), where)},
    }


def _lima(record: Any, mapping: Mapping) -> dict:
    turns = record.get(mapping.messages or "conversations") if isinstance(record, MappingABC) else record
    if not isinstance(turns, list) or not turns:
        raise ConversationError("not_a_conversation", "not a list of turns")
    out = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": _text(text, f"turn {i + 1}")}
        for i, text in enumerate(turns)
    ]
    return {"messages": out, "tools": []}


def _alpaca(record: MappingABC[str, Any], mapping: Mapping) -> dict:
    if not isinstance(record, MappingABC):
        raise ConversationError("not_a_conversation", "not an object")
    out: list[dict] = []
    system = _text(record.get(mapping.system), "the system column")
    if system.strip():
        out.append({"role": "system", "content": system})
    history = record.get(mapping.history)
    if history is not None and not isinstance(history, list):
        history = list(history) if hasattr(history, "__iter__") and not isinstance(history, str) else history
    for n, pair in enumerate(history or [], 1):
        pair = list(pair) if hasattr(pair, "__iter__") and not isinstance(pair, str) else pair
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConversationError(
                "not_a_conversation", f"history entry {n} is not a [user, assistant] pair"
            )
        out.append({"role": "user", "content": _text(pair[0], f"history entry {n}")})
        out.append({"role": "assistant", "content": _text(pair[1], f"history entry {n}")})
    instruction = _text(record.get(mapping.instruction), "the instruction")
    extra = _text(record.get(mapping.input), "the input")
    prompt = f"{instruction}\n\n{extra}" if extra else instruction  # as tunery.training.sft joins them
    out.append({"role": "user", "content": prompt})
    out.append({"role": "assistant", "content": _text(record.get(mapping.output), "the output")})
    return {"messages": out, "tools": []}


# -- tables --------------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A cell as plain Python: Parquet's numpy arrays become lists (recursively), NaN and NA become None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def mapping_of(conversation_cfg, data_cfg) -> Mapping:
    """The :class:`Mapping` of a recipe's ``data.conversation`` section (and its alpaca columns)."""
    return Mapping(
        messages=conversation_cfg.messages_column,
        tools=conversation_cfg.tools_column,
        system=conversation_cfg.system_column,
        role_key=conversation_cfg.role_key,
        content_key=conversation_cfg.content_key,
        roles=dict(conversation_cfg.roles),
        instruction=data_cfg.instruction_column,
        input=data_cfg.input_column,
        output=data_cfg.answer_columns[0],
    )


def table(records: list[dict], columns: Iterable[str], data_cfg) -> dict[str, list]:
    """One file's records as ingested columns: ``text`` (the dedup :func:`key`, or the raw record as JSON
    when it is refused), ``prompt`` (the first user turn), ``conversation`` (canonical, JSON) and
    ``error`` (``"reason: detail"``, '' when read)."""
    conf = data_cfg.conversation
    mapping = mapping_of(conf, data_cfg)
    columns = list(columns)
    if conf.format != "auto":
        fmt = conf.format
    else:
        turns = next((r.get(mapping.messages or "conversations") for r in records), None)
        fmt = detect_format(columns, mapping, turns)
    if fmt == "alpaca":  # the first answer column present, as for instruction data
        output = next((c for c in data_cfg.answer_columns if c in columns), mapping.output)
        mapping = Mapping(**{**mapping.__dict__, "output": output})
    return table_of(records, lambda r: read(r, fmt, mapping), key, first_user_turn, "conversation")


def table_of(records: list[dict], read_one, key_of, prompt_of, column: str) -> dict[str, list]:
    """Records read one by one into ingested columns: ``text`` (``key_of`` the read row, or the raw record
    as JSON when it is refused), ``prompt`` (``prompt_of``), ``column`` (the read row as JSON) and ``error``
    ("reason: detail" of the :class:`ConversationError` that refused it, '' when read)."""
    out: dict[str, list] = {"text": [], "prompt": [], column: [], "error": []}
    for record in records:
        record = {k: plain(v) for k, v in record.items() if not str(k).startswith("_")}
        try:
            row = read_one(record)
        except ConversationError as exc:
            out["text"].append(json.dumps(record, ensure_ascii=False, default=str)[:20_000])
            out["prompt"].append("")
            out[column].append("")
            out["error"].append(f"{exc.reason}: {exc.detail}")
            continue
        out["text"].append(key_of(row))
        out["prompt"].append(prompt_of(row))
        out[column].append(json.dumps(row, ensure_ascii=False))
        out["error"].append("")
    return out
