"""sft evaluation with everything a model owner signs off on, through ``evaluate.evaluate``: answers on the
whole test split, the floor against the untuned model, a named evaluation set, an lm-eval custom task on the
base, champion and candidate, and the judge over a real HTTP endpoint on 127.0.0.1 (a planted judge: it
prefers the answer that carries the reference's first word, so the statistics, not its wisdom, are under
test). The judge guard then blocks the candidate, and the key never reaches the metrics or the verdicts."""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from tunery.config import Recipe
from tunery.evaluation import evaluate
from tunery.layout import MODEL_META, RunLayout
from tunery.registry import decide

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
KEY = "sk-planted-judge-key-123"


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: prefers the answer that starts with the reference's first word."""

    seen_keys: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen_keys.append(self.headers.get("Authorization", ""))
        text = body["messages"][-1]["content"]
        reference = re.search(r"\[Reference answer\]\n(\S+)", text)[1]
        answer_a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", text, re.S)[1]
        verdict = "A" if answer_a.startswith(reference) else "B"
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_sft_evaluation_scores_sets_benchmarks_and_the_judge(
    tmp_path, tiny_llama, shared_data, judge_url, monkeypatch
):
    rows = json.loads((shared_data / "alpaca_demo" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    short = [r for r in rows if len(r["output"]) < 200 and not r["input"]]
    layout = RunLayout(tmp_path / "run")
    layout.split("test").parent.mkdir(parents=True)
    test = pd.DataFrame(short[:6])
    test.to_parquet(layout.split("test"))
    golden = layout.held_out("golden")
    golden.root.mkdir(parents=True)
    pd.DataFrame(short[6:9]).to_parquet(golden.cleaned)
    shutil.copytree(tiny_llama, layout.model_dir)  # a "full" export: a plain transformers folder
    (layout.model_dir / MODEL_META).write_text(json.dumps({"task": "sft"}))
    exam = tmp_path / "exam.jsonl"
    exam.write_text(
        "\n".join(
            json.dumps({"question": f"Is {w} a colour?", "choices": ["yes", "no"], "answer": a})
            for w, a in [("red", "yes"), ("table", "no"), ("blue", "yes"), ("seven", "no")]
        )
    )
    monkeypatch.setenv("TUNERY_JUDGE_API_KEY", KEY)
    recipe = Recipe.model_validate(
        {
            "name": "signoff",
            "task": "sft",
            "data": {"source": "unused.json"},
            "model": {"base": str(tiny_llama), "max_length": 256},
            "sft": {"generation_max_new_tokens": 4},
            "evaluation": {
                "sets": {"golden": "unused.json"},
                "benchmarks": {"custom": [{"name": "exam", "path": str(exam)}], "limit": 4, "batch_size": 4},
                "judge": {"url": judge_url, "model": "planted"},
                "gate": {"guards": [{"metric": "judge_win_rate"}, {"metric": "rouge_l", "set": "golden"}]},
            },
            "mlflow": {"registered_model": "signoff"},
            "workdir": str(tmp_path),
        }
    )

    def champion(frame: pd.DataFrame) -> list[str]:  # answers that open with the reference's first word
        return [f"{out.split()[0]} indeed" for out in frame["output"]]

    metrics = json.loads(
        evaluate.evaluate(recipe, layout, champion, "1", champion_dir=layout.model_dir).read_text()
    )
    assert metrics["model"]["n"] == 6  # every test row answered (generation_samples unset)
    assert metrics["notes"]["generation"] == "answers generated for 6 of 6 test rows"
    assert metrics["baseline_floor"]["baseline"] == "zero_shot" and metrics["baseline_floor"]["n"] == 6
    assert metrics["gate_bootstrap"]["metric"] == "rouge_l" and metrics["gate_bootstrap"]["n"] == 6
    assert metrics["sets"]["golden"]["n"] == 3 and metrics["sets"]["golden"]["champion"]["n"] == 3
    judge = metrics["judge"]
    # the champion carries the reference's first word, the random tiny model does not: a loss in both orders
    assert judge["opponent"] == "champion" and judge["n"] == 6 and judge["losses"] == 6
    assert judge["win_rate"] == 0.0 and judge["ci_low"] == judge["ci_high"] == 0.0
    assert judge["position_bias"] == 0.0
    verdicts = (layout.root / judge["verdicts"]).read_text()
    assert len(verdicts.splitlines()) == 6 and KEY not in verdicts and KEY not in json.dumps(metrics)
    assert _Judge.seen_keys[-1] == f"Bearer {KEY}" and len(_Judge.seen_keys) >= 12
    bench = metrics["benchmarks"]
    assert set(bench["results"]) == {"base", "candidate", "champion"}
    row = next(r for r in bench["table"] if r["task"] == "exam" and r["metric"] == "acc")
    assert row["n"] == 4 and row["candidate_minus_champion"] == 0.0  # the same folder: the same answers
    decision = decide(metrics, recipe.evaluation.gate, "sft")
    conditions = {c["name"]: c for c in decision.conditions}
    assert not conditions["guard judge_win_rate"]["passed"]
    assert decision.alias == "challenger" and "guard judge_win_rate" in decision.reason
    # what goes to MLflow as metrics (the registry logs headline(metrics) into the run)
    from tunery.evaluation.metrics import headline

    flat = headline(metrics)
    assert flat["judge_win_rate"] == 0.0 and flat["benchmark_candidate_exam_acc"] == row["candidate"]
    assert "set_golden_rouge_l" in flat and "baseline_floor_ci_low" in flat
