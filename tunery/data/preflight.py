"""Checks before any work: what `tunery validate` and the start of a run find wrong with a recipe.

- :func:`check_model`: the base model exists and takes ``model.max_length`` tokens (its config only: no
  weights are loaded or downloaded). The start of every run calls it, before the run folder exists.
- :func:`check_sources`: every data file is readable and has the recipe's columns, and its first records
  carry labels (or instructions and answers) that the clean stage would keep. ``validate`` calls it.

The errors are the ones the stages would raise later (``ModelError``, ``DataError``), so that a failure
reads the same wherever it is found, and none of them is worth a retry.
"""

from __future__ import annotations

import pandas as pd

from tunery.config import Recipe
from tunery.data.ingest import DataError, expand_source, map_columns, read_file
from tunery.data.stages import data_kind
from tunery.models import check_base_model

# Records per file whose labels (or instructions and answers) are looked at.
SAMPLE_RECORDS = 500
# Unexpected label values named in an error.
SHOWN_VALUES = 5


def check_model(recipe: Recipe) -> None:
    """The base model can be loaded and takes ``model.max_length`` tokens; for conversations, its chat
    template ends assistant turns with an end-of-turn token (``tunery.data.templates.check_template``).

    Raises:
        tunery.models.ModelError: what is wrong, naming ``model.base`` or ``model.max_length``.
    """
    check_base_model(recipe.model.base, recipe.model.max_length)
    if recipe.data.conversation is not None or recipe.task == "preference":
        from transformers import AutoTokenizer

        from tunery.data.templates import check_template
        from tunery.models import ModelError, resolve_model

        try:
            check_template(AutoTokenizer.from_pretrained(resolve_model(recipe.model.base)))
        except ValueError as exc:
            raise ModelError(f"model.base {recipe.model.base}: {exc}") from None


def _dropped_values(mapped: pd.DataFrame, recipe: Recipe) -> pd.Series:
    """For each mapped record the clean stage would quarantine for its label or answer: its label value
    ('' when empty; sft: ''; conversations: the reason it is refused); None for a record it would keep on
    that count."""
    if recipe.data.conversation is not None or recipe.task == "preference":
        return mapped["error"].map(lambda e: e.partition(":")[0] if e else None)
    if recipe.task == "sft":
        empty = (mapped["instruction"] == "") | (mapped["output"] == "")
        return empty.map({True: "", False: None})
    labels = set(recipe.data.labels) if recipe.data.labels else None
    return mapped["label"].map(lambda value: None if value and (labels is None or value in labels) else value)


def _label_problem(dropped: pd.Series, recipe: Recipe, checked: int) -> str | None:
    """Why the clean stage would quarantine too many of a file's first records, or None."""
    dropped = dropped.dropna()
    limit = recipe.cleaning.max_quarantine_fraction
    if checked == 0 or len(dropped) / checked <= limit:
        return None
    share = f"{len(dropped)} of the first {checked} records"
    if recipe.data.conversation is not None or recipe.task == "preference":
        reasons = ", ".join(f"{r} ({n})" for r, n in dropped.value_counts().items())
        what = "preference rows" if recipe.task == "preference" else "conversations"
        return f"{share} are {what} the clean stage would quarantine, more than {limit}: {reasons}"
    if recipe.task == "sft":
        columns = f"{recipe.data.instruction_column} / {' or '.join(recipe.data.answer_columns)}"
        return f"{share} have an empty instruction or answer ({columns}), more than {limit}"
    counts = dropped.value_counts()
    values = ", ".join(repr(v) if v else "(empty)" for v in counts.index[:SHOWN_VALUES])
    if recipe.data.labels:
        found = f"not in data.labels [{', '.join(recipe.data.labels)}]: {values}"
        if not recipe.data.label_names:
            found += " (data.label_names maps raw values to names)"
    else:
        found = "empty"
    return (
        f"{share} have a {recipe.data.label_column!r} label that the clean stage would quarantine, "
        f"more than cleaning.max_quarantine_fraction {limit}; labels {found}"
    )


def check_sources(recipe: Recipe, files: list[str] | None = None) -> int:
    """Read every data file and check it against the recipe, as the ingest and clean stages would.

    Each file must be readable and hold the mapped columns (``data.text_columns`` and
    ``data.label_column``, or the instruction columns for sft); over the first :data:`SAMPLE_RECORDS`
    records of each file, no more than ``cleaning.max_quarantine_fraction`` may have a missing or
    unknown label (sft: an empty instruction or answer).

    Args:
        recipe: the validated recipe, its paths resolved.
        files: the source's files, if already expanded.

    Returns:
        The number of files checked.

    Raises:
        DataError: the first problem found, naming the file and the columns or values.
    """
    files = files if files is not None else expand_source(recipe.data.source)
    kind, with_records = data_kind(recipe), 0
    for path in files:
        frame, bad = read_file(path, recipe.data)
        if len(frame) == 0 and not bad:
            continue  # a header-only shard: fine while another file has records (ingest says the same)
        head = frame.head(SAMPLE_RECORDS)
        # DataError: a column is missing (preference data: no format matches the columns)
        mapped = map_columns(head, [], path, recipe.data, kind, recipe.preference.format)
        problem = _label_problem(_dropped_values(mapped, recipe), recipe, len(mapped))
        if problem:
            raise DataError(f"{path}: {problem}")
        with_records += 1
    if files and not with_records:
        raise DataError(f"{recipe.data.source}: no records in {len(files)} file(s)")
    return len(files)


def check_recipe(recipe: Recipe, files: list[str] | None = None) -> int:
    """Everything :func:`check_model` and :func:`check_sources` check; returns the number of data files."""
    check_model(recipe)
    return check_sources(recipe, files)
