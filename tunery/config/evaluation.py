"""The evaluation side of a recipe: held-out evaluation sets, LLM benchmark suites, the judge, and the gate
(its primary metric, the baseline floor and the guards that must not regress)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunery.config.base import Section
from tunery.config.data import HeldOutSource, held_out_source

CLASSIFICATION_METRICS = ("macro_f1", "accuracy", "weighted_f1", "macro_precision", "macro_recall")
SFT_METRICS = ("rouge_l", "exact_match")
PREFERENCE_METRICS = ("preference_accuracy", "reward_accuracy")
# Per-class guards of a classifier: `recall:<label>`, `precision:<label>`, `f1:<label>`.
PER_CLASS_GUARDS = ("recall", "precision", "f1")
# Guards where lower is better; their margin is relative (0.2: at most 20% above the champion).
COST_GUARDS = ("latency_p95_ms", "model_mb")
JUDGE_GUARD = "judge_win_rate"
# `benchmark:<task>/<metric>`: an lm-eval score of evaluation.benchmarks (e.g. benchmark:exam/acc).
BENCHMARK_GUARD = "benchmark"
# Names of held-out sets: a folder name in the run layout and a key in metrics and MLflow tags.
SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
RESERVED_SET_NAMES = ("train", "validation", "test")


class GuardConfig(Section):
    """A condition of the gate besides the primary metric: a figure that must not get worse than the
    champion's by more than ``margin`` (or, for the judge, a win rate that must reach ``at_least``)."""

    metric: str = Field(
        description="What is guarded: a metric of the task (accuracy, macro_f1, rouge_l, ...), a per-class "
        "figure `recall:<label>` / `precision:<label>` / `f1:<label>`, `judge_win_rate`, `latency_p95_ms` "
        "(classification: one-row scoring), `model_mb`, or `benchmark:<task>/<metric>` (an lm-eval score)."
    )
    set: str | None = Field(
        None, description="Score the guard on this evaluation set (a name in evaluation.sets); default: test."
    )
    margin: float = Field(
        0.0,
        ge=0.0,
        description="How much worse than the champion it may get: an absolute drop for scores, a relative "
        "increase for latency_p95_ms and model_mb (0.2 = 20%).",
    )
    at_least: float = Field(
        0.5, ge=0.0, le=1.0, description="judge_win_rate: the lowest win rate against the champion to pass."
    )
    strict: bool = Field(
        False,
        description="Pass only when the worse end of the 95% interval stays within the margin "
        "(non-inferiority); default: the observed figure decides and the interval is reported.",
    )

    @field_validator("metric")
    @classmethod
    def _known_form(cls, v: str) -> str:
        kind, sep, rest = v.partition(":")
        if sep and kind in PER_CLASS_GUARDS and rest:
            return v
        if sep and kind == BENCHMARK_GUARD and re.fullmatch(r"[^/\s]+/[^/\s]+", rest):
            return v
        known = (*CLASSIFICATION_METRICS, *SFT_METRICS, *PREFERENCE_METRICS, *COST_GUARDS, JUDGE_GUARD)
        if sep or v not in known:
            raise ValueError(
                f"unknown guard {v!r}: use one of {', '.join(known)}, recall:<label>, precision:<label>, "
                "f1:<label> or benchmark:<task>/<metric>"
            )
        return v

    def label(self) -> str:
        """The guard's name in the decision, the summary and the MLflow tags (``golden/accuracy``)."""
        return f"{self.set}/{self.metric}" if self.set else self.metric


class GateConfig(Section):
    """The champion gate: when a newly trained model (the challenger) replaces the champion."""

    primary_metric: (
        Literal[
            "macro_f1",
            "accuracy",
            "weighted_f1",
            "macro_precision",
            "macro_recall",
            "rouge_l",
            "exact_match",
            "preference_accuracy",
            "reward_accuracy",
        ]
        | None
    ) = Field(
        None,
        description="Metric a challenger must improve to become champion (default: macro_f1; sft: rouge_l; "
        "preference: preference_accuracy).",
    )
    min_improvement: float = Field(
        0.0, ge=0.0, description="A challenger must beat the champion by more than this margin."
    )
    baseline_floor: bool = Field(
        True,
        description="A model becomes champion (the first one too) only when it beats the strongest baseline "
        "evaluation computed (TF-IDF + LR, linear probe; sft and preference: the untuned model) on the "
        "primary metric by more than min_improvement, the paired bootstrap 95% interval above 0.",
    )
    guards: list[GuardConfig] = Field(
        default_factory=list,
        description="Conditions that must not regress against the champion; every one must pass.",
    )

    def metric(self, task: str) -> str:
        """The primary metric for a task (the recipe's, else the task's default)."""
        default = {"sft": "rouge_l", "preference": "preference_accuracy"}.get(task, "macro_f1")
        return self.primary_metric or default


class CustomTaskConfig(Section):
    """A benchmark task of your own over a local JSONL of questions and answers (e.g. a company's exam)."""

    name: str = Field(description="Task name (a letter, then letters, digits, _ or -).")
    path: str = Field(description="JSONL file, one question per line.")
    kind: Literal["multiple_choice", "generate_until"] = Field(
        "multiple_choice",
        description="multiple_choice: the answer is one of `choices` (scored by log-likelihood: acc); "
        "generate_until: a short generated answer (exact_match).",
    )
    question_field: str = Field("question", description="Field holding the question (the prompt).")
    answer_field: str = Field(
        "answer", description="Field holding the answer (multiple_choice: the choice, or its index)."
    )
    choices_field: str = Field("choices", description="multiple_choice: field holding the list of choices.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not SET_NAME.match(v):
            raise ValueError(f"task name {v!r}: a letter, then letters, digits, _ or - (at most 64)")
        return v


class BenchmarkConfig(Section):
    """sft and preference: lm-evaluation-harness suites run on the base model, the champion and the candidate
    with the same settings."""

    tasks: list[str] = Field(
        default_factory=list, description="lm-eval task names (their data must be readable offline)."
    )
    custom: list[CustomTaskConfig] = Field(default_factory=list, description="Tasks over local JSONL files.")
    limit: int | None = Field(None, ge=1, description="At most this many questions per task (default: all).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per question (task default).")
    batch_size: int = Field(8, ge=1, description="Questions scored per forward pass.")

    @model_validator(mode="after")
    def _some_task(self) -> BenchmarkConfig:
        if not self.tasks and not self.custom:
            raise ValueError("`evaluation.benchmarks` names no task: list `tasks` or `custom` ones")
        names = [*self.tasks, *(t.name for t in self.custom)]
        if len(set(names)) != len(names):
            raise ValueError(f"`evaluation.benchmarks`: a task is named twice in {names}")
        return self


class JudgeConfig(Section):
    """sft: a judge model compares the candidate's answers with the champion's (the untuned model's when
    there is no champion) through an OpenAI-compatible chat endpoint."""

    url: str = Field(description="Base URL of the endpoint, e.g. http://127.0.0.1:8000/v1 (no credentials).")
    model: str = Field(description="The judge model's name at that endpoint.")
    api_key_env: str = Field(
        "TUNERY_JUDGE_API_KEY",
        description="Environment variable holding the API key (read at run time, never logged or stored).",
    )
    secret_block: str | None = Field(
        None,
        description="Prefect Secret block holding the API key (the flows read it; wins over api_key_env).",
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Judge at most this many test prompts (default: every generated one)."
    )

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"judge url must be an http(s) URL, got {v!r}")
        if parts.username or parts.password:
            raise ValueError("judge url must not carry credentials: put the key in `api_key_env`")
        return v


class EvaluationConfig(Section):
    """Test-set evaluation and the gate that decides whether a new model becomes champion."""

    gate: GateConfig = Field(default_factory=GateConfig)
    sets: dict[str, str | HeldOutSource] = Field(
        default_factory=dict,
        description="Named evaluation sets (a file, glob or URI each, read and cleaned like data.source, "
        "never deduplicated or split), each scored and reported separately; training rows that repeat one "
        "of their rows are quarantined as leaks_test. A mapping {source, text_columns, label_column, format} "
        "gives a set its own columns.",
    )
    generation_samples: int | None = Field(
        None,
        ge=1,
        description="sft: test rows answered by generation (ROUGE-L, exact match, the judge); default: all.",
    )
    benchmarks: BenchmarkConfig | None = Field(None, description="sft/preference: lm-eval benchmark suites.")
    judge: JudgeConfig | None = Field(
        None, description="sft: a pairwise judge through an OpenAI-compatible chat API."
    )
    latency_rows: int = Field(
        50, ge=1, description="classification: test rows scored one at a time for the p95 latency."
    )

    @field_validator("sets")
    @classmethod
    def _set_names(cls, v: dict[str, str | HeldOutSource]) -> dict[str, str | HeldOutSource]:
        for name, source in v.items():
            if not SET_NAME.match(name) or name in RESERVED_SET_NAMES:
                raise ValueError(
                    f"evaluation set name {name!r}: a letter, then letters, digits, _ or -, and not "
                    f"{'/'.join(RESERVED_SET_NAMES)} (use data.test_source / data.validation_source)"
                )
            if not held_out_source(source).source.strip():
                raise ValueError(f"evaluation set {name!r} has no source")
        return v


def check_evaluation(task: str, data, evaluation: EvaluationConfig, continuous: bool) -> None:
    """Evaluation sets, benchmarks, the judge and every guard must fit the task."""
    held_out = data.test_source or data.validation_source or evaluation.sets
    if held_out and continuous:
        raise ValueError(
            "held-out sets (data.test_source, data.validation_source, evaluation.sets) are read by the "
            "finetune flow; continuous learning keeps the frozen test split of its drops' history"
        )
    if evaluation.judge is not None and task != "sft":
        raise ValueError("`evaluation.judge` compares generated answers: it needs `task: sft`")
    if evaluation.benchmarks is not None and task == "classification":
        raise ValueError("`evaluation.benchmarks` (lm-eval suites) need a decoder: sft or preference")
    if evaluation.sets and task == "preference":
        raise ValueError(
            "`evaluation.sets` are scored for classification and sft; preference pairs take one held-out "
            "file in `data.test_source`"
        )
    by_task = {"sft": SFT_METRICS, "preference": PREFERENCE_METRICS}
    task_metrics = by_task.get(task, CLASSIFICATION_METRICS)
    benchmark_tasks = set()
    if evaluation.benchmarks is not None:
        benchmark_tasks = {*evaluation.benchmarks.tasks, *(t.name for t in evaluation.benchmarks.custom)}
    for guard in evaluation.gate.guards:
        where = f"`evaluation.gate.guards` {guard.metric!r}"
        kind, _, rest = guard.metric.partition(":")
        if guard.set is not None and guard.set not in evaluation.sets:
            raise ValueError(f"{where}: set {guard.set!r} is not in `evaluation.sets`")
        if kind in PER_CLASS_GUARDS and task != "classification":
            raise ValueError(f"{where}: per-class guards need task classification")
        if kind == BENCHMARK_GUARD and rest.split("/")[0] not in benchmark_tasks:
            raise ValueError(f"{where}: task {rest.split('/')[0]!r} is not in `evaluation.benchmarks`")
        if guard.metric == JUDGE_GUARD and evaluation.judge is None:
            raise ValueError(f"{where} needs `evaluation.judge`")
        if guard.metric == "latency_p95_ms" and task != "classification":
            raise ValueError(f"{where}: latency is measured for classification models")
        if guard.set is not None and kind in (BENCHMARK_GUARD, *COST_GUARDS, JUDGE_GUARD):
            raise ValueError(f"{where} is not scored per evaluation set: remove `set`")
        plain = kind not in (*PER_CLASS_GUARDS, BENCHMARK_GUARD, *COST_GUARDS, JUDGE_GUARD)
        if plain and guard.metric not in task_metrics:
            raise ValueError(f"{where} does not apply to task {task}: use one of {task_metrics}")
