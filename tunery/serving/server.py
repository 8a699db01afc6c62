"""The REST server of ``tunery serve``: MLflow's own scoring app behind request limits.

``python -m tunery.serving.server MODEL_REFERENCE [options]`` downloads the model once, then runs uvicorn on
:func:`create_app` (one app per worker process). The app is MLflow's scoring app (``/ping``, ``/health``,
``/version``, ``/invocations`` and their formats unchanged) wrapped in :class:`RequestLimits`:

- a body over ``max_request_bytes`` gets 413 (from ``Content-Length`` before reading, else while streaming);
- an ``/invocations`` request with more than ``max_rows`` rows gets 413 (JSON ``dataframe_split``,
  ``dataframe_records``, ``instances``, ``inputs``; CSV rows; Parquet rows);
- each request has a :class:`~tunery.serving.limits.Budget`: its deadline (``request_timeout``, then 504)
  and a flag set when the client disconnects or the server is stopped. The model's batch loop checks it
  between batches, so abandoned or late work stops instead of running on after the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import signal
import tempfile

MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_ROWS = 10_000
REQUEST_TIMEOUT_S = 60.0

ERROR_CODES = {413: "REQUEST_TOO_LARGE", 503: "TEMPORARILY_UNAVAILABLE", 504: "TIMEOUT"}

ENV_MODEL_PATH = "TUNERY_SERVE_MODEL_PATH"
ENV_MAX_REQUEST_BYTES = "TUNERY_SERVE_MAX_REQUEST_BYTES"
ENV_MAX_ROWS = "TUNERY_SERVE_MAX_ROWS"
ENV_REQUEST_TIMEOUT = "TUNERY_SERVE_REQUEST_TIMEOUT"


def _json_rows(payload) -> int | None:
    if not isinstance(payload, dict):
        return len(payload) if isinstance(payload, list) else None
    if isinstance(split := payload.get("dataframe_split"), dict):
        data = split.get("data")
        return len(data) if isinstance(data, list) else None
    for key in ("dataframe_records", "instances", "inputs"):
        value = payload.get(key)
        if isinstance(value, list):
            return len(value)
        if isinstance(value, dict):  # column format: {"text": [...], ...}
            return max((len(v) for v in value.values() if isinstance(v, list)), default=1)
        if value is not None:
            return 1
    return None


def count_rows(body: bytes, content_type: str) -> int | None:
    """Rows of an ``/invocations`` body; None when unknown (malformed: MLflow answers that itself)."""
    mime = content_type.split(";")[0].strip().lower()
    try:
        if mime == "application/json":
            return _json_rows(json.loads(body))
        if mime == "text/csv":
            return max(sum(1 for _ in csv.reader(io.StringIO(body.decode("utf-8")))) - 1, 0)
        if mime == "application/x-parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(io.BytesIO(body)).metadata.num_rows
    except Exception:  # noqa: BLE001 - a body we cannot read is MLflow's to reject, with its message
        return None
    return None


async def _reply(send, status: int, text: str) -> None:
    body = json.dumps({"error_code": ERROR_CODES.get(status), "message": text})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


class RequestLimits:
    """ASGI middleware: request size and row limits, a per-request deadline, cancellation on disconnect."""

    def __init__(self, app, max_request_bytes: int, max_rows: int, request_timeout: float) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_rows = max_rows
        self.request_timeout = request_timeout
        self.active: set = set()  # the budgets of requests in progress (cancelled when the server stops)
        self._hooked = False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            self._hook_signals()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from tunery.serving.limits import BUDGET, Budget

        too_large = f"request body over the limit of {self.max_request_bytes} bytes (--max-request-bytes)"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_request_bytes:
            await _reply(send, 413, too_large)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                await _reply(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if scope.get("path") == "/invocations" and scope.get("method") == "POST":
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            rows = await asyncio.to_thread(count_rows, body, content_type)
            if rows is not None and rows > self.max_rows:
                await _reply(send, 413, f"{rows} rows over the limit of {self.max_rows} (--max-rows)")
                return

        budget = Budget(self.request_timeout)
        gone = asyncio.Event()
        body_sent = False

        async def replay():
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch():  # the server's receive answers http.disconnect once the client has gone
            while (await receive())["type"] != "http.disconnect":
                pass
            budget.cancel("client_disconnected")
            gone.set()

        state = "waiting"

        async def guarded_send(message):
            nonlocal state
            if message["type"] == "http.response.start":
                if budget.cancelled and message["status"] >= 400:  # MLflow's answer to the model stopping
                    state = "replaced"
                    if budget.reason == "timeout":
                        await _reply(send, 504, self._late())
                    elif budget.reason == "server_stopping":
                        await _reply(send, 503, "the server is stopping; the request's work was stopped")
                    return  # client_disconnected: nobody to answer
                state = "started"
            if state != "replaced":
                await send(message)

        token = BUDGET.set(budget)
        self.active.add(budget)
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait_for(self.app(scope, replay, guarded_send), timeout=self.request_timeout)
        except TimeoutError:
            budget.cancel("timeout")  # the thread running the model stops at its next batch
            if state == "waiting":
                await _reply(send, 504, self._late())
        finally:
            watcher.cancel()
            self.active.discard(budget)
            BUDGET.reset(token)

    def _late(self) -> str:
        limit = f"{self.request_timeout:g} s"
        return f"request not answered within {limit} (--request-timeout); its work was stopped"

    def cancel_all(self, reason: str) -> None:
        for budget in list(self.active):
            budget.cancel(reason)

    def _hook_signals(self) -> None:
        """On SIGTERM/SIGINT, stop the work in progress before uvicorn's graceful shutdown waits for it.

        Runs at lifespan startup, in the main thread, after uvicorn installed its own handlers (chained)."""
        import threading

        if self._hooked or threading.current_thread() is not threading.main_thread():
            return
        self._hooked = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum, frame, previous=previous):
                self.cancel_all("server_stopping")
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)


def create_app():
    """The app of one worker process, from the environment :func:`main` sets (uvicorn factory)."""
    timeout = float(os.environ.get(ENV_REQUEST_TIMEOUT, REQUEST_TIMEOUT_S))
    # MLflow's own timeout answers 504 but leaves the work running: ours acts first and stops it
    os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(timeout) + 30)
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(os.environ[ENV_MODEL_PATH])
    return RequestLimits(
        scoring_server.init(model),
        max_request_bytes=int(os.environ.get(ENV_MAX_REQUEST_BYTES, MAX_REQUEST_BYTES)),
        max_rows=int(os.environ.get(ENV_MAX_ROWS, MAX_ROWS)),
        request_timeout=timeout,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tunery.serving.server", description="tunery serve")
    parser.add_argument("model", help="NAME@alias, NAME/version or an MLflow model URI")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES)
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS)
    parser.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S)
    args = parser.parse_args(argv)
    from tunery.ops.cpus import fit_openmp_to_quota

    fit_openmp_to_quota()  # before torch: a container's CPU limit, not the host's count, sizes its threads
    import mlflow
    import uvicorn

    from tunery.serving.scoring import default_tracking_uri, model_uri
    from tunery.tracking import use_tracking_uri

    use_tracking_uri(default_tracking_uri())
    root = tempfile.mkdtemp(prefix="tunery-serve-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri(args.model), dst_path=root)
        os.environ[ENV_MODEL_PATH] = local
        os.environ[ENV_MAX_REQUEST_BYTES] = str(args.max_request_bytes)
        os.environ[ENV_MAX_ROWS] = str(args.max_rows)
        os.environ[ENV_REQUEST_TIMEOUT] = str(args.request_timeout)
        uvicorn.run(
            "tunery.serving.server:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            timeout_graceful_shutdown=10,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
