"""The data stages as file-to-file steps: ingest -> clean -> split, each writing into the run layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tunery.config import Recipe
from tunery.data import report
from tunery.data.clean import CleanResult, QuarantineLimitExceeded, clean
from tunery.data.ingest import ingest
from tunery.data.split import split
from tunery.layout import SPLITS, RunLayout


def data_kind(recipe: Recipe) -> str:
    """Which columns the task reads: labelled text (classification), instruction data or conversations
    (sft, with ``data.conversation``), preference pairs or KTO rows (preference)."""
    if recipe.task == "preference":
        return "preference"
    if recipe.data.conversation is not None:
        return "conversation"
    return "instruction" if recipe.task == "sft" else "labelled_text"


def _write_json(path: Path, payload: dict) -> None:
    """Write by replacing the file: never through a hard link shared with an earlier run (adopt_data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


def ingest_stage(recipe: Recipe, layout: RunLayout) -> Path:
    """Read the recipe's data source into ``ingested.parquet`` (one row per source record)."""
    rows = ingest(recipe.data, data_kind(recipe), recipe.preference.format)
    if recipe.task == "preference":
        check_objective(recipe, rows)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(layout.ingested, index=False)
    return layout.ingested


def check_objective(recipe: Recipe, rows: pd.DataFrame, paired: bool | None = None) -> None:
    """Paired objectives need pairs: unpaired (KTO) rows are a recipe mistake, not bad rows. kto takes
    pairs too (each becomes a desirable and an undesirable answer), but not both kinds in one data set:
    its evaluation scores either pairs or labelled answers.

    Args:
        paired: what the data set holds already (continuous learning: the history), or None.

    Raises:
        DataError: naming the objective and the files that hold the rows of the wrong kind.
    """
    from tunery.data.ingest import DataError

    read = rows.loc[rows["error"] == "", ["source", "pair"]]
    is_unpaired = ["completion" in json.loads(pair) for pair in read["pair"]]
    if recipe.preference.objective == "kto":
        kinds = set(is_unpaired) | ({not paired} if paired is not None else set())
        if len(kinds) > 1:
            where = (
                "this data"
                if paired is None
                else "the data set already holds "
                + ("pairs" if paired else "unpaired rows")
                + ", and this data"
            )
            raise DataError(
                f"preference.objective kto takes pairs or unpaired (KTO) rows, not both: {where} "
                f"holds {sum(is_unpaired)} unpaired rows and {len(is_unpaired) - sum(is_unpaired)} pairs "
                f"({', '.join(sorted(set(read['source']))[:3])}): keep one kind per recipe"
            )
        return
    unpaired = read[is_unpaired]
    if len(unpaired):
        files = ", ".join(sorted(set(unpaired["source"]))[:3])
        raise DataError(
            f"preference.objective {recipe.preference.objective} learns from pairs, but {files} hold(s) "
            f"{len(unpaired)} unpaired (KTO) rows: use objective kto, or pair the answers"
        )


def clean_settings(recipe: Recipe) -> tuple[str | None, dict | None]:
    """What cleaning needs besides the cleaning section: the tokenizer (for ``cleaning.max_tokens``, and
    for conversations, which are checked against the model's template and fitted to its ``max_length``)
    and the conversation settings (None for other data)."""
    from tunery.models import resolve_model

    conversational = recipe.data.conversation is not None or recipe.task == "preference"
    tokenizer = resolve_model(recipe.model.base) if recipe.cleaning.max_tokens or conversational else None
    if recipe.task == "preference":  # pairs are never shortened: a cut answer is another answer
        return tokenizer, {"max_length": recipe.model.max_length}
    if not conversational:
        return tokenizer, None
    return tokenizer, {
        "max_length": recipe.model.max_length,
        "too_long": recipe.data.conversation.too_long,
        "consecutive_user": recipe.data.conversation.allow_consecutive_user,
    }


def clean_stage(recipe: Recipe, layout: RunLayout, ingested: Path | None = None) -> Path:
    """Clean ingested rows into ``clean.parquet``; every row not kept goes to ``quarantine.jsonl``.

    ``ingested`` defaults to this run's file; it may be an earlier run's (a cached ingest)."""
    tokenizer, settings = clean_settings(recipe)
    cache = layout.data_dir / ".arrow"
    cache.mkdir(parents=True, exist_ok=True)
    rows = pd.read_parquet(ingested or layout.ingested)
    try:
        result = clean(rows, recipe.cleaning, recipe.data.labels, cache, tokenizer, settings)
    except QuarantineLimitExceeded as exc:
        if exc.result is not None:  # the run fails, but which rows were bad must still be visible
            _write_clean_outputs(layout, exc.result, error=str(exc))
        raise
    result.kept.to_parquet(layout.cleaned, index=False)
    _write_clean_outputs(layout, result)
    return layout.cleaned


def _write_clean_outputs(layout: RunLayout, result: CleanResult, error: str | None = None) -> None:
    """The quarantine file and the data report of a cleaning (``error``: why it failed the run)."""
    layout.quarantine.parent.mkdir(parents=True, exist_ok=True)
    result.quarantined.to_json(layout.quarantine, orient="records", lines=True, force_ascii=False)
    payload = {
        "clean": result.stats,
        "quarantine_file": str(layout.quarantine),
        "warnings": report.clean_warnings(result.stats),
    }
    _write_json(layout.data_report, payload | ({"error": error} if error else {}))


def split_stage(recipe: Recipe, layout: RunLayout, cleaned: Path | None = None) -> dict[str, str]:
    """Split clean rows into train/validation/test Parquet files; finish the data report and its plots.

    ``cleaned`` defaults to this run's file; it may be an earlier run's (a cached clean), whose data report
    (next to it) is carried over."""
    cleaned = cleaned or layout.cleaned
    threshold = recipe.cleaning.near_duplicate_threshold if recipe.cleaning.near_duplicates else None
    parts, warnings = split(pd.read_parquet(cleaned), recipe.split, threshold)
    for name, frame in parts.items():
        layout.split(name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(layout.split(name), index=False)
    data_report = json.loads((cleaned.parent / layout.data_report.name).read_text(encoding="utf-8"))
    data_report["split"] = report.split_summary(parts)
    # the clean stage's warnings (recomputed from its counts: a retried split must not repeat them), then
    # the split's
    data_report["warnings"] = [*report.clean_warnings(data_report["clean"]), *warnings]
    data_report["plots"] = [
        str(report.plot_lengths(parts, layout.data_dir / "lengths.png")),
        str(report.plot_labels(data_report["split"], layout.data_dir / "labels.png")),
    ]
    _write_json(layout.data_report, data_report)
    return {name: str(layout.split(name)) for name in SPLITS}


def adopt_data(layout: RunLayout, outputs: list[Path]) -> list[str]:
    """Make this run's data folder complete when stages were reused from earlier runs.

    ``outputs`` are the stage outputs this run got (its own, or an earlier run's when a stage was cached),
    in stage order. Files of the earlier runs' data folders that this run lacks are hard-linked (copied
    across file systems), each from the folder of the latest stage that has it, and the data report's
    file paths are pointed at this run's copies.

    Returns:
        The names of the files taken from earlier runs.
    """
    import os
    import shutil

    here = layout.data_dir.resolve()
    taken: list[str] = []
    # The most downstream stage first: a cached split's folder holds the splits and report of *that*
    # split, which must win over the (older) folder the cached ingest or clean came from.
    for output in reversed(outputs):
        folder = Path(output).resolve().parent
        if folder.name == "splits":
            folder = folder.parent
        if folder == here or not folder.is_dir():
            continue
        for source in sorted(folder.rglob("*")):
            relative = source.relative_to(folder)
            if not source.is_file() or relative.parts[0].startswith("."):
                continue  # .arrow: the cleaning's scratch cache
            target = layout.data_dir / relative
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            taken.append(str(relative))
    if taken and layout.data_report.exists():
        data_report = json.loads(layout.data_report.read_text(encoding="utf-8"))
        data_report["quarantine_file"] = str(layout.quarantine)
        data_report["plots"] = [str(layout.data_dir / Path(p).name) for p in data_report.get("plots", [])]
        _write_json(layout.data_report, data_report)
    return taken
