"""The sft forgetting check on planted models: a champion that learnt an earlier drop's conversations and
a candidate that did not (it forgot them), scored by perplexity on that drop's test rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tunery.config import Recipe
from tunery.evaluation.forgetting import describe, forgetting_check, forgetting_metric
from tunery.layout import RunLayout

PAIRS = [
    ("What colour is the sky?", "Blue, on a clear day."),
    ("How many legs has a spider?", "Eight."),
    ("Name a prime number.", "Seven is prime."),
    ("What is the capital of France?", "Paris."),
    ("Which planet is red?", "Mars looks red."),
    ("What do bees make?", "Honey and wax."),
]


def _conversation(question: str, answer: str) -> str:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages, "tools": []})


def _recipe(tmp_path: Path, **continuous) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "forget",
            "task": "sft",
            "data": {"source": str(tmp_path), "conversation": {"format": "openai"}},
            "model": {"base": "smollm2", "max_length": 128},
            "training": {"eval_batch_size": 4},
            "continuous": {"forgetting_margin": 0.02, **continuous},
            "mlflow": {"registered_model": "forget"},
        }
    )


def _trained_copy(tiny_llama: Path, test: pd.DataFrame, recipe: Recipe, out: Path) -> Path:
    """tiny_llama after 40 steps on the test conversations themselves: a champion that knows them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.training.sft import SftCollator, encode_rows

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    examples = [e for row in encode_rows(test, tokenizer, 128, None) for e in row]
    batch = SftCollator(tokenizer.pad_token_id)(examples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def run_folder(tmp_path, tiny_llama):
    """A continuous-learning run folder (drop d1 earlier, d2 new); the candidate: the untrained tiny Llama."""
    layout = RunLayout(tmp_path / "run")
    test = pd.DataFrame(
        {
            "conversation": [_conversation(q, a) for q, a in PAIRS],
            "prompt": [q for q, _ in PAIRS],
            "text": [f"{q} {a}" for q, a in PAIRS],
            "label": "",
            "drop_id": ["d1"] * 4 + ["d2"] * 2,
        }
    )
    layout.split("test").parent.mkdir(parents=True)
    test.to_parquet(layout.split("test"), index=False)
    (layout.root / "lineage.json").write_text(
        json.dumps({"drops": [{"id": "d1"}, {"id": "d2"}], "new_drops": ["d2"]})
    )
    layout.eval_dir.mkdir(parents=True)
    layout.metrics.write_text(
        json.dumps({"model": {}, "champion": {"rouge_l": 0.1}, "champion_version": "1"})
    )
    shutil.copytree(tiny_llama, layout.model_dir)
    return layout, test


def test_a_candidate_worse_than_the_champion_on_an_earlier_drop_is_forgotten(
    run_folder, tmp_path, tiny_llama
):
    layout, test = run_folder
    recipe = _recipe(tmp_path)
    assert forgetting_metric(recipe) == "perplexity"
    champion = _trained_copy(tiny_llama, test, recipe, tmp_path / "champion")

    result = forgetting_check(recipe, layout, champion)

    assert list(result["slices"]) == ["d1"], "only the earlier drop is checked"
    block = result["slices"]["d1"]
    assert block["rows"] == 4 and block["perplexity"] > 10 * block["champion_perplexity"]
    assert block["delta"] == pytest.approx(block["champion_perplexity"] / block["perplexity"] - 1)
    assert block["ci_low"] <= block["delta"] <= block["ci_high"] < 0
    assert block["forgotten"] and result["forgotten"] == ["d1"] and not result["passed"]
    stored = json.loads(layout.metrics.read_text())["forgetting"]
    assert stored["metric"] == "perplexity" and stored["forgotten"] == ["d1"]
    assert "perplexity" in describe("perplexity", block) and "FORGOTTEN" in describe("perplexity", block)


def test_a_candidate_as_good_as_the_champion_forgot_nothing(run_folder, tmp_path, tiny_llama):
    layout, _ = run_folder
    result = forgetting_check(_recipe(tmp_path), layout, tiny_llama)  # the champion is the same model

    block = result["slices"]["d1"]
    assert block["delta"] == pytest.approx(0.0, abs=1e-6) and not block["forgotten"]
    assert result["passed"] and result["forgotten"] == []


def test_rouge_l_compares_generated_replies(run_folder, tmp_path, tiny_llama):
    layout, _ = run_folder
    recipe = _recipe(tmp_path, forgetting_metric="rouge_l").model_copy(
        update={"sft": _recipe(tmp_path).sft.model_copy(update={"generation_max_new_tokens": 4})}
    )
    result = forgetting_check(recipe, layout, tiny_llama)

    block = result["slices"]["d1"]
    assert result["metric"] == "rouge_l" and block["n"] == 4
    assert block["rouge_l"] == pytest.approx(block["champion_rouge_l"]) and block["delta"] == 0.0
    assert not block["forgotten"]


def test_the_sft_check_needs_the_champion_weights(run_folder, tmp_path):
    layout, _ = run_folder
    with pytest.raises(ValueError, match="champion's model folder"):
        forgetting_check(_recipe(tmp_path), layout, None)
