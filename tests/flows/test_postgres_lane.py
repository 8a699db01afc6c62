"""The PostgreSQL lane: the finetune flow registers through an ``mlflow server`` whose backend store is a
real PostgreSQL server (Debian's binaries), both started on 127.0.0.1 by the fixture and stopped by PID.

Two runs of the same recipe on the same data: the first becomes champion; the second reproduces it
exactly (training is deterministic on CPU), a tie within the margin, and must stay challenger. The tiny
BERT keeps the two runs cheap: what is under test is the registry on PostgreSQL, not the model.
"""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

from tunery.config import load_recipe
from tunery.tracking import client

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.fixture(scope="module")
def pg_recipe(shared_data, tmp_path_factory, postgres_mlflow_server, tiny_bert):
    folder = tmp_path_factory.mktemp("sms-pg")
    full = pd.read_csv(
        shared_data / "sms_spam" / "SMSSpamCollection", sep="\t", dtype=str, keep_default_na=False
    )
    sample = full.groupby("Label").sample(frac=400 / len(full), random_state=1)
    sample.to_csv(folder / "sms.tsv", sep="\t", index=False)
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: sms-spam-pg
            data:
              source: {folder / "sms.tsv"}
              text_columns: [SMS]
              label_column: Label
              labels: [ham, spam]
            model: {{base: {tiny_bert}, max_length: 48}}
            training: {{epochs: 1, max_steps: 12, batch_size: 16, learning_rate: 2.0e-4}}
            evaluation: {{gate: {{baseline_floor: false}}}}
            mlflow:
              experiment: sms-pg
              registered_model: sms-spam-pg
              tracking_uri: "{postgres_mlflow_server["url"]}"
            workdir: {folder / "work"}
            """
        )
    )
    return recipe


def test_backend_store_is_postgresql(postgres_mlflow_server):
    import psycopg

    uri = postgres_mlflow_server["backend_uri"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(uri) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables


def test_champion_then_a_tie_stays_challenger_on_postgresql(
    pg_recipe, prefect_harness, postgres_mlflow_server
):
    import psycopg

    from flows.finetune import finetune

    first = finetune(recipe_path=str(pg_recipe))
    assert first["alias"] == "champion" and first["version"] == "1"
    second = finetune(recipe_path=str(pg_recipe))
    assert second["version"] == "2"
    assert second["alias"] == "challenger", second["reason"]
    assert "+0.0000" in second["reason"] and "not promoted" in second["reason"]

    mlf = client(load_recipe(pg_recipe))
    assert str(mlf.get_model_version_by_alias("sms-spam-pg", "champion").version) == "1"
    assert str(mlf.get_model_version_by_alias("sms-spam-pg", "challenger").version) == "2"
    run = mlf.get_run(second["run_id"])
    contexts = sorted(
        {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    )
    assert contexts == ["test", "train", "validation"]

    # The rows really are in PostgreSQL, not in a file store beside the server.
    uri = postgres_mlflow_server["backend_uri"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(uri) as conn:
        versions = conn.execute(
            "SELECT version FROM model_versions WHERE name = %s ORDER BY version", ("sms-spam-pg",)
        ).fetchall()
        aliases = dict(
            conn.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE name = %s", ("sms-spam-pg",)
            )
        )
    assert [v[0] for v in versions] == [1, 2]
    assert aliases == {"champion": 1, "challenger": 2}


def test_a_search_study_lives_in_the_stacks_postgresql_and_resumes_there(
    postgres_mlflow_server, tmp_path, monkeypatch
):
    """The stack's way: an `optuna` database on the same server, named to the worker by
    TUNERY_SEARCH_STORAGE; a study one process wrote there is read, recovered and finished by the next."""
    import subprocess
    import sys

    from optuna.trial import TrialState

    from tunery.config import Recipe
    from tunery.ops import stack
    from tunery.search import study as studies

    backend = postgres_mlflow_server["backend_uri"]
    port = int(backend.rsplit(":", 1)[1].split("/")[0])
    stack._create_database(port, stack.SEARCH_DATABASE)
    storage = backend.rsplit("/", 1)[0] + f"/{stack.SEARCH_DATABASE}"
    monkeypatch.setenv(stack.SEARCH_STORAGE_VARIABLE, storage)
    recipe = Recipe.model_validate(
        {
            "name": "pg-search",
            "data": {"source": "a.csv"},
            "mlflow": {"registered_model": "pg-search"},
            "workdir": str(tmp_path),
            "search": {
                "sampler": "grid",
                "space": {"training.learning_rate": {"type": "choice", "choices": [1e-4, 3e-4, 1e-3]}},
            },
        }
    )
    assert studies.storage_url(recipe) == storage
    # another process asks for two trials, completes one and dies holding the other
    code = (
        "import os, sys; from tunery.config import Recipe; from tunery.search import study as s; "
        "r = Recipe.model_validate_json(sys.argv[1]); st = s.open_study(r); c = s.Clock.start(None); "
        "s.ask(st, r, c); s.tell(st, 0, 0.8); s.ask(st, r, c); os._exit(0)"
    )
    command = [sys.executable, "-c", code, recipe.model_dump_json()]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    study = studies.open_study(recipe)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert studies.recover(study) == [1]
    clock = studies.Clock.start(None)
    for _ in range(20):  # a bound: a broken budget fails below instead of hanging
        if not (ids := studies.ask(study, recipe, clock)):
            break
        for trial_id in ids:
            number = next(t.number for t in study.trials if t._trial_id == trial_id)
            studies.tell(study, number, 0.5)
    complete = sorted(
        t.params["training.learning_rate"] for t in study.trials if t.state == TrialState.COMPLETE
    )
    assert complete == [1e-4, 3e-4, 1e-3]
    assert studies.frozen(study, 0).value == 0.8, "the first process's trial, untouched"
