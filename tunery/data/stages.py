"""The data stages as file-to-file steps: ingest -> clean -> split, each writing into the run layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tunery.config import HeldOutSource, Recipe, held_out_source
from tunery.data import report
from tunery.data.clean import LEAKS_TEST, CleanResult, QuarantineLimitExceeded, clean
from tunery.data.ingest import DataError, ingest
from tunery.data.split import leaked_rows, split
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


def held_out_sources(recipe: Recipe) -> dict[str, HeldOutSource]:
    """The held-out sets a recipe names: ``test`` and ``validation`` (their own files instead of a share of
    ``data.source``), then the named ``evaluation.sets``, in that order."""
    named = {"test": recipe.data.test_source, "validation": recipe.data.validation_source}
    named = {name: value for name, value in named.items() if value is not None}
    return {name: held_out_source(value) for name, value in {**named, **recipe.evaluation.sets}.items()}


def ingest_stage(recipe: Recipe, layout: RunLayout) -> Path:
    """Read the recipe's data source into ``ingested.parquet`` (one row per source record), and each
    held-out set into its own folder (``layout.held_out(name)``)."""
    rows = ingest(recipe.data, data_kind(recipe), recipe.preference.format)
    if recipe.task == "preference":
        check_objective(recipe, rows)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(layout.ingested, index=False)
    for name, source in held_out_sources(recipe).items():
        data = recipe.data.model_copy(update=source.data_update())
        try:
            held = ingest(data, data_kind(recipe), recipe.preference.format)
        except DataError as error:
            raise DataError(f"held-out set {name!r}: {error}") from None
        if recipe.task == "preference":
            check_objective(recipe, held)
        folder = layout.held_out(name)
        folder.root.mkdir(parents=True, exist_ok=True)
        held.to_parquet(folder.ingested, index=False)
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
    _write_clean_outputs(layout, result, held_out=_clean_held_out(recipe, layout, ingested, result.kept))
    return layout.cleaned


def _clean_held_out(recipe: Recipe, layout: RunLayout, ingested: Path | None, kept: pd.DataFrame) -> dict:
    """Clean each held-out set like the training data, except that its duplicates stay (a test set is
    scored whole) and, for classification without ``data.labels``, a label the training data lacks is
    quarantined (unknown_label: the model cannot predict it). Returns the cleaning counts per set."""
    tokenizer, settings = clean_settings(recipe)
    source_dir = (ingested or layout.ingested).parent
    cfg = recipe.cleaning.model_copy(update={"drop_duplicates": False, "near_duplicates": False})
    labels = recipe.data.labels
    if labels is None and data_kind(recipe) == "labelled_text":
        labels = sorted(kept["label"].astype(str).unique())
    stats = {}
    for name in held_out_sources(recipe):
        here, there = layout.held_out(name), RunLayout(source_dir.parent).held_out(name)
        cache = layout.data_dir / ".arrow"
        try:
            result = clean(pd.read_parquet(there.ingested), cfg, labels, cache, tokenizer, settings)
        except QuarantineLimitExceeded as exc:
            raise QuarantineLimitExceeded(f"held-out set {name!r}: {exc}", exc.result) from None
        if not len(result.kept):
            raise DataError(f"held-out set {name!r} has no usable rows after cleaning: {result.stats}")
        here.root.mkdir(parents=True, exist_ok=True)
        result.kept.to_parquet(here.cleaned, index=False)
        result.quarantined.to_json(here.quarantine, orient="records", lines=True, force_ascii=False)
        stats[name] = result.stats
    return stats


def _write_clean_outputs(
    layout: RunLayout, result: CleanResult, error: str | None = None, held_out: dict | None = None
) -> None:
    """The quarantine file and the data report of a cleaning (``error``: why it failed the run;
    ``held_out``: the cleaning counts of each held-out set)."""
    layout.quarantine.parent.mkdir(parents=True, exist_ok=True)
    result.quarantined.to_json(layout.quarantine, orient="records", lines=True, force_ascii=False)
    payload = {
        "clean": result.stats,
        "quarantine_file": str(layout.quarantine),
        "warnings": report.clean_warnings(result.stats),
    }
    if held_out:
        payload["held_out"] = {
            name: {"clean": stats, "quarantine_file": str(layout.held_out(name).quarantine)}
            for name, stats in held_out.items()
        }
    _write_json(layout.data_report, payload | ({"error": error} if error else {}))


def split_stage(recipe: Recipe, layout: RunLayout, cleaned: Path | None = None) -> dict[str, str]:
    """Split clean rows into train/validation/test Parquet files; finish the data report and its plots.

    ``cleaned`` defaults to this run's file; it may be an earlier run's (a cached clean), whose data report
    (next to it) is carried over."""
    cleaned = cleaned or layout.cleaned
    threshold = recipe.cleaning.near_duplicate_threshold if recipe.cleaning.near_duplicates else None
    rows = pd.read_parquet(cleaned)
    held_out = {
        name: pd.read_parquet(RunLayout(cleaned.parent.parent).held_out(name).cleaned)
        for name in held_out_sources(recipe)
    }
    leaks = leaked_rows(rows, held_out, threshold) if held_out else pd.DataFrame()
    _write_quarantine_with_leaks(layout, cleaned, rows, leaks)
    parts, warnings = split(
        rows.drop(index=leaks.index).reset_index(drop=True),
        recipe.split,
        threshold,
        {name: frame for name, frame in held_out.items() if name in SPLITS},
    )
    for name, frame in parts.items():
        layout.split(name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(layout.split(name), index=False)
    data_report = json.loads((cleaned.parent / layout.data_report.name).read_text(encoding="utf-8"))
    data_report["split"] = report.split_summary(parts)
    if held_out:
        data_report[LEAKS_TEST] = _leak_summary(leaks, held_out)
        if len(leaks):
            warnings.append(
                f"{len(leaks)} training row(s) repeat held-out rows and were quarantined as {LEAKS_TEST}: "
                f"{data_report[LEAKS_TEST]['by_set']}"
            )
    # the clean stage's warnings (recomputed from its counts: a retried split must not repeat them), then
    # the split's
    data_report["warnings"] = [*report.clean_warnings(data_report["clean"]), *warnings]
    data_report["plots"] = [
        str(report.plot_lengths(parts, layout.data_dir / "lengths.png")),
        str(report.plot_labels(data_report["split"], layout.data_dir / "labels.png")),
    ]
    _write_json(layout.data_report, data_report)
    return {name: str(layout.split(name)) for name in SPLITS}


def _write_quarantine_with_leaks(
    layout: RunLayout, cleaned: Path, rows: pd.DataFrame, leaks: pd.DataFrame
) -> None:
    """This run's quarantine file: the clean stage's lines, then one ``leaks_test`` line per leaked row.

    Written by replacing the file (never through a hard link shared with an earlier run), from the clean
    stage's own lines minus any earlier ``leaks_test`` ones, so a retried split writes the same file."""
    source = cleaned.parent / layout.quarantine.name
    lines = source.read_text(encoding="utf-8").splitlines() if source.exists() else []
    lines = [line for line in lines if line and json.loads(line).get("reason") != LEAKS_TEST]
    if len(leaks):
        leaked = rows.loc[leaks.index]
        table = pd.DataFrame(
            {
                "source": leaked["source"],
                "row": leaked["row"],
                "reason": LEAKS_TEST,
                "detail": leaks["kind"].map({"exact": "repeats", "near": "near-duplicate of"})
                + " held-out set "
                + leaks["set"]
                + " row "
                + leaks["match"],
                "label": leaked["label"],
                "raw_text": leaked["raw_text"] if "raw_text" in leaked else leaked["text"],
            }
        )
        lines += table.to_json(orient="records", lines=True, force_ascii=False).splitlines()
    layout.quarantine.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.quarantine.with_name(f".{layout.quarantine.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    tmp.replace(layout.quarantine)


def _leak_summary(leaks: pd.DataFrame, held_out: dict[str, pd.DataFrame]) -> dict:
    """``{"rows", "exact", "near", "by_set": {name: n}, "held_out_rows": {name: n}}`` for the data report."""
    kinds = leaks["kind"].value_counts() if len(leaks) else {}
    return {
        "rows": len(leaks),
        "exact": int(kinds.get("exact", 0)),
        "near": int(kinds.get("near", 0)),
        "by_set": {name: int((leaks["set"] == name).sum()) if len(leaks) else 0 for name in held_out},
        "held_out_rows": {name: len(frame) for name, frame in held_out.items()},
    }


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
