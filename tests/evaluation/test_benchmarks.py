"""Benchmark suites with lm-eval: custom tasks over local JSONL files, scored offline on local model folders.

The model-running tests check lm-eval's numbers against an independent computation with transformers (the
summed log-likelihood of each choice, greedy generation), on real SST-2 rows read from ../shared/data.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import string
from pathlib import Path

import pytest

from tunery.evaluation.benchmarks import (
    BenchmarkError,
    compare_benchmarks,
    hf_model_args,
    offline_and_quiet,
    run_benchmarks,
    write_custom_task,
)

SST2_ROWS_PER_LABEL = 15  # 30 rows in the file, labels alternating
LIMIT = 24  # the first 24 are scored: balanced, so a constant answer scores 0.5
ARITHMETIC = [(2, 2), (1, 3), (5, 4), (10, 10)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


def sst2_rows(shared_data: Path) -> list[dict]:
    """The first 15 negative and 15 positive rows of SST-2's dev set as multiple-choice questions."""
    picked: dict[int, list[dict]] = {0: [], 1: []}
    with (shared_data / "sst2" / "dev.tsv").open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        assert next(reader) == ["label", "content"]
        for label, sentence in reader:
            if len(picked[int(label)]) < SST2_ROWS_PER_LABEL:
                question = f"Review: {sentence}\nSentiment:"
                picked[int(label)].append(
                    {"question": question, "choices": [" negative", " positive"], "answer": int(label)}
                )
    return [row for pair in zip(picked[0], picked[1], strict=True) for row in pair]


@pytest.fixture
def sst2_task(shared_data, tmp_path) -> tuple[Path, list[dict]]:
    rows = sst2_rows(shared_data)
    write_custom_task(
        "sst2_exam", write_jsonl(tmp_path / "sst2.jsonl", rows), tmp_path / "tasks", "multiple_choice"
    )
    return tmp_path / "tasks", rows


# ------------------------------------------------------------------------------------------ the task file


BAD_ROWS = [
    ("multiple_choice", '{"question": "q", "choices": ["a", "b"], "answer": "a"', "not valid JSON"),
    ("multiple_choice", '["q", "a"]', "must be a JSON object"),
    ("multiple_choice", {"choices": ["a", "b"], "answer": 0}, "'question' must be a non-empty string"),
    ("multiple_choice", {"question": "q", "choices": "a b", "answer": 0}, "list of at least two choices"),
    ("multiple_choice", {"question": "q", "choices": ["a", 1], "answer": 0}, "must be a non-empty string"),
    ("multiple_choice", {"question": "q", "choices": ["a", "a"], "answer": 0}, "same choice twice"),
    ("multiple_choice", {"question": "q", "choices": ["a", "b"]}, "no field 'answer'"),
    ("multiple_choice", {"question": "q", "choices": ["a", "b"], "answer": "c"}, "not one of the choices"),
    ("multiple_choice", {"question": "q", "choices": ["a", "b"], "answer": 2}, "outside the 2 choices"),
    ("multiple_choice", {"question": "q", "choices": ["a", "b"], "answer": True}, "one of the choices or"),
    ("generate_until", {"question": "q", "answer": 4}, 'write numbers as "42"'),
    ("generate_until", {"question": "q", "answer": []}, "non-empty string or a list of them"),
    ("generate_until", {"question": "q"}, "no field 'answer'"),
]


@pytest.mark.parametrize(("kind", "bad", "message"), BAD_ROWS, ids=[m for _, _, m in BAD_ROWS])
def test_a_bad_row_is_refused_with_its_file_and_line(tmp_path, kind, bad, message):
    good = {"question": "Q: 1 + 1?\nA:", "choices": ["2", "3"], "answer": "2"}
    # line 1 good, line 2 blank (skipped, still counted), line 3 the bad row
    path = write_jsonl(tmp_path / "exam.jsonl", [good, "", bad, good])
    with pytest.raises(BenchmarkError, match=re.escape(message)) as caught:
        write_custom_task("exam", path, tmp_path / "tasks", kind)
    assert f"{path}:3:" in str(caught.value)
    assert not (tmp_path / "tasks").exists()  # nothing written for a bad file


def test_missing_file_empty_file_and_bad_name_are_refused(tmp_path):
    with pytest.raises(BenchmarkError, match="is not a file"):
        write_custom_task("exam", tmp_path / "missing.jsonl", tmp_path, "generate_until")
    with pytest.raises(BenchmarkError, match="no rows"):
        write_custom_task("exam", write_jsonl(tmp_path / "e.jsonl", ["", " "]), tmp_path, "generate_until")
    good = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(BenchmarkError, match="a letter, then"):
        write_custom_task("../exam", good, tmp_path, "generate_until")
    with pytest.raises(BenchmarkError, match="kind must be"):
        write_custom_task("exam", good, tmp_path, "loglikelihood")


def test_the_yaml_loads_in_lm_eval_and_reads_the_rows_as_written(tmp_path):
    """lm-eval's TaskManager finds the tasks by name in the folder; its documents are the JSONL's rows, with
    the prompt, the choices, the answer and the scoring the YAML promises."""
    from lm_eval.tasks import TaskManager

    mc = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"question": "Capital of France?\nAnswer:", "choices": ["Paris", "Rome"], "answer": "Paris"},
            {
                "question": "Capital of Italy?\nAnswer:",
                "choices": ["Paris", "Rome"],
                "answer": "Rome",
                "id": 7,
            },
        ],
    )
    spaced = write_jsonl(tmp_path / "sp.jsonl", [{"q": "Q?", "options": [" yes", " no"], "gold": 1}])
    gen = write_jsonl(tmp_path / "gen.jsonl", [{"question": "2 + 2 =", "answer": "4"}])
    folder = tmp_path / "tasks"
    write_custom_task("capitals", mc, folder, "multiple_choice")
    write_custom_task("spaced", spaced, folder, "multiple_choice", "q", "gold", "options")
    assert write_custom_task("sums", gen, folder, "generate_until") == folder / "sums.yaml"

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    assert {"capitals", "spaced", "sums"} <= set(manager.all_tasks)
    tasks = manager.load(["capitals", "spaced", "sums"])["tasks"]
    capitals, spaced_task, sums = (
        next(t for n, t in tasks.items() if name in str(n)) for name in ("capitals", "spaced", "sums")
    )

    docs = list(capitals.test_docs())
    assert len(docs) == 2
    assert capitals.doc_to_text(docs[1]) == "Capital of Italy?\nAnswer:"
    assert capitals.doc_to_choice(docs[1]) == ["Paris", "Rome"]
    assert capitals.doc_to_target(docs[1]) == "Rome"
    assert capitals.config.target_delimiter == " "  # choices without a leading space
    assert sorted(capitals._metric_fn_list) == ["acc", "acc_norm"]

    (doc,) = spaced_task.test_docs()
    assert spaced_task.doc_to_target(doc) == 1 and spaced_task.doc_to_choice(doc) == [" yes", " no"]
    assert spaced_task.config.target_delimiter == ""  # " yes" already has its space

    assert sums.config.output_type == "generate_until"
    assert sums.config.generation_kwargs["until"] == ["\n"]
    assert sums.config.generation_kwargs["do_sample"] is False
    assert list(sums._metric_fn_list) == ["exact_match"]


def test_model_arguments_for_plain_adapter_and_tunery_export_folders(tmp_path, tiny_llama):
    """lm-eval's hf model is given the base and the adapter separately, with the tokenizer where it lies."""
    assert hf_model_args(str(tiny_llama)) == {"pretrained": str(tiny_llama)}

    adapter = tmp_path / "adapter-only"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_llama)}))
    assert hf_model_args(str(adapter)) == {
        "pretrained": str(tiny_llama),
        "peft": str(adapter),
        "tokenizer": str(tiny_llama),
    }

    export = tmp_path / "export"  # tunery's prompt-learning export: base/ + adapter/, tokenizer at the top
    (export / "adapter").mkdir(parents=True)
    (export / "base").mkdir()
    (export / "adapter" / "adapter_config.json").write_text("{}")
    (export / "tokenizer.json").write_text("{}")
    assert hf_model_args(str(export)) == {
        "pretrained": str(export / "base"),
        "peft": str(export / "adapter"),
        "tokenizer": str(export),
    }

    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "gone")})
    )
    with pytest.raises(Exception, match="gone"):
        hf_model_args(str(adapter))


def test_offline_and_quiet_restores_what_it_changed(monkeypatch):
    import logging

    import datasets
    import huggingface_hub.constants

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    logging.getLogger("lm_eval").setLevel(logging.DEBUG)
    with offline_and_quiet():
        assert os.environ["HF_DATASETS_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] == "1"
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
        assert logging.getLogger("lm_eval").level == logging.WARNING
        assert datasets.are_progress_bars_disabled()
    assert "HF_DATASETS_OFFLINE" not in os.environ and os.environ["HF_HUB_OFFLINE"] == "0"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
    assert logging.getLogger("lm_eval").level == logging.DEBUG
    logging.getLogger("lm_eval").setLevel(logging.NOTSET)


# ------------------------------------------------------------------------------------------- comparing


def scores(**tasks) -> dict:
    return {"tasks": tasks, "higher_is_better": {t: {"acc": True} for t in tasks}, "settings": {}}


def test_compare_puts_the_models_side_by_side_with_the_candidates_deltas():
    results = {
        "base": scores(exam={"acc": 0.50, "acc_stderr": 0.03, "n": 100}),
        "champion": scores(exam={"acc": 0.60, "acc_stderr": 0.04, "n": 100}),
        "candidate": scores(
            exam={"acc": 0.75, "acc_stderr": None, "n": 100},
            extra={"exact_match,strict": 0.2, "exact_match,strict_stderr": 0.1, "n": 5},
        ),
    }
    rows = compare_benchmarks(results)
    assert [(r["task"], r["metric"]) for r in rows] == [("exam", "acc"), ("extra", "exact_match,strict")]
    exam, extra = rows
    assert (exam["base"], exam["champion"], exam["candidate"], exam["n"]) == (0.50, 0.60, 0.75, 100)
    assert exam["candidate_minus_champion"] == pytest.approx(0.15)
    assert exam["candidate_minus_base"] == pytest.approx(0.25)
    assert exam["candidate_minus_champion_stderr"] is None  # the candidate's stderr is unknown
    assert exam["higher_is_better"] is True
    assert extra["base"] is None and extra["candidate"] == 0.2 and extra["candidate_minus_base"] is None

    results["candidate"]["tasks"]["exam"]["acc_stderr"] = 0.05
    del results["champion"]  # no champion yet
    (exam, _) = compare_benchmarks(results)
    assert exam["champion"] is None and exam["candidate_minus_champion"] is None
    assert exam["candidate_minus_base_stderr"] == pytest.approx((0.03**2 + 0.05**2) ** 0.5)

    with pytest.raises(BenchmarkError, match="unknown model"):
        compare_benchmarks({"challenger": results["base"]})


# --------------------------------------------------------------------------------------- running models


def choice_log_likelihoods(model, tokenizer, context: str, choices: list[str], skip: int = 0) -> list:
    """Summed log-probability (a 0-d tensor) of each choice's tokens after the context: the context's tokens
    are those of the context alone, the choice's the rest of the whole text's. ``skip``: virtual tokens in
    front of the logits (prompt tuning)."""
    import torch

    context_ids = tokenizer(context).input_ids
    encoded = [tokenizer(context + choice).input_ids for choice in choices]
    if all(len(ids) == len(context_ids) + 1 and ids[:-1] == context_ids for ids in encoded):
        # one-token choices after an unchanged context: the same numbers from one pass over the context
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([context_ids])).logits[0, -1].float(), -1)
        return [log_probs[ids[-1]] for ids in encoded]
    same_length = len({len(ids) for ids in encoded}) == 1  # then one forward pass, without padding
    batches = [encoded] if same_length else [[ids] for ids in encoded]
    logits = [row for batch in batches for row in model(input_ids=torch.tensor(batch)).logits[:, skip:]]
    sums = []
    for ids, row in zip(encoded, logits, strict=True):
        log_probs = torch.log_softmax(row.float(), dim=-1)
        sums.append(sum(log_probs[i - 1, ids[i]] for i in range(len(context_ids), len(ids))))
    return sums


def predictions(model, tokenizer, rows: list[dict], skip: int = 0) -> list[int]:
    """The argmax choice of each row by summed log-likelihood."""
    import torch

    with torch.no_grad():
        lls = [choice_log_likelihoods(model, tokenizer, r["question"], r["choices"], skip) for r in rows]
    return [max(range(len(row)), key=lambda k, row=row: row[k].item()) for row in lls]


def independent_accuracy(model, tokenizer, rows: list[dict], skip: int = 0) -> float:
    chosen = predictions(model, tokenizer, rows, skip)
    return sum(c == r["answer"] for c, r in zip(chosen, rows, strict=True)) / len(rows)


@pytest.fixture
def no_network(monkeypatch):
    """Any TCP/UDP connection attempt during the test fails it (and is recorded)."""
    attempts = []
    connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network use in a benchmark test: {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


@pytest.mark.slow
@pytest.mark.realdata
def test_smollm2_on_sst2_rows_scores_what_transformers_computes(sst2_task, no_network):
    """lm-eval's acc on the first 24 of 30 real SST-2 rows (limit) equals the accuracy of the argmax of each
    choice's summed log-likelihood computed here with transformers, and beats a constant answer (so the
    labels are not swapped)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.models import resolve_model

    folder, rows = sst2_task
    result = run_benchmarks("smollm2", ["sst2_exam"], folder, limit=LIMIT, num_fewshot=None, batch_size=8)
    score = result["tasks"]["sst2_exam"]
    assert len(rows) == 30 and score["n"] == LIMIT
    rows = rows[:LIMIT]
    assert 0.0 <= score["acc"] <= 1.0 and 0.0 <= score["acc_norm"] <= 1.0
    assert score["acc_stderr"] == pytest.approx((score["acc"] * (1 - score["acc"]) / (len(rows) - 1)) ** 0.5)

    path = resolve_model("smollm2")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = independent_accuracy(model, AutoTokenizer.from_pretrained(path), rows)
    assert score["acc"] == expected
    assert score["acc"] > 0.5, "a constant answer scores 0.5 on these balanced rows"

    settings = result["settings"]
    assert settings["lm_eval_version"] == "0.4.13" and settings["model_args"]["pretrained"] == path
    assert (settings["limit"], settings["num_fewshot"], settings["seed"], settings["n_shot"]) == (
        24,
        None,
        0,
        {"sst2_exam": 0},
    )
    assert result["higher_is_better"]["sst2_exam"] == {"acc": True, "acc_norm": True}
    assert not no_network


def normalised(text: str) -> str:
    return text.translate(str.maketrans("", "", string.punctuation)).strip().lower()


@pytest.mark.slow
def test_smollm2_generated_answers_are_scored_by_exact_match(tmp_path, no_network):
    """exact_match is the share of greedy answers (up to the first newline) equal to the reference once case,
    punctuation and surrounding spaces are ignored: recomputed here with transformers' generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.models import resolve_model

    rows = [
        {"question": f"Question: What is {a} + {b}?\nAnswer:", "answer": f"{a + b}."} for a, b in ARITHMETIC
    ]
    task = write_custom_task(
        "sums", write_jsonl(tmp_path / "sums.jsonl", rows), tmp_path / "tasks", "generate_until"
    )
    assert task.is_file()
    # batch 1: no padding, so lm-eval's greedy answers are exactly transformers' unbatched ones
    result = run_benchmarks(
        "smollm2", ["sums"], tmp_path / "tasks", limit=None, num_fewshot=None, batch_size=1
    )
    score = result["tasks"]["sums"]
    assert score["n"] == len(rows)
    assert 0.0 <= score["exact_match"] <= 1.0

    path = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    right = 0
    for row in rows:
        inputs = tokenizer(row["question"], return_tensors="pt")
        with torch.no_grad():
            # stopping at the newline changes nothing (the answer is cut there) but saves the steps after it
            out = model.generate(
                **inputs, max_new_tokens=16, do_sample=False, stop_strings=["\n"], tokenizer=tokenizer
            )
        answer = tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
        right += normalised(answer.split("\n")[0]) == normalised(row["answer"])
    assert 0 < right < len(rows), "some answers right and some wrong, or the comparison cannot tell"
    assert score["exact_match"] == right / len(rows)
    assert not no_network


@pytest.mark.slow
@pytest.mark.realdata
def test_a_tunery_prompt_tuning_export_is_scored_with_its_prompt(sst2_task, tiny_llama, tmp_path):
    """lm-eval loads tunery's base + adapter export as the adapted model, virtual tokens included: its
    log-likelihoods are the PeftModel's, not the bare base's, and its acc is the PeftModel's."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.training.export import export_model, load_exported

    folder, rows = sst2_task
    rows = rows[:8]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    out = tmp_path / "model"
    sample = dict(tokenizer([rows[0]["question"]], return_tensors="pt"))
    assert export_model(model, out, sample)["format"] == "adapter"
    tokenizer.save_pretrained(out)  # as training does: the tokenizer beside base/ and adapter/

    pairs = [(r["question"], choice) for r in rows for choice in r["choices"]]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    lm = HFLM(**hf_model_args(str(out)), device="cpu", dtype="float32", batch_size=4)
    scored = torch.tensor([ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)])
    reloaded = load_exported(out, "sft")
    bare = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        adapted_lls = torch.stack(
            [choice_log_likelihoods(reloaded, tokenizer, q, [c], skip=4)[0] for q, c in pairs]
        )
        bare_lls = torch.stack([choice_log_likelihoods(bare, tokenizer, q, [c])[0] for q, c in pairs])
    torch.testing.assert_close(scored, adapted_lls, atol=1e-4, rtol=0)
    # the prompt moves them (by 2e-2 here) far beyond the agreement with the PeftModel (1e-6)
    assert (scored - bare_lls).abs().max() > 1e-3

    result = run_benchmarks(str(out), ["sst2_exam"], folder, limit=len(rows), num_fewshot=None, batch_size=4)
    assert result["settings"]["model_args"]["peft"] == str(out / "adapter")
    assert result["tasks"]["sst2_exam"]["acc"] == independent_accuracy(reloaded, tokenizer, rows, skip=4)


@pytest.mark.slow
def test_an_unknown_task_is_refused_by_name(tmp_path):
    write_custom_task(
        "sums",
        write_jsonl(tmp_path / "s.jsonl", [{"question": "q", "answer": "a"}]),
        tmp_path,
        "generate_until",
    )
    with pytest.raises(BenchmarkError, match=r"unknown benchmark task\(s\) \['no_such_task'\]"):
        run_benchmarks("smollm2", ["sums", "no_such_task"], tmp_path, limit=1, num_fewshot=None)


@pytest.mark.slow
@pytest.mark.realdata
def test_the_chat_template_is_applied_only_when_asked(sst2_task, tiny_llama, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    templated = []
    original = HFLM.apply_chat_template

    def spy(self, chat_history, *args, **kwargs):
        templated.append(chat_history)
        return original(self, chat_history, *args, **kwargs)

    monkeypatch.setattr(HFLM, "apply_chat_template", spy)
    folder, _ = sst2_task
    plain = run_benchmarks(str(tiny_llama), ["sst2_exam"], folder, limit=2, num_fewshot=None)
    assert not templated and plain["settings"]["apply_chat_template"] is False
    chat = run_benchmarks(
        str(tiny_llama), ["sst2_exam"], folder, limit=2, num_fewshot=None, apply_chat_template=True
    )
    assert chat["settings"]["apply_chat_template"] is True and chat["tasks"]["sst2_exam"]["n"] == 2
    assert len(templated) == 2 and "Review:" in templated[0][-1]["content"]
