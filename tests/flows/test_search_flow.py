"""The hyperparameter-search flow on a real Prefect API: two trials at once (`search.parallel: 2`), each a
`train-trial` task run writing to one SQLite study, the summary as Prefect artifacts, the best registered."""

from __future__ import annotations

import textwrap
import time

import pytest

from tests.training.test_loop import sentiment_frame

pytestmark = pytest.mark.slow


def test_parallel_trials_are_task_runs_and_the_summary_reaches_the_ui(tiny_bert, tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    from flows.search import hyperparameter_search

    sentiment_frame(300).to_csv(tmp_path / "reviews.csv", index=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: search-flow
            data: {{source: {tmp_path / "reviews.csv"}}}
            cleaning: {{near_duplicates: false}}
            model: {{base: {tiny_bert}, max_length: 16}}
            training: {{epochs: 4, batch_size: 16, group_by_length: false}}
            evaluation: {{gate: {{baseline_floor: false}}}}
            search:
              sampler: random
              trials: 2
              parallel: 2
              heartbeat_seconds: 1
              grace_seconds: 30
              space:
                training.learning_rate: {{type: float, low: 1.0e-4, high: 3.0e-3, log: true}}
            mlflow: {{experiment: search-flow, registered_model: search-flow}}
            workdir: {tmp_path / "work"}
            """
        )
    )
    state = hyperparameter_search(recipe_path=str(recipe), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["version"] == "1"

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
        )
    trials = [t for t in runs if t.task_key.startswith("train_trial")]
    assert len(trials) == 2 and all(t.state.is_completed() for t in trials)
    first, second = sorted(trials, key=lambda t: t.start_time)
    assert second.start_time < first.end_time, "the two trials trained at the same time"
    assert sum(t.task_key.startswith("ask_trials") for t in runs) == 2, "one ask for both, one that ends"

    wanted = ["search-summary", "search-trials", "finetune-summary", "run-cost"]
    by_key: dict = {}
    deadline = time.monotonic() + 15
    while set(by_key) != set(wanted) and time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=wanted),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                )
            )
        by_key = {a.key: a for a in found}
        time.sleep(0.5)
    assert set(by_key) == set(wanted), sorted(by_key)
    summary = by_key["search-summary"].data
    assert "2 of 2 trials finished {'complete': 2}" in summary and "**Best**: trial" in summary
    cost_rows = [line.split("|")[1].strip() for line in by_key["run-cost"].data.splitlines() if "|" in line]
    assert "search" in cost_rows, "the trials' cost is part of the search run's"
