"""Multi-turn conversations encoded on the model's own chat template, loss on assistant turns only.

The contract, checked by a golden test for several templates: for every trained assistant turn, the
token ids the model is trained on up to that turn are exactly
``tokenizer.apply_chat_template(messages_before_it, tools=tools, add_generation_prompt=True)`` (what the
model is given at inference), and the turn's labels are its answer ending with the end-of-turn token.
What the template writes after that token (SmolLM2's newline) and every other token is context (label
-100). Where a template renders earlier turns differently once later ones follow, the later turn becomes
an example of its own (:func:`encode`). A template that writes no end-of-turn token after an answer cannot
honour the contract: :class:`TemplateMismatch` says so instead of training a model that never stops.

What the template is handed (tools written as text where it has none) is ``tunery.data.templates``';
conversations are the canonical shape of ``tunery.data.conversations``.
"""

from __future__ import annotations

from typing import Any

from tunery.data.templates import end_of_turn_ids, prepared

IGNORE_INDEX = -100
TRAIN_ON = ("all", "last")  # which assistant turns are learned (weight-0 turns never are)


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
