"""The finetune flow on conversations, end to end under a real Prefect API: every format in one data
folder (LLaMA-Factory's real ShareGPT tool-call demo and its OpenAI-style ``messages`` file, a LIMA file
and alpaca rows with history written here), bad conversations quarantined with their reasons, per-turn
evaluation with tool-call accuracy, and the registered chat pyfunc answering OpenAI messages.

A tiny Llama with the real SmolLM2 tokenizer and chat template keeps it fast.
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

BAD_OPENAI = [
    {
        "messages": [
            {"role": "narrator", "content": "Once upon a time"},
            {"role": "assistant", "content": "..."},
        ]
    },
    {"messages": [{"role": "user", "content": "Are you there?"}, {"role": "assistant", "content": "  "}]},
    {
        "messages": [
            {"role": "user", "content": "Anyone?"},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Good."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "tool", "tool_call_id": "x", "content": "{}"},
            {"role": "assistant", "content": "Sunny."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Call it"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "{}"},
            {"role": "assistant", "content": "Done."},
        ]
    },
]


@pytest.fixture(scope="module")
def chat_recipe(shared_data, tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    data = folder / "data"
    data.mkdir()
    factory = shared_data / "llama_factory"
    glaive = json.loads((factory / "glaive_toolcall_en_demo.json").read_text())[:80]
    (data / "glaive.json").write_text(json.dumps(glaive))
    openai = [
        {"messages": r["messages"]} for r in json.loads((factory / "kto_en_demo.json").read_text())[:60]
    ]
    multi = next(r for r in openai if sum(m["role"] == "assistant" for m in r["messages"]) > 1)
    multi["messages"][1]["weight"] = 0  # context only: its later turns are still learned
    (data / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in openai + BAD_OPENAI) + "\n")
    alpaca = json.loads((shared_data / "alpaca_demo" / "alpaca_en_demo.json").read_text())[:60]
    lima = [
        {"conversations": [a["instruction"], a["output"], b["instruction"], b["output"]]}
        for a, b in zip(alpaca[:20], alpaca[20:40], strict=True)
    ]
    (data / "lima.jsonl").write_text("\n".join(json.dumps(r) for r in lima) + "\n")
    history = [
        {**b, "history": [[a["instruction"], a["output"]]]}
        for a, b in zip(alpaca[40:50], alpaca[50:60], strict=True)
    ]
    (data / "alpaca_history.json").write_text(json.dumps(history))
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: chat-sft
            task: sft
            data:
              source: {data}
              conversation: {{format: auto, too_long: drop_oldest}}
            cleaning: {{max_quarantine_fraction: 0.5}}  # long real conversations: some are too_long
            model: {{base: {tiny_llama}, max_length: 512}}
            method: {{name: lora, lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}}}
            training: {{max_steps: 6, batch_size: 4, eval_batch_size: 8, learning_rate: 5.0e-3,
                        logging_steps: 2}}
            sft: {{generation_max_new_tokens: 12, packing: true}}
            evaluation: {{generation_samples: 6, gate: {{baseline_floor: false}}}}
            mlflow: {{experiment: chat, registered_model: chat-sft}}
            workdir: {folder / "work"}
            """
        )
    )
    return recipe


@pytest.fixture(scope="module")
def first_run(chat_recipe, prefect_harness):
    from flows.finetune import finetune

    result = finetune(recipe_path=str(chat_recipe))
    run_dir = next((chat_recipe.parent / "work" / "runs").glob("*"))
    return result, run_dir


def test_every_format_is_read_and_bad_conversations_are_quarantined_with_reasons(first_run):
    _, run_dir = first_run
    report = json.loads((run_dir / "data" / "report.json").read_text())
    clean = report["clean"]
    assert clean["rows_in"] == 80 + 65 + 20 + 10
    assert clean["rows_in"] == clean["kept"] + clean["quarantined"] + clean["deduplicated"]
    reasons = clean["quarantine_reasons"]
    assert clean["conversations_truncated"]["rows"] > 0, "long ones lost their oldest exchanges"
    assert reasons["too_long"] < 0.3 * clean["rows_in"] and "no_trained_turn" not in reasons
    for reason in (
        "unknown_role",
        "empty_assistant",
        "not_ending_on_assistant",
        "orphan_tool_result",
        "tool_arguments_not_json",
    ):
        assert reasons.get(reason) == 1, reasons
    quarantined = pd.read_json(run_dir / "data" / "quarantine.jsonl", lines=True)
    assert set(quarantined["source"].map(lambda s: s.rsplit("/", 1)[-1])) >= {"chat.jsonl"}
    kept = pd.concat(
        pd.read_parquet(run_dir / "data" / "splits" / f"{s}.parquet") for s in ("train", "validation", "test")
    )
    sources = {s.rsplit("/", 1)[-1] for s in kept["source"]}
    assert sources == {"glaive.json", "chat.jsonl", "lima.jsonl", "alpaca_history.json"}
    turns = kept["conversation"].map(lambda c: len(json.loads(c)["messages"]))
    from_history = turns[kept["source"].str.endswith("alpaca_history.json")]
    # history + instruction: 4 turns (2 where the history exchange was dropped to fit max_length)
    assert set(from_history) <= {2, 4} and (from_history == 4).sum() >= len(from_history) / 2


def test_training_learns_assistant_turns_and_evaluation_scores_each_turn(first_run):
    result, run_dir = first_run
    assert result["alias"] == "champion"
    train = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert train["data"]["train"]["examples"] > 0 and 0 < train["data"]["train"]["label_share"] < 1
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    model = metrics["model"]
    assert model["perplexity"] > 1 and 0 <= model["rouge_l"] <= 1 and model["n"] == 6
    assert model["perplexity"] < metrics["baselines"]["zero_shot"]["perplexity"], "training helped"
    generations = pd.read_parquet(run_dir / "eval" / "generations.parquet")
    assert len(generations) == 6 and generations["answer"].map(lambda a: isinstance(a, str)).all()


def test_the_second_run_is_compared_through_the_chat_pyfunc_which_answers_openai_messages(
    first_run, chat_recipe
):
    from flows.finetune import finetune

    second = finetune(
        recipe_path=str(chat_recipe), overrides=["training.max_steps=1", "training.learning_rate=1e-7"]
    )
    assert second["version"] == "2"
    tags = client(load_recipe(chat_recipe)).get_model_version("chat-sft", "2").tags
    assert tags["tunery.gate.compared_with"] == "1" and "rouge_l" in second["reason"]

    model = mlflow.pyfunc.load_model("models:/chat-sft@champion")
    assert model.metadata.signature.inputs.input_names() == ["messages", "tools"]
    messages = [{"role": "user", "content": "Find me a recipe with rice."}]
    tools = [{"type": "function", "function": {"name": "search_recipes", "parameters": {"type": "object"}}}]
    out = model.predict(pd.DataFrame({"messages": [json.dumps(messages)], "tools": [json.dumps(tools)]}))
    assert list(out.columns) == ["content", "tool_calls", "raw"] and len(out) == 1
    assert isinstance(json.loads(out["tool_calls"][0]), list)


@pytest.fixture(scope="module")
def chat_server(first_run, chat_recipe):
    """A real `tunery serve --openai` process for the registered champion, stopped by its PID."""
    import os
    import sys
    import time

    import httpx

    from tunery.ops import process

    port = process.free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{chat_recipe.parent / 'work' / 'mlflow.db'}"}
    log = chat_recipe.parent / "serve.log"
    server = process.spawn(
        "serve",
        [sys.executable, "-m", "tunery.cli", "serve", "chat-sft@champion", "--openai", "--port", str(port)],
        log,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        pytest.fail("tunery serve --openai did not answer in 180 s:\n" + log.read_text()[-3000:])
    yield {"base": base, "server": server, "log": log}
    process.stop_group(server)


def test_the_official_openai_client_talks_to_tunery_serve(chat_server):
    import openai

    client_ = openai.OpenAI(base_url=f"{chat_server['base']}/v1", api_key="not-needed", max_retries=0)
    assert [m.id for m in client_.models.list().data] == ["chat-sft@champion"]
    messages = [{"role": "user", "content": "Hi, can you help me plan a trip?"}]
    reply = client_.chat.completions.create(model="chat-sft@champion", messages=messages, max_tokens=8)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 5
    if reply.usage.completion_tokens < 8 and choice.finish_reason != "tool_calls":
        assert choice.finish_reason == "stop", "ended before the budget: the model stopped by itself"
    elif choice.finish_reason != "tool_calls":
        assert choice.finish_reason in ("length", "stop")  # stop: its 8th token ended the turn

    pieces = list(
        client_.chat.completions.create(
            model="chat-sft@champion", messages=messages, max_tokens=8, stream=True
        )
    )
    assert pieces[0].choices[0].delta.role == "assistant"
    assert pieces[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
    streamed = "".join(p.choices[0].delta.content or "" for p in pieces)
    assert streamed == (choice.message.content or ""), "greedy: the stream says what the single reply said"

    tools = [{"type": "function", "function": {"name": "search_recipes", "parameters": {"type": "object"}}}]
    with_tools = client_.chat.completions.create(
        model="chat-sft@champion", messages=messages, tools=tools, max_tokens=8
    )
    assert with_tools.choices[0].finish_reason in ("stop", "length", "tool_calls")

    with pytest.raises(openai.BadRequestError, match="unknown_role"):
        client_.chat.completions.create(
            model="chat-sft@champion", messages=[{"role": "robot", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client_.chat.completions.create(model="chat-sft@champion", messages=messages, max_tokens=10**6)


def test_the_chat_server_binds_localhost_and_stops_on_sigterm(chat_server):
    import signal

    import psutil

    listening = {
        c.laddr.ip
        for p in [
            psutil.Process(chat_server["server"].pid),
            *psutil.Process(chat_server["server"].pid).children(recursive=True),
        ]
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {"127.0.0.1"}
    chat_server["server"].send_signal(signal.SIGTERM)
    assert chat_server["server"].wait(timeout=30) is not None
