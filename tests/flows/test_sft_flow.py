"""The finetune flow for instruction tuning (task sft), end to end under a real Prefect API.

A tiny Llama with the real SmolLM2 tokenizer and chat template keeps it fast; the data is a slice of
../shared/data/alpaca_demo. Two runs: the second is compared with the first through the registered pyfunc.
"""

from __future__ import annotations

import json
import textwrap

import mlflow
import pandas as pd
import pytest

from tunery.config import load_recipe
from tunery.tracking import client

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.fixture(scope="module")
def sft_recipe(shared_data, tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    rows = json.loads((shared_data / "alpaca_demo" / "alpaca_en_demo.json").read_text())[:160]
    (folder / "alpaca.json").write_text(json.dumps(rows))
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: alpaca-sft
            task: sft
            data: {{source: {folder / "alpaca.json"}}}
            model: {{base: {tiny_llama}, max_length: 256}}
            method: {{name: lora, lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}}}
            training: {{max_steps: 6, batch_size: 4, eval_batch_size: 8, learning_rate: 5.0e-3,
                        logging_steps: 2}}
            sft: {{generation_max_new_tokens: 12}}
            evaluation: {{generation_samples: 4, gate: {{baseline_floor: false}}}}
            mlflow: {{experiment: sft, registered_model: alpaca-sft}}
            workdir: {folder / "work"}
            """
        )
    )
    return recipe


def test_sft_flow_trains_evaluates_and_registers(sft_recipe, prefect_harness):
    from flows.finetune import finetune

    first = finetune(recipe_path=str(sft_recipe))
    assert first["alias"] == "champion"
    metrics = json.loads(next((sft_recipe.parent / "work" / "runs").glob("*/eval/metrics.json")).read_text())
    assert metrics["primary_metric"] == "rouge_l"
    assert metrics["model"]["perplexity"] > 1 and 0 <= metrics["model"]["rouge_l"] <= 1
    assert "zero_shot" in metrics["baselines"] and metrics["baselines"]["zero_shot"]["perplexity"] > 1
    assert metrics["model"]["perplexity"] < metrics["baselines"]["zero_shot"]["perplexity"], "training helped"
    assert len(metrics["samples"]) == 4 and all(isinstance(s["answer"], str) for s in metrics["samples"])

    second = finetune(
        recipe_path=str(sft_recipe), overrides=["training.max_steps=1", "training.learning_rate=1e-7"]
    )
    assert second["version"] == "2"
    tags = client(load_recipe(sft_recipe)).get_model_version("alpaca-sft", "2").tags
    assert tags["tunery.gate.compared_with"] == "1"
    assert second["alias"] in ("champion", "challenger") and "rouge_l" in second["reason"]

    model = mlflow.pyfunc.load_model("models:/alpaca-sft@champion")
    out = model.predict(
        pd.DataFrame({"instruction": ["Name a primary colour.", "Add 2 and 3."], "input": ["", ""]})
    )
    assert list(out.columns) == ["answer"] and len(out) == 2
    assert all(isinstance(a, str) for a in out["answer"])
