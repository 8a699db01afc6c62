"""The CLI as a user meets it: real subprocesses, exit codes and messages."""

from __future__ import annotations

import os
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
    """The demo data with a 40-character limit fails in the clean stage (too_long for almost every row;
    validate cannot know lengths after cleaning): quiet, the person sees the
    stages up to the failure and one error line naming the full log, which holds the traceback; with
    --verbose the library logs and the traceback are shown instead, and no log file is named."""
    args = ["run", "configs/helpdesk.yaml", f"workdir={tmp_path}", "cleaning.max_chars=40"]
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


CLASSIFICATION_RECIPE = """
name: x
data: {{source: {source}}}
model: {{base: {base}, max_length: {max_length}}}
mlflow: {{registered_model: m}}
"""


@pytest.mark.parametrize(
    ("base", "max_length", "message"),
    [
        ("./no-such-model", 128, "model.base './no-such-model': no such folder"),
        ("some-org/some-model", 128, "'some-org/some-model' is not a catalogue name"),
        ("minilm", 1024, "model.max_length 1024 exceeds what model.base 'minilm' supports"),
    ],
    ids=["missing-folder", "hub-id-offline", "max-length"],
)
def test_validate_checks_the_base_model(tmp_path, base, max_length, message):
    """What used to pass `validate` and fail only in training, three times: now one clear error."""
    (tmp_path / "d.csv").write_text("text,label\nhello,a\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(CLASSIFICATION_RECIPE.format(source="d.csv", base=base, max_length=max_length))
    result = tunery("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    if base == "some-org/some-model":
        assert "no model hub is reachable" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("task", ["classification", "sft"])
def test_validate_rejects_a_conversation_file_the_recipe_does_not_match(tmp_path, shared_data, task):
    source = shared_data / "llama_factory" / "glaive_toolcall_en_demo.json"
    base = "minilm" if task == "classification" else "smollm2"
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"task: {task}\n" + CLASSIFICATION_RECIPE.format(source=source, base=base, max_length=128)
    )
    result = tunery("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    wanted = "text, label" if task == "classification" else "instruction, output or response"
    assert (
        f"glaive_toolcall_en_demo.json: missing column(s) {wanted}; the file has: conversations, tools"
        in (result.stderr)
    )
    assert "ok (" not in result.stdout


def run_demo_failing(workdir: Path, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        # a checkpoint after the first step: the write that cannot fit comes early
        [sys.executable, "-m", "tunery.cli", "run", "configs/helpdesk.yaml", f"workdir={workdir}"]
        + ["training.max_steps=2", "training.save_steps=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        preexec_fn=preexec,
        env={**os.environ, "PREFECT_HOME": str(workdir / "prefect")},
    )


@pytest.mark.slow
def test_a_full_disk_is_the_final_message(tmp_path):
    """The run's workdir (and Prefect home) on a real 40 MiB tmpfs: the model checkpoints cannot fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"this test needs root to mount a tmpfs: {mounted.stderr.decode()}")
    try:
        result = run_demo_failing(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert result.returncode == 2
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error:") and "No space left on device" in last, result.stderr[-2000:]
    assert "HTTP" not in last and "500" not in last


@pytest.mark.slow
def test_a_file_size_limit_is_the_final_message(tmp_path):
    """ulimit -f of 30 MiB for the run and everything it starts: the model's checkpoint is larger."""
    import resource

    limit = 30 * 2**20
    result = run_demo_failing(tmp_path, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert result.returncode == 2
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error:") and "File too large" in last, result.stderr[-2000:]


@pytest.mark.slow
def test_a_slow_temporary_prefect_server_is_reported_with_the_fix(tmp_path):
    """A start-up allowance the temporary server cannot meet (1 s): the run ends with one line that names
    the setting to raise, not Prefect's raw RuntimeError with the server's output."""
    result = subprocess.run(
        [sys.executable, "-m", "tunery.cli", "run", "configs/helpdesk.yaml", f"workdir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"},
    )
    assert result.returncode == 2
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error:") and "did not answer within 1 s" in last, result.stderr[-2000:]
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in last
