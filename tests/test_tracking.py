"""MLflow tracking helpers: which store a recipe uses, and no leaking of one recipe's store into the next."""

from __future__ import annotations

import mlflow
import pytest

from tunery.config import Recipe
from tunery.tracking import client, tracking_uri


@pytest.fixture(autouse=True)
def _restore_process_tracking_uri():
    """These tests point MLflow's process-wide URI at temporary stores: put it back afterwards."""
    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(before)


def _recipe(tmp_path, uri: str | None = None) -> Recipe:
    mlflow_section = {"registered_model": "m", **({"tracking_uri": uri} if uri else {})}
    return Recipe.model_validate(
        {"name": "t", "data": {"source": "d.csv"}, "mlflow": mlflow_section, "workdir": str(tmp_path / "w")}
    )


def test_store_of_one_recipe_does_not_leak_into_the_next(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = _recipe(tmp_path, f"sqlite:///{tmp_path / 'other.db'}")
    client(first)
    assert mlflow.get_tracking_uri() == first.mlflow.tracking_uri  # the process-wide URI is set ...
    second = _recipe(tmp_path)
    # ... but the environment is not: a recipe without a store of its own still gets its workdir's
    assert tracking_uri(second) == f"sqlite:///{(tmp_path / 'w' / 'mlflow.db').resolve()}"


def test_the_users_environment_variable_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    client(_recipe(tmp_path, f"sqlite:///{tmp_path / 'other.db'}"))
    assert tracking_uri(_recipe(tmp_path)) == "http://127.0.0.1:5999"


def test_a_run_left_running_by_a_dead_process_is_closed_at_the_next_start(tmp_path, monkeypatch):
    """A real process opens a pipeline run and exits without closing it (as after SIGKILL): the next start
    marks that run KILLED; a run whose owner still lives (this process) stays RUNNING."""
    import subprocess
    import sys
    import textwrap

    from tunery.tracking import start_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = _recipe(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from tunery.config import Recipe
        from tunery.tracking import start_run
        recipe = Recipe.model_validate_json({recipe.model_dump_json()!r})
        print(start_run(recipe, Path({str(tmp_path / "run-a")!r})))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    abandoned = done.stdout.split()[-1]
    mlf = client(recipe)
    assert mlf.get_run(abandoned).info.status == "RUNNING"

    alive = start_run(recipe, tmp_path / "run-b")
    assert mlf.get_run(abandoned).info.status == "KILLED"
    start_run(recipe, tmp_path / "run-c")
    assert mlf.get_run(alive).info.status == "RUNNING", "its owner (this process) is alive"


def test_closing_a_run_prices_its_usage_and_a_pricing_error_never_keeps_it_open(tmp_path, monkeypatch):
    from tunery.layout import RunLayout
    from tunery.ops import usage
    from tunery.tracking import end_run, start_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = _recipe(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlf = client(recipe)
    bare = start_run(recipe, tmp_path / "run-bare")
    assert end_run(recipe, bare) is None  # nothing measured (a run folder without usage.jsonl)
    assert mlf.get_run(bare).info.status == "FINISHED"

    priced = start_run(recipe, tmp_path / "run-priced")
    with usage.meter(RunLayout(tmp_path / "run-priced").usage, "ingest"):
        sum(range(10**6))
    cost = end_run(recipe, priced)
    run = mlf.get_run(priced)
    assert run.info.status == "FINISHED" and run.data.metrics["cost_ingest_cpu_s"] == cost["total"]["cpu_s"]
    assert run.data.tags["tunery.cost"] == usage.text(cost)

    broken = start_run(recipe, tmp_path / "run-broken")
    usage.append(RunLayout(tmp_path / "run-broken").usage, {"stage": "train", "cpu_s": "a lot"})
    assert end_run(recipe, broken, "FAILED") is None
    run = mlf.get_run(broken)
    assert run.info.status == "FAILED"
    assert run.data.tags["tunery.cost.error"].startswith("ValueError: could not convert string to float")
