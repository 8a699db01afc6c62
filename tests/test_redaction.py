"""Credentials in URIs: redacted wherever shown, never kept in a recipe (docs/security.md, "Credentials")."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunery import tracking
from tunery.config import Recipe, credentials_to_environment, load_recipe

SECRET = "S3cretPlanted"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture
def clean_env(monkeypatch):
    """No MLflow credentials or URI in the environment; whatever a test moves there is undone after it."""
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://tunery:S3cretPlanted@127.0.0.1:5000", "http://tunery:***@127.0.0.1:5000"),
        ("https://u:p%40ss@host/path?q=1", "https://u:***@host/path?q=1"),
        ("a raw @ in it https://u:p@ss@host/x", "a raw @ in it https://u:***@host/x"),
        ("a token https://tok123@host", "a token https://***@host"),
        ("postgresql://mlflow:pw@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        (
            "error: API request to http://a:b@h/api failed; retry http://c:d@h2",
            "error: API request to http://a:***@h/api failed; retry http://c:***@h2",
        ),
        ("http://127.0.0.1:5000/#/models/x@champion", "http://127.0.0.1:5000/#/models/x@champion"),
        ("models:/sms@champion and me@example.com", "models:/sms@champion and me@example.com"),
        ("sqlite:////tmp/x@y/mlflow.db", "sqlite:////tmp/x@y/mlflow.db"),
        ("http://u:***@host", "http://u:***@host"),
    ],
)
def test_redact_hides_passwords_and_nothing_else(text, shown):
    assert tracking.redact(text) == shown
    assert tracking.redact(shown) == shown  # idempotent


def test_redact_value_walks_nested_data_and_redacting_wraps_a_serializer():
    value = {"overrides": [f"mlflow.tracking_uri=http://u:{SECRET}@h"], "n": 3, "t": ("http://x:y@z",)}
    assert tracking.redact_value(value) == {
        "overrides": ["mlflow.tracking_uri=http://u:***@h"],
        "n": 3,
        "t": ("http://x:***@z",),
    }
    serialize = tracking.redacting(lambda parameters: dict(parameters))
    assert SECRET not in str(serialize({"uri": f"https://u:{SECRET}@h"}))


def test_http_credentials_move_into_the_variables_mlflow_reads(clean_env):
    import os

    assert (
        credentials_to_environment("http://tunery:p%40ss%3Aword@127.0.0.1:5000/") == "http://127.0.0.1:5000/"
    )
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "tunery"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss:word"
    # a redacted copy (a stored flow parameter replayed) keeps what the environment has
    assert credentials_to_environment("http://tunery:***@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss:word"
    assert credentials_to_environment("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def _recipe_file(tmp_path, tracking_uri: str | None = None):
    uri = f", tracking_uri: '{tracking_uri}'" if tracking_uri else ""
    path = tmp_path / "recipe.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: secrets
            data: {{source: https://reader:{SECRET}@data.example.com/x.csv}}
            mlflow: {{registered_model: secrets{uri}}}
            workdir: {tmp_path / "work"}
            """
        )
    )
    return path


@pytest.mark.parametrize("where", ["file", "override"])
def test_a_recipe_never_carries_the_tracking_password(clean_env, tmp_path, where):
    import os

    uri = f"http://tunery:{SECRET}@127.0.0.1:5999"
    if where == "file":
        recipe = load_recipe(_recipe_file(tmp_path, uri))
    else:
        recipe = load_recipe(_recipe_file(tmp_path), [f"mlflow.tracking_uri={uri}"])
    assert recipe.mlflow.tracking_uri == "http://127.0.0.1:5999"
    assert SECRET not in recipe.to_yaml().replace(f"reader:{SECRET}@", "")  # the data source: see below
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert tracking.tracking_uri(recipe) == "http://127.0.0.1:5999"
    # a recipe re-validated from its dump (the training job's spec) is the same and moves nothing
    assert Recipe.model_validate(recipe.model_dump(mode="json")) == recipe


def test_a_credential_in_mlflow_tracking_uri_is_split_on_first_use(clean_env, tmp_path):
    import os

    clean_env.setenv("MLFLOW_TRACKING_URI", f"https://tunery:{SECRET}@mlflow.example.com")
    recipe = load_recipe(_recipe_file(tmp_path))
    assert tracking.tracking_uri(recipe) == "https://mlflow.example.com"
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (
        "tunery",
        SECRET,
    )


def test_a_database_url_keeps_its_password_in_the_environment_only(clean_env, tmp_path):
    import os

    real = f"postgresql://mlflow:{SECRET}@db.example.com:5432/mlflow"
    recipe = load_recipe(_recipe_file(tmp_path, real))
    assert recipe.mlflow.tracking_uri == "postgresql://mlflow:***@db.example.com:5432/mlflow"
    assert os.environ["MLFLOW_TRACKING_URI"] == real
    assert tracking.tracking_uri(recipe) == real  # what MLflow is given, in this process only
    clean_env.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:other@elsewhere/mlflow")
    with pytest.raises(ValueError, match="is not in MLFLOW_TRACKING_URI"):
        tracking.tracking_uri(recipe)


def test_without_credentials_for_command_line_uris(clean_env):
    import os

    assert tracking.without_credentials(None) is None
    assert tracking.without_credentials("http://h:1") == "http://h:1"
    assert tracking.without_credentials(f"http://u:{SECRET}@h:1") == "http://h:1"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert tracking.without_credentials(f"mysql://u:{SECRET}@h/db") is None  # the default: the env's URI
    assert os.environ["MLFLOW_TRACKING_URI"] == f"mysql://u:{SECRET}@h/db"


def test_start_run_stores_no_password_in_params_tags_or_the_recipe_artifact(clean_env, tmp_path):
    """A local SQLite store; the data source is an fsspec URI with credentials in it."""
    recipe = load_recipe(_recipe_file(tmp_path))
    run_dir = tmp_path / "work" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    run_id = tracking.start_run(recipe, run_dir)
    mlf = tracking.client(recipe)
    run = mlf.get_run(run_id)
    assert run.data.params["data.source"] == "https://reader:***@data.example.com/x.csv"
    assert SECRET not in str(run.data.params) + str(run.data.tags)
    local = mlf.download_artifacts(run_id, "recipe.yaml", str(tmp_path / "download"))
    text = Path(local).read_text(encoding="utf-8")
    assert "reader:***@data.example.com" in text and SECRET not in text
