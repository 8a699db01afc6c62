"""No credential in anything a run leaves behind (docs/security.md, "Credentials").

A real ``mlflow server`` on 127.0.0.1 (SQLite backend store, proxied artifacts) sits behind a small
reverse proxy that answers 401 to any request without ``Authorization: Basic tunery:S3cretPlanted``:
MLflow's own server needs no auth plugin for this (its basic-auth app needs Flask-WTF, not installed; an
open server would accept the credentials without checking them), so the proxy is what proves that every
MLflow call (the orchestrating process, the training job it starts, the registry's downloads) still
authenticates once the credentials are taken out of the URI. The tiny BERT trains for 2 steps on 48 rows.

The password is planted in ``MLFLOW_TRACKING_URI`` (through ``tunery run``, a real subprocess with its own
ephemeral Prefect), in a failing ``tunery run`` (the final error line) and in a flow override (in-process,
under the session's Prefect test server); then stdout, stderr, every file of the run's folders, the MLflow
server's store and artifacts, and the Prefect databases are searched for it, and it is nowhere.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.training.test_loop import sentiment_frame

pytestmark = pytest.mark.slow

USER, SECRET = "tunery", "S3cretPlanted"
# what would betray the password: itself, percent-encoded (same here), or inside a Basic auth header
NEEDLES = (SECRET.encode(), base64.b64encode(f"{USER}:{SECRET}".encode()))


class AuthProxy(http.server.ThreadingHTTPServer):
    """Forwards requests with the right Basic credentials to the MLflow server; 401 for any other."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream_port = upstream_port
        self.expected = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
        self.accepted, self.rejected = 0, []
        self.lock = threading.Lock()


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AuthProxy

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _forward(self) -> None:
        body = self._body()
        if self.headers.get("Authorization") != self.server.expected:
            with self.server.lock:
                self.server.rejected.append(f"{self.command} {self.path}")
            self._reply(401, [("WWW-Authenticate", 'Basic realm="mlflow"')], b"unauthorized")
            return
        with self.server.lock:
            self.server.accepted += 1
        skip = ("host", "connection", "transfer-encoding", "content-length", "authorization")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=300)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            self._reply(response.status, response.getheaders(), response.read())
        finally:
            upstream.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        return None


@pytest.fixture(scope="module")
def guarded_mlflow(tmp_path_factory):
    """A real MLflow server behind the auth proxy: (URI with the password, server folder, proxy)."""
    from tunery.ops import stack

    root = tmp_path_factory.mktemp("secret-mlflow")
    service = stack.start_mlflow(root)
    proxy = AuthProxy(service.port)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{USER}:{SECRET}@127.0.0.1:{proxy.server_address[1]}", root, proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        stack.stop_services([service])


@pytest.fixture(scope="module")
def secrets_recipe(tmp_path_factory, tiny_bert):
    """A recipe without a tracking URI (it comes from the environment or an override)."""
    folder = tmp_path_factory.mktemp("secret-recipe")
    sentiment_frame(48).to_csv(folder / "reviews.csv", index=False)
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: secrets
            data: {{source: {folder / "reviews.csv"}}}
            cleaning: {{near_duplicates: false}}
            model: {{base: {tiny_bert}, max_length: 16}}
            training: {{max_steps: 2, batch_size: 8, logging_steps: 1, save_steps: 2}}
            evaluation: {{gate: {{baseline_floor: false}}}}
            mlflow: {{experiment: secrets, registered_model: secrets}}
            workdir: {folder / "work"}
            """
        )
    )
    return recipe


def leaks(*roots: Path) -> list[str]:
    """Every file under ``roots`` (and the roots that are files) whose bytes hold a needle."""
    found = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path}: {needle.decode()}" for needle in NEEDLES if needle in data]
    return found


def assert_nothing_in_text(*texts: str) -> None:
    for text in texts:
        for needle in NEEDLES:
            assert needle.decode() not in text, text[-3000:]


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_"))}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        **extra,
    )
    return env


def tunery_run(recipe: Path, env: dict[str, str], *overrides: str, timeout: int = 420):
    return subprocess.run(
        [sys.executable, "-m", "tunery.cli", "run", str(recipe), *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )


def registered_runs(proxy_uri_clean: str, experiment: str = "secrets"):
    """The runs of the experiment, read through the proxy with the credentials given the supported way."""
    import mlflow

    client = mlflow.MlflowClient(proxy_uri_clean)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


@pytest.fixture
def mlflow_credentials(monkeypatch):
    """The test process's own MLflow calls authenticate through the variables; nothing leaks to others."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_password_in_mlflow_tracking_uri_via_tunery_run(
    guarded_mlflow, secrets_recipe, tmp_path, mlflow_credentials
):
    uri, server_root, proxy = guarded_mlflow
    work = tmp_path / "work"
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=uri)
    result = tunery_run(secrets_recipe, env, f"workdir={work}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    clean = uri.replace(f"{USER}:{SECRET}@", "")
    assert f"open the results: {clean}" in result.stdout
    assert_nothing_in_text(result.stdout, result.stderr)

    assert not proxy.rejected, proxy.rejected[:5]
    assert proxy.accepted > 0
    mlflow_credentials.setenv("MLFLOW_TRACKING_USERNAME", USER)
    mlflow_credentials.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    client, runs = registered_runs(clean)
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert "train/loss" in run.data.metrics, "the training job (a child process) logged through the proxy"
    assert run.data.params["mlflow.tracking_uri"] == "None"
    assert client.get_model_version_by_alias("secrets", "champion").run_id == run.info.run_id

    assert leaks(work, secrets_recipe.parent, server_root, tmp_path / "prefect-home") == []
    assert list((tmp_path / "prefect-home").rglob("*.db")), "the ephemeral Prefect database was searched"


def test_password_never_in_the_final_error_line(secrets_recipe, tmp_path, mlflow_credentials):
    """An unreachable server: MLflow's error names the URI it called; the person sees it without password."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = cli_env(
        tmp_path,
        MLFLOW_TRACKING_URI=f"http://{USER}:{SECRET}@127.0.0.1:{port}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    result = tunery_run(secrets_recipe, env, f"workdir={tmp_path / 'work'}", "--verbose", timeout=300)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], result.stderr[-3000:]
    assert_nothing_in_text(result.stdout, result.stderr)
    assert leaks(tmp_path / "work", tmp_path / "prefect-home") == []


def test_password_in_a_flow_override(
    guarded_mlflow, secrets_recipe, tmp_path, prefect_harness, capfd, mlflow_credentials
):
    """The flow is called with ``mlflow.tracking_uri=http://tunery:S3cretPlanted@...``: Prefect stores the
    override redacted, the recipe carries no password, and the run still authenticates."""
    import prefect.settings

    from flows.finetune import finetune

    uri, server_root, proxy = guarded_mlflow
    rejected_before = len(proxy.rejected)
    clean = uri.replace(f"{USER}:{SECRET}@", "")
    mlflow_credentials.setenv("MLFLOW_TRACKING_USERNAME", USER)
    mlflow_credentials.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    _, earlier = registered_runs(clean)
    mlflow_credentials.delenv("MLFLOW_TRACKING_USERNAME")
    mlflow_credentials.delenv("MLFLOW_TRACKING_PASSWORD")
    work = tmp_path / "work"
    state = finetune(
        recipe_path=str(secrets_recipe),
        overrides=[f"mlflow.tracking_uri={uri}", f"workdir={work}"],
        return_state=True,
    )
    result = state.result()
    # after the CLI test, the gate compared with the champion: it was downloaded through the proxy
    assert result["version"] == str(len(earlier) + 1)
    assert len(proxy.rejected) == rejected_before, proxy.rejected[-5:]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect_client:
        flow_run = prefect_client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.parameters["overrides"][0] == f"mlflow.tracking_uri=http://{USER}:***@{uri.split('@')[1]}"

    out, err = capfd.readouterr()
    assert_nothing_in_text(out, err)
    client, runs = registered_runs(clean)  # the flow left the credentials in this process's variables
    assert any(r.info.run_id == result["run_id"] and r.info.status == "FINISHED" for r in runs)
    assert client.get_run(result["run_id"]).data.params["mlflow.tracking_uri"] == clean

    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # the flow's logs reach the database in batches: search them all
    database = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]
    prefect_home = Path(prefect.settings.PREFECT_HOME.value())
    assert leaks(work, secrets_recipe.parent, server_root, Path(database).parent, prefect_home) == []


BLOCK_PASSWORD = "Bl0ckPassword"  # not SECRET: the Prefect database is searched for that one


@pytest.mark.parametrize(
    "value", [BLOCK_PASSWORD, {"username": USER, "password": BLOCK_PASSWORD}], ids=["str", "dict"]
)
def test_credentials_from_a_prefect_secret_block(prefect_harness, mlflow_credentials, value):
    """A Secret block named by TUNERY_MLFLOW_SECRET_BLOCK, read at the flows' start."""
    import os

    from prefect.blocks.system import Secret

    from tasks.model import SECRET_BLOCK_VARIABLE, mlflow_credentials_from_secret

    Secret(value=value).save("tunery-test-mlflow", overwrite=True)
    mlflow_credentials.setenv("MLFLOW_TRACKING_USERNAME", USER)
    mlflow_credentials.setenv(SECRET_BLOCK_VARIABLE, "tunery-test-mlflow")
    mlflow_credentials_from_secret()
    found = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    assert found == (USER, BLOCK_PASSWORD)
