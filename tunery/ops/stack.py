"""Local servers on 127.0.0.1: PostgreSQL, an MLflow tracking server, a Prefect server and its worker.

Each service is a real process started here, in its own session (process group), with its log file and its
PID recorded in ``<root>/state.json``. ``down`` stops them in reverse dependency order (workers before the
Prefect server, the MLflow server before PostgreSQL), by the PIDs it started and nothing else.

The same functions back ``tunery stack up|down|status`` and the tests that need real servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunery.ops.process import (
    LOOPBACK,
    alive,
    command_line,
    free_port,
    log_tail,
    process_identity,
    spawn,
    stop_pid,
)

# Stop order: dependants first. A worker whose server is gone ignores SIGTERM, hence SIGINT for workers.
STOP_ORDER = ("worker", "prefect", "mlflow", "postgres")
STOP_SIGNAL = {"worker": signal.SIGINT, "postgres": signal.SIGINT}  # postgres: SIGINT = fast shutdown


class StackError(RuntimeError):
    """A service did not start, or the stack's state is not what the command needs."""


@dataclass
class Service:
    """One started process: what it is, where it listens and where it logs."""

    name: str
    pid: int
    log: str
    port: int | None = None
    url: str | None = None
    command: list[str] = field(default_factory=list)
    # boot id and start time of the process (see process_identity): a recorded PID that the kernel has
    # since given to another process (after the service died, or after a reboot) does not match it;
    # None where it could not be read (see is_running for what is checked then)
    identity: str | None = None


def wait_http(url: str, pid: int, log: Path, timeout: float = 120.0) -> None:
    """Wait until ``url`` answers 200; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive(pid):
            raise StackError(f"process {pid} exited before {url} answered; log {log}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=3) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{url} did not answer within {timeout:.0f} s; log {log}:\n{log_tail(log)}")
        time.sleep(0.5)


def is_running(service: Service) -> bool:
    """Whether the service's own process still runs, not a newer one that reused its PID.

    The PID must be alive and still name the recorded process: same identity (boot id + start time) when
    the start-up recorded one; otherwise (a state file from an older tunery, or a start-up that could not
    read /proc) the same command line, where /proc can tell. Only without /proc is the PID trusted alone.
    """
    if not alive(service.pid):
        return False
    if service.identity is not None:
        return process_identity(service.pid) == service.identity
    running = command_line(service.pid)
    if running is None or not service.command:
        return True
    return running == [str(part) for part in service.command]


@contextlib.contextmanager
def _stopped_on_failure(pid: int, sig: int = signal.SIGTERM):
    """Stop the just-spawned process ``pid`` if its start-up checks fail (or are interrupted)."""
    try:
        yield
    except BaseException:
        stop_pid(pid, sig)
        raise


# --------------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------------


def _pg_bin(tool: str) -> str:
    """A PostgreSQL server binary: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(tool)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / tool).exists():
            return str(folder / tool)
    raise StackError(
        f"PostgreSQL's {tool} was not found (Debian: apt-get install postgresql); "
        "or use the default SQLite backend"
    )


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


# With PostgreSQL, the stack's searches keep their Optuna studies in this database of the same server; the
# worker is told so by SEARCH_STORAGE_VARIABLE (a recipe's `search.storage` still wins).
SEARCH_DATABASE = "optuna"
SEARCH_STORAGE_VARIABLE = "TUNERY_SEARCH_STORAGE"


def start_postgres(root: Path, port: int | None = None, database: str = "mlflow") -> tuple[Service, str]:
    """Initialise (once) and start a PostgreSQL cluster on 127.0.0.1 and create ``database``.

    The cluster lives in ``<root>/postgres`` (trust authentication on loopback only). When running as
    root the data folder is owned by, and the server runs as, the ``postgres`` system user.

    Returns:
        The service and the SQLAlchemy URI of the database (``postgresql+psycopg://...``).
    """
    port = port or free_port()
    data = root / "postgres" / "data"
    sockets = root / "postgres" / "sockets"
    log = root / "logs" / "postgres.log"
    sockets.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root / "postgres", "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
        reachable = subprocess.run(_as_postgres_user(["test", "-w", str(sockets)]), check=False)
        if reachable.returncode != 0:
            raise StackError(
                f"the postgres user cannot reach {sockets}: a parent folder is private to root "
                "(choose a stack folder whose parents are world-executable)"
            )
    if not (data / "PG_VERSION").exists():
        init = _as_postgres_user(
            [_pg_bin("initdb"), "-D", str(data), "-U", "tunery", "--auth=trust", "-E", "UTF8", "--no-sync"]
        )
        done = subprocess.run(init, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"initdb failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    command = _as_postgres_user(
        [_pg_bin("postgres"), "-D", str(data), "-p", str(port), "-h", LOOPBACK, "-k", str(sockets)]
    )
    proc = spawn("postgres", command, log)
    url = f"postgresql://tunery@{LOOPBACK}:{port}"
    service = Service("postgres", proc.pid, str(log), port, url, command, process_identity(proc.pid))
    with _stopped_on_failure(proc.pid, signal.SIGINT):
        _wait_postgres(port, proc.pid, log)
        _create_database(port, database)
    return service, f"postgresql+psycopg://tunery@{LOOPBACK}:{port}/{database}"


def _wait_postgres(port: int, pid: int, log: Path, timeout: float = 60.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if not alive(pid):
            raise StackError(f"postgres exited during start-up; log {log}:\n{log_tail(log)}")
        try:
            with psycopg.connect(
                host=LOOPBACK, port=port, user="tunery", dbname="postgres", connect_timeout=2
            ):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise StackError(f"postgres did not accept connections in {timeout:.0f} s") from None
            time.sleep(0.3)


def _create_database(port: int, database: str) -> None:
    import psycopg

    with psycopg.connect(host=LOOPBACK, port=port, user="tunery", dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')


# --------------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------------


def start_mlflow(root: Path, backend_uri: str | None = None, port: int | None = None) -> Service:
    """Start ``mlflow server`` on 127.0.0.1 (artifacts proxied by the server, stored under ``root``).

    Args:
        root: the stack folder (SQLite store, artifacts and logs go there).
        backend_uri: the backend store; default SQLite ``<root>/mlflow/mlflow.db``.
        port: default a free port.
    """
    port = port or free_port()
    store = root / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    backend_uri = backend_uri or f"sqlite:///{store / 'mlflow.db'}"
    log = root / "logs" / "mlflow.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # Job execution starts 7 extra workers (~2 GB) that tunery does not use.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = spawn("mlflow", command, log, env)
    url = f"http://{LOOPBACK}:{port}"
    with _stopped_on_failure(proc.pid):
        wait_http(f"{url}/health", proc.pid, log)
    return Service("mlflow", proc.pid, str(log), port, url, command, process_identity(proc.pid))


# --------------------------------------------------------------------------------------------------------
# Prefect
# --------------------------------------------------------------------------------------------------------


def prefect_env(root: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for Prefect processes of this stack (its own PREFECT_HOME, no analytics)."""
    env = {
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _prefect_cli() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def start_prefect(root: Path, port: int | None = None, env: dict[str, str] | None = None) -> Service:
    """Start ``prefect server start`` on 127.0.0.1 with its SQLite database under ``root``.

    ``env`` adds server settings (e.g. ``PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS``)."""
    port = port or free_port()
    log = root / "logs" / "prefect-server.log"
    command = [*_prefect_cli(), "server", "start", "--host", LOOPBACK, "--port", str(port)]
    url = f"http://{LOOPBACK}:{port}"
    # The UI calls the API at this address (Prefect's default assumes port 4200).
    ui = {"PREFECT_SERVER_UI_API_URL": f"{url}/api"}
    # SQLite serialises writes: on a small machine a burst (runs finishing, the worker, the scheduler) can
    # hold the lock longer than the default 10 s statement timeout, which the API answers with 503.
    db = {"PREFECT_SERVER_DATABASE_TIMEOUT": os.environ.get("PREFECT_SERVER_DATABASE_TIMEOUT", "60")}
    proc = spawn("prefect", command, log, {**prefect_env(root), **ui, **db, **(env or {})})
    with _stopped_on_failure(proc.pid):
        wait_http(f"{url}/api/health", proc.pid, log)
    return Service("prefect", proc.pid, str(log), port, url, command, process_identity(proc.pid))


def start_worker(root: Path, api_url: str, pool: str, env: dict[str, str] | None = None) -> Service:
    """Start a Prefect worker for ``pool`` (process type) against the server at ``api_url``."""
    log = root / "logs" / f"worker-{pool}.log"
    command = [*_prefect_cli(), "worker", "start", "--pool", pool, "--type", "process"]
    proc = spawn("worker", command, log, {**prefect_env(root, f"{api_url}/api"), **(env or {})})
    time.sleep(1.0)
    if not alive(proc.pid):
        raise StackError(f"the worker for pool {pool} exited; log {log}:\n{log_tail(log)}")
    return Service("worker", proc.pid, str(log), None, None, command, process_identity(proc.pid))


# --------------------------------------------------------------------------------------------------------
# State: what `up` started, for `status` and `down`
# --------------------------------------------------------------------------------------------------------


def state_file(root: Path) -> Path:
    return root / "state.json"


def save_state(root: Path, services: list[Service], extra: dict | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    doc = {"services": [asdict(s) for s in services], **(extra or {})}
    handle, name = tempfile.mkstemp(dir=root, prefix=".state-")
    os.close(handle)
    tmp = Path(name)
    tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    tmp.replace(state_file(root))


def load_state(root: Path) -> dict:
    path = state_file(root)
    if not path.exists():
        return {"services": []}
    return json.loads(path.read_text(encoding="utf-8"))


def services(root: Path) -> list[Service]:
    return [Service(**s) for s in load_state(root)["services"]]


def status(root: Path) -> list[tuple[Service, bool]]:
    """Each recorded service with whether its process is still running (see :func:`is_running`)."""
    return [(s, is_running(s)) for s in services(root)]


def stop_services(found: list[Service]) -> list[str]:
    """Stop services in :data:`STOP_ORDER` (dependants first); returns the names of those that ran.

    A recorded PID that now names another process (see :func:`is_running`) is left alone.
    """
    stopped = []
    rank = {name: i for i, name in enumerate(STOP_ORDER)}
    for service in sorted(found, key=lambda s: rank.get(s.name, -1)):
        if is_running(service) and stop_pid(service.pid, STOP_SIGNAL.get(service.name, signal.SIGTERM)):
            stopped.append(service.name)
    return stopped


def down(root: Path) -> list[str]:
    """Stop everything ``up`` recorded under ``root`` and forget it."""
    stopped = stop_services(services(root))
    state = load_state(root)
    save_state(root, [], {k: v for k, v in state.items() if k != "services"})
    return stopped


# --------------------------------------------------------------------------------------------------------
# The whole local stack
# --------------------------------------------------------------------------------------------------------

DEFAULT_POOL = "tunery-local"
TRAINING_LIMIT = "tunery-training"  # one training job at a time per pool: see tasks/model.py


def _prefect(root: Path, api_url: str, args: list[str], cwd: Path, check: bool = True) -> str:
    """Run a Prefect CLI command against the stack's server; returns its output (stdout and stderr)."""
    env = {**os.environ, **prefect_env(root, f"{api_url}/api")}
    done = subprocess.run(
        [*_prefect_cli(), "--no-prompt", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise StackError(f"prefect {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def _prefect_ok(root: Path, api_url: str, limit: str, cwd: Path) -> bool:
    """Whether the global concurrency limit ``limit`` exists on the server."""
    try:
        _prefect(root, api_url, ["global-concurrency-limit", "inspect", limit], cwd)
    except StackError:
        return False
    return True


def provision(root: Path, api_url: str, project: Path, pool: str = DEFAULT_POOL, deploy: bool = True) -> None:
    """Create the work pool (process type, tunery's base job template), the training concurrency limit
    (1 slot) and, with ``deploy``, every deployment of ``project/prefect.yaml``. Idempotent."""
    template = project / "infra" / "process-pool.json"
    create = ["work-pool", "create", pool, "--type", "process", "--overwrite"]
    if template.exists():
        create += ["--base-job-template", str(template)]
    _prefect(root, api_url, create, project)
    limit = ["global-concurrency-limit", "create", TRAINING_LIMIT, "--limit", "1"]
    out = _prefect(root, api_url, limit, project, check=False)
    if "already exists" not in out and not _prefect_ok(root, api_url, TRAINING_LIMIT, project):
        raise StackError(f"creating the global concurrency limit {TRAINING_LIMIT} failed:\n{out[-2000:]}")
    if deploy:
        _prefect(root, api_url, ["deploy", "--all"], project)


def up(
    root: Path,
    project: Path,
    *,
    postgres: bool = False,
    prefect_port: int | None = None,
    mlflow_port: int | None = None,
    pool: str = DEFAULT_POOL,
    deploy: bool = True,
    worker_env: dict[str, str] | None = None,
    server_env: dict[str, str] | None = None,
) -> dict:
    """Start PostgreSQL (optional), MLflow, the Prefect server and a worker; provision and deploy.

    Already-running stacks are refused (``down`` first). On any failure, what was started is stopped.

    Returns:
        The saved state: services, ``prefect_url``, ``prefect_api_url``, ``mlflow_url``, ``pool``.
    """
    running = [s.name for s, alive in status(root) if alive]
    if running:
        raise StackError(f"a stack is already running under {root} ({', '.join(running)}): run `down` first")
    root.mkdir(parents=True, exist_ok=True)
    started: list[Service] = []
    try:
        backend = search_storage = None
        if postgres:
            service, backend = start_postgres(root)
            started.append(service)
            _create_database(service.port, SEARCH_DATABASE)  # hyperparameter-search studies (Optuna)
            search_storage = backend.rsplit("/", 1)[0] + f"/{SEARCH_DATABASE}"
        mlflow_service = start_mlflow(root, backend, mlflow_port)
        started.append(mlflow_service)
        prefect_service = start_prefect(root, prefect_port, server_env)
        started.append(prefect_service)
        save_state(root, started)
        provision(root, prefect_service.url, project, pool, deploy)
        env = {
            "MLFLOW_TRACKING_URI": mlflow_service.url,
            "TUNERY_PROJECT_DIR": str(project),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **({SEARCH_STORAGE_VARIABLE: search_storage} if search_storage else {}),
            **(worker_env or {}),
        }
        started.append(start_worker(root, prefect_service.url, pool, env))
    except BaseException:
        stop_services(started)
        save_state(root, [])
        raise
    extra = {
        "prefect_url": prefect_service.url,
        "prefect_api_url": f"{prefect_service.url}/api",
        "mlflow_url": mlflow_service.url,
        "mlflow_backend": backend or "sqlite",
        "search_storage": search_storage or "sqlite (per workdir)",
        "pool": pool,
        "project": str(project),
    }
    save_state(root, started, extra)
    return load_state(root)
