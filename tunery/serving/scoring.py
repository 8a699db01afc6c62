"""Batch scoring and serving of registered models.

Batch scoring reads a file (CSV/TSV/JSON/JSONL/Parquet), scores it with a registered model loaded through
MLflow (exactly what serving loads), and writes the input rows plus the predictions to a new file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from tunery.config import DataConfig
from tunery.data.ingest import DataError, read_file
from tunery.serving.server import MAX_REQUEST_BYTES, MAX_ROWS, REQUEST_TIMEOUT_S
from tunery.tracking import use_tracking_uri

WRITERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}


def model_uri(reference: str) -> str:
    """``NAME@alias`` or ``NAME/version`` (or a full ``models:/`` / ``runs:/`` URI) as an MLflow URI."""
    if "://" in reference or reference.startswith(("models:/", "runs:/")):
        return reference
    if "@" not in reference and "/" not in reference:
        reference += "@champion"
    return f"models:/{reference}"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the project's default SQLite store in .tunery/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('.tunery/mlflow.db').resolve()}"


def _read(path: str) -> pd.DataFrame:
    frame, bad = read_file(path, DataConfig(source=path))
    if bad:
        lines = ", ".join(str(b.get("line")) for b in bad[:5])
        raise DataError(
            f"{path}: {len(bad)} record(s) cannot be parsed (lines {lines}); fix them before scoring"
        )
    return frame.drop(columns=[c for c in frame.columns if str(c).startswith("_")])


def _write(frame: pd.DataFrame, path: Path) -> Path:
    kind = WRITERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported output format; use one of {', '.join(sorted(WRITERS))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")  # never leave a half-written result under the real name
    if kind == "parquet":
        frame.to_parquet(tmp, index=False)
    elif kind == "jsonl":
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(tmp, sep="\t" if kind == "tsv" else ",", index=False)
    tmp.replace(path)
    return path


def score_file(
    reference: str, input_path: str, output_path: str, tracking_uri: str | None = None, batch_size: int = 256
) -> Path:
    """Score every row of ``input_path`` with a registered model and write rows + predictions.

    Args:
        reference: ``NAME@alias``, ``NAME/version`` or an MLflow model URI.
        input_path: the rows to score; classification models read a ``text`` column (else the first
            column), instruction models ``instruction`` and optional ``input``.
        output_path: where to write (format from the suffix: .csv, .tsv, .jsonl, .parquet).
        tracking_uri: the MLflow store (default: :func:`default_tracking_uri`).
        batch_size: rows per call of the model.

    Returns:
        The output path.
    """
    import mlflow

    use_tracking_uri(tracking_uri or default_tracking_uri())
    rows = _read(input_path)
    if rows.empty:
        raise DataError(f"{input_path}: no rows to score")
    model = mlflow.pyfunc.load_model(model_uri(reference), dst_path=tempfile.mkdtemp(prefix="tunery-score-"))
    parts = [model.predict(rows.iloc[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    predictions = pd.concat(parts, ignore_index=True)
    clash = [c for c in predictions.columns if c in rows.columns]
    predictions = predictions.rename(columns={c: f"predicted_{c}" for c in clash})
    return _write(pd.concat([rows.reset_index(drop=True), predictions], axis=1), Path(output_path))


def serve_command(
    reference: str,
    host: str,
    port: int,
    workers: int = 1,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_rows: int = MAX_ROWS,
    request_timeout: float = REQUEST_TIMEOUT_S,
) -> list[str]:
    """The command of tunery's scoring server for a registered model (served from this environment).

    MLflow's scoring app (same endpoints and formats as ``mlflow models serve``) behind the request limits
    of :mod:`tunery.serving.server`: bodies over ``max_request_bytes`` and requests over ``max_rows`` rows
    get 413; work past ``request_timeout`` seconds or whose client disconnected stops (504 on timeout).
    """
    import sys

    return [
        sys.executable,
        "-m",
        "tunery.serving.server",
        reference,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--max-request-bytes",
        str(max_request_bytes),
        "--max-rows",
        str(max_rows),
        "--request-timeout",
        f"{request_timeout:g}",
    ]
