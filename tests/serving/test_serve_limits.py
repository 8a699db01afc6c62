"""`tunery serve` under abuse, on a real server process serving a real registered model.

A small randomly initialised BERT (hidden 128, 2 layers, 256 tokens) with the MiniLM tokenizer is saved in
the TextClassifier layout, logged with ``TextClassifierModel`` and registered in a SQLite store in a
temporary folder. ``tunery serve`` is started as a subprocess on a free 127.0.0.1 port with small limits and
stopped by its PID. The server's CPU time is read from /proc (the whole process tree).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MAX_ROWS = 3000
MAX_BYTES = 8 * 1024 * 1024
TIMEOUT_S = 8.0
LABELS = ["ham", "spam"]
# about 256 tokens: every row fills max_length, so one batch of 64 costs real CPU time
LONG_TEXT = " ".join(f"word{i} ticket printer vpn broken again" for i in range(60))
SLOW_ROWS = 3000  # with the model below: a minute or more of work on two cores, far past TIMEOUT_S


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants (/proc/PID/stat fields 14 and 15)."""
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@pytest.fixture(scope="module")
def registered_model(tmp_path_factory):
    """A registered classifier ``tiny-serve`` version 1 (alias champion) in a SQLite store."""
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tunery.config import CleaningConfig
    from tunery.layout import MODEL_META
    from tunery.models import resolve_model
    from tunery.serving.pyfunc import TextClassifierModel

    root = tmp_path_factory.mktemp("serve")
    model_dir = root / "model"
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=256,
        num_labels=len(LABELS),
    )
    BertForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    meta = {"labels": LABELS, "cleaning": CleaningConfig().model_dump(mode="json"), "max_length": 256}
    (model_dir / MODEL_META).write_text(json.dumps(meta), encoding="utf-8")

    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("serve", artifact_location=(root / "artifacts").as_uri())
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", "text")]),
            outputs=Schema(
                [
                    ColSpec("string", "label", required=False),
                    *(ColSpec("double", f"prob_{c}", required=False) for c in LABELS),
                    ColSpec("string", "error"),
                ]
            ),
        )
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="model",
                python_model=TextClassifierModel(),
                artifacts={"model_dir": str(model_dir)},
                pip_requirements=["mlflow"],
                signature=signature,
                registered_model_name="tiny-serve",
            )
        mlflow.MlflowClient().set_registered_model_alias("tiny-serve", "champion", "1")
    finally:
        mlflow.set_tracking_uri(before)
    return uri


@contextlib.contextmanager
def _serving(uri: str, log_dir: Path):
    """A real `tunery serve` process; yields (base URL, PID); stopped by its PID."""
    port = _free_port()
    log_path = log_dir / "serve.log"
    cmd = [
        str(Path(sys.executable).with_name("tunery")),
        "serve",
        "tiny-serve@champion",
        "--port",
        str(port),
        "--tracking-uri",
        uri,
        "--max-rows",
        str(MAX_ROWS),
        "--max-request-bytes",
        str(MAX_BYTES),
        "--request-timeout",
        str(TIMEOUT_S),
    ]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"tunery serve did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url, proc.pid
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def server(registered_model, tmp_path_factory):
    with _serving(registered_model, tmp_path_factory.mktemp("serve-log")) as running:
        yield running


def _post(url: str, payload, timeout: float = 120) -> tuple[int, dict]:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _rows(texts) -> dict:
    return {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}


def _idle(pid: int, seconds: float = 3.0) -> float:
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - start


def test_empty_and_null_texts_get_an_error_per_row_and_the_others_labels(server):
    url, _ = server
    texts = ["My VPN drops every 5 minutes", "", None, "  <p> </p>  ", "the printer is on fire"]
    status, body = _post(url, _rows(texts))
    assert status == 200, body
    rows = body["predictions"]
    assert [r["error"] for r in rows] == ["", "empty_text", "empty_text", "empty_text", ""]
    for row in (rows[0], rows[4]):
        assert row["label"] in LABELS
        assert abs(row["prob_ham"] + row["prob_spam"] - 1) < 1e-5
    for row in rows[1:4]:
        assert row["label"] is None and row["prob_ham"] is None and row["prob_spam"] is None


def test_the_other_json_formats_still_work(server):
    url, _ = server
    status, body = _post(url, {"dataframe_records": [{"text": "hello"}, {"text": None}]})
    assert status == 200, body
    assert [r["error"] for r in body["predictions"]] == ["", "empty_text"]
    status, body = _post(url, {"inputs": {"text": ["hello", "world"]}})
    assert status == 200, body
    assert len(body["predictions"]) == 2


def test_a_request_over_the_row_limit_gets_413(server):
    url, _ = server
    started = time.monotonic()
    status, body = _post(url, _rows(["a short ticket"] * (MAX_ROWS + 1)))
    assert status == 413, body
    assert "--max-rows" in body["message"]
    assert time.monotonic() - started < 5
    status, body = _post(url, {"dataframe_records": [{"text": "x"}] * (MAX_ROWS + 1)})
    assert status == 413, body
    status, _ = _post(url, _rows(["a short ticket"] * 3))  # the server is still fine
    assert status == 200


def test_an_oversize_body_gets_413_before_it_is_read(server):
    url, pid = server
    host, port = url.removeprefix("http://").split(":")
    # announces 1 GB and sends only the headers: the answer must not wait for the body
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        reply = sock.recv(65536).decode()
        assert reply.startswith("HTTP/1.1 413"), reply
        assert time.monotonic() - started < 3
    # no Content-Length (chunked): stopped while streaming, once the limit is passed
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunk = b"x" * (1024 * 1024)

    def chunks():
        for _ in range(64):  # 64 MiB, far over the 8 MiB limit
            yield chunk

    started = time.monotonic()
    # the server may close the connection while we still send: its answer is already there
    with contextlib.suppress(OSError):
        conn.request(
            "POST",
            "/invocations",
            body=chunks(),
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
    reply = conn.getresponse()
    assert reply.status == 413
    assert time.monotonic() - started < 10
    conn.close()


def test_a_request_past_its_timeout_gets_504_and_stops_using_cpu(server):
    url, pid = server
    assert _idle(pid, 1.0) < 0.5  # the server is quiet before
    started = time.monotonic()
    status, body = _post(url, _rows([LONG_TEXT] * SLOW_ROWS))
    elapsed = time.monotonic() - started
    assert status == 504, body
    assert TIMEOUT_S - 0.5 < elapsed < TIMEOUT_S + 10, elapsed
    time.sleep(1.5)  # the batch in flight at the deadline finishes
    used = _idle(pid, 4.0)
    assert used < 0.5, f"the server used {used:.2f} s of CPU in 4 s after the timeout answer"
    status, _ = _post(url, _rows(["still serving"]))
    assert status == 200


def test_work_stops_when_the_client_disconnects(server):
    url, pid = server
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(_rows([LONG_TEXT] * SLOW_ROWS)).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    sent = time.monotonic()
    busy_start = cpu_seconds(pid)
    time.sleep(2.0)
    assert cpu_seconds(pid) - busy_start > 0.5  # it was working on it
    sock.close()  # the client gives up long before the server's timeout
    time.sleep(1.5)
    used = _idle(pid, 3.0)
    assert time.monotonic() - sent < TIMEOUT_S, "too slow to tell a disconnect from the timeout"
    assert used < 0.5, f"the server used {used:.2f} s of CPU in 3 s after its client left"


def test_serve_help_documents_the_limits():
    out = subprocess.run(
        [str(Path(sys.executable).with_name("tunery")), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    ).stdout
    for option in ("--max-request-bytes", "--max-rows", "--request-timeout"):
        assert option in out


def test_sigterm_during_a_request_answers_503_and_the_server_exits_quickly(registered_model, tmp_path):
    with _serving(registered_model, tmp_path) as (url, pid):
        answer = {}

        def slow_request():
            answer["status"], answer["body"] = _post(url, _rows([LONG_TEXT] * SLOW_ROWS))

        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(2.0)
        stopped = time.monotonic()
        os.kill(pid, signal.SIGTERM)  # `tunery serve` stops the server's process group
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), "tunery serve still runs 20 s after SIGTERM"
        assert time.monotonic() - stopped < 10
        client.join(timeout=30)
        assert answer.get("status") == 503, answer
