"""DPO with LoRA as a real 2-process job (DeepSpeed's launcher, gloo): the reference is the adapter-disabled
model, and a SIGKILL of both ranks mid-way is recovered by the Prefect retry of the train task, which
resumes from the last complete checkpoint."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from tests.flows.test_resume import finetune_killed_once
from tunery.training.preference import CPU_LOGPROB_TILE

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

MAX_STEPS, SAVE_STEPS = 8, 4


def test_sigkilled_lora_dpo_job_resumes_from_its_last_checkpoint(
    tiny_llama, shared_data, tmp_path, prefect_harness
):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: dpo-resume
            task: preference
            data: {{source: {shared_data / "llama_factory" / "dpo_en_demo.json"}}}
            cleaning: {{max_quarantine_fraction: 0.75}}  # 95 of the 300 pairs fit 512 tokens
            model: {{base: {tiny_llama}, max_length: 512}}
            method: {{name: lora, lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}}}
            training: {{max_steps: {MAX_STEPS}, save_steps: {SAVE_STEPS}, logging_steps: 2, batch_size: 2,
                        eval_batch_size: 4, learning_rate: 5.0e-3}}
            distributed: {{num_processes: 2}}
            preference: {{objective: dpo}}
            sft: {{generation_max_new_tokens: 4}}
            evaluation: {{generation_samples: 2}}
            mlflow: {{registered_model: dpo-resume}}
            workdir: {tmp_path / "work"}
            """
        )
    )
    _, killer, run_dir = finetune_killed_once(recipe, tmp_path / "work")
    summary = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert summary["global_steps"] == MAX_STEPS and summary["world_size"] == 2
    assert summary["resumed_from"].endswith(f"checkpoint-{killer.at_step}")
    assert summary["data"]["reference"] == "adapters disabled"
    if not torch.cuda.is_available():  # each rank scored with tunery's CPU tiles (training.preference)
        assert summary["data"]["logprob_tiles"] == list(CPU_LOGPROB_TILE)
    assert summary["export"]["format"] == "merged"
    assert 0 < summary["trainable_parameters"]["trainable_share"] < 0.01
