"""Preference data: one canonical shape for every paired and unpaired preference format tunery reads, and
the checks that quarantine a pair a preference objective cannot learn from.

The canonical pair is TRL's conversational preference shape (explicit prompt), with tools beside it::

    {"prompt": [messages ending on a user turn], "chosen": [assistant (and tool) messages],
     "rejected": [...], "tools": [...]}

and the canonical unpaired row (KTO) replaces ``chosen``/``rejected`` by ``completion`` and a boolean
``label`` (True: a desirable answer). Messages are the canonical messages of
:mod:`tunery.data.conversations` (``role``, ``content``, ``tool_calls``, ``tool_call_id``, ``name``),
without the SFT ``weight``: what a preference objective learns from is the answer after the prompt.

Readers, one per format (:data:`FORMATS`), each building the two whole conversations and reading them
with the conversation readers (so roles, tool calls and arguments are checked exactly as for SFT):

- ``trl``: ``prompt``/``chosen``/``rejected``, either plain text (the prompt becomes one user turn, each
  answer one assistant turn) or lists of messages; without a ``prompt`` column (TRL's implicit prompt)
  ``chosen`` and ``rejected`` are whole conversations and the prompt is what precedes their answers;
- ``openai``: OpenAI's preference fine-tuning rows, ``input`` (``messages``, ``tools``) with
  ``preferred_output`` and ``non_preferred_output`` (lists of assistant messages);
- ``sharegpt``: LLaMA-Factory's ranking rows, ``conversations`` (ShareGPT turns, with ``system`` and
  ``tools`` columns) and one ShareGPT turn (or a list of them) in each of ``chosen`` and ``rejected``;
- ``messages``: LLaMA-Factory's ``chosen_messages``/``rejected_messages``, two whole conversations whose
  contents may be lists of typed parts (``{"type": "text", "value": ...}``) and carry a ``loss_weight``;
- ``kto``: unpaired rows, ``messages`` (a whole conversation) or ``prompt``/``completion`` (text or
  messages), with a boolean ``label``.

A reader raises :class:`PreferenceError` with a reason of :data:`REASONS`; nothing is repaired silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Mapping as MappingABC
from typing import Any

from tunery.data import conversations as conv

FORMATS = ("trl", "openai", "sharegpt", "messages", "kto")
PAIRED = ("trl", "openai", "sharegpt", "messages")

REASONS = {
    **conv.REASONS,
    "chosen_equals_rejected": "the chosen and the rejected answers are the same",
    "empty_side": "the chosen or the rejected answer (or the KTO completion) is empty",
    "prompt_missing": "no user turn before the answer: there is no prompt",
    "prompt_mismatch": "the chosen and the rejected conversations do not share their prompt",
    "bad_label": "an unpaired (KTO) row's label is not true or false",
    "too_long": "the prompt and the longer answer do not fit model.max_length tokens",
}


class PreferenceError(conv.ConversationError):
    """A preference row tunery will not train on; ``reason`` is a key of :data:`REASONS`."""

    reasons = REASONS


def detect_format(columns: Iterable[str]) -> str:
    """The preference format of a table with these columns."""
    names = set(columns)
    if {"chosen_messages", "rejected_messages"} <= names:
        return "messages"
    if {"input", "preferred_output", "non_preferred_output"} <= names:
        return "openai"
    if {"conversations", "chosen", "rejected"} <= names:
        return "sharegpt"
    if {"chosen", "rejected"} <= names:
        return "trl"
    if "label" in names and ("messages" in names or {"prompt", "completion"} <= names):
        return "kto"
    raise ValueError(
        f"no preference format matches the columns {sorted(names)}: expected prompt/chosen/rejected (trl), "
        "input/preferred_output/non_preferred_output (openai), conversations/chosen/rejected (sharegpt), "
        "chosen_messages/rejected_messages, or messages (or prompt/completion) with a label (kto)"
    )


def read(record: MappingABC[str, Any], fmt: str) -> dict:
    """The canonical pair (or, for ``kto``, unpaired row) of one record of format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; one of {FORMATS}")
    if not isinstance(record, MappingABC):
        raise PreferenceError("not_a_conversation", "the record is not an object")
    if fmt == "kto":
        return _kto(record)
    return _READERS[fmt](record)


def pair_of(chosen: dict, rejected: dict, answers: tuple[int, int] | None = None) -> dict:
    """The canonical pair of two whole canonical conversations that answer the same prompt.

    ``answers``: how many trailing messages of each are the answer, where the format says it (an explicit
    prompt); without it the answer is everything after the last user turn (a prompt implied by two whole
    conversations)."""
    prompt_c, answer_c = _split(chosen, "chosen", answers[0] if answers else None)
    prompt_r, answer_r = _split(rejected, "rejected", answers[1] if answers else None)
    if prompt_c != prompt_r or chosen.get("tools", []) != rejected.get("tools", []):
        where = "tools" if prompt_c == prompt_r else f"turn {_first_difference(prompt_c, prompt_r) + 1}"
        raise PreferenceError(
            "prompt_mismatch", f"the two conversations differ before their answers ({where})"
        )
    if conv.key({"messages": answer_c}) == conv.key({"messages": answer_r}):  # tool-call ids aside
        raise PreferenceError("chosen_equals_rejected", "both answers are the same")
    return {"prompt": prompt_c, "chosen": answer_c, "rejected": answer_r, "tools": chosen.get("tools", [])}


def is_unpaired(row: dict) -> bool:
    return "completion" in row


def key(row: dict) -> str:
    """One string for the whole row (exact and near dedup compare these): the prompt, then each answer."""
    parts = [prompt_key(row)]
    for side in ("completion",) if is_unpaired(row) else ("chosen", "rejected"):
        parts.append(f"[{side}]\n" + conv.key({"messages": row[side]}))
    if is_unpaired(row):
        parts.append(f"[label] {row['label']}")
    return "\n".join(parts)


def prompt_key(row: dict) -> str:
    """The whole prompt as one string (rows of one prompt share a split; the leakage check compares these)."""
    return conv.key({"messages": row["prompt"]})


def recheck(row: dict) -> None:
    """Refuse what cleaning the text can break in a row that was read: an answer left empty, or two answers
    left the same."""
    for side in ("completion",) if is_unpaired(row) else ("chosen", "rejected"):
        _refuse_empty(row[side], side)
    if not is_unpaired(row) and conv.key({"messages": row["chosen"]}) == conv.key(
        {"messages": row["rejected"]}
    ):
        raise PreferenceError("chosen_equals_rejected", "both answers are the same after cleaning")


# dedup_key's verdicts of unpaired (KTO) rows; a pair's verdict says which of its two answers is preferred
UNPAIRED_VERDICTS = ("desirable", "undesirable")


def dedup_key(row: dict) -> tuple[str, str]:
    """``(key, verdict)``: rows with one key judge the same answers to the same prompt. Equal verdicts are
    duplicates; different ones contradict each other (a pair preferred the other way round, one completion
    labelled both desirable and undesirable)."""
    prompt = prompt_key(row)
    if is_unpaired(row):
        verdict = UNPAIRED_VERDICTS[0] if row["label"] else UNPAIRED_VERDICTS[1]
        return f"{prompt}\n[completion]\n{conv.key({'messages': row['completion']})}", verdict
    chosen, rejected = (conv.key({"messages": row[side]}) for side in ("chosen", "rejected"))
    first, second = sorted((chosen, rejected))
    verdict = "the first answer preferred" if chosen == first else "the second answer preferred"
    return f"{prompt}\n[answer]\n{first}\n[answer]\n{second}", verdict


def texts(row: dict) -> list[str]:
    """The natural-language content of every message of the row (PII scrubbing and length checks)."""
    sides = ("prompt", "completion") if is_unpaired(row) else ("prompt", "chosen", "rejected")
    return [m["content"] for side in sides for m in row[side] if m.get("content")]


def answer_text(messages: list[dict]) -> str:
    """An answer's text as a reader sees it (side-by-side reports; tool calls as ``name(arguments)``)."""
    out = []
    for m in messages:
        if m.get("content"):
            out.append(m["content"])
        for call in m.get("tool_calls", ()):
            out.append(f"{call['function']['name']}({json.dumps(call['function']['arguments'])})")
    return "\n".join(out)


def rendered_length(tokenizer, row: dict) -> int:
    """Tokens of the prompt with its longer answer, as the model's chat template writes them."""
    from tunery.data import templates

    sides = ("completion",) if is_unpaired(row) else ("chosen", "rejected")
    return max(
        templates.rendered_length(tokenizer, {"messages": row["prompt"] + row[side], "tools": row["tools"]})
        for side in sides
    )


def check_length(tokenizer, row: dict, max_length: int) -> int:
    """The row's :func:`rendered_length`; raises ``too_long`` past ``max_length`` (an answer cut short
    would teach the objective to prefer a truncated text)."""
    length = rendered_length(tokenizer, row)
    if length > max_length:
        raise PreferenceError(
            "too_long", f"{length} tokens with the chat template > model.max_length {max_length}"
        )
    return length


def table(records: list[dict], columns: Iterable[str], fmt: str = "auto") -> dict[str, list]:
    """One file's records as ingested columns: ``text`` (the dedup :func:`key`, or the raw record as JSON
    when it is refused), ``prompt`` (:func:`prompt_key`), ``pair`` (canonical, JSON) and ``error``
    (``"reason: detail"``, '' when read)."""
    columns = list(columns)
    fmt = detect_format(columns) if fmt == "auto" else fmt
    return conv.table_of(records, lambda r: read(r, fmt), key, prompt_key, "pair")


# -- readers -------------------------------------------------------------------------------------------


def _conversation(record: dict, fmt: str, side: str) -> dict:
    """A whole conversation read by the conversation reader of ``fmt``; its errors become this module's
    (an empty answer is found before reading, by :func:`_refuse_empty`)."""
    try:
        return conv.read(record, fmt)
    except conv.ConversationError as exc:
        if exc.reason == "not_a_conversation" and exc.detail == "no user turn":
            raise PreferenceError("prompt_missing", f"{side}: no user turn") from None
        raise PreferenceError(exc.reason, f"{side}: {exc.detail}") from None


def _refuse_empty(answer: list, side: str) -> None:
    """``empty_side`` for an answer whose assistant turns say nothing (no text, no tool call)."""
    turns = [m for m in answer if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
    if turns and not any(str(m.get("content") or "").strip() or m.get("tool_calls") for m in turns):
        raise PreferenceError("empty_side", f"{side} has no content and no tool call")


def _split(conversation: dict, side: str, answer_turns: int | None = None) -> tuple[list[dict], list[dict]]:
    """``(prompt, answer)``: the last ``answer_turns`` messages are the answer (an explicit prompt), else
    those after the last user turn. A given prompt must ask for the answer (end on a user turn, or on a
    tool result the answer goes on from), and an answer holds no user turn: a boundary that says otherwise
    is refused, never moved."""
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in conversation["messages"]]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise PreferenceError("prompt_missing", f"{side}: no user turn")
    cut = users[-1] + 1 if answer_turns is None else len(messages) - answer_turns
    prompt, answer = messages[:cut], messages[cut:]
    if not prompt or not any(m["role"] == "user" for m in prompt):
        raise PreferenceError("prompt_missing", f"{side}: no user turn before the answer")
    if prompt[-1]["role"] not in ("user", "tool"):
        raise PreferenceError(
            "not_a_conversation", f"{side}: the prompt ends on a {prompt[-1]['role']} turn: nothing to answer"
        )
    if not answer:
        raise PreferenceError("empty_side", f"{side}: no answer after the prompt")
    if any(m["role"] in ("user", "system") for m in answer):
        raise PreferenceError("not_a_conversation", f"{side}: the answer holds a user or system turn")
    return prompt, answer


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _require(record: MappingABC[str, Any], *names: str) -> None:
    for name in names:
        value = record.get(name)
        if value is None or (isinstance(value, (str, list, dict)) and not value):
            reason = "prompt_missing" if name in ("prompt", "input", "conversations") else "empty_side"
            raise PreferenceError(reason, f"{name!r} is missing or empty")


def _messages(value: Any, where: str, role: str) -> list:
    """A side given as text (one ``role`` turn), a message object or a list of messages."""
    if isinstance(value, str):
        if not value.strip():
            raise PreferenceError("prompt_missing" if role == "user" else "empty_side", f"{where} is blank")
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    raise PreferenceError("not_a_conversation", f"{where} is {type(value).__name__}, not text or messages")


def _trl(record: MappingABC[str, Any]) -> dict:
    _require(record, "chosen", "rejected")
    tools = record.get("tools")
    if record.get("prompt") is None:  # implicit prompt: two whole conversations
        if isinstance(record["chosen"], str):
            raise PreferenceError("prompt_missing", "text answers without a 'prompt' column")
        sides = [_messages(record[s], s, "assistant") for s in ("chosen", "rejected")]
        for whole, side in zip(sides, ("chosen", "rejected"), strict=True):
            _refuse_empty(whole[-1:], side)
        chosen, rejected = (
            _conversation({"messages": _flat(m), "tools": tools}, "openai", s)
            for m, s in zip(sides, ("chosen", "rejected"), strict=True)
        )
        return pair_of(chosen, rejected)
    prompt = _messages(record["prompt"], "prompt", "user")
    answers = [_messages(record[s], s, "assistant") for s in ("chosen", "rejected")]
    return _explicit(prompt, answers, tools, "openai")


def _explicit(prompt: list, answers: list[list], tools: Any, fmt: str, extra: dict | None = None) -> dict:
    """The pair of a format that gives the prompt and each answer apart (ShareGPT answers are checked for
    emptiness by their reader: their turns are ``from``/``value``)."""
    for answer, side in zip(answers, ("chosen", "rejected"), strict=True):
        if fmt != "sharegpt":
            _refuse_empty(answer, side)
    key = "conversations" if fmt == "sharegpt" else "messages"
    sides = [
        _conversation({**(extra or {}), key: _flat(prompt + answer), "tools": tools}, fmt, side)
        for answer, side in zip(answers, ("chosen", "rejected"), strict=True)
    ]
    return pair_of(sides[0], sides[1], answers=(len(answers[0]), len(answers[1])))


def _openai_preference(record: MappingABC[str, Any]) -> dict:
    _require(record, "input", "preferred_output", "non_preferred_output")
    source = record["input"]
    if not isinstance(source, dict):
        raise PreferenceError("not_a_conversation", f"'input' is {type(source).__name__}, not an object")
    if not isinstance(source.get("messages"), list) or not source["messages"]:
        raise PreferenceError("prompt_missing", "'input' has no list of messages")
    answers = [_messages(record[c], c, "assistant") for c in ("preferred_output", "non_preferred_output")]
    return _explicit(source["messages"], answers, source.get("tools"), "openai")


def _sharegpt(record: MappingABC[str, Any]) -> dict:
    _require(record, "conversations", "chosen", "rejected")
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise PreferenceError("not_a_conversation", "'conversations' is not a list of turns")
    answers = []
    for side in ("chosen", "rejected"):
        answer = record[side] if isinstance(record[side], list) else [record[side]]
        for turn in answer:
            said = isinstance(turn, dict) and str(turn.get("value") or "").strip()
            if isinstance(turn, dict) and turn.get("from") in ("gpt", "assistant") and not said:
                raise PreferenceError("empty_side", f"{side} has an empty turn")
        answers.append(answer)
    extra = {k: v for k, v in record.items() if k not in ("conversations", "chosen", "rejected", "tools")}
    return _explicit(turns, answers, record.get("tools"), "sharegpt", extra)


def _messages_pair(record: MappingABC[str, Any]) -> dict:
    _require(record, "chosen_messages", "rejected_messages")
    sides = []
    for column, side in (("chosen_messages", "chosen"), ("rejected_messages", "rejected")):
        messages = record[column]
        if not isinstance(messages, list):
            raise PreferenceError("not_a_conversation", f"{column!r} is not a list of messages")
        _refuse_empty(_flat(messages)[-1:], side)
        sides.append(
            _conversation({"messages": _flat(messages), "tools": record.get("tools")}, "openai", side)
        )
    return pair_of(sides[0], sides[1])


def _kto(record: MappingABC[str, Any]) -> dict:
    label = record.get("label")
    if not isinstance(label, bool):
        raise PreferenceError("bad_label", f"label is {label!r}, not true or false")
    tools = record.get("tools")
    if record.get("messages") is not None:
        messages = record["messages"]
        if not isinstance(messages, list):
            raise PreferenceError("not_a_conversation", "'messages' is not a list of messages")
        answer_turns = None
        _refuse_empty(_flat(messages)[-1:], "completion")
    else:
        _require(record, "prompt", "completion")
        completion = _messages(record["completion"], "completion", "assistant")
        _refuse_empty(completion, "completion")
        messages = _messages(record["prompt"], "prompt", "user") + completion
        answer_turns = len(completion)
    whole = _conversation({"messages": _flat(messages), "tools": tools}, "openai", "completion")
    prompt, completion = _split(whole, "completion", answer_turns)
    return {"prompt": prompt, "completion": completion, "label": label, "tools": whole.get("tools", [])}


def _flat(messages: list) -> list:
    """Messages with typed content parts (LLaMA-Factory v1, OpenAI) as plain text content; per-turn weights
    (LLaMA-Factory's ``loss_weight``, SFT's ``weight``) are dropped: the answer after the prompt is what a
    preference objective learns from. A part that is not text (an image) refuses the row."""
    out = []
    for turn, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            out.append(message)  # the conversation reader says what is wrong with it
            continue
        message = {k: v for k, v in message.items() if k not in ("loss_weight", "weight")}
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type", "text") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise PreferenceError("not_a_conversation", f"turn {turn} has a {kind!r} part, not text")
                text = part.get("text", part.get("value"))
                if not isinstance(text, str):
                    raise PreferenceError("not_a_conversation", f"turn {turn} has a text part without text")
                texts.append(text)
            message["content"] = "".join(texts)
        out.append(message)
    return out


_READERS = {"trl": _trl, "openai": _openai_preference, "sharegpt": _sharegpt, "messages": _messages_pair}
