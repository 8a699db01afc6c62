"""Batch-scoring task."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.retry import retry_unless_bad_input
from tunery.serving import scoring


@task(name="score", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_unless_bad_input)
def score_file(reference: str, input_path: str, output_path: str, tracking_uri: str | None) -> str:
    """Score a file with a registered model (transient store or file-system errors are retried)."""
    path = scoring.score_file(reference, input_path, output_path, tracking_uri)
    get_run_logger().info("scored %s with %s -> %s", input_path, reference, path)
    return str(path)
