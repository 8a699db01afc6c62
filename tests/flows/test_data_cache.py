"""Data-stage caching under a real (temporary) Prefect API: unchanged inputs show as Cached and are reused.

The flow here wires the real data tasks exactly as flows/finetune.py does, without training, so that three
runs stay cheap: a first run computes everything; a second, identical one is served from the cache; a third
with another split seed recomputes only the split.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow

from tasks.data import clean_data, ingest_data, publish_data, split_data
from tasks.model import close_run, open_run
from tunery.config import load_recipe
from tunery.layout import RunLayout

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@flow(name="data-only")
def data_only(recipe_path: str, overrides: list[str]) -> dict:
    recipe = load_recipe(recipe_path, overrides)
    run_dir, run_id = open_run(recipe)
    ingested = ingest_data(recipe, run_dir)
    cleaned = clean_data(recipe, run_dir, ingested)
    splits = split_data(recipe, run_dir, cleaned)
    splits = publish_data(recipe, run_dir, run_id, ingested, cleaned, splits)
    close_run(recipe, run_id, "FINISHED")
    return {"run_dir": run_dir, "splits": splits}


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def _run(recipe: Path, overrides: list[str]) -> tuple[dict, dict[str, str]]:
    state = data_only(recipe_path=str(recipe), overrides=overrides, return_state=True)
    return state.result(), _task_states(state.state_details.flow_run_id)


def test_unchanged_inputs_are_cached_and_a_changed_split_reruns_only_the_split(
    shared_data, tmp_path, prefect_harness
):
    full = pd.read_csv(
        shared_data / "sms_spam" / "SMSSpamCollection", sep="\t", dtype=str, keep_default_na=False
    )
    full.head(300).to_csv(tmp_path / "sms.tsv", sep="\t", index=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: cache-test
            data: {{source: {tmp_path / "sms.tsv"}, text_columns: [SMS], label_column: Label}}
            mlflow: {{experiment: cache, registered_model: cache-test}}
            workdir: {tmp_path / "work"}
            """
        )
    )
    first, states = _run(recipe, [])
    assert {states[s] for s in ("ingest", "clean", "split")} == {"Completed"}

    second, states = _run(recipe, [])
    assert [states[s] for s in ("ingest", "clean", "split")] == ["Cached"] * 3
    assert states["publish-data"] == "Completed"
    # the second run's folder is complete and identical in content to the first's
    new, old = RunLayout(Path(second["run_dir"])), RunLayout(Path(first["run_dir"]))
    assert new.root != old.root
    for name, path in second["splits"].items():
        assert Path(path).parent.parent == new.data_dir
        assert pd.read_parquet(path).equals(pd.read_parquet(old.split(name)))
    assert new.quarantine.exists() and new.cleaned.exists() and new.ingested.exists()
    report = json.loads(new.data_report.read_text())
    assert report["quarantine_file"] == str(new.quarantine)
    assert all(Path(p).parent == new.data_dir for p in report["plots"])

    third, states = _run(recipe, ["split.seed=7"])
    assert [states[s] for s in ("ingest", "clean", "split")] == ["Cached", "Cached", "Completed"]
    moved = sum(
        len(set(pd.read_parquet(third["splits"][n])["text"]) ^ set(pd.read_parquet(old.split(n))["text"]))
        for n in ("train", "test")
    )
    assert moved > 0, "another seed gives another split"

    # seed 7 again: split cached from the third run, ingest and clean from the first; the data must be
    # the third run's split, not the first run's (seed 42)
    fourth, states = _run(recipe, ["split.seed=7"])
    assert [states[s] for s in ("ingest", "clean", "split")] == ["Cached"] * 3
    for name in ("train", "validation", "test"):
        assert pd.read_parquet(fourth["splits"][name]).equals(pd.read_parquet(third["splits"][name]))
    third_report = json.loads((Path(third["run_dir"]) / "data" / "report.json").read_text())
    fourth_report = json.loads((Path(fourth["run_dir"]) / "data" / "report.json").read_text())
    assert fourth_report["split"] == third_report["split"]

    # outputs deleted (e.g. make clean-runs): the cache is not trusted, the stages run again
    import shutil

    for folder in (old.root, new.root, Path(third["run_dir"]), Path(fourth["run_dir"])):
        shutil.rmtree(folder)
    _, states = _run(recipe, [])
    assert {states[s] for s in ("ingest", "clean", "split")} == {"Completed"}
