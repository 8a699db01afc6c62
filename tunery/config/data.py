"""The data side of a recipe: where the data is, which columns (or conversation parts) mean what, how
it is cleaned and split."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunery.config.base import Section

CONVERSATION_FORMATS = ("openai", "sharegpt", "lima", "alpaca")
CONVERSATION_ROLES = ("system", "user", "assistant", "tool")


class ConversationConfig(Section):
    """Conversation data (task: sft): multi-turn chats, with tool calls, read into one canonical shape.

    Formats: ``openai`` (``messages`` of role/content, assistant ``tool_calls``, ``tool`` results, a
    ``tools`` list, an assistant ``weight`` of 0 or 1), ``sharegpt`` (LLaMA-Factory: ``conversations`` of
    from/value with human/gpt/system/function_call/observation, optional ``system`` and ``tools`` columns),
    ``lima`` (a list of alternating user/assistant strings) and ``alpaca`` (instruction/input/output with a
    ``history`` of earlier [user, assistant] pairs)."""

    format: Literal["auto", "openai", "sharegpt", "lima", "alpaca"] = Field(
        "auto", description="Conversation format; 'auto' decides from the columns of each file."
    )
    messages_column: str | None = Field(
        None, description="Column of the turns; default: messages (openai), conversations (sharegpt, lima)."
    )
    tools_column: str = Field("tools", description="Column of the tools offered (a list, or JSON text).")
    system_column: str = Field("system", description="sharegpt/alpaca: column of the system prompt.")
    role_key: str | None = Field(
        None, description="Key of a turn's role; default: role (openai), from (sharegpt)."
    )
    content_key: str | None = Field(
        None, description="Key of a turn's text; default: content (openai), value (sharegpt)."
    )
    roles: dict[str, str] = Field(
        default_factory=dict,
        description="Role names of the data mapped to system/user/assistant/tool, e.g. {bot: assistant}.",
    )
    train_on: Literal["all", "last"] = Field(
        "all", description="Assistant turns learned: all (of weight 1), or only the last one."
    )
    too_long: Literal["drop_oldest", "quarantine"] = Field(
        "drop_oldest",
        description="A conversation over model.max_length tokens: drop its oldest exchanges (keeping the "
        "system message and the last exchange), or quarantine it (too_long).",
    )
    allow_consecutive_user: bool | None = Field(
        None,
        description="Whether two user turns in a row are trained; default: when the chat template renders "
        "them (else consecutive_user).",
    )

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, v: dict[str, str]) -> dict[str, str]:
        wrong = {k: r for k, r in v.items() if r not in CONVERSATION_ROLES}
        if wrong:
            raise ValueError(f"roles map onto {', '.join(CONVERSATION_ROLES)}; not {wrong}")
        return v


class HeldOutSource(Section):
    """A held-out set in its own file whose columns differ from ``data.source``'s (GLUE's SST-2 dev file
    names its text column `content`, the train file `sentence`); a plain string is the same with the
    data section's columns."""

    source: str = Field(description="File path, glob, or fsspec URI of the held-out rows.")
    text_columns: list[str] | None = Field(
        None, min_length=1, description="Its text column(s) (default: data.text_columns)."
    )
    label_column: str | None = Field(None, description="Its label column (default: data.label_column).")
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet"] | None = Field(
        None, description="Its file format (default: data.format)."
    )

    def data_update(self) -> dict:
        """What differs from the data section, as an update of it."""
        return {"source": self.source, **self.model_dump(exclude={"source"}, exclude_none=True)}


def held_out_source(value: str | HeldOutSource) -> HeldOutSource:
    """A held-out set's setting as a :class:`HeldOutSource` (a plain string is its source)."""
    return value if isinstance(value, HeldOutSource) else HeldOutSource(source=value)


class DataConfig(Section):
    """Where the data comes from and which columns mean what."""

    source: str = Field(
        description="File path, glob, or fsspec URI of the data (relative to the current directory)."
    )
    test_source: str | HeldOutSource | None = Field(
        None,
        description="A held-out test file, glob or URI (e.g. IMDb's official test set, a golden set): "
        "read and cleaned like `source` but never deduplicated or split; metrics and the gate use all of "
        "it, and `source` is split into train and validation only. Training rows repeating a test row (or "
        "near-repeating it) are quarantined as leaks_test. A mapping {source, text_columns, label_column, "
        "format} gives the file its own columns.",
    )
    validation_source: str | HeldOutSource | None = Field(
        None,
        description="A held-out validation file (early stopping), like `test_source`; with both, all of "
        "`source` is training data.",
    )
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet"] = Field(
        "auto", description="File format of every source; 'auto' decides from the extension and content."
    )
    encoding: str = Field(
        "auto",
        description="Text encoding of the files (a Python codec name, e.g. shift_jis, gb18030, cp1251); "
        "'auto': a byte-order mark, else UTF-8, else the detected legacy encoding (cp1252 by default).",
    )
    text_columns: list[str] = Field(
        default_factory=lambda: ["text"],
        min_length=1,
        description="Column(s) holding the text; several are joined with `text_separator`.",
    )
    text_separator: str = Field(". ", description="Separator used to join several text columns.")
    label_column: str = Field("label", description="Column holding the class label.")
    labels: list[str] | None = Field(
        None, description="Explicit label set. Rows with another label are quarantined (unknown_label)."
    )
    label_names: dict[str, str] | None = Field(
        None,
        description="Map raw label values to names, e.g. {1: World, 2: Sports} (applied before `labels`).",
    )
    instruction_column: str = Field("instruction", description="Instruction data: the instruction column.")
    input_column: str = Field("input", description="Instruction data: optional context column.")
    answer_columns: list[str] = Field(
        default_factory=lambda: ["output", "response"],
        min_length=1,
        description="Instruction data: answer column; the first one present in a record is used.",
    )
    conversation: ConversationConfig | None = Field(
        None, description="task: sft: the data are conversations (multi-turn, tool calls); see below."
    )
    has_header: bool = Field(True, description="CSV/TSV only: whether the first line is a header.")
    column_names: list[str] | None = Field(
        None, description="CSV/TSV only: names for the columns when the file has no header."
    )

    @field_validator("label_names", mode="before")
    @classmethod
    def _string_keys(cls, v: object) -> object:
        # YAML reads `1: World` with an int key; raw labels are compared as strings
        return {str(k): str(val) for k, val in v.items()} if isinstance(v, dict) else v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        if v != "auto":
            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"unknown encoding {v!r} (a Python codec name, or 'auto')") from None
        return v

    @model_validator(mode="after")
    def _header_names(self) -> DataConfig:
        if not self.has_header and not self.column_names:
            raise ValueError("`data.column_names` is required when `data.has_header` is false")
        return self


class CleaningConfig(Section):
    """Text cleaning. Defaults suit pretrained transformers: their tokenizers were trained on natural,
    cased text, so lower-casing, contraction expansion and stop-word removal are available but off (they
    throw away case and negation, e.g. "not good" -> "good", and move text away from what the model saw)."""

    unicode_normalization: Literal["NFKC", "NFC", "none"] = Field(
        "NFKC", description="Unicode normalisation form applied to every text."
    )
    parse_emails: bool = Field(
        True, description="Turn raw RFC 822 e-mails into subject + decoded body text (headers dropped)."
    )
    strip_html: bool = Field(True, description="Turn HTML markup and entities into plain text.")
    replace_urls: bool = Field(True, description="Replace URLs by [URL].")
    replace_emails: bool = Field(True, description="Replace e-mail addresses by [EMAIL] (PII).")
    replace_phones: bool = Field(True, description="Replace phone numbers by [PHONE] (PII).")
    replace_credit_cards: bool = Field(True, description="Replace Luhn-valid card numbers by [CARD] (PII).")
    replace_ibans: bool = Field(True, description="Replace checksum-valid IBANs by [IBAN] (PII).")
    lowercase: bool = Field(False, description="Lower-case the text (hurts cased models).")
    expand_contractions: bool = Field(False, description="Expand English contractions (don't -> do not).")
    remove_stopwords: bool = Field(False, description="Remove English stop words, keeping negations.")
    collapse_whitespace: bool = Field(True, description="Collapse spaces and tabs; keep line breaks.")
    min_chars: int = Field(1, ge=1, description="Rows shorter than this (after cleaning) are quarantined.")
    max_chars: int = Field(
        20_000, ge=1, description="Rows longer than this (after cleaning) are quarantined."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="If set, rows with more model tokens than this are quarantined (too_long)."
    )
    drop_duplicates: bool = Field(True, description="Remove exact duplicates of the normalised text.")
    near_duplicates: bool = Field(True, description="Remove near-duplicates (MinHash LSH) as well.")
    near_duplicate_threshold: float = Field(
        0.85,
        ge=0.5,
        le=1.0,
        description="Estimated Jaccard similarity (character 5-grams) for near-duplicates.",
    )
    max_quarantine_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="Fail the run when more than this fraction of rows is quarantined."
    )
    num_proc: int | None = Field(
        None, ge=1, description="Processes for cleaning; default: all cores for large data, 1 for small."
    )

    @model_validator(mode="after")
    def _lengths(self) -> CleaningConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(
                f"`cleaning.min_chars` ({self.min_chars}) exceeds `max_chars` ({self.max_chars})"
            )
        if self.near_duplicates and not self.drop_duplicates:
            raise ValueError("`cleaning.near_duplicates` needs `cleaning.drop_duplicates: true`")
        return self


class SplitConfig(Section):
    """Stratified train/validation/test split, deterministic for a given seed."""

    train: float = Field(0.70, gt=0.0, lt=1.0, description="Fraction of each class in the train split.")
    validation: float = Field(
        0.15, gt=0.0, lt=1.0, description="Fraction of each class in the validation split (early stopping)."
    )
    test: float = Field(
        0.15, gt=0.0, lt=1.0, description="Fraction of each class in the test split (metrics and the gate)."
    )
    seed: int = Field(42, description="Seed of the hash that orders rows within each class.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1.0, got {total:.4f}")
        return self
