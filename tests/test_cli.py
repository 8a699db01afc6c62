"""The CLI as a user meets it: real subprocesses, exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO


def tunery(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunery.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_validate_shipped_demo_recipe():
    result = tunery("validate", "configs/helpdesk.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok (classification, minilm, full; 1 data file(s))" in result.stdout


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            "name: x\ndata: {source: d.csv}\nmlflow: {registered_model: m}\nmethod: {name: magic}\n",
            "method.name: Input should be 'full', 'lora', 'qlora', "
            "'prompt_tuning', 'p_tuning', 'prefix_tuning' or 'ia3'",
        ),
        ("name: x\ndata: {source: missing.csv}\nmlflow: {registered_model: m}\n", "data source not found"),
        ("name: [x\n", "not valid YAML"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_recipe_or_missing_data_gives_one_clear_error(tmp_path, recipe, message, command):
    (tmp_path / "d.csv").write_text("text,label\nhello,a\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(recipe))
    result = tunery(command, str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error: ")


def test_bad_override_is_reported():
    result = tunery("validate", "configs/helpdesk.yaml", "training.epochs=-1")
    assert result.returncode == 2
    assert "training.epochs: Input should be greater than 0" in result.stderr


def test_library_never_imports_prefect():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import tunery
        for mod in pkgutil.walk_packages(tunery.__path__, "tunery."):
            importlib.import_module(mod.name)
        loaded = [m for m in sys.modules if m == "prefect" or m.startswith("prefect.")]
        assert not loaded, loaded
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_a_failed_run_ends_with_one_error_line(tmp_path, verbose):
    """The demo data with a zero quarantine allowance fails in the clean stage: quiet, the person sees the
    stages up to the failure and one error line naming the full log, which holds the traceback; with
    --verbose the library logs and the traceback are shown instead, and no log file is named."""
    args = ["run", "configs/helpdesk.yaml", f"workdir={tmp_path}", "cleaning.max_quarantine_fraction=0.0"]
    result = subprocess.run(
        [sys.executable, "-m", "tunery.cli", *args, *(["--verbose"] if verbose else [])],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2
    shown = result.stdout + result.stderr
    errors = [line for line in shown.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "QuarantineLimitExceeded" in errors[0], shown[-3000:]
    if verbose:
        assert "Traceback" in shown and "full log:" not in shown
        return
    assert "Traceback" not in shown and "LOAD_FAST" not in shown
    assert "ingest" in result.stderr, "the stage lines reach the terminal"
    log = next(line.split("full log: ", 1)[1] for line in shown.splitlines() if line.startswith("full log: "))
    assert "Traceback" in Path(log).read_text(encoding="utf-8")
