"""The pairwise judge: verdicts read from what judges really write, position swapping that cancels a judge's
order bias, the win rate and its bootstrap interval on planted verdicts, the HTTP protocol (retries, refusals,
no key anywhere) against a real local server, and, in the slow lane, tunery's own OpenAI-compatible serving
of the packaged SmolLM2 as the judge."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sys
import threading
import time
import traceback
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunery.evaluation.judge import (
    JudgeEndpoint,
    JudgeError,
    combine_verdicts,
    complete,
    judge_pairs,
    parse_verdict,
    win_rate,
    write_verdicts,
)

KEY = "sk-PlantedJudgeKey-7f3a9c"  # must never be seen outside the Authorization header
GOOD, POOR = "Paris is the capital of France.", "I do not know."


def planted(wins: int, losses: int, ties: int, invalid: int = 0) -> list[str]:
    return ["win"] * wins + ["loss"] * losses + ["tie"] * ties + ["invalid"] * invalid


def offline() -> JudgeEndpoint:
    return JudgeEndpoint(url="http://127.0.0.1:9/v1", model="planted-judge", api_key=KEY)


def answer_in(messages: list[dict], position: str) -> str:
    """The answer a judge prompt shows in position A or B."""
    text = messages[-1]["content"]
    start = text.index(f"[Answer {position}]") + len(f"[Answer {position}]")
    end = text.index("[Answer B]") if position == "A" else text.index("Reply with")
    return text[start:end].strip()


# --- reading verdicts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        ("B", "B"),
        ("tie", "tie"),
        ("Tie.", "tie"),
        ("[[B]]", "B"),
        ("[[tie]]", "tie"),
        ("**A**", "A"),
        ('"B"', "B"),
        ("Answer A is better", "A"),
        ("Answer A is better than answer B.", "A"),
        ("A good question! Answer B is better.", "B"),
        ("B is the better answer", "B"),
        ("The better answer is B.", "B"),
        ("Verdict: A", "A"),
        ("My final verdict is tie", "tie"),
        ("I prefer B", "B"),
        ("A. It answers the question directly.", "A"),
        ("B\n\nExplanation: answer A misses the point.", "B"),
        ("Answer: B", "B"),
        ("It's a tie", "tie"),
        ("Both are equally good.", "tie"),
        ("Neither", "tie"),
        ("I cannot decide", None),
        ("A good answer needs more detail.", None),  # "A" the article, not the answer
        ("answer A misses the point and says nothing", None),  # a critique of A is no vote for it
        ("Answer A and answer B", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_verdicts_are_read_from_what_judges_write(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        ("A", "B", "win"),  # the candidate both times, in either position
        ("B", "A", "loss"),
        ("A", "A", "tie"),  # the judge followed position A: order bias, no preference
        ("B", "B", "tie"),
        ("tie", "B", "tie"),
        ("A", "tie", "tie"),
        ("tie", "tie", "tie"),
        (None, "B", "invalid"),
        ("A", None, "invalid"),
    ],
)
def test_the_two_orders_combine_into_the_candidates_outcome(first, second, outcome):
    assert combine_verdicts(first, second) == outcome


# --- position swapping and the statistics, on planted judges -----------------------------------------------


def test_each_prompt_is_asked_twice_with_the_candidate_in_each_position():
    asked = []

    def judge(messages):
        asked.append(messages)
        return "A"

    judge_pairs(["Capital of France?"], [GOOD], [POOR], offline(), references=["Paris."], send=judge)
    assert len(asked) == 2
    assert (answer_in(asked[0], "A"), answer_in(asked[0], "B")) == (GOOD, POOR)
    assert (answer_in(asked[1], "A"), answer_in(asked[1], "B")) == (POOR, GOOD)
    for messages in asked:
        assert "Capital of France?" in messages[-1]["content"]
        assert "[Reference answer]\nParis." in messages[-1]["content"]
    judge_pairs(["Capital of France?"], [GOOD], [POOR], offline(), send=judge)
    assert "[Reference answer]" not in asked[-1][-1]["content"]  # no reference: no reference block


def test_a_judge_that_always_answers_A_is_pure_position_bias_and_gives_ties():
    records = judge_pairs(
        [f"q{i}" for i in range(12)], [GOOD] * 12, [POOR] * 12, offline(), send=lambda m: "A"
    )
    assert {r["outcome"] for r in records} == {"tie"}
    summary = win_rate(records)
    assert summary["win_rate"] == 0.5 and summary["ties"] == 12
    assert summary["position_bias"] == 1.0
    assert (summary["ci_low"], summary["ci_high"]) == (0.5, 0.5)


def test_a_judge_that_prefers_the_better_answer_wherever_it_stands_gives_wins():
    def fair(messages):
        return "A" if answer_in(messages, "A") == GOOD else "Answer B is better."

    records = judge_pairs(["q1", "q2", "q3"], [GOOD] * 3, [POOR] * 3, offline(), send=fair)
    summary = win_rate(records)
    assert [r["outcome"] for r in records] == ["win"] * 3
    assert summary["win_rate"] == 1.0 and summary["position_bias"] == 0.0
    assert records[0]["verdict_candidate_second"] == {"raw": "Answer B is better.", "parsed": "B"}
    losing = win_rate(judge_pairs(["q"], [POOR], [GOOD], offline(), send=fair))
    assert (losing["losses"], losing["win_rate"]) == (1, 0.0)


def test_planted_verdicts_give_the_exact_rate_inside_its_interval():
    summary = win_rate(planted(30, 10, 10))
    assert (summary["wins"], summary["losses"], summary["ties"], summary["n"]) == (30, 10, 10, 50)
    assert summary["win_rate"] == pytest.approx(0.7)
    assert 0.0 <= summary["ci_low"] < 0.7 < summary["ci_high"] <= 1.0
    assert "bootstrap" in summary["interval_method"] and summary["confidence"] == 0.95
    assert summary["position_bias"] is None  # bare outcomes do not say how each order voted
    # per-prompt scores 1/0/0.5 have sd 0.4: a normal interval would be 2 * 1.96 * 0.4 / sqrt(50) = 0.222 wide
    assert summary["ci_high"] - summary["ci_low"] == pytest.approx(0.222, abs=0.03)
    assert win_rate(planted(30, 10, 10)) == summary  # seeded: the same interval every time


def test_all_ties_is_one_half():
    summary = win_rate(planted(0, 0, 20))
    assert summary["win_rate"] == 0.5 and (summary["ci_low"], summary["ci_high"]) == (0.5, 0.5)


def test_unreadable_verdicts_are_counted_and_left_out_of_the_rate():
    replies = iter(["A", "B", "I refuse to judge", "B", "B", "A"])  # win, invalid, loss
    records = judge_pairs(["q1", "q2", "q3"], [GOOD] * 3, [POOR] * 3, offline(), send=lambda m: next(replies))
    assert [r["outcome"] for r in records] == ["win", "invalid", "loss"]
    assert records[1]["verdict_candidate_first"] == {"raw": "I refuse to judge", "parsed": None}
    summary = win_rate(records)
    assert (summary["invalid"], summary["n"], summary["prompts"], summary["win_rate"]) == (1, 2, 3, 0.5)
    assert summary["position_bias"] == 0.0  # of the valid prompts


@pytest.mark.parametrize("outcomes", [[], ["invalid"] * 3])
def test_no_valid_verdict_gives_no_rate_and_says_why(outcomes):
    summary = win_rate(outcomes)
    assert summary["n"] == 0 and summary["invalid"] == len(outcomes)
    assert summary["win_rate"] is None and summary["ci_low"] is None and summary["ci_high"] is None
    assert summary["note"]


def test_the_interval_narrows_as_prompts_are_added():
    widths = []
    for times in (1, 4, 16):
        summary = win_rate(planted(3 * times, times, times))
        assert summary["win_rate"] == pytest.approx(0.7)
        assert summary["ci_low"] <= 0.7 <= summary["ci_high"]
        widths.append(summary["ci_high"] - summary["ci_low"])
    assert widths[0] > widths[1] > widths[2] > 0
    assert win_rate(planted(30, 10, 10), confidence=0.8)["ci_high"] < win_rate(planted(30, 10, 10))["ci_high"]


def test_bad_inputs_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="per prompt"):
        judge_pairs(["q1", "q2"], [GOOD], [POOR, POOR], offline(), send=lambda m: "A")
    with pytest.raises(ValueError, match="unknown outcome"):
        win_rate(["win", "draw"])
    with pytest.raises(ValueError, match="confidence"):
        win_rate(["win"], confidence=95)


# --- the HTTP protocol against a real local server ---------------------------------------------------------


def completion(text: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 that answers each POST with the next scripted (status, body,
    headers), then with ``after`` for good, and records what it was sent."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, dict]] = []
        self.after: tuple[int, object, dict] = (200, completion("A"), {})
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                status, payload, headers = server.script.pop(0) if server.script else server.after
                raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):  # quiet
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def endpoint(self, **overrides) -> JudgeEndpoint:
        settings = {"url": f"{self.url}/v1", "model": "judge-model", "api_key": KEY, "backoff_s": 0.01}
        return JudgeEndpoint(**{**settings, **overrides})


@pytest.fixture
def judge_server():
    server = ScriptedServer()
    yield server
    server.http.shutdown()
    server.http.server_close()


def assert_no_key(exc: BaseException, *secrets: str) -> None:
    shown = "".join(traceback.format_exception(exc)) + repr(exc)
    for secret in (KEY, *secrets):
        assert secret not in shown


def test_a_503_is_retried_and_the_next_answer_is_used(judge_server):
    judge_server.script = [(503, {"error": "busy"}, {}), (200, completion("[[B]]"), {})]
    messages = [{"role": "user", "content": "Which is better?"}]
    assert complete(judge_server.endpoint(), messages) == "[[B]]"
    assert len(judge_server.requests) == 2
    sent = judge_server.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["body"]["model"] == "judge-model" and sent["body"]["messages"] == messages
    assert sent["body"]["temperature"] == 0 and sent["body"]["max_tokens"] == 16
    assert sent["body"].get("stream") in (None, False)


def test_a_429_is_retried_after_the_wait_it_asks_for(judge_server):
    judge_server.script = [
        (429, {"error": "slow down"}, {"Retry-After": "0.2"}),
        (200, completion("tie"), {}),
    ]
    started = time.monotonic()
    assert complete(judge_server.endpoint(), [{"role": "user", "content": "?"}]) == "tie"
    assert time.monotonic() - started >= 0.2 and len(judge_server.requests) == 2


def test_a_401_fails_at_once_and_the_error_does_not_show_the_key(judge_server):
    judge_server.script = [(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {})]
    with pytest.raises(JudgeError, match="401") as caught:
        complete(judge_server.endpoint(max_retries=3), [{"role": "user", "content": "?"}])
    assert len(judge_server.requests) == 1  # a refusal is not retried
    assert "Incorrect API key" in str(caught.value)  # the server's reason is kept, its echo of the key not
    assert_no_key(caught.value)


def test_the_judge_gives_up_after_its_retries(judge_server):
    judge_server.after = (500, f"internal error near {KEY}", {})
    with pytest.raises(JudgeError, match="gave up after 3 attempts") as caught:
        complete(judge_server.endpoint(max_retries=2), [{"role": "user", "content": "?"}])
    assert len(judge_server.requests) == 3
    assert_no_key(caught.value)


def test_an_unreachable_judge_is_retried_then_reported():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = JudgeEndpoint(
        url=f"http://127.0.0.1:{port}", model="m", api_key=KEY, max_retries=1, backoff_s=0.01
    )
    with pytest.raises(JudgeError, match="unreachable.*2 attempts") as caught:
        complete(endpoint, [{"role": "user", "content": "?"}])
    assert_no_key(caught.value)


def test_a_reply_that_is_no_chat_completion_is_an_error(judge_server):
    judge_server.after = (200, "<html>proxy login</html>", {"Content-Type": "text/html"})
    with pytest.raises(JudgeError, match="no chat completion"):
        complete(judge_server.endpoint(), [{"role": "user", "content": "?"}])


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v1/chat/completions"])
def test_the_base_url_may_end_with_or_without_v1(judge_server, suffix):
    assert complete(judge_server.endpoint(url=judge_server.url + suffix), [{"role": "user", "content": "?"}])
    assert judge_server.requests[-1]["path"] == "/v1/chat/completions"


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(judge_server):
    url = judge_server.url.replace("//", "//judge:S3cretPass@") + "/v1"
    judge_server.script = [(403, {"error": "forbidden"}, {})]
    with pytest.raises(JudgeError, match="judge:\\*\\*\\*@127.0.0.1") as caught:
        complete(judge_server.endpoint(url=url, api_key=None), [{"role": "user", "content": "?"}])
    assert_no_key(caught.value, "S3cretPass")
    sent = judge_server.requests[-1]["headers"]["Authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")).decode() == "judge:S3cretPass"


def test_the_key_is_in_no_repr_record_or_artifact(judge_server, tmp_path):
    judge_server.after = (200, completion("Answer A is better"), {})
    endpoint = judge_server.endpoint()
    assert KEY not in repr(endpoint) and KEY not in str(endpoint)
    records = judge_pairs(["q1", "q2"], [GOOD] * 2, [POOR] * 2, endpoint, references=["Paris.", "Paris."])
    assert len(judge_server.requests) == 4  # two orders per prompt, over HTTP
    path = write_verdicts(records, tmp_path / "judge" / "verdicts.jsonl")
    text = path.read_text(encoding="utf-8")
    assert KEY not in text and judge_server.url not in text
    saved = [json.loads(line) for line in text.splitlines()]
    assert saved == records and saved[0]["judge_model"] == "judge-model"
    assert not list(path.parent.glob("*.partial"))


# --- slow lane: tunery's own OpenAI-compatible serving of the packaged SmolLM2 as the judge ----------------


def model_package(root: Path) -> Path:
    """A folder laid out like a downloaded tunery pyfunc (``artifacts/<name>/tunery_model.json``) holding the
    packaged SmolLM2, which ``python -m tunery.serving.chat_api file://...`` serves without any MLflow run.
    Hard links, not symlinks: MLflow refuses artifacts whose resolved path leaves the artifact folder."""
    from tunery.layout import MODEL_META
    from tunery.models import resolve_model

    folder = root / "artifacts" / "smollm2"
    folder.mkdir(parents=True)
    for source in Path(resolve_model("smollm2")).iterdir():
        if source.is_file() and not source.name.startswith("."):
            try:
                os.link(source, folder / source.name)
            except OSError:  # another file system
                shutil.copy2(source, folder / source.name)
    (folder / MODEL_META).write_text(json.dumps({"task": "sft"}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def smollm2_judge(tmp_path_factory):
    """A real ``python -m tunery.serving.chat_api`` process serving SmolLM2, stopped by its PID."""
    from tunery.ops import process

    root = tmp_path_factory.mktemp("judge-server")
    package = model_package(root / "package")
    port = process.free_port()
    log = root / "serve.log"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "TMPDIR": str(root)}
    # one thread: on 2 shared cores, two OpenMP threads spinning against other jobs made 8 requests take
    # 72 s instead of 9 (one thread stays near 9 s under the same load)
    env["OMP_NUM_THREADS"] = "1"
    server = process.spawn(
        "judge",
        [sys.executable, "-m", "tunery.serving.chat_api", package.as_uri(), "--port", str(port)],
        log,
        env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, process.log_tail(log)
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the chat server did not answer in 120 s:\n" + process.log_tail(log))
                time.sleep(0.5)
        yield {"base": base, "log": log}
    finally:
        process.stop_group(server)
        # chat_api copies the model (540 MB) under TMPDIR (`root`, so that it is found here): a SIGTERM must
        # still remove it (uvicorn re-raises the signal after its shutdown; chat_api exits through `finally`)
        leftovers = list(root.glob("tunery-chat-*"))
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)
        assert not leftovers, f"chat_api left its model copy after SIGTERM: {leftovers}"


@pytest.mark.slow
@pytest.mark.realdata
def test_smollm2_served_by_tunery_judges_real_prompts(smollm2_judge, shared_data, tmp_path):
    rows = json.loads((shared_data / "alpaca_demo" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    rows = sorted((r for r in rows[:60] if not r.get("input")), key=lambda r: len(r["output"]))[:4]
    prompts = [r["instruction"] for r in rows]
    candidate = [r["output"] for r in rows]  # the reference answers
    champion = ["I don't know."] * len(rows)  # a deliberately poor one
    endpoint = JudgeEndpoint(
        url=smollm2_judge["base"], model="smollm2", api_key=KEY, max_tokens=4, timeout_s=60
    )

    started = time.monotonic()
    records = judge_pairs(prompts, candidate, champion, endpoint)
    elapsed = time.monotonic() - started

    assert len(records) == 4
    for record in records:  # every request got a chat completion back
        for order in ("verdict_candidate_first", "verdict_candidate_second"):
            assert isinstance(record[order]["raw"], str)
            assert record[order]["parsed"] in ("A", "B", "tie", None)
        assert record["outcome"] in ("win", "loss", "tie", "invalid")
    assert any(
        r[o]["raw"].strip() for r in records for o in ("verdict_candidate_first", "verdict_candidate_second")
    )
    summary = win_rate(records)
    assert summary["wins"] + summary["losses"] + summary["ties"] + summary["invalid"] == 4
    if summary["n"]:
        assert 0.0 <= summary["ci_low"] <= summary["win_rate"] <= summary["ci_high"] <= 1.0
        assert 0.0 <= summary["position_bias"] <= 1.0
    else:
        assert summary["win_rate"] is None and summary["note"]
    path = write_verdicts(records, tmp_path / "judge.jsonl")
    assert len(path.read_text(encoding="utf-8").splitlines()) == 4
    assert KEY not in path.read_text(encoding="utf-8")
    assert KEY not in smollm2_judge["log"].read_text(encoding="utf-8", errors="replace")
    print(f"judged 4 prompts (8 requests) in {elapsed:.1f} s: {json.dumps(summary)}")
