"""Serving latency: a registered tunery model behind ``tunery serve`` (MLflow's scoring server), on loopback.

Side by side in one run:

* in-process baseline: the same registered pyfunc loaded in this process, ``predict`` on one raw text at
  a time, sequentially (no HTTP, no JSON): the cost of the model itself;
* served: ``tunery serve NAME@ALIAS`` on 127.0.0.1, ``POST /invocations`` with one raw text per request,
  from 1 client and then from 32 concurrent clients (threads with keep-alive connections), each phase for
  ``--duration`` seconds after a warm-up. Every reply is checked: HTTP 200 and one prediction with a label;
  anything else counts as an error (target: 0 errors).

Request texts are raw help-desk tickets (subject + body, uncleaned) from ``data/samples/helpdesk_tickets.csv``
(written by tunery), cycled in order. Without ``--model``, the benchmark first trains one: ``tunery run
configs/helpdesk.yaml`` (1 epoch) into a temporary folder with a SQLite MLflow store.

Usage::

    python benchmarks/serving_latency.py                      # trains a model, 60 s per phase (~5 min)
    python benchmarks/serving_latency.py --model NAME@champion --tracking-uri http://127.0.0.1:5000

Results go to ``benchmarks/results/serving_latency.json`` (``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hostinfo

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "serving_latency.json"
DEFAULT_TEXTS = REPO / "data" / "samples" / "helpdesk_tickets.csv"
BENCH_MODEL = "serving-latency-helpdesk"


def load_texts(path: Path, limit: int = 500) -> list[str]:
    """Raw ticket texts: subject and body as they arrived (HTML, signatures and all)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False).head(limit)
    texts = (frame["subject"] + "\n\n" + frame["body"]).tolist()
    # tickets with neither subject nor body are answered with a per-row error (empty_text), as training
    # quarantines them: they measure no model, so they are not sent
    return [t for t in texts if t.strip()]


def train_model(workdir: Path) -> tuple[str, str]:
    """Train and register the demo recipe's model (1 epoch); returns (model reference, tracking URI)."""
    command = [
        sys.executable,
        "-m",
        "tunery.cli",
        "run",
        str(REPO / "configs" / "helpdesk.yaml"),
        "training.epochs=1",
        f"workdir={workdir}",
        f"mlflow.registered_model={BENCH_MODEL}",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    print("training a model to serve: " + shlex.join(command), flush=True)
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return f"{BENCH_MODEL}@champion", f"sqlite:///{workdir / 'mlflow.db'}"


def percentiles(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean of latencies, in milliseconds (nearest-rank percentiles)."""
    if not latencies_s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(latencies_s)

    def rank(q: float) -> float:
        index = min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1
        return round(1000 * ordered[index], 3)

    return {
        "p50_ms": rank(0.50),
        "p90_ms": rank(0.90),
        "p99_ms": rank(0.99),
        "max_ms": round(1000 * ordered[-1], 3),
        "mean_ms": round(1000 * statistics.fmean(ordered), 3),
    }


def in_process(model_ref: str, tracking_uri: str, texts: list[str], duration: float) -> dict[str, Any]:
    """Baseline: the registered pyfunc's ``predict`` on one text at a time in this process."""
    import mlflow
    import pandas as pd

    from tunery.serving.scoring import model_uri

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri(model_ref), dst_path=tempfile.mkdtemp(prefix="tunery-bench-"))
    model.predict(pd.DataFrame({"text": texts[:4]}))  # warm-up
    latencies, i = [], 0
    stop = time.perf_counter() + duration
    while time.perf_counter() < stop:
        started = time.perf_counter()
        model.predict(pd.DataFrame({"text": [texts[i % len(texts)]]}))
        latencies.append(time.perf_counter() - started)
        i += 1
    return {
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / duration, 3),
        **percentiles(latencies),
    }


class Phase:
    """``clients`` threads posting one raw text per request for ``duration`` seconds."""

    def __init__(self, port: int, texts: list[str], clients: int, duration: float) -> None:
        self.port, self.texts, self.clients, self.duration = port, texts, clients, duration
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def _client(self, offset: int, stop_at: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        i = offset
        mine: list[float] = []
        errors: list[str] = []
        while time.perf_counter() < stop_at:
            body = json.dumps(
                {"dataframe_split": {"columns": ["text"], "data": [[self.texts[i % len(self.texts)]]]}}
            )
            i += self.clients
            started = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                payload = reply.read()
                elapsed = time.perf_counter() - started
                if reply.status != 200:
                    errors.append(f"HTTP {reply.status}: {payload[:200]!r}")
                    continue
                predictions = json.loads(payload)["predictions"]
                if len(predictions) != 1 or not predictions[0].get("label"):
                    errors.append(f"bad reply: {payload[:200]!r}")
                    continue
                mine.append(elapsed)
            except Exception as exc:  # any failure is an error of this request, never a lost thread
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.close()
        with self.lock:
            self.latencies.extend(mine)
            self.errors.extend(errors)

    def run(self) -> dict[str, Any]:
        stop_at = time.perf_counter() + self.duration
        started = time.perf_counter()
        threads = [threading.Thread(target=self._client, args=(k, stop_at)) for k in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started  # includes the requests in flight at the deadline
        return {
            "clients": self.clients,
            "duration_s": round(elapsed, 3),
            "requests": len(self.latencies),
            "errors": len(self.errors),
            "error_examples": self.errors[:5],
            "throughput_rps": round(len(self.latencies) / elapsed, 3),
            **percentiles(self.latencies),
        }


def start_server(model_ref: str, tracking_uri: str, workers: int, log: Path) -> tuple[subprocess.Popen, int]:
    """``tunery serve`` on a free loopback port; waits for ``/ping``."""
    from tunery.ops import stack

    port = stack.free_port()
    command = [sys.executable, "-m", "tunery.cli", "serve", model_ref, "--port", str(port)]
    command += ["--tracking-uri", tracking_uri, "--workers", str(workers)]
    proc = stack.spawn("serve", command, log)
    stack.wait_http(f"http://127.0.0.1:{port}/ping", proc.pid, log, timeout=180)
    return proc, port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="registered model NAME@ALIAS or NAME/VERSION (default: train one)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI of --model")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per served phase")
    parser.add_argument(
        "--baseline-duration", type=float, default=20.0, help="seconds of in-process baseline"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up requests before timing")
    parser.add_argument("--clients", default="1,32", help="comma-separated concurrent client counts")
    parser.add_argument("--workers", type=int, default=1, help="scoring-server worker processes")
    parser.add_argument("--texts", type=Path, default=DEFAULT_TEXTS, help="CSV with subject and body columns")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if bool(args.model) != bool(args.tracking_uri):
        parser.error("--model and --tracking-uri go together")
    args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.client_counts or min(args.client_counts) < 1:
        parser.error("--clients needs positive integers")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from tunery.ops import stack

    machine = hostinfo.machine_info(("torch", "transformers", "mlflow", "uvicorn", "tunery"))
    texts = load_texts(args.texts)
    with tempfile.TemporaryDirectory(prefix="tunery-serving-") as tmp:
        workdir = Path(tmp)
        if args.model:
            model_ref, tracking_uri = args.model, args.tracking_uri
        else:
            model_ref, tracking_uri = train_model(workdir / "work")
        print("baseline: in-process predict ...", flush=True)
        baseline = in_process(model_ref, tracking_uri, texts, args.baseline_duration)
        log = workdir / "serve.log"
        proc, port = start_server(model_ref, tracking_uri, args.workers, log)
        try:
            Phase(port, texts, max(args.client_counts), args.warmup).run()  # warm-up, not recorded
            phases = []
            for clients in args.client_counts:
                print(f"served: {clients} client(s) for {args.duration:.0f} s ...", flush=True)
                phases.append(Phase(port, texts, clients, args.duration).run())
        finally:
            stack.stop_pid(proc.pid)
    total_errors = sum(p["errors"] for p in phases)
    single = next((p for p in phases if p["clients"] == 1), phases[0])
    doc = {
        "benchmark": "serving_latency",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "model": model_ref
            if args.model
            else f"{BENCH_MODEL}@champion (trained: configs/helpdesk.yaml, 1 epoch)",
            "duration_s": args.duration,
            "baseline_duration_s": args.baseline_duration,
            "warmup_s": args.warmup,
            "clients": args.client_counts,
            "server_workers": args.workers,
            "rows_per_request": 1,
            "texts": f"{len(texts)} raw tickets from {args.texts.name}",
        },
        "baseline_in_process": baseline,
        "served": phases,
        "comparison": {
            "served_1_client_p50_over_in_process_p50": (
                round(single["p50_ms"] / baseline["p50_ms"], 3)
                if single["p50_ms"] and baseline["p50_ms"]
                else None
            ),
            "served_1_client_rps_over_in_process_rps": round(
                single["throughput_rps"] / baseline["throughput_rps"], 3
            ),
        },
        # a phase without a single answered request proves nothing: not met
        "targets": {
            "zero_errors": {
                "errors": total_errors,
                "met": total_errors == 0 and all(p["requests"] > 0 for p in phases),
            }
        },
        "notes": [
            "latency = wall time from sending a request to reading the whole reply, per request, on one "
            "keep-alive connection per client thread; percentiles are nearest-rank",
            "throughput_rps = successful requests / phase wall time (the phase ends when the last in-flight "
            "request returns)",
            "the clients run in the benchmark process on the same 2 cores as the server: with 32 clients "
            "the server is saturated and latency is mostly queueing",
            "baseline = the same pyfunc (cleaning + tokenising + model) called in-process: served / baseline "
            "is the cost of HTTP, JSON and the scoring server",
        ],
    }
    hostinfo.write_result(args.out, doc)
    print(f"{'phase':<22}{'requests':>9}{'errors':>7}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}")
    print(
        f"{'in-process':<22}{baseline['requests']:>9}{0:>7}{baseline['throughput_rps']:>9.1f}"
        f"{baseline['p50_ms']:>9.1f}{baseline['p99_ms']:>9.1f}"
    )
    for p in phases:
        print(
            f"{'served, ' + str(p['clients']) + ' client(s)':<22}{p['requests']:>9}{p['errors']:>7}"
            f"{p['throughput_rps']:>9.1f}{p['p50_ms'] or 0:>9.1f}{p['p99_ms'] or 0:>9.1f}"
        )
    print(f"zero errors: {doc['targets']['zero_errors']['met']}; wrote {args.out}")
    return doc


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
