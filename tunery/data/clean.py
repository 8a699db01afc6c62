"""Cleaning: normalise text, quarantine unusable rows with a reason, remove exact and near duplicates.

Nothing is dropped silently: every input row ends up kept, quarantined (with a reason code and its source
location) or deduplicated (with the location of the kept row it duplicates), and
``rows_in == kept + quarantined + deduplicated`` is checked on every run.

The per-row text transformations run through ``datasets.map`` (Arrow, batched, several processes for large
inputs); the row accounting and deduplication then work on the cleaned table.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunery.config import CleaningConfig
from tunery.data import conversations, pii, preferences, templates, wording
from tunery.data import text as tx
from tunery.data.ingest import DROPPED_TURNS
from tunery.data.near_dup import near_duplicate_clusters
from tunery.data.normalise import normalise_many
from tunery.ops.cpus import usable_cpus

# Zero-width and BOM characters that NFKC keeps but that only confuse tokenizers.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)
# Starting worker processes and moving Arrow batches between them costs more than it saves unless the
# input is both long and heavy: measured, 67k short SST-2 sentences clean faster in one process, 6k raw
# e-mails (~30M characters) faster in two.
PARALLEL_MIN_ROWS = 5_000
PARALLEL_MIN_CHARS = 5_000_000
INSTRUCTION_FIELDS = ("instruction", "input", "output")
LEAKS_TEST = "leaks_test"

QUARANTINE_REASONS = {
    "malformed_row": "the parser could not split the record into the expected columns",
    "not_text": "a text column holds no text: a JSON object or list, a Parquet list or struct, a number, "
    "or binary data (shown as JSON in raw_text)",
    "undecodable": "bytes that do not decode in the file's encoding (data.encoding, or the detected one); "
    "shown as U+FFFD",
    "control_characters": "NUL or another control character (not tab or line break) in the cleaned text",
    "missing_label": "the label is empty",
    "unknown_label": "the label is not in the recipe's label set",
    "empty_text": "no text left after cleaning",
    "missing_answer": "instruction data: the instruction or the answer is empty",
    "too_short": "text shorter than cleaning.min_chars",
    "too_long": "text longer than cleaning.max_chars (or cleaning.max_tokens)",
    "conflicting_duplicate": "same text as a kept row but with a different label (preference rows: the same "
    "answers to the same prompt judged the other way round)",
    LEAKS_TEST: "a training row repeats (or nearly repeats) a row of a held-out set: data.test_source, "
    "data.validation_source or evaluation.sets (the split stage takes it out; the detail names the row)",
    **{f"{k}": f"conversation: {v}" for k, v in conversations.REASONS.items()},
    **{k: f"preference: {v}" for k, v in preferences.REASONS.items() if k not in conversations.REASONS},
}
QUARANTINE_REASONS["too_long"] += (
    "; a conversation over model.max_length that could not be shortened; a preference pair whose prompt "
    "and longer answer do not fit model.max_length"
)


# The reasons ingest decides (its ``error`` column holds "reason: detail"); any other error is malformed_row.
INGEST_REASONS = ("not_text", "undecodable", *conversations.REASONS, *preferences.REASONS)
# preference rows: what exact dedup compares instead of text and label (tunery.data.preferences.dedup_key)
DEDUP_KEY, VERDICT = "dedup_key", "verdict"
TRUNCATED_TURNS = "truncated_turns"  # conversations: turns dropped (oldest first) to fit model.max_length
# C0 controls except tab and the line breaks (\n, \r, \v, \f, \x1c-\x1f count as whitespace), and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")
# Whitespace inside a line (every str.isspace character but the line breaks of str.splitlines).
_INLINE_SPACE = re.compile(r"[^\S\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")
_LEADING_SPACE = re.compile(r"^[ \t]*")
_BLANK_LINES = re.compile(r"\n{3,}")


class QuarantineLimitExceeded(ValueError):
    """More rows were quarantined than the recipe allows; ``result`` is the cleaning that was refused (its
    quarantine table and counts are still written, so that the bad rows can be seen)."""

    def __init__(self, message: str, result: CleanResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def clean_text(text: str, cfg: CleaningConfig) -> str:
    """Apply the configured cleaning to one string (the same function runs in training and serving)."""
    if cfg.parse_emails and tx.looks_like_email(text):
        text = tx.email_to_text(text)
    if cfg.strip_html:
        text = tx.html_to_text(text)
    if cfg.unicode_normalization != "none" and not text.isascii():
        text = unicodedata.normalize(cfg.unicode_normalization, text)
    text = text.translate(_INVISIBLE)
    text = pii.scrub_pii(
        text,
        emails=cfg.replace_emails,
        phones=cfg.replace_phones,
        cards=cfg.replace_credit_cards,
        ibans=cfg.replace_ibans,
        urls=cfg.replace_urls,
    )
    if cfg.expand_contractions:
        text = wording.expand_contractions(text)
    if cfg.lowercase:
        text = wording.lowercase(text)
    if cfg.remove_stopwords:
        text = wording.remove_stopwords(text)
    if cfg.collapse_whitespace:
        text = collapse_whitespace(text)
    return text.strip()


def collapse_whitespace(text: str) -> str:
    """Collapse runs of spaces and tabs inside each line into one space, keeping the lines.

    Line breaks (any of ``str.splitlines``) become ``\n``, at most one blank line is kept in a row, trailing
    spaces go and each line's indentation stays (code answers keep their blocks), so that an answer such as
    GSM8K's ``...revenue.\n#### 360000`` is trained and scored as written.
    """
    lines = []
    for line in text.splitlines():
        indent = _LEADING_SPACE.match(line).group()
        lines.append(indent + _INLINE_SPACE.sub(" ", line[len(indent) :]).strip())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines))


@functools.lru_cache(maxsize=4)
def _config(cfg_json: str) -> CleaningConfig:
    return CleaningConfig.model_validate_json(cfg_json)


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _clean_batch(
    batch: dict, cfg_json: str, tokenizer_path: str | None, conversation: dict | None = None
) -> dict:
    """datasets.map function: clean every text field of a batch (malformed rows are left as read)."""
    cfg = _config(cfg_json)
    ok = [not e for e in batch["error"]]
    out: dict[str, list] = {}
    if "conversation" in batch:
        return _clean_conversations(batch, ok, cfg, tokenizer_path, conversation or {})
    if "pair" in batch:
        return _clean_pairs(batch, ok, cfg, tokenizer_path, (conversation or {}).get("max_length"))
    if "instruction" in batch:
        for name in INSTRUCTION_FIELDS:
            out[name] = [clean_text(v, cfg) if good else v for v, good in zip(batch[name], ok, strict=True)]
        out["text"] = [
            "\n\n".join(p for p in parts if p) if good else raw
            for *parts, raw, good in zip(
                *(out[n] for n in INSTRUCTION_FIELDS), batch["text"], ok, strict=True
            )
        ]
    else:
        out["text"] = [clean_text(t, cfg) if good else t for t, good in zip(batch["text"], ok, strict=True)]
    if tokenizer_path:
        counts = _tokenizer(tokenizer_path)(out["text"], add_special_tokens=True)["input_ids"]
        out["n_tokens"] = [len(ids) for ids in counts]
    return out


def _clean_conversations(
    batch: dict, ok: list[bool], cfg, tokenizer_path: str | None, settings: dict
) -> dict:
    """Clean every turn's content (PII too; tool-call names and arguments are not text), check the
    conversation against the model's template and fit it to ``settings["max_length"]``.

    A conversation that fails gets ``conversation_error`` ("reason: detail"); ``truncated_turns`` counts
    the turns dropped to fit."""
    tokenizer = _tokenizer(tokenizer_path) if tokenizer_path else None
    style = templates.tool_style(tokenizer) if tokenizer is not None else None
    consecutive = settings.get("consecutive_user")
    if consecutive is None:
        consecutive = templates.allows_consecutive_user(tokenizer) if tokenizer is not None else False
    out: dict[str, list] = {k: [] for k in ("text", "prompt", "conversation", "conversation_error")}
    out[TRUNCATED_TURNS] = []
    for raw, text, prompt, good in zip(
        batch["conversation"], batch["text"], batch["prompt"], ok, strict=True
    ):
        error, dropped = "", 0
        if good:
            conversation = json.loads(raw)
            for message in conversation["messages"]:
                if message.get("content"):
                    message["content"] = clean_text(message["content"], cfg)
            try:
                conversations.check(conversation, consecutive_user=consecutive)
                if tokenizer is not None and settings.get("max_length"):
                    conversation, dropped = templates.fit(
                        tokenizer, conversation, settings["max_length"], settings.get("too_long") or "", style
                    )
            except conversations.ConversationError as exc:
                error = f"{exc.reason}: {exc.detail}"
            except ValueError as exc:
                if str(exc) != "too_long":
                    raise
                length = templates.rendered_length(tokenizer, conversation, style)
                error = f"too_long: {length} tokens > model.max_length {settings['max_length']}"
            raw = json.dumps(conversation, ensure_ascii=False)
            text, prompt = conversations.key(conversation), conversations.first_user_turn(conversation)
        for name, value in zip(out, (text, prompt, raw, error, dropped), strict=True):
            out[name].append(value)
    return out


def _clean_pairs(
    batch: dict, ok: list[bool], cfg, tokenizer_path: str | None, max_length: int | None
) -> dict:
    """Clean every message of a preference row (as conversations), then check what cleaning may have
    changed (both answers now the same, an answer now empty) and the length with the chat template.

    A row that fails gets ``pair_error`` ("reason: detail")."""
    tokenizer = _tokenizer(tokenizer_path) if tokenizer_path else None
    out: dict[str, list] = {k: [] for k in ("text", "prompt", "pair", "pair_error", DEDUP_KEY, VERDICT)}
    for raw, text, prompt, good in zip(batch["pair"], batch["text"], batch["prompt"], ok, strict=True):
        error = ""
        if good:
            row = json.loads(raw)
            for side in ("prompt", "chosen", "rejected", "completion"):
                for message in row.get(side, ()):
                    if message.get("content"):
                        message["content"] = clean_text(message["content"], cfg)
            try:
                preferences.recheck(row)
                if tokenizer is not None and max_length:
                    preferences.check_length(tokenizer, row, max_length)
            except preferences.PreferenceError as exc:
                error = f"{exc.reason}: {exc.detail}"
            raw = json.dumps(row, ensure_ascii=False)
            text, prompt = preferences.key(row), preferences.prompt_key(row)
            dedup, verdict = preferences.dedup_key(row)
        else:
            dedup, verdict = text, ""
        for name, value in zip(out, (text, prompt, raw, error, dedup, verdict), strict=True):
            out[name].append(value)
    return out


def process_count(rows: pd.DataFrame, cfg: CleaningConfig) -> int:
    """Processes used to clean ``rows``: the recipe's ``num_proc``, else every usable CPU (affinity and cgroup
    quota, :func:`tunery.ops.cpus.usable_cpus`) for heavy inputs only."""
    heavy = len(rows) >= PARALLEL_MIN_ROWS and int(rows["text"].str.len().sum()) >= PARALLEL_MIN_CHARS
    return cfg.num_proc or (usable_cpus() if heavy else 1)


def clean_texts(
    rows: pd.DataFrame,
    cfg: CleaningConfig,
    cache_dir: Path | None = None,
    tokenizer_path: str | None = None,
    conversation: dict | None = None,
) -> pd.DataFrame:
    """Clean the text columns of ingested rows with ``datasets.map`` (batched, multi-process if large).

    Returns:
        The rows with cleaned ``text`` (and instruction fields), the original in ``raw_text``, and
        ``n_tokens`` when a tokenizer is given.
    """
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    num_proc = process_count(rows, cfg)
    data = Dataset.from_pandas(rows, preserve_index=False)
    cleaned = data.map(
        _clean_batch,
        batched=True,
        batch_size=500,
        num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={
            "cfg_json": cfg.model_dump_json(),
            "tokenizer_path": tokenizer_path,
            "conversation": conversation,
        },
        cache_file_name=str(cache_dir / "cleaned.arrow") if cache_dir else None,
        load_from_cache_file=False,
    ).to_pandas()
    cleaned.insert(1, "raw_text", rows["text"].to_numpy())
    return cleaned


@dataclass
class CleanResult:
    """The outcome of cleaning: kept rows, every row not kept (with reason), and a count summary."""

    kept: pd.DataFrame
    quarantined: pd.DataFrame
    stats: dict = field(default_factory=dict)


def _reason(row: dict, cfg: CleaningConfig, labels: set[str] | None, labelled: bool) -> tuple[str, str]:
    """The quarantine reason of one cleaned row and a detail for the user ('' when the row is fine)."""
    text = row["text"]
    if row["error"]:
        code, _, detail = row["error"].partition(": ")
        return (code, detail) if code in INGEST_REASONS else ("malformed_row", row["error"])
    if row.get("conversation_error"):  # conversations: the template's check, or too long to fit
        code, _, detail = row["conversation_error"].partition(": ")
        return code, detail
    if row.get("pair_error"):  # preference rows: cleaning emptied or equalised the answers, or too long
        code, _, detail = row["pair_error"].partition(": ")
        return code, detail
    if labelled and not row["label"]:
        return "missing_label", ""
    if labelled and labels is not None and row["label"] not in labels:
        return "unknown_label", f"label {row['label']!r}"
    if "instruction" in row and (not row["instruction"] or not row["output"]):
        return "missing_answer", "empty instruction" if not row["instruction"] else "empty answer"
    if not text:
        return "empty_text", ""
    fields = [row[n] for n in INSTRUCTION_FIELDS] if "instruction" in row else [text, row["label"]]
    if found := sorted({c for f in fields for c in _CONTROL.findall(f)}):
        return "control_characters", ", ".join(f"U+{ord(c):04X}" for c in found)
    if len(text) < cfg.min_chars:
        return "too_short", f"{len(text)} characters"
    if len(text) > cfg.max_chars:
        return "too_long", f"{len(text)} characters"
    if cfg.max_tokens is not None and row.get("n_tokens", 0) > cfg.max_tokens:
        return "too_long", f"{row['n_tokens']} tokens"
    return "", ""


def clean(
    rows: pd.DataFrame,
    cfg: CleaningConfig,
    labels: list[str] | None = None,
    cache_dir: Path | None = None,
    tokenizer_path: str | None = None,
    conversation: dict | None = None,
) -> CleanResult:
    """Clean ingested rows (columns text, label, source, row, error; instruction data also has
    instruction, input, output).

    Args:
        rows: output of :func:`tunery.data.ingest.ingest`.
        cfg: the recipe's cleaning section.
        labels: the explicit label set, if the recipe has one.
        cache_dir: where ``datasets`` may write its Arrow cache (default: in memory).
        tokenizer_path: a tokenizer for ``cfg.max_tokens`` (required when it is set), and the chat template
            conversations are checked and fitted with.
        conversation: conversation rows: ``max_length``, ``too_long`` (policy) and ``consecutive_user``
            (None: as the template allows).

    Returns:
        Kept rows (text cleaned, ``raw_text`` kept for reference) and every other row with ``reason``
        and ``detail``.

    Raises:
        QuarantineLimitExceeded: the quarantined fraction exceeds ``cfg.max_quarantine_fraction``.
    """
    if cfg.max_tokens is not None and not tokenizer_path:
        raise ValueError("cleaning.max_tokens needs a tokenizer (the recipe's model)")
    conversational = "conversation" in rows.columns or "pair" in rows.columns
    needs_tokenizer = cfg.max_tokens or conversational
    frame = clean_texts(rows, cfg, cache_dir, tokenizer_path if needs_tokenizer else None, conversation)
    labelled = "instruction" not in frame.columns and not conversational
    label_set = set(labels) if labels else None
    decided = [_reason(r, cfg, label_set, labelled) for r in frame.to_dict("records")]
    frame["reason"] = [r for r, _ in decided]
    frame["detail"] = [d for _, d in decided]
    frame["duplicate_of"] = ""
    valid = frame.index[frame["reason"] == ""]
    exact, near = _mark_duplicates(frame, valid, cfg)
    quarantined = frame[frame["reason"] != ""]
    kept = frame[(frame["reason"] == "") & (frame["duplicate_of"] == "")]
    removed = frame[(frame["reason"] == "") & (frame["duplicate_of"] != "")]
    stats = _stats(len(rows), kept, quarantined, removed, exact, near)
    if DROPPED_TURNS in frame.columns:
        with_history = frame[DROPPED_TURNS] > 0
        stats["history_ignored"] = {
            "rows": int(with_history.sum()),
            "kept": int(with_history[kept.index].sum()),
            "turns": int(frame.loc[with_history, DROPPED_TURNS].sum()),
        }
    if TRUNCATED_TURNS in frame.columns:
        truncated = frame.loc[kept.index, TRUNCATED_TURNS]
        stats["conversations_truncated"] = {"rows": int((truncated > 0).sum()), "turns": int(truncated.sum())}
    drop = ["error", "reason", "detail", "duplicate_of", "n_tokens", DROPPED_TURNS, "conversation_error"]
    drop.extend(("pair_error", DEDUP_KEY, VERDICT))
    drop.append(TRUNCATED_TURNS)
    kept = kept.drop(columns=[c for c in drop if c in kept.columns]).reset_index(drop=True)
    result = CleanResult(kept=kept, quarantined=_not_kept_table(quarantined, removed), stats=stats)
    if len(rows) and len(quarantined) / len(rows) > cfg.max_quarantine_fraction:
        raise QuarantineLimitExceeded(
            f"{len(quarantined)} of {len(rows)} rows ({len(quarantined) / len(rows):.1%}) were quarantined, "
            f"more than cleaning.max_quarantine_fraction={cfg.max_quarantine_fraction:.0%}; "
            f"reasons: {stats['quarantine_reasons']}",
            result,
        )
    return result


def _location(frame: pd.DataFrame, index) -> pd.Series:
    return frame.loc[index, "source"] + ":" + frame.loc[index, "row"].astype(str)


def _mark_duplicates(frame: pd.DataFrame, valid: pd.Index, cfg: CleaningConfig) -> tuple[int, int]:
    """Mark duplicates among valid rows in place (reason, detail, duplicate_of); return (exact, near)."""
    if not cfg.drop_duplicates or len(valid) == 0:
        return 0, 0
    judged = DEDUP_KEY in frame.columns  # preference rows: the same answers judged, the verdict as label
    label, key = (VERDICT, DEDUP_KEY) if judged else ("label", "text")
    keys = pd.Series(normalise_many(frame.loc[valid, key].tolist()), index=valid)
    first_seen: dict[str, int] = {}
    first_of = pd.Series([first_seen.setdefault(k, i) for i, k in keys.items()], index=keys.index)
    later = first_of[first_of != first_of.index]
    conflict = later[
        frame.loc[later.index, label].to_numpy() != frame.loc[later.to_numpy(), label].to_numpy()
    ]
    frame.loc[conflict.index, "reason"] = "conflicting_duplicate"
    frame.loc[conflict.index, "detail"] = (
        ("" if judged else "label ")
        + frame.loc[conflict.index, label].map(str if judged else repr)
        + " but "
        + _location(frame, conflict.to_numpy()).to_numpy()
        + (" judges the same answers: " if judged else " has ")
        + frame.loc[conflict.to_numpy(), label].map(str if judged else repr).to_numpy()
    )
    same = later.drop(conflict.index)
    frame.loc[same.index, "duplicate_of"] = _location(frame, same.to_numpy()).to_numpy()
    frame.loc[same.index, "detail"] = "exact duplicate of " + frame.loc[same.index, "duplicate_of"]
    # Preference rows of one prompt are near-identical as text whenever their answers are short, yet each
    # pair is a judgement of its own: only exact repeats (and contradictions) are taken out.
    if not cfg.near_duplicates or judged:
        return len(same), 0
    return len(same), _mark_near_duplicates(frame, first_of[first_of == first_of.index].index, cfg)


def _mark_near_duplicates(frame: pd.DataFrame, candidates: pd.Index, cfg: CleaningConfig) -> int:
    """Among rows left after exact dedup, mark near-duplicates of an earlier row (MinHash LSH)."""
    reps = near_duplicate_clusters(
        frame.loc[candidates, "text"].tolist(), threshold=cfg.near_duplicate_threshold
    )
    rep_index = candidates[reps]
    near = candidates[rep_index != candidates]
    rep_of = pd.Series(rep_index, index=candidates)[near]
    where = _location(frame, rep_of.to_numpy()).to_numpy()
    frame.loc[near, "duplicate_of"] = where
    other_label = frame.loc[rep_of.to_numpy(), "label"].to_numpy()
    note = pd.Series(
        [
            "" if a == b else f" (its label is {b!r})"
            for a, b in zip(frame.loc[near, "label"], other_label, strict=True)
        ],
        index=near,
        dtype=object,
    )
    frame.loc[near, "detail"] = "near-duplicate of " + pd.Series(where, index=near) + note
    return len(near)


def _not_kept_table(quarantined: pd.DataFrame, removed: pd.DataFrame) -> pd.DataFrame:
    """One table of every row not kept: quarantined ones and removed duplicates (reason 'duplicate')."""
    dups = removed.assign(reason="duplicate")
    table = pd.concat([quarantined, dups], ignore_index=True)
    return table[["source", "row", "reason", "detail", "label", "raw_text"]]


def _stats(
    rows_in: int, kept: pd.DataFrame, quarantined: pd.DataFrame, removed: pd.DataFrame, exact: int, near: int
) -> dict:
    stats = {
        "rows_in": rows_in,
        "kept": len(kept),
        "quarantined": len(quarantined),
        "deduplicated": len(removed),
        "exact_duplicates": exact,
        "near_duplicates": near,
        "quarantine_reasons": {
            str(k): int(v) for k, v in quarantined["reason"].value_counts().sort_index().items()
        },
        "label_counts": {str(k): int(v) for k, v in kept["label"].value_counts().sort_index().items()},
    }
    if stats["kept"] + stats["quarantined"] + stats["deduplicated"] != rows_in:
        raise AssertionError(f"row accounting broken: {stats}")  # a bug in tunery, never the data
    if exact + near != len(removed):
        raise AssertionError(f"duplicate accounting broken: {stats}")
    return stats
