"""Continuous learning for an sft recipe on conversations, under a real (temporary) Prefect API and a real
MLflow server: two drops of real LLaMA-Factory conversations (a ShareGPT tool-call file, then an OpenAI
``messages`` file) each go through watch-drops and continuous-learning; the second is measured for drift on
its prompts, warm-started from the champion and checked for forgetting on the first drop's test
conversations by perplexity. Two registered versions, each with its lineage.

A tiny Llama with the real SmolLM2 tokenizer and chat template keeps it fast.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tunery.config import load_recipe, resolve_paths
from tunery.continual.drops import Manifest
from tunery.tracking import client

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.fixture(scope="module")
def chat_zone(shared_data, tiny_llama, tmp_path_factory, mlflow_server, prefect_harness):
    folder = tmp_path_factory.mktemp("continuous-chat")
    zone = folder / "zone"
    zone.mkdir()
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: chat-drops
            task: sft
            data:
              source: {zone}
              conversation: {{format: auto, too_long: drop_oldest}}
            cleaning: {{max_quarantine_fraction: 0.5}}  # long real conversations: some are too_long
            model: {{base: {tiny_llama}, max_length: 512}}
            method: {{name: lora, lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}}}
            training: {{max_steps: 3, batch_size: 4, eval_batch_size: 8, learning_rate: 5.0e-3}}
            sft: {{generation_max_new_tokens: 8, packing: true}}
            evaluation: {{generation_samples: 4, gate: {{baseline_floor: false}}}}
            continuous: {{settle_seconds: 0, warm_start: champion, forgetting_margin: 0.02,
                          drift: {{action: warn}}}}
            mlflow: {{experiment: chat-drops, registered_model: chat-drops, tracking_uri: "{mlflow_server}"}}
            workdir: {folder / "work"}
            """
        )
    )
    factory = shared_data / "llama_factory"
    glaive = json.loads((factory / "glaive_toolcall_en_demo.json").read_text())[:60]
    kto = [{"messages": r["messages"]} for r in json.loads((factory / "kto_en_demo.json").read_text())[:60]]
    return {"recipe": recipe, "zone": zone, "folder": folder, "glaive": glaive, "kto": kto}


def _drop(zone: Path, name: str, text: str) -> None:
    """The writer's side of the protocol: a temporary name, then an atomic rename."""
    part = zone / f"{name}.part"
    part.write_text(text, encoding="utf-8")
    part.rename(zone / name)


def _cycle(chat_zone) -> tuple[dict, dict]:
    from flows.continuous import continuous_learning, watch_drops

    found = watch_drops(recipe_path=str(chat_zone["recipe"]))
    return found, continuous_learning(recipe_path=str(chat_zone["recipe"]))


def _run_dir(chat_zone, run_id: str) -> Path:
    recipe = resolve_paths(load_recipe(chat_zone["recipe"]), chat_zone["folder"])
    return Path(client(recipe).get_run(run_id).data.tags["tunery.run_dir"])


@pytest.fixture(scope="module")
def two_drops(chat_zone):
    _drop(chat_zone["zone"], "tool-calls.json", json.dumps(chat_zone["glaive"]))
    first = _cycle(chat_zone)
    _drop(chat_zone["zone"], "chats.jsonl", "\n".join(json.dumps(r) for r in chat_zone["kto"]) + "\n")
    second = _cycle(chat_zone)
    return first, second


def test_each_conversation_drop_registers_a_version_with_its_lineage(chat_zone, two_drops, mlflow_server):
    from tunery.continual.lineage import lineage

    (found1, first), (found2, second) = two_drops
    assert first["status"] == "retrained" and first["dataset_version"] == 1 and first["alias"] == "champion"
    assert second["status"] == "retrained" and second["dataset_version"] == 2
    ids = [found1["new"][0]["id"], found2["new"][0]["id"]]
    versions = client(resolve_paths(load_recipe(chat_zone["recipe"]), chat_zone["folder"]))
    assert sorted(int(v.version) for v in versions.search_model_versions("name='chat-drops'")) == [1, 2]
    assert [d["id"] for d in lineage("chat-drops@1", mlflow_server)["drops"]] == ids[:1]
    info = lineage(f"chat-drops@{second['version']}", mlflow_server)
    assert [d["id"] for d in info["drops"]] == ids and info["new_drops"] == ids[1:]
    manifest = Manifest.of(resolve_paths(load_recipe(chat_zone["recipe"]), chat_zone["folder"]))
    assert [(d.name, d.status, d.version) for d in manifest.drops()] == [
        ("tool-calls.json", "committed", 1),
        ("chats.jsonl", "committed", 2),
    ]


def test_the_second_drop_is_checked_for_forgetting_by_perplexity_after_a_warm_start(chat_zone, two_drops):
    (found1, _), (_, second) = two_drops
    run_dir = _run_dir(chat_zone, second["run_id"])
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    forgetting = metrics["forgetting"]
    first_drop = found1["new"][0]["id"]
    assert forgetting["metric"] == "perplexity" and forgetting["margin"] == 0.02
    block = forgetting["slices"][first_drop]
    assert block["rows"] > 0 and block["perplexity"] > 1 and block["champion_perplexity"] > 1
    assert block["ci_low"] <= block["delta"] <= block["ci_high"]
    assert forgetting["passed"] == (not block["forgotten"])
    assert (run_dir / "champion" / "tunery_model.json").is_file(), "the champion's own weights were scored"
    meta = json.loads((run_dir / "warm_start" / "tunery_model.json").read_text())
    assert meta["task"] == "sft", "training began from the champion's exported model"
    if block["forgotten"]:
        assert second["alias"] == "challenger" and "forgets earlier data" in second["reason"]


def test_conversations_are_split_by_prompt_and_drift_is_measured_on_prompts(chat_zone, two_drops):
    import pandas as pd

    (found1, _), (found2, second) = two_drops
    run_dir = _run_dir(chat_zone, second["run_id"])
    splits = {s: pd.read_parquet(run_dir / "data" / "splits" / f"{s}.parquet") for s in ("train", "test")}
    assert not set(splits["train"]["prompt"]) & set(splits["test"]["prompt"])
    assert set(splits["test"]["drop_id"]) == {found1["new"][0]["id"], found2["new"][0]["id"]}
    drift = json.loads((run_dir / "drift" / "drift.json").read_text())
    assert drift["rows"]["history"] > 0 and drift["rows"]["new"] > 0
    assert "label" not in drift, "conversations have no label: drift is on their prompts"
    assert {"length", "vocabulary", "two_sample"} <= set(drift)
    # tool-calling requests and chit-chat prompts are told apart: the drop drifted (action warn: trained)
    assert drift["drifted"] and any("two-sample AUC" in line for line in drift["high"])
