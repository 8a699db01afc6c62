"""The batch-scoring flow: a file in, the same rows plus predictions out."""

from __future__ import annotations

from prefect import flow

from tasks.scoring import score_file
from tunery import tracking


@flow(name="batch-score")
def batch_score(model: str, input_path: str, output_path: str, tracking_uri: str | None = None) -> str:
    """Score ``input_path`` with a registered model and write ``output_path``.

    Args:
        model: ``NAME@alias`` (default alias champion), ``NAME/version`` or an MLflow model URI.
        input_path: CSV/TSV/JSON/JSONL/Parquet rows (a ``text`` column for classifiers).
        output_path: output file; its suffix picks the format (.csv, .tsv, .jsonl, .parquet).
        tracking_uri: the MLflow store (default: MLFLOW_TRACKING_URI, else .tunery/mlflow.db).
    """
    return score_file(model, input_path, output_path, tracking.without_credentials(tracking_uri))


# Stored flow-run parameters hold no password (a `user:password@` tracking URI is stored as `user:***@`).
batch_score.serialize_parameters = tracking.redacting(batch_score.serialize_parameters)
