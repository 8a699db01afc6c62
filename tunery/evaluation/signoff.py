"""What a model owner signs off on besides the test split's metrics: the named evaluation sets
(``evaluation.sets``), one-request latency and model size, and the figures of the gate's guards.

Every figure is computed for the candidate and, where there is one, the champion, on the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tunery.config import COST_GUARDS, Recipe
from tunery.evaluation.gate_figures import (
    RowMetric,
    baseline_floor,
    guard_figures,
    label_metrics,
    latency_figure,
    mean_of,
)
from tunery.evaluation.generation import generation_metrics
from tunery.evaluation.metrics import argmax_labels, classification_metrics, probability_rows
from tunery.layout import RunLayout


def model_megabytes(folder: Path) -> float:
    """The size of a model folder on disk in MB (10^6 bytes), every file counted once."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


def size_figure(model_dir: Path, champion_dir: Path | None) -> dict:
    """``model_mb`` of the candidate's folder and of the champion's (None without its folder)."""
    champion = model_megabytes(champion_dir) if champion_dir is not None else None
    return {"candidate": model_megabytes(model_dir), "champion": champion, "lower_is_better": True}


def needs_champion_folder(recipe: Recipe) -> bool:
    """Whether evaluation needs the champion's model folder: for its size or its latency (measured like the
    candidate's) when a guard asks, and for the benchmark suites. Only then is it downloaded."""
    guarded = any(guard.metric in COST_GUARDS for guard in recipe.evaluation.gate.guards)
    return guarded or recipe.evaluation.benchmarks is not None


def latencies_ms(classify: Callable[[list[str]], object], texts: list[str], rows: int) -> list[float]:
    """Milliseconds of ``classify([text])`` for the first ``rows`` texts, one request at a time, after one
    warm-up request (the first call pays for lazy initialisation, not for the model)."""
    chosen = texts[: max(1, rows)]
    classify(chosen[:1])
    out = []
    for text in chosen:
        start = time.perf_counter()
        classify([text])
        out.append((time.perf_counter() - start) * 1000)
    return out


def classification_costs(
    recipe: Recipe, model_dir: Path, texts: list[str], champion_dir: Path | None
) -> dict[str, dict]:
    """``latency_p95_ms`` (through the pyfunc's scoring function, one row per request) and ``model_mb`` of
    the candidate, and of the champion when its folder is given."""
    from tunery.serving.inference import TextClassifier
    from tunery.serving.pyfunc import classify_frame

    rows = recipe.evaluation.latency_rows

    def timed(folder: Path) -> list[float]:
        classifier = TextClassifier(folder, batch_size=1)
        return latencies_ms(lambda batch: classify_frame(classifier, batch), texts, rows)

    candidate = timed(model_dir)
    champion = timed(champion_dir) if champion_dir is not None else None
    return {
        "latency_p95_ms": {**latency_figure(candidate, champion), "lower_is_better": True},
        "model_mb": size_figure(model_dir, champion_dir),
    }


def held_out_frames(recipe: Recipe, layout: RunLayout) -> dict[str, pd.DataFrame]:
    """The cleaned rows of each named evaluation set (``evaluation.sets``), in the recipe's order."""
    return {name: pd.read_parquet(layout.held_out(name).cleaned) for name in recipe.evaluation.sets}


def classification_sets(
    recipe: Recipe,
    layout: RunLayout,
    predict_proba: Callable[[list[str]], np.ndarray],
    labels: list[str],
    champion: Callable[[pd.DataFrame], object] | None,
    champion_outputs: Callable,
) -> tuple[dict, dict[str, tuple[dict[str, RowMetric], dict[str, RowMetric] | None, int]]]:
    """Score the model (and the champion) on every named evaluation set.

    Returns:
        ``{name: {"n", "model", "champion"}}`` for the metrics file, and per set the row metrics of both
        models for the guards (``gate_figures.guard_figures``).
    """
    report, per_set = {}, {}
    for name, frame in held_out_frames(recipe, layout).items():
        texts, truth = frame["text"].tolist(), frame["label"].astype(str).tolist()
        proba = probability_rows(predict_proba(texts), len(texts), len(labels))
        predicted = argmax_labels(proba, labels)
        entry = {
            "n": len(texts),
            "model": classification_metrics(truth, predicted, labels, proba),
            "champion": None,
        }
        champion_fns = None
        if champion is not None:
            champion_pred, champion_proba = champion_outputs(champion(frame), labels)
            entry["champion"] = classification_metrics(truth, champion_pred, labels, champion_proba)
            champion_fns = label_metrics(truth, champion_pred, labels)
        report[name] = entry
        per_set[name] = (label_metrics(truth, predicted, labels), champion_fns, len(texts))
    return report, per_set


# ---------------------------------------------------------------------------------------------------- sft


def generation_row_metrics(references: list[str], answers: list[str]) -> dict[str, RowMetric]:
    """ROUGE-L and exact match (rows whose reference ends in ``#### N``) as functions of row indices."""
    from tunery.evaluation.generation import final_number, rouge_l

    rouge = [rouge_l(r, a) for r, a in zip(references, answers, strict=True)]
    exact = [
        None if final_number(r) is None else float(final_number(r) == final_number(a))
        for r, a in zip(references, answers, strict=True)
    ]
    return {"rouge_l": mean_of(rouge), "exact_match": mean_of(exact)}


def instruction_prompts(rows: pd.DataFrame) -> list[str]:
    """What a judge reads as the user's request: the instruction, and its input when there is one."""
    return [
        f"{instruction}\n\n{context}" if str(context or "").strip() else str(instruction)
        for instruction, context in zip(rows["instruction"], rows["input"], strict=True)
    ]


def judge_api_key(recipe: Recipe) -> str | None:
    """The judge's API key from the environment variable the recipe names (the flows put a Prefect Secret
    block's value there first); None when it is not set (a local endpoint needs none)."""
    import os

    judge = recipe.evaluation.judge
    return os.environ.get(judge.api_key_env) or None if judge is not None else None


def run_judge(
    recipe: Recipe,
    layout: RunLayout,
    prompts: list[str],
    candidate: list[str],
    opponent: list[str],
    opponent_name: str,
    references: list[str] | None,
) -> dict:
    """Pairwise verdicts of the recipe's judge on (candidate, opponent) answers, both orders asked; the
    prompts, answers and verdicts go to ``eval/judge_verdicts.jsonl`` (never the key).

    Returns:
        The win-rate summary (``win_rate`` with its 95% interval, counts, position bias), ``opponent``,
        the judge's URL and model, and the artifact's path relative to the run folder.
    """
    from tunery.evaluation.judge import JudgeEndpoint, judge_pairs, win_rate, write_verdicts

    judge = recipe.evaluation.judge
    limit = judge.max_prompts or len(prompts)
    endpoint = JudgeEndpoint(url=judge.url, model=judge.model, api_key=judge_api_key(recipe))
    records = judge_pairs(
        prompts[:limit],
        candidate[:limit],
        opponent[:limit],
        endpoint,
        references=references[:limit] if references is not None else None,
    )
    path = layout.eval_dir / "judge_verdicts.jsonl"
    write_verdicts(records, path)
    summary = win_rate(records)  # records, not outcomes: the position bias is measured from them
    return {
        **summary,
        "opponent": opponent_name,
        "judge": {"url": judge.url, "model": judge.model},
        "verdicts": path.relative_to(layout.root).as_posix(),
    }


def run_benchmark_suites(recipe: Recipe, layout: RunLayout, models: dict[str, str]) -> dict:
    """The recipe's lm-eval suites on each model folder (``base``, ``champion``, ``candidate``) with the
    same settings; custom tasks are written into ``eval/benchmarks/tasks``.

    Returns:
        ``{"results": {model: {task: {...}}}, "table": [...], "settings": {...}}``.
    """
    from tunery.evaluation.benchmarks import compare_benchmarks, run_benchmarks, write_custom_task

    config = recipe.evaluation.benchmarks
    folder = layout.eval_dir / "benchmarks" / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for task in config.custom:
        write_custom_task(
            task.name,
            Path(task.path),
            folder,
            task.kind,
            question_field=task.question_field,
            answer_field=task.answer_field,
            choices_field=task.choices_field,
        )
    tasks = [*config.tasks, *(task.name for task in config.custom)]
    results = {
        name: run_benchmarks(
            path,
            tasks,
            folder if config.custom else None,
            config.limit,
            config.num_fewshot,
            batch_size=config.batch_size,
            seed=recipe.training.seed,
            max_length=recipe.model.max_length,
        )
        for name, path in models.items()
    }
    return {"results": results, "table": compare_benchmarks(results)}


@dataclass(frozen=True)
class Generated:
    """The answers to the generated test rows: references, the candidate's, the untuned model's and the
    champion's (None without a champion), in row order."""

    references: list[str]
    candidate: list[str]
    untuned: list[str]
    champion: list[str] | None


def sft_signoff(
    recipe: Recipe,
    layout: RunLayout,
    generated: Generated,
    prompts: list[str],
    answer_set: Callable[[pd.DataFrame], tuple[list[str], list[str], list[str] | None]],
    step: Callable[[str], None],
    champion_dir: Path | None,
) -> dict:
    """The gate's figures for an sft model: the floor against the untuned model and the champion's paired
    bootstrap on the generated rows, the named evaluation sets, the judge, the benchmark suites, the size
    and every guard.

    Args:
        answer_set: an evaluation set's rows -> (references, candidate answers, champion answers or None).
    """
    from tunery.evaluation.metrics import bootstrap_delta
    from tunery.models import resolve_model

    primary = recipe.evaluation.gate.metric(recipe.task)
    n = len(generated.references)
    model_fns = generation_row_metrics(generated.references, generated.candidate)
    floor = baseline_floor(
        model_fns, {"zero_shot": generation_row_metrics(generated.references, generated.untuned)}, primary, n
    )
    per_set: dict = {}
    champion_fns, gate_bootstrap = None, None
    if generated.champion is not None:
        champion_fns = generation_row_metrics(generated.references, generated.champion)
        gate_bootstrap = bootstrap_delta(model_fns[primary], champion_fns[primary], n, primary)
    per_set["test"] = (model_fns, champion_fns, n)
    sets = {}
    for name, frame in held_out_frames(recipe, layout).items():
        step(f"generating answers to evaluation set {name} ({len(frame)} rows; the champion's too)")
        references, mine, theirs = answer_set(frame)
        sets[name] = {
            "n": len(references),
            "model": generation_metrics(references, mine),
            "champion": generation_metrics(references, theirs) if theirs is not None else None,
        }
        theirs_fns = generation_row_metrics(references, theirs) if theirs is not None else None
        per_set[name] = (generation_row_metrics(references, mine), theirs_fns, len(references))
    judge = None
    if recipe.evaluation.judge is not None:
        opponent = "champion" if generated.champion is not None else "untuned"
        against = generated.champion if generated.champion is not None else generated.untuned
        step(f"judge {recipe.evaluation.judge.model}: {n} prompts x 2 orders, candidate vs {opponent}")
        judge = run_judge(
            recipe, layout, prompts, generated.candidate, against, opponent, generated.references
        )
    benchmarks = None
    if recipe.evaluation.benchmarks is not None:
        models = {"base": resolve_model(recipe.model.base), "candidate": str(layout.model_dir)}
        if champion_dir is not None:
            models["champion"] = str(champion_dir)
        step(f"benchmarks (lm-eval) on {', '.join(models)}")
        benchmarks = run_benchmark_suites(recipe, layout, models)
    costs = {"model_mb": size_figure(layout.model_dir, champion_dir)}
    guards = guard_figures(
        recipe.evaluation.gate.guards,
        per_set,
        costs,
        judge,
        {model: result["tasks"] for model, result in (benchmarks or {}).get("results", {}).items()},
    )
    return {
        "baseline_floor": floor,
        "gate_bootstrap": gate_bootstrap,
        "sets": sets,
        "judge": judge,
        "benchmarks": benchmarks,
        "costs": costs,
        "guards": guards,
    }
