"""Fail before the work, not after: the base model (its config only) and the data's columns and labels are
checked by `validate` and at the start of a run, and an error no retry can fix is not retried."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tunery.config import Recipe
from tunery.data.ingest import DataError
from tunery.data.preflight import check_model, check_sources
from tunery.models import ModelError, check_base_model, resolve_model


def recipe(tmp_path: Path, source: str, task: str = "classification", **sections) -> Recipe:
    raw = {
        "name": "preflight",
        "task": task,
        "data": {"source": source},
        "mlflow": {"registered_model": "m", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "workdir": str(tmp_path / "work"),
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return Recipe.model_validate(raw)


# ------------------------------------------------------------------------------------------- the model


def test_a_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ModelError, match=r"model.base '\./no-such-model': no such folder"):
        check_base_model("./no-such-model", 128)
    with pytest.raises(ModelError, match="model folder not found: /nowhere/model"):
        resolve_model("/nowhere/model")  # what training calls: no hub lookup of a path


def test_a_folder_that_is_not_a_model_folder_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelError, match=r"is not a model folder: it has no config\.json, no weights"):
        check_base_model(str(tmp_path), 128)


def test_a_hub_id_without_a_hub_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too: no test reaches a hub
    with pytest.raises(ModelError) as err:
        check_base_model("some-org/some-model", 128)
    message = str(err.value)
    assert "'some-org/some-model'" in message
    assert "no model hub is reachable (offline" in message


def test_max_length_above_the_models_positions_fails():
    check_base_model("minilm", 512)
    with pytest.raises(ModelError, match=r"model.max_length 1024 exceeds .*max_position_embeddings 512"):
        check_base_model("minilm", 1024)


def test_a_local_model_folder_passes(tiny_bert):
    check_base_model(str(tiny_bert), 128)
    with pytest.raises(ModelError, match="at most 128"):
        check_base_model(str(tiny_bert), 256)


def test_the_run_fails_before_its_folder_or_mlflow_run_exists(tmp_path):
    from tunery import pipeline

    (tmp_path / "d.csv").write_text("text,label\nhello,a\n")
    bad = recipe(tmp_path, str(tmp_path / "d.csv"), model={"base": str(tmp_path / "missing-model")})
    with pytest.raises(ModelError, match="no such folder"):
        pipeline.open_run(bad)
    assert not (tmp_path / "work").exists()
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(ModelError):
        check_model(bad)


# -------------------------------------------------------------------------------------------- the data


def test_a_conversation_file_does_not_have_the_classification_columns(tmp_path, shared_data):
    source = str(shared_data / "llama_factory" / "glaive_toolcall_en_demo.json")
    with pytest.raises(
        DataError, match=r"missing column\(s\) text, label; the file has: conversations, tools"
    ):
        check_sources(recipe(tmp_path, source))


def test_a_conversation_file_does_not_have_the_instruction_columns(tmp_path, shared_data):
    source = str(shared_data / "llama_factory" / "kto_en_demo.json")
    with pytest.raises(
        DataError, match=r"missing column\(s\) instruction, output or response; the file has: messages"
    ):
        check_sources(recipe(tmp_path, source, task="sft"))


def test_instruction_data_passes(tmp_path, shared_data):
    source = str(shared_data / "alpaca_demo" / "alpaca_en_demo.json")
    assert check_sources(recipe(tmp_path, source, task="sft")) == 1


def test_labels_outside_the_label_set_are_named(tmp_path):
    rows = "".join(f"ticket {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    with pytest.raises(DataError) as err:
        check_sources(recipe(tmp_path, str(tmp_path / "d.csv"), data={"labels": ["positive", "negative"]}))
    message = str(err.value)
    assert "d.csv: 40 of the first 40 records" in message
    assert "not in data.labels [positive, negative]: 'neg', 'pos'" in message
    assert "data.label_names" in message
    mapped = {"labels": ["positive", "negative"], "label_names": {"pos": "positive", "neg": "negative"}}
    assert check_sources(recipe(tmp_path, str(tmp_path / "d.csv"), data=mapped)) == 1


def test_a_few_unknown_labels_are_left_to_the_quarantine(tmp_path):
    rows = "".join(f"ticket {i},{'odd' if i == 7 else 'a'}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    assert check_sources(recipe(tmp_path, str(tmp_path / "d.csv"), data={"labels": ["a"]})) == 1


def test_every_file_of_a_source_is_checked(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nhello,x\n")
    (tmp_path / "b.csv").write_text("body,label\nhello,x\n")
    with pytest.raises(DataError, match=r"b\.csv: missing column\(s\) text"):
        check_sources(recipe(tmp_path, str(tmp_path / "*.csv")))


# ----------------------------------------------------------------------------------------- the retries


def test_configuration_errors_are_not_retried_and_crashes_are():
    from tasks.retry import is_retryable
    from tunery.training.launch import TrainingJobFailed, TrainingTimeout

    assert not is_retryable(ModelError("model.base 'x': no such folder"))
    assert not is_retryable(DataError("d.csv: missing column(s) text"))
    assert is_retryable(RuntimeError("connection reset"))
    tail = "Traceback (most recent call last):\n  ...\ntunery.models.ModelError: model folder not found: /x"
    assert not is_retryable(TrainingJobFailed(f"training job exited with code 1; last lines:\n{tail}"))
    ranked = "[rank0]: tunery.data.ingest.DataError: d.csv: no records"
    assert not is_retryable(TrainingJobFailed(f"training job exited with code 1; last lines:\n{ranked}"))
    crash = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: an illegal memory access"
    assert is_retryable(TrainingJobFailed(f"training job exited with code 1; last lines:\n{crash}"))
    assert is_retryable(TrainingJobFailed("training job exited with code -9; last lines:\n"))  # OOM kill
    assert is_retryable(
        TrainingTimeout(f"training job stopped after the 1.0 min timeout; last lines:\n{tail}")
    )


def test_a_full_disk_is_not_retried():
    import errno

    from tasks.retry import is_retryable
    from tunery.training.launch import TrainingJobFailed

    assert not is_retryable(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_retryable(OSError(errno.EFBIG, "File too large"))
    assert is_retryable(OSError(errno.ECONNRESET, "Connection reset by peer"))
    saved = "safetensors_rust.SafetensorError: Error while serializing: I/O error: No space left on device"
    assert not is_retryable(TrainingJobFailed(f"training job exited with code 1; last lines:\n{saved}"))


def test_a_job_that_dies_of_a_missing_model_folder_is_not_retried(tmp_path):
    """A real child process, as the launcher runs it: its traceback is what classifies the failure."""
    import os

    from tasks.retry import is_retryable
    from tunery.training.launch import TrainingJobFailed, run_job

    code = "from tunery.models import resolve_model; resolve_model('./gone/model')"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with pytest.raises(TrainingJobFailed) as err:
        run_job([sys.executable, "-c", code], env, 60, lambda line: None)
    assert "tunery.models.ModelError: model folder not found: ./gone/model" in str(err.value)
    assert not is_retryable(err.value)


def test_the_first_task_of_the_flow_does_not_retry_bad_input():
    from tasks.model import open_run, train_model
    from tasks.retry import retry_unless_bad_input

    assert open_run.retry_condition_fn is retry_unless_bad_input
    assert train_model.retry_condition_fn is retry_unless_bad_input
