"""MLflow tracking: where the store is, the run of a pipeline, and a small metric-logger protocol; and the
redaction of credentials in URIs (``user:***@host``) wherever tunery shows or stores one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tunery.config import REDACTED, Recipe, credentials_to_environment
from tunery.ops.process import process_identity

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# scheme://userinfo@ : the userinfo runs to the last '@' before the path (a raw '@' in a password too)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@]*(?:@[^\s/?#@]*)*)@")


def redact(text: str) -> str:
    """Every URI in ``text`` with its password replaced: ``http://user:***@host`` (a lone user part may be a
    token: ``http://***@host``). Idempotent; text without credentials is returned unchanged."""

    def hide(match: re.Match) -> str:
        user, has_password, _ = match["userinfo"].partition(":")
        shown = f"{user}:{REDACTED}" if has_password else REDACTED
        return f"{match['scheme']}{shown}@"

    return _USERINFO.sub(hide, text)


def redact_value(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string inside its dicts, lists and tuples."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(child) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(child) for child in value)
    return value


def redacting(produce: Callable[..., Any]) -> Callable[..., Any]:
    """``produce`` with its return value redacted (:func:`redact_value`); the flows wrap Prefect's
    ``serialize_parameters`` with it so that a flow run's stored parameters hold no password."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return redact_value(produce(*args, **kwargs))

    return wrapper


def without_credentials(uri: str | None) -> str | None:
    """A tracking URI given outside a recipe (a command-line option, a flow parameter) made safe to pass on
    and store: http(s) without its userinfo (the credentials now in MLFLOW_TRACKING_USERNAME/PASSWORD); a
    database URL with a password moves into MLFLOW_TRACKING_URI, and None (that default) is returned."""
    if not uri or redact(uri) == uri:
        return uri
    cleaned = credentials_to_environment(uri)
    return None if f":{REDACTED}@" in cleaned else cleaned


def tracking_uri(recipe: Recipe) -> str:
    """The recipe's tracking URI, else ``MLFLOW_TRACKING_URI``, else SQLite inside the workdir.

    Credentials never travel in it for http(s): they are in MLFLOW_TRACKING_USERNAME/PASSWORD (a URI with
    ``user:password@`` in the environment is split there on first use, see
    ``config.credentials_to_environment``). A database URL keeps ``user:***@`` in the recipe; its password
    is then in MLFLOW_TRACKING_URI.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env.startswith(("http://", "https://")):
        env = os.environ["MLFLOW_TRACKING_URI"] = credentials_to_environment(env)
    uri = recipe.mlflow.tracking_uri
    if uri and f":{REDACTED}@" in uri:
        if env and redact(env) == uri:
            return env
        raise ValueError(f"the password of {uri} is not in MLFLOW_TRACKING_URI (docs/security.md)")
    if uri:
        return uri
    if env:
        return env
    workdir = Path(recipe.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{workdir / 'mlflow.db'}"


def artifact_location(recipe: Recipe) -> str | None:
    """Artifacts next to a local SQLite store (not in the current directory's ./mlruns)."""
    uri = tracking_uri(recipe)
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def client(recipe: Recipe):
    """An MLflow client bound to the recipe's store (also sets the process-wide tracking URI, but not the
    environment: the next recipe in the same process must still get its own store, see
    :func:`use_tracking_uri`)."""
    import mlflow

    uri = tracking_uri(recipe)
    use_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def use_tracking_uri(uri: str) -> None:
    """``mlflow.set_tracking_uri`` for this process without leaving ``MLFLOW_TRACKING_URI`` changed."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def experiment_id(recipe: Recipe) -> str:
    """Get or create the recipe's experiment."""
    mlf = client(recipe)
    found = mlf.get_experiment_by_name(recipe.mlflow.experiment)
    if found is not None:
        return found.experiment_id
    return mlf.create_experiment(recipe.mlflow.experiment, artifact_location=artifact_location(recipe))


def git_commit() -> str:
    """The current git commit of the working directory, or 'unknown' outside a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, child, out)
    else:
        out[prefix] = str(value)[:6000]


# The process that opened a pipeline run, ``<host>|<pid>|<process identity>``: when it is gone and the run
# still reads RUNNING, the run was abandoned (SIGKILL, a lost machine) and is closed as KILLED.
OWNER_TAG = "tunery.owner_process"


def owner_of_this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}|{pid}|{process_identity(pid) or ''}"


def close_abandoned_runs(recipe: Recipe) -> list[str]:
    """Close as KILLED the experiment's runs still RUNNING whose owner process on this host is gone.

    A run whose owner ran on another host, or whose identity /proc could not read, is left alone: this
    process cannot tell whether it still runs.

    Returns:
        The ids of the runs closed.
    """
    mlf = client(recipe)
    host = socket.gethostname()
    closed = []
    running = mlf.search_runs(
        [experiment_id(recipe)], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    for run in running:
        owner_host, _, rest = run.data.tags.get(OWNER_TAG, "").partition("|")
        pid, _, identity = rest.partition("|")
        if owner_host != host or not pid.isdigit() or not identity:
            continue
        if process_identity(int(pid)) != identity:
            mlf.set_tag(run.info.run_id, "tunery.closed_because", "its process ended without closing it")
            mlf.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


def start_run(recipe: Recipe, run_dir: Path) -> str:
    """Open the MLflow run of one pipeline run: tags, flattened recipe params and the recipe file.

    Runs of the experiment left RUNNING by a process that is gone are closed as KILLED first.

    Returns:
        The MLflow run id that later stages log into.
    """
    close_abandoned_runs(recipe)
    mlf = client(recipe)
    run = mlf.create_run(
        experiment_id(recipe),
        run_name=run_dir.name,
        tags={
            OWNER_TAG: owner_of_this_process(),
            "tunery.recipe_name": recipe.name,
            "tunery.recipe_digest": recipe.digest(),
            "tunery.run_dir": str(run_dir),
            "tunery.task": recipe.task,
            "mlflow.source.git.commit": git_commit(),
        },
    )
    params: dict[str, str] = {}
    _flatten("", recipe.model_dump(mode="json"), params)
    from mlflow.entities import Param

    items = [Param(k, redact(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        mlf.log_batch(run.info.run_id, params=items[start : start + 100])
    mlf.log_text(run.info.run_id, redact(recipe.to_yaml()), "recipe.yaml")
    return run.info.run_id


def start_trial_run(recipe: Recipe, run_dir: Path, parent_run_id: str, number: int, params: dict) -> str:
    """Open a search trial's MLflow run, nested under the search's run (``mlflow.parentRunId``), with the
    trial's parameters as its params (the recipe is the parent's, plus these).

    Returns:
        The trial's MLflow run id (the training job logs its curves there).
    """
    from mlflow.entities import Param

    mlf = client(recipe)
    run = mlf.create_run(
        experiment_id(recipe),
        run_name=f"{run_dir.parent.parent.name}-trial-{number}",
        tags={
            OWNER_TAG: owner_of_this_process(),
            "mlflow.parentRunId": parent_run_id,
            "tunery.recipe_name": recipe.name,
            "tunery.run_dir": str(run_dir),
            "tunery.task": recipe.task,
            "tunery.search.trial": str(number),
        },
    )
    items = [Param(k, redact(str(v))) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlf.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id


def log_files(recipe: Recipe, run_id: str, paths: list[Path], folder: str) -> None:
    """Log existing files into a folder of the run's artifacts (missing files are skipped)."""
    mlf = client(recipe)
    for path in paths:
        if Path(path).exists():
            mlf.log_artifact(run_id, str(path), folder)


def data_metrics(report: dict) -> dict[str, float]:
    """The data report's counts as flat MLflow metrics (data/rows_in, data/kept, data/test_rows, ...)."""
    clean = report["clean"]
    keys = ("rows_in", "kept", "quarantined", "deduplicated", "exact_duplicates", "near_duplicates")
    flat = {f"data/{k}": float(clean.get(k, 0)) for k in keys}
    flat.update({f"data/{name}_rows": float(s["rows"]) for name, s in report.get("split", {}).items()})
    return flat


_COLSPEC_TYPES = {"b": "boolean", "i": "long", "u": "long", "f": "double", "M": "datetime", "O": "string"}


def dataset_entity(dataset, frame):
    """The MLflow dataset entity of a split with its column types declared from the frame's dtypes.

    MLflow would infer the schema and warn once per integer column that integers cannot hold missing
    values; a split's columns are what they are (line numbers are integers), so they are declared.
    """
    from mlflow.data.dataset import Dataset as BaseDataset
    from mlflow.entities import Dataset
    from mlflow.types import ColSpec, Schema

    columns = [ColSpec(_COLSPEC_TYPES.get(frame[c].dtype.kind, "string"), str(c)) for c in frame.columns]
    base = BaseDataset.to_dict(dataset)  # name, digest, source: the base class does not infer a schema
    return Dataset(
        name=base["name"],
        digest=base["digest"],
        source_type=base["source_type"],
        source=base["source"],
        schema=json.dumps({"mlflow_colspec": Schema(columns).to_dict()}),
        profile=json.dumps(dataset.profile),
    )


def log_split_inputs(recipe: Recipe, run_id: str, splits: dict[str, str], report: dict) -> None:
    """Record each split as an MLflow dataset input of the run (``mlflow.log_input``'s lineage).

    The dataset's digest is the split's content digest from the data report (order-independent SHA-256
    of its rows, first 32 hex digits: MLflow's limit is 36), its source the Parquet file, its context the
    split name; the full SHA-256, the row count and the recipe's data source go into input tags.
    """
    import mlflow.data
    import pandas as pd
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for name, path in splits.items():
        frame = pd.read_parquet(path)
        summary = report["split"][name]
        target = "label" if "label" in frame.columns else None
        dataset = mlflow.data.from_pandas(
            frame,
            source=LocalArtifactDatasetSource(str(path)),
            targets=target,
            name=f"{recipe.name}-{name}",
            digest=summary["digest"][:32],
        )
        entity = dataset_entity(dataset, frame)
        tags = [
            InputTag(MLFLOW_DATASET_CONTEXT, name),
            InputTag("tunery.sha256", summary["digest"]),
            InputTag("tunery.rows", str(summary["rows"])),
            InputTag("tunery.source", redact(str(recipe.data.source))[:400]),
        ]
        inputs.append(DatasetInput(entity, tags))
    client(recipe).log_inputs(run_id, datasets=inputs)


def end_run(recipe: Recipe, run_id: str, status: str = "FINISHED") -> dict | None:
    """Log the run's cost (:func:`log_cost`), then close its MLflow run (status FINISHED or FAILED).

    Returns:
        The cost summary, or None when the run has no usage records.
    """
    mlf = client(recipe)
    try:
        cost = log_cost(recipe, run_id)
    except Exception as error:  # noqa: BLE001 - pricing a run must never keep it open; the tag says why
        cost = None
        with contextlib.suppress(Exception):  # the store is down: closing the run below reports that
            mlf.set_tag(run_id, "tunery.cost.error", redact(f"{type(error).__name__}: {error}")[:4000])
    mlf.set_terminated(run_id, status=status)
    return cost


COST_ARTIFACT = "cost.json"


def log_cost(recipe: Recipe, run_id: str) -> dict | None:
    """Price the run's ``usage.jsonl`` with the recipe's rates and record it: ``cost_*`` metrics and a
    ``cost.json`` artifact on the run, and ``tunery.cost*`` tags on every model version registered from it
    (``tunery lineage`` shows them).

    Returns:
        The summary (:func:`tunery.ops.usage.summarise`), or None when the run folder has no usage yet.
    """
    import time

    from mlflow.entities import Metric

    from tunery.layout import RunLayout
    from tunery.ops import usage

    mlf = client(recipe)
    run_dir = mlf.get_run(run_id).data.tags.get("tunery.run_dir")
    records = usage.read(RunLayout(Path(run_dir)).usage) if run_dir else []
    if not records:
        return None
    c = recipe.cost
    summary = usage.summarise(
        records, usage.Rates(c.cpu_hour, c.gpu_hour, c.currency, c.cpu_watts, c.gpu_watts)
    )
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in usage.metrics(summary).items()]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1,000 metrics per batch
        mlf.log_batch(run_id, metrics=metrics[start : start + 1000])
    mlf.log_dict(run_id, summary, COST_ARTIFACT)
    total = summary["total"]
    tags = {
        "tunery.cost": usage.text(summary),
        "tunery.cost.money": f"{total['money']:.6f} {summary['currency']}",
        "tunery.cost.cpu_s": f"{total['cpu_s']:.1f}",
        "tunery.cost.gpu_s": f"{total['gpu_s']:.1f}",
    }
    mlf.set_tag(run_id, "tunery.cost", tags["tunery.cost"])
    for version in mlf.search_model_versions(f"run_id = '{run_id}'"):
        for key, value in tags.items():
            mlf.set_model_version_tag(version.name, version.version, key, value)
    return summary


class MetricLogger(Protocol):
    """Where stages send numbers; implementations must be cheap no-ops off rank 0."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...


class NullLogger:
    """Logs nothing (library calls without tracking, non-zero ranks)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None


class MlflowLogger:
    """Logs numeric metrics into an existing MLflow run by id (no active-run global state)."""

    def __init__(self, recipe: Recipe, run_id: str) -> None:
        self._client = client(recipe)
        self._run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step or 0)
            for key, value in metrics.items()
            if isinstance(value, int | float) and value == value  # skip NaN
        ]
        if batch:
            self._client.log_batch(self._run_id, metrics=batch)
