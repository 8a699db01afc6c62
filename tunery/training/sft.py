"""Instruction tuning (task: sft) data preparation and generation for causal language models.

Each instruction row (instruction, input, output) becomes a chat conversation rendered with the model's
own chat template. Only the answer is learned: every prompt token (system prompt, user turn, the
assistant header) has label -100, the answer tokens and the end-of-turn token are the labels. The model
therefore learns to answer and to stop, not to reproduce prompts.

Nothing here imports torch, transformers or datasets at module level (the CLI and flows import this
module cheaply); the heavy imports happen inside the functions that need them.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

import pandas as pd

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and every HF model) ignores

# Reasons an example is skipped (keys of the `skipped` statistics).
SKIP_EMPTY_ANSWER = "empty_answer"
SKIP_PROMPT_TOO_LONG = "prompt_too_long"


def build_messages(instruction: str, input: str, system_prompt: str | None) -> list[dict]:
    """The chat conversation (without the answer) for one instruction row.

    Args:
        instruction: the task given to the model.
        input: optional context; appended to the instruction after a blank line when non-empty.
        system_prompt: a system message placed first, or None for the template's default behaviour.

    Returns:
        Chat messages (``{"role", "content"}`` dicts) ending with the user turn.
    """
    user = f"{instruction}\n\n{input}" if input else instruction
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [*messages, {"role": "user", "content": user}]


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    # The chat template already writes every special token (BOS included, where a model uses one);
    # letting the tokenizer add its own would duplicate them.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _end_of_turn(tail: list[int], eos_id: int | None) -> list[int]:
    """Cut what the template writes after the answer's end-of-turn token (SmolLM2 adds a newline)."""
    if eos_id is not None and eos_id in tail:
        last = len(tail) - 1 - tail[::-1].index(eos_id)
        return tail[: last + 1]
    return tail  # templates whose end-of-turn marker is not the eos token: keep their whole tail


def _prompt_and_answer(tokenizer, messages: list[dict], output: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the answer (answer text + end-of-turn token(s))."""
    prompt_text = _render(tokenizer, messages, generation_prompt=True)
    full_text = _render(tokenizer, [*messages, {"role": "assistant", "content": output}], False)
    prompt_ids, full_ids = _ids(tokenizer, prompt_text), _ids(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        answer_ids = full_ids[len(prompt_ids) :]
    elif full_text.startswith(prompt_text):
        # BPE merges across the prompt/answer boundary made the full tokenisation disagree with the
        # prompt's: tokenise the answer part of the rendered text on its own and concatenate, so the
        # prompt the model is trained on is exactly the prompt it will be given at generation time.
        answer_ids = _ids(tokenizer, full_text[len(prompt_text) :])
    else:
        # The template renders the generation prompt differently from a finished conversation (e.g.
        # templates that rewrite earlier turns): fall back to the answer text and an explicit eos.
        answer_ids = _ids(tokenizer, output + (tokenizer.eos_token or ""))
    return prompt_ids, _end_of_turn(answer_ids, tokenizer.eos_token_id)


def encode_with_reason(
    tokenizer,
    instruction: str,
    input: str,
    output: str,
    system_prompt: str | None,
    max_length: int,
    min_answer_tokens: int = 1,
) -> tuple[dict[str, list[int]] | None, str | None]:
    """Like :func:`encode_example`, but also says why an example was skipped.

    Args:
        tokenizer, instruction, input, output, system_prompt, max_length, min_answer_tokens: as for
            :func:`encode_example`.

    Returns:
        ``(example, None)`` or ``(None, reason)`` with reason ``empty_answer`` or ``prompt_too_long``.
    """
    if not output.strip():
        return None, SKIP_EMPTY_ANSWER
    messages = build_messages(instruction, input, system_prompt)
    prompt_ids, answer_ids = _prompt_and_answer(tokenizer, messages, output)
    # The prompt is never cut: cutting its head would drop the system prompt, the chat header and the
    # start of the instruction, teaching the model to answer a request it never saw. A prompt that
    # leaves no room for the answer therefore skips the example; otherwise the answer keeps its head
    # (a truncated answer loses its end-of-turn token, so such an example does not teach stopping).
    room = max_length - len(prompt_ids)
    if room < min(min_answer_tokens, len(answer_ids)) or room < 1:
        return None, SKIP_PROMPT_TOO_LONG
    answer_ids = answer_ids[:room]
    return {
        "input_ids": prompt_ids + answer_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }, None


def encode_example(
    tokenizer,
    instruction: str,
    input: str,
    output: str,
    system_prompt: str | None,
    max_length: int,
    min_answer_tokens: int = 1,
) -> dict[str, list[int]] | None:
    """Tokenise one instruction row for training, with the prompt masked out of the loss.

    Args:
        tokenizer: a tokenizer with a chat template.
        instruction: the task given to the model.
        input: optional context (may be empty).
        output: the answer to learn.
        system_prompt: system message, or None.
        max_length: maximum tokens of the example; the prompt is kept whole and the answer keeps its head.
        min_answer_tokens: fewest answer tokens an example may keep after truncation (at least 1).

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt tokens), or None when the example
        cannot be used (empty answer, or a prompt too long to leave room for the answer); use
        :func:`encode_with_reason` to learn which.
    """
    example, _ = encode_with_reason(
        tokenizer, instruction, input, output, system_prompt, max_length, min_answer_tokens
    )
    return example


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Pack whole examples into sequences of at most ``max_length`` tokens (best fit, longest first).

    No example is split and labels are copied as they are (-100 stays -100). ``position_ids`` restart at
    0 for every packed example, so each one sees the positions it would see alone.

    Caveat: with plain causal attention a token also *attends* to the earlier examples of its sequence
    (cross-contamination of context; the loss itself never crosses a boundary, since the first token of
    every example is a prompt token with label -100). transformers 5 removes this when the model gets
    ``position_ids`` with NO ``attention_mask`` and no cache: it then derives a block-diagonal causal
    mask from where the positions restart (eager, SDPA and flash-attention alike). :class:`SftCollator`
    batches packed examples that way by default; a caller that passes an ``attention_mask`` of ones
    (or enables the cache) gets plain causal attention across the packed examples.

    Args:
        examples: encoded examples (``input_ids``, ``labels``; ``attention_mask`` is rebuilt).
        max_length: maximum tokens per packed sequence; longer examples are an error.

    Returns:
        Packed examples with ``input_ids``, ``attention_mask``, ``labels`` and ``position_ids``.
    """
    bins: list[list[dict]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted: bisect finds the best fit
    for example in sorted(examples, key=lambda e: len(e["input_ids"]), reverse=True):
        size = len(example["input_ids"])
        if size > max_length:
            raise ValueError(f"an example of {size} tokens does not fit max_length {max_length}")
        at = bisect.bisect_left(free, (size, -1))
        if at == len(free):
            bins.append([])
            space, index = max_length, len(bins) - 1
        else:
            space, index = free.pop(at)
        bins[index].append(example)
        bisect.insort(free, (space - size, index))
    return [_concatenate(group) for group in bins]


def _concatenate(group: list[dict]) -> dict[str, list[int]]:
    packed: dict[str, list[int]] = {"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []}
    for example in group:
        size = len(example["input_ids"])
        packed["input_ids"] += example["input_ids"]
        packed["labels"] += example["labels"]
        packed["attention_mask"] += [1] * size
        packed["position_ids"] += list(range(size))
    return packed


class SftCollator:
    """Right-pads a batch of encoded (or packed) examples into torch tensors.

    ``input_ids`` are padded with the pad token, ``attention_mask`` with 0, ``labels`` with -100 (padding
    is never learned, even when the pad token is the eos token) and ``position_ids``, when present, with 0.

    Packed batches (those with ``position_ids``) are isolated by default: the ``attention_mask`` is left
    out and ``use_cache=False`` is added, which makes transformers mask attention per packed example
    (see :func:`pack`). Padding then needs no mask: it sits after every real token (right padding, causal
    attention), each padded position starts its own block (position 0), and its labels are -100.
    """

    def __init__(self, pad_token_id: int, isolate_packed: bool = True) -> None:
        """Args:
        pad_token_id: token id written into padded ``input_ids`` positions.
        isolate_packed: for packed batches, drop ``attention_mask`` so examples cannot attend each other.
        """
        self.pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        self.isolate_packed = isolate_packed

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad ``features`` to the longest one.

        Args:
            features: examples with list (or tensor) values.

        Returns:
            ``LongTensor`` values of shape (batch, longest); packed and isolated batches have no
            ``attention_mask`` but ``use_cache: False``.
        """
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        isolate = self.isolate_packed and "position_ids" in features[0]
        batch: dict[str, Any] = {}
        for key in features[0]:
            if isolate and key == "attention_mask":
                continue
            pad = self.pad_values.get(key, 0)
            rows = [list(f[key]) + [pad] * (longest - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        if isolate:
            batch["use_cache"] = False  # with a cache, transformers ignores the packed-sequence boundaries
        return batch


def _encode_conversations(frame: pd.DataFrame, tokenizer, max_length: int, train_on: str):
    """Conversation rows (``conversation`` column, canonical JSON) as examples, loss on assistant turns.

    The clean stage fitted each conversation to ``max_length``; an example still over it (a template that
    tokenises a turn's own example longer than the whole) is skipped and counted (``prompt_too_long``)."""
    import json

    from tunery.data.templates import tool_style
    from tunery.training import chat

    style = tool_style(tokenizer)
    examples, skipped = [], Counter()
    for raw in frame["conversation"]:
        for example in chat.encode(tokenizer, json.loads(raw), train_on=train_on, style=style)["examples"]:
            if len(example["input_ids"]) > max_length:
                skipped[SKIP_PROMPT_TOO_LONG] += 1
                continue
            examples.append({**example, "attention_mask": [1] * len(example["input_ids"])})
    return examples, skipped


def _encode_split(
    frame: pd.DataFrame, tokenizer, max_length: int, system_prompt: str | None, train_on: str = "all"
):
    if "conversation" in frame.columns:
        return _encode_conversations(frame, tokenizer, max_length, train_on)
    examples, skipped = [], Counter()
    columns = (frame["instruction"], frame["input"], frame["output"])
    for instruction, context, output in zip(*columns, strict=True):
        example, reason = encode_with_reason(
            tokenizer, str(instruction), str(context or ""), str(output), system_prompt, max_length
        )
        if example is None:
            skipped[reason] += 1
        else:
            examples.append(example)
    return examples, skipped


def encode_rows(
    frame: pd.DataFrame, tokenizer, max_length: int, system_prompt: str | None
) -> list[list[dict]]:
    """The evaluation examples of each row, in row order (a conversation may give several; a row that
    cannot be encoded within ``max_length`` gives none): for per-row losses such as the forgetting check's
    perplexity."""
    return [
        _encode_split(frame.iloc[[i]], tokenizer, max_length, system_prompt)[0] for i in range(len(frame))
    ]


def _split_stats(rows: int, examples: list[dict], sequences: list[dict], skipped: Counter) -> dict:
    tokens = sum(len(e["input_ids"]) for e in examples)
    label_tokens = sum(sum(1 for x in e["labels"] if x != IGNORE_INDEX) for e in examples)
    return {
        "rows": rows,
        "examples": len(examples),
        "skipped": dict(skipped),
        "sequences": len(sequences),
        "packed": sequences is not examples,
        "tokens": tokens,
        "label_tokens": label_tokens,
        "label_share": label_tokens / tokens if tokens else 0.0,
    }


def _dataset(rows: list[dict]):
    from datasets import Dataset

    if not rows:  # from_list([]) would have no columns at all
        return Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []})
    return Dataset.from_dict({key: [r[key] for r in rows] for key in rows[0]})


def build_sft_datasets(
    frames: dict[str, pd.DataFrame],
    tokenizer,
    max_length: int,
    system_prompt: str | None,
    packing: bool,
    train_on: str = "all",
) -> tuple[dict[str, Any], dict]:
    """Encode every split's instruction rows (or conversations); pack the training split if asked.

    Only the training split is packed: evaluation keeps one example per row so per-example losses and
    generations stay comparable between runs.

    Args:
        frames: split name -> frame with columns instruction, input, output (or ``conversation``).
        tokenizer: a tokenizer with a chat template.
        max_length: maximum tokens per example (and per packed sequence).
        system_prompt: system message for every conversation, or None.
        packing: pack the ``train`` split.
        train_on: conversations: ``all`` assistant turns, or the ``last`` one.

    Returns:
        ``(datasets, stats)``: a ``datasets.Dataset`` per split, and per split the rows, examples,
        skipped examples by reason, sequences, tokens, label tokens and the share of label tokens.
    """
    datasets, stats = {}, {}
    for split, frame in frames.items():
        examples, skipped = _encode_split(frame, tokenizer, max_length, system_prompt, train_on)
        sequences = pack(examples, max_length) if packing and split == "train" else examples
        datasets[split] = _dataset(sequences)
        stats[split] = _split_stats(len(frame), examples, sequences, skipped)
    return datasets, stats


def generate_answers(
    model,
    tokenizer,
    rows: pd.DataFrame,
    system_prompt: str | None,
    max_new_tokens: int,
    batch_size: int = 8,
    repetition_penalty: float = 1.0,
) -> list[Reply]:
    """Greedy answers to instruction rows, from the same chat prompt the model was trained on.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (with a chat template).
        rows: frame with columns instruction and input.
        system_prompt: system message, or None.
        max_new_tokens: most tokens generated per answer.
        batch_size: prompts generated together.
        repetition_penalty: ``sft.repetition_penalty`` (1.0: off).

    Returns:
        One answer per row, in row order: only the generated text, special tokens removed (each a
        :class:`Reply`, which says whether it stopped by itself).
    """
    prompts = [
        _render(tokenizer, build_messages(str(i), str(x or ""), system_prompt), generation_prompt=True)
        for i, x in zip(rows["instruction"], rows["input"], strict=True)
    ]
    answers: list[Reply] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        answers += _generate_batch(model, tokenizer, batch, max_new_tokens, repetition_penalty)
    return answers


class Reply(str):
    """A generated answer (its text, special tokens removed) that also says whether generation stopped by
    itself: an end-of-turn token came before the ``max_new_tokens`` budget cut it (``stopped``)."""

    stopped: bool

    def __new__(cls, text: str, stopped: bool) -> Reply:
        reply = super().__new__(cls, text)
        reply.stopped = stopped
        return reply


def stop_rate(replies: list[str]) -> float | None:
    """Share of replies that ended by themselves (None when no reply carries the information)."""
    known = [reply.stopped for reply in replies if isinstance(reply, Reply)]
    return float(sum(known) / len(known)) if known else None


def _stop_ids(model, tokenizer) -> list[int]:
    """The template's end-of-turn tokens (as in serving) and the model's own eos ids."""
    from tunery.data.templates import end_of_turn_ids

    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    return sorted(end_of_turn_ids(tokenizer) | set(configured))


def _generate_batch(
    model, tokenizer, prompts: list[str], max_new_tokens: int, repetition_penalty: float = 1.0
) -> list[Reply]:
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ends = _stop_ids(model, tokenizer)
    encoded = [_ids(tokenizer, prompt) for prompt in prompts]
    longest = max(len(ids) for ids in encoded)
    # Left padding (done here, not by flipping the shared tokenizer's padding_side): every prompt then
    # ends in the last column, where generation appends the new tokens.
    input_ids = [[pad_id] * (longest - len(ids)) + ids for ids in encoded]
    attention_mask = [[0] * (longest - len(ids)) + [1] * len(ids) for ids in encoded]
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(input_ids, device=model.device),
            attention_mask=torch.tensor(attention_mask, device=model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            repetition_penalty=repetition_penalty,
            pad_token_id=pad_id,
            **({"eos_token_id": ends} if ends else {}),
        )
    new_tokens = out[:, longest:].tolist()
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [
        Reply(text.strip(), stopped=any(token in ends for token in tokens))
        for text, tokens in zip(texts, new_tokens, strict=True)
    ]


def generate_replies(
    model,
    tokenizer,
    turns: list[dict],
    max_new_tokens: int,
    batch_size: int = 8,
    repetition_penalty: float = 1.0,
) -> list[Reply]:
    """Greedy assistant replies to conversation prefixes (``messages`` and ``tools`` of
    ``tunery.evaluation.generation.conversation_turns``), prompted exactly as training saw them."""
    from tunery.data.templates import prepared, tool_style

    style = tool_style(tokenizer)
    prompts = []
    for turn in turns:
        messages, tools = prepared(tokenizer, {"messages": turn["messages"], "tools": turn["tools"]}, style)
        prompts.append(
            tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        )
    answers: list[Reply] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        answers += _generate_batch(model, tokenizer, batch, max_new_tokens, repetition_penalty)
    return answers
