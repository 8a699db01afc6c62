"""LLM benchmark suites with lm-evaluation-harness, run on the base model, the champion and the candidate
with the same settings: lm-eval's named tasks and custom tasks over local JSONL files (a company's exam).

:func:`write_custom_task` checks a JSONL and writes a task YAML that reads it offline; :func:`run_benchmarks`
scores one local model folder with no network; :func:`compare_benchmarks` tabulates the candidate's deltas.
lm_eval is imported inside the functions: importing it takes seconds (datasets, evaluate, nltk).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from tunery.config.evaluation import SET_NAME
from tunery.layout import ADAPTER_DIR, BASE_DIR
from tunery.models import resolve_model

TaskKind = Literal["multiple_choice", "generate_until"]
MODELS = ("base", "champion", "candidate")  # compared, in the order of the table's columns
# Stderrs of mean metrics (acc, exact_match) are closed-form; bootstrap only serves corpus-level metrics
# (bleu, ...), where lm-eval's default of 100,000 resamples takes minutes on CPU for no visible gain.
BOOTSTRAP_ITERS = 1000
GENERATION_UNTIL = ["\n"]  # an exam answer is one line; a model may go on with the next "Question:"
# A token is at least one character, so the longest reference answer in characters bounds the tokens a
# correct answer needs; the floor leaves room for a short preamble.
MIN_GEN_TOKENS, MAX_GEN_TOKENS = 16, 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class BenchmarkError(ValueError):
    """A benchmark the recipe cannot run (a bad custom-task row, an unknown task name): a configuration
    error, so retrying cannot help. The message names the file and line, and is meant for the user as is."""


# ----------------------------------------------------------------------------------------------- custom tasks


def write_custom_task(
    name: str,
    jsonl: Path,
    folder: Path,
    kind: TaskKind,
    question_field: str = "question",
    answer_field: str = "answer",
    choices_field: str = "choices",
    target_delimiter: str | None = None,
) -> Path:
    """Check a JSONL of questions and answers and write an lm-eval task YAML that reads it offline.

    The YAML points at the JSONL's absolute path (``dataset_path: json``, split ``test``); the file is not
    copied. Few-shot examples, when the caller asks for them (``run_benchmarks(num_fewshot=...)``), are
    drawn from the same file, never the question being asked.

    * ``multiple_choice``: each row has the question, a list of choices and the answer (one of the choices,
      or its index); scored by the log-likelihood of each choice after the question: ``acc`` and
      ``acc_norm`` (likelihood per character of the choice).
    * ``generate_until``: each row has the question and the answer (a string, or a list of acceptable
      strings); the model answers greedily up to the first newline; ``exact_match`` ignores case,
      punctuation and surrounding whitespace.

    Args:
        name: the task name (a letter, then letters, digits, ``_`` or ``-``); also the YAML's file name.
        jsonl: the JSONL file, one JSON object per line (blank lines are skipped, as lm-eval skips them).
        folder: where to write ``<name>.yaml`` (created); pass it as ``include_path`` to run_benchmarks.
        kind: ``multiple_choice`` or ``generate_until``.
        question_field: the field holding the prompt, used verbatim (end it with e.g. ``"Answer:"``).
        answer_field: the field holding the answer.
        choices_field: multiple_choice: the field holding the list of choices.
        target_delimiter: put between the question and a choice (or a few-shot answer). Default: ``""``
            when every choice in the file starts with whitespace (``" positive"``), else ``" "``; lm-eval's
            own default of ``" "`` would otherwise score a doubled space.

    Returns:
        The path of the YAML written.

    Raises:
        BenchmarkError: a bad name or kind, a missing file, or a bad row (the message names file and line).
    """
    if not SET_NAME.match(name):
        raise BenchmarkError(f"custom task name {name!r}: a letter, then letters, digits, _ or -")
    if kind not in get_args(TaskKind):
        raise BenchmarkError(f"custom task {name}: kind must be one of {get_args(TaskKind)}, not {kind!r}")
    path = Path(jsonl).expanduser()
    if not path.is_file():
        raise BenchmarkError(f"custom task {name}: {path} is not a file")
    path = path.resolve()  # a symlink is followed: lm-eval (and its cache) must see the real file
    rows = _read_rows(path, question_field)
    for line, row in rows:
        if kind == "multiple_choice":
            _check_choice_row(row, answer_field, choices_field, where=f"{path}:{line}")
        else:
            _check_generation_row(row, answer_field, where=f"{path}:{line}")
    config = _task_config(name, path, kind, question_field, answer_field)
    if kind == "multiple_choice":
        config["doc_to_choice"] = choices_field
        every_choice_spaced = all(c[:1].isspace() for _, row in rows for c in row[choices_field])
        config["target_delimiter"] = (
            target_delimiter if target_delimiter is not None else ("" if every_choice_spaced else " ")
        )
        config["metric_list"] = [_mean_metric("acc"), _mean_metric("acc_norm")]
    else:
        longest = max(len(a) for _, row in rows for a in _answers(row[answer_field]))
        config["target_delimiter"] = " " if target_delimiter is None else target_delimiter
        config["generation_kwargs"] = {
            "until": GENERATION_UNTIL,
            "do_sample": False,
            "max_gen_toks": min(MAX_GEN_TOKENS, max(MIN_GEN_TOKENS, longest)),
        }
        config["metric_list"] = [_exact_match_metric()]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def _read_rows(path: Path, question_field: str) -> list[tuple[int, dict]]:
    """(line number, row) of every non-blank line; each must be a JSON object with a non-empty question."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise BenchmarkError(f"{where}: a row must be a JSON object, not {type(row).__name__}")
            question = row.get(question_field)
            if not isinstance(question, str) or not question.strip():
                raise BenchmarkError(f"{where}: field {question_field!r} must be a non-empty string")
            rows.append((number, row))
    if not rows:
        raise BenchmarkError(f"{path}: no rows")
    return rows


def _check_choice_row(row: dict, answer_field: str, choices_field: str, where: str) -> None:
    choices = row.get(choices_field)
    if not isinstance(choices, list) or len(choices) < 2:
        raise BenchmarkError(f"{where}: field {choices_field!r} must be a list of at least two choices")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise BenchmarkError(f"{where}: every choice in {choices_field!r} must be a non-empty string")
    if len(set(choices)) != len(choices):
        raise BenchmarkError(f"{where}: {choices_field!r} holds the same choice twice")
    if answer_field not in row:
        raise BenchmarkError(f"{where}: no field {answer_field!r}")
    answer = row[answer_field]
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        raise BenchmarkError(f"{where}: {answer_field!r} must be one of the choices or its index")
    if isinstance(answer, int) and not 0 <= answer < len(choices):
        raise BenchmarkError(f"{where}: answer index {answer} is outside the {len(choices)} choices")
    if isinstance(answer, str) and answer not in choices:
        raise BenchmarkError(f"{where}: answer {answer!r} is not one of the choices {choices}")


def _check_generation_row(row: dict, answer_field: str, where: str) -> None:
    if answer_field not in row:
        raise BenchmarkError(f"{where}: no field {answer_field!r}")
    answer = row[answer_field]
    # lm-eval writes a few-shot example's answer as a string (it asserts so): numbers must be quoted
    if not _answers(answer) or not all(isinstance(a, str) and a.strip() for a in _answers(answer)):
        raise BenchmarkError(
            f"{where}: {answer_field!r} must be a non-empty string or a list of them (write numbers as "
            f'"42"), not {answer!r}'
        )


def _answers(answer: Any) -> list:
    return answer if isinstance(answer, list) else [answer]


def _task_config(name: str, path: Path, kind: TaskKind, question_field: str, answer_field: str) -> dict:
    # Fields are referenced by name, not as jinja templates: lm-eval then reads the raw value (any field
    # name works, an index answer stays an int, a string answer is never re-parsed as a number or list).
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "fewshot_split": "test",  # the only split; lm-eval leaves the question being asked out
        "output_type": kind,
        "doc_to_text": question_field,
        "doc_to_target": answer_field,
        "metadata": {"version": 1.0, "source": str(path)},
    }


def _mean_metric(metric: str) -> dict:
    return {"metric": metric, "aggregation": "mean", "higher_is_better": True}


def _exact_match_metric() -> dict:
    # The regexes run first, on the answer and the reference alike: punctuation goes (lm-eval's own
    # ignore_punctuation runs after them and would leave "4 ." as "4 "), then surrounding whitespace
    # (a generated answer starts with the space after "Answer:").
    metric = _mean_metric("exact_match") | {"ignore_case": True, "ignore_punctuation": True}
    return metric | {"regexes_to_ignore": [r"[^\w\s]", r"^\s+", r"\s+$"]}


# ------------------------------------------------------------------------------------------------- running


def run_benchmarks(
    model_path: str,
    tasks: list[str],
    include_path: Path | None,
    limit: int | None,
    num_fewshot: int | None,
    batch_size: int = 8,
    seed: int = 0,
    max_length: int | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    apply_chat_template: bool = False,
) -> dict:
    """Run lm-eval tasks on one local model, offline, with fixed seeds.

    Call it with the same arguments for the base model, the champion and the candidate: the scores are then
    comparable (same questions, same shots, same seeds).

    Args:
        model_path: a local model folder: a transformers folder (a full or merged export), a PEFT adapter
            folder (``adapter_config.json``; its base is read from there), a tunery ``adapter`` export
            (``base/`` + ``adapter/``, tokenizer beside them), or a tunery catalogue name (``smollm2``).
        tasks: lm-eval task (or group) names: custom ones from ``include_path`` and/or lm-eval's own (their
            data must already be in the datasets cache: nothing is downloaded).
        include_path: a folder of task YAMLs (:func:`write_custom_task`), or None.
        limit: at most this many questions per task (the first ones), or None for all.
        num_fewshot: few-shot examples per question, or None for each task's default (0 for custom tasks).
        batch_size: questions per forward pass.
        seed: python, numpy, torch and few-shot sampling seed.
        max_length: the model's context in tokens (default: the model config's).
        device: ``cpu``, ``cuda``, ``cuda:0``...
        dtype: weights' dtype; default ``float32`` on CPU, the model config's elsewhere.
        apply_chat_template: wrap each question (and shot) in the tokenizer's chat template, as a chat-tuned
            model saw its training prompts; lm-eval's tasks are written for plain prompts (the default).

    Returns:
        ``{"tasks": {task: {metric: value, metric + "_stderr": value or None, "n": questions scored}},
        "higher_is_better": {task: {metric: bool}}, "settings": {...}}``. A metric is named as in lm-eval's
        tables: ``acc``, or ``metric,filter`` when a task filters its answers (``exact_match,strict-match``).
        ``settings`` holds lm_eval_version, tasks, limit, num_fewshot, seed, batch_size, max_length, device,
        dtype and the model's resolved arguments.

    Raises:
        BenchmarkError: no task, or a task that neither lm-eval nor ``include_path`` defines.
    """
    if not tasks:
        raise BenchmarkError("run_benchmarks: no task named")
    dtype = dtype or ("float32" if device == "cpu" else "auto")
    model_args = {**hf_model_args(model_path), "dtype": dtype}
    if max_length is not None:
        model_args["max_length"] = max_length
    seeds = dict(random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    with offline_and_quiet():
        import lm_eval

        manager = _task_manager(tasks, include_path)
        try:
            raw = lm_eval.simple_evaluate(
                model="hf",
                model_args=model_args,  # a dict: a path holding "," or "=" would break "k=v,k=v"
                tasks=list(tasks),
                task_manager=manager,
                num_fewshot=num_fewshot,
                batch_size=batch_size,
                device=device,
                limit=limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=False,
                apply_chat_template=apply_chat_template,
                **seeds,
            )
        except ConnectionError as e:  # offline: a named task's data set is not in the datasets cache
            message = f"benchmark data not available offline ({e}); cache it or use a custom task"
            raise BenchmarkError(message) from e
    settings = dict(lm_eval_version=lm_eval.__version__, tasks=list(tasks), limit=limit, seed=seed)
    settings |= dict(num_fewshot=num_fewshot, n_shot=dict(raw.get("n-shot", {})), batch_size=batch_size)
    settings |= dict(device=device, max_length=max_length, dtype=dtype, model_args=model_args)
    settings |= dict(apply_chat_template=apply_chat_template)
    return {**_scores(raw), "settings": settings}


def hf_model_args(model_path: str) -> dict[str, str]:
    """lm-eval ``hf`` model arguments for a local model folder (see :func:`run_benchmarks`)."""
    folder = Path(resolve_model(model_path))
    if not folder.is_dir():
        raise BenchmarkError(f"model folder not found: {model_path}")
    if (folder / ADAPTER_DIR / "adapter_config.json").is_file():  # tunery's prompt-learning export
        base, adapter = folder / BASE_DIR, folder / ADAPTER_DIR
    elif (folder / "adapter_config.json").is_file():  # a plain PEFT adapter folder
        adapter = folder
        source = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        named = source.get("base_model_name_or_path") or ""
        if not named or not (base := Path(resolve_model(named))).is_dir():
            raise BenchmarkError(f"{folder}: the adapter's base model {named!r} is not a local folder")
    else:
        return {"pretrained": str(folder)}
    # lm-eval loads the base and wraps it in peft's PeftModel (prompt-learning tokens are accounted for)
    tokenizer = folder if any((folder / name).is_file() for name in TOKENIZER_FILES) else base
    return {"pretrained": str(base), "peft": str(adapter), "tokenizer": str(tokenizer)}


def _task_manager(tasks: list[str], include_path: Path | None):
    """A TaskManager that knows every task: only the custom folder when it has them all (indexing lm-eval's
    ~15,000 built-in task files takes ~18 s on 2 cores), else lm-eval's own plus the folder."""
    from lm_eval.tasks import TaskManager

    include = str(include_path) if include_path is not None else None
    if include is not None:
        manager = TaskManager(include_path=include, include_defaults=False)
        if all(task in manager.all_tasks for task in tasks):
            return manager
    manager = TaskManager(include_path=include)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path is not None else ""
        raise BenchmarkError(f"unknown benchmark task(s) {unknown}: not defined by lm-eval{where}")
    return manager


def _scores(raw: dict) -> dict:
    """lm-eval's results as ``{"tasks": ..., "higher_is_better": ...}``, names without ``,none``."""
    tasks: dict[str, dict] = {}
    for task, values in raw["results"].items():
        scores: dict[str, Any] = {}
        for key, value in values.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr"):
                continue  # alias, name, sample_len; stderrs are read with their metric
            label = metric if filter_name == "none" else f"{metric},{filter_name}"
            scores[label] = _number(value)
            scores[f"{label}_stderr"] = _number(values.get(f"{metric}_stderr,{filter_name}"))
        samples = raw.get("n-samples", {}).get(task)
        if samples is not None:
            scores["n"] = int(samples["effective"])
        tasks[task] = scores
    higher = {task: dict(metrics) for task, metrics in raw.get("higher_is_better", {}).items()}
    return {"tasks": tasks, "higher_is_better": higher}


def _number(value: Any) -> float | None:
    # lm-eval writes "N/A" for a stderr it could not compute (one question, no bootstrap)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


@contextlib.contextmanager
def offline_and_quiet() -> Iterator[None]:
    """No model hub or dataset hub for the duration, lm-eval's logs at WARNING, no per-model or per-task
    progress bars of transformers and datasets; everything restored after.

    lm-eval would otherwise ask the hub for the model's commit (``get_model_info``). huggingface_hub and
    datasets read the offline variables once, at import: a process that imported them earlier keeps their
    values, so their module constants are set too.
    """
    with contextlib.ExitStack() as undo:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            undo.callback(_restore_variable, name, os.environ.get(name))
            os.environ[name] = "1"
        import datasets
        import huggingface_hub.constants
        import transformers

        for module, name in (
            (huggingface_hub.constants, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_DATASETS_OFFLINE"),
        ):
            undo.callback(setattr, module, name, getattr(module, name))
            setattr(module, name, True)
        logger = logging.getLogger("lm_eval")
        undo.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.WARNING)
        if transformers.utils.logging.is_progress_bar_enabled():  # "Loading weights" per model
            transformers.utils.logging.disable_progress_bar()
            undo.callback(transformers.utils.logging.enable_progress_bar)
        if not datasets.are_progress_bars_disabled():  # "Generating test split" per task
            datasets.disable_progress_bars()
            undo.callback(datasets.enable_progress_bars)
        yield


def _restore_variable(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# ----------------------------------------------------------------------------------------------- comparing


def compare_benchmarks(results: dict[str, dict]) -> list[dict]:
    """The models' benchmark scores side by side, with the candidate's deltas.

    Args:
        results: ``{"base": ..., "champion": ..., "candidate": ...}``, each a :func:`run_benchmarks` result;
            the champion may be missing (no champion yet), and so may a task in one model's result.

    Returns:
        One row per task and metric, sorted: ``task``, ``metric``, ``n``, each model's value and
        ``<model>_stderr`` (None where missing), ``candidate_minus_champion`` and ``candidate_minus_base``
        with their ``_stderr`` (None when a side is missing), and lm-eval's ``higher_is_better``. The stderr
        of a delta is ``sqrt(a^2 + b^2)``, as if the runs were independent: on the same questions it is
        overstated, which errs on the side of "no change".
    """
    unknown = set(results) - set(MODELS)
    if unknown:
        raise BenchmarkError(f"compare_benchmarks: unknown model(s) {sorted(unknown)}; use {MODELS}")
    scores = {m: results[m]["tasks"] if m in results else {} for m in MODELS}
    higher: dict[str, dict] = {}
    for m in MODELS:
        for task, stated in results.get(m, {}).get("higher_is_better", {}).items():
            higher.setdefault(task, {}).update(stated)
    keys = {(task, metric) for table in scores.values() for task, row in table.items() for metric in row}
    rows = []
    for task, metric in sorted(k for k in keys if k[1] != "n" and not k[1].endswith("_stderr")):
        of = {m: scores[m].get(task, {}) for m in MODELS}
        row: dict[str, Any] = {"task": task, "metric": metric}
        row["n"] = next((of[m]["n"] for m in MODELS if of[m].get("n") is not None), None)
        for m in MODELS:
            row[m], row[f"{m}_stderr"] = of[m].get(metric), of[m].get(f"{metric}_stderr")
        for other in ("champion", "base"):
            delta, stderr = _delta(row, "candidate", other)
            row[f"candidate_minus_{other}"], row[f"candidate_minus_{other}_stderr"] = delta, stderr
        row["higher_is_better"] = higher.get(task, {}).get(metric.partition(",")[0])
        rows.append(row)
    return rows


def _delta(row: dict, a: str, b: str) -> tuple[float | None, float | None]:
    if row[a] is None or row[b] is None:
        return None, None
    stderr_a, stderr_b = row[f"{a}_stderr"], row[f"{b}_stderr"]
    stderr = None if stderr_a is None or stderr_b is None else math.hypot(stderr_a, stderr_b)
    return row[a] - row[b], stderr
