"""Ingestion: read CSV/TSV/JSON/JSONL/Parquet from local paths, globs or fsspec URIs into one table.

Every record read becomes one row of the output, with its source file and record number, so that later
stages can quarantine it with a location. Records the parser cannot split into the expected columns are
kept as ``malformed`` rows (with the raw line), never dropped.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import itertools
import json
import re
import sys
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd

from tunery.config import DataConfig
from tunery.data import conversations, preferences
from tunery.data import text as tx

SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a 10 MB field is data, not an error
# alpaca multi-turn data: earlier [prompt, answer] turns, and the ingested column counting them per row
HISTORY_COLUMN = "history"
DROPPED_TURNS = "dropped_turns"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
# Delimiters tried for CSV-like files, in order of preference on ties.
DELIMITERS = ",\t;|"
# Byte-order marks that decide the encoding (UTF-32 first: its little-endian BOM starts like UTF-16's).
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class DataError(ValueError):
    """Data that cannot be read at all (as opposed to single bad rows, which are quarantined)."""


def expand_source(source: str) -> list[str]:
    """Resolve a path, glob or fsspec URI into a sorted list of files.

    Raises:
        DataError: nothing matches the source.
    """
    if "://" in source and not source.startswith("file://"):
        fs, _, paths = fsspec.get_fs_token_paths(source)
        files = sorted(p for p in paths if fs.isfile(p))
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files = [f"{protocol}://{p.removeprefix(protocol + '://')}" for p in files]
    else:
        local = source.removeprefix("file://")
        if any(ch in local for ch in "*?["):
            files = sorted(p for p in glob.glob(local, recursive=True) if Path(p).is_file())
        elif is_hf_dataset_dir(local):
            files = [local]
        elif Path(local).is_dir():
            files = sorted(
                str(p) for p in Path(local).iterdir() if p.is_file() and p.suffix in SUFFIX_FORMATS
            )
        else:
            files = [local] if Path(local).is_file() else []
    if not files:
        raise DataError(f"data source not found: {source} (no file matches)")
    return files


def is_hf_dataset_dir(path: str) -> bool:
    """A folder written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    folder = Path(path)
    return folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file())


def _read_hf_dataset(path: str) -> pd.DataFrame:
    """All rows of a saved Dataset, or of every split of a DatasetDict (split kept in ``_split``)."""
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(path)
    except Exception as exc:  # datasets raises several types for a damaged folder
        raise DataError(f"{path}: not a readable datasets folder ({exc})") from None
    if isinstance(data, DatasetDict):
        return pd.concat([d.to_pandas().assign(_split=name) for name, d in data.items()], ignore_index=True)
    return data.to_pandas()


def _read_bytes(path: str) -> bytes:
    with fsspec.open(path, "rb") as fh:
        return fh.read()


def _decode(raw: bytes, path: str, encoding: str = "auto") -> str:
    """Decode text bytes: the recipe's ``data.encoding`` when set; else UTF-16/32 with a BOM, else UTF-8,
    else line by line: UTF-8, or the file's legacy encoding (detected, see :func:`_legacy_codec`).

    Line-wise fallback matters for files that were appended to by different tools: a latin-1 line in an
    otherwise UTF-8 file must not turn the whole file into mojibake. Bytes that do not decode become
    :data:`tx.UNDECODABLE` (their rows are quarantined as ``undecodable``), never a silent guess.

    Raises:
        DataError: the bytes look binary (see :func:`looks_binary`), or they start with a UTF-16/32 BOM
            but do not decode as such.
    """
    if encoding != "auto":  # forced: no BOM sniffing and no binary check (UTF-16 without a BOM is text)
        codec = codecs.lookup(encoding).name
        return raw.decode("utf-8-sig" if codec == "utf-8" else codec, errors=tx.MARK_UNDECODABLE)
    for bom, codec in BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: starts with a {codec.upper()} byte-order mark but is not {codec.upper()} text "
                    f"({exc.reason} at byte {exc.start})"
                ) from None
    if tx.looks_binary(raw):
        raise DataError(
            f"{path}: looks like a binary file (NUL and control bytes), not text data "
            "(UTF-16/32 text without a byte-order mark: set data.encoding)"
        )
    # Removed here rather than by "utf-8-sig" so that the line-wise fallback does not keep it either
    # (it would end up in the first column name).
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return tx.decode_lines(raw)


def decode_cell(raw: bytes, encoding: str = "auto") -> str | None:
    """A binary cell (Parquet ``bytes``) as text by the rules for files; None when it is not text."""
    if encoding == "auto" and tx.looks_binary(raw):
        return None
    try:
        return _decode(raw, "", encoding)
    except DataError:
        return None


def detect_format(path: str, text_head: str, declared: str) -> str:
    """Pick the reader: the declared format, else the file suffix, else a look at the content."""
    if declared != "auto":
        return declared
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    head = text_head.lstrip()
    if head.startswith("["):
        return "json"
    if head.startswith("{"):
        return "jsonl"
    first_line = head.splitlines()[0] if head else ""
    return "tsv" if "\t" in first_line else "csv"


def _is_blank(fields: list[str], sep: str) -> bool:
    """A blank line, or one of only whitespace (and, for TSV, tabs): not a record."""
    return not sep.join(fields).strip()


def _read_delimited(text: str, path: str, sep: str, cfg: DataConfig) -> tuple[pd.DataFrame, list[dict]]:
    """Read CSV/TSV as strings; records with the wrong number of fields come back as malformed.

    Returns:
        The well-formed records (with a ``_line`` column: the line where each starts) and the bad ones.

    Raises:
        DataError: ``has_header`` is set but no line has a non-blank field, or the csv module rejects
            the text.
    """
    # TSV files conventionally carry no quoting (quotes are text); CSV uses standard quoting.
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    kind = "TSV" if sep == "\t" else "CSV"
    try:
        if cfg.has_header:
            # blank lines above the header are skipped, not taken as an empty header
            header = next((fields for fields in reader if not _is_blank(fields, sep)), None)
            if header is None:
                raise DataError(f"{path}: no header line (the file has only blank fields)")
        else:
            header = cfg.column_names
        good, lines, bad = [], [], []
        line = reader.line_num + 1
        for fields in reader:
            if fields and len(fields) == len(header):
                good.append(fields)
                lines.append(line)
            elif not _is_blank(fields, sep):  # `,,,` is a record (of empty fields), not a blank line
                why = f"expected {len(header)} fields, got {len(fields)}"
                if reader.line_num > line:  # quoted line breaks, or an unbalanced quote that swallowed lines
                    why += f" (the record runs over lines {line}-{reader.line_num})"
                bad.append({"raw": sep.join(fields)[:2000], "line": line, "why": why})
            line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}: cannot parse as {kind}: {exc}") from None
    frame = pd.DataFrame(good, columns=[h.strip() for h in header])
    frame["_line"] = lines
    return frame, bad


def _read_json_records(text: str, path: str, fmt: str) -> tuple[pd.DataFrame, list[dict]]:
    """Read a JSON array (or a wrapper object holding one) or JSON Lines into a frame of records.

    Returns:
        The object records (with a ``_line`` column: the JSON Lines line, or the position in the array)
        and the records that are not objects or, for JSON Lines, do not parse.

    Raises:
        DataError: the JSON does not parse, is not an array of records, or holds no object at all.
    """
    bad: list[dict] = []
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc})") from None
        except RecursionError:  # the C parser recurses once per nesting level
            raise DataError(f"{path}: invalid JSON (nested too deeply)") from None
        if isinstance(data, dict):  # {"data": [...]} style wrappers
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of objects, got {json.dumps(data)[:60]}")
        numbered = list(enumerate(data, start=1))
    else:
        numbered = []
        # JSON Lines are separated by "\n" only: str.splitlines() would also split at U+2028, U+0085 and
        # other characters that JSON strings may hold unescaped, breaking valid records apart.
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                bad.append({"raw": line[:2000], "line": lineno, "why": str(exc)})
            except RecursionError:
                bad.append({"raw": line[:2000], "line": lineno, "why": "JSON nested too deeply"})
    good, lines = [], []
    for number, rec in numbered:
        if isinstance(rec, dict):
            good.append(rec)
            lines.append(number)
        else:
            bad.append({"raw": json.dumps(rec)[:2000], "line": number, "why": "record is not an object"})
    if not good and bad:  # nothing to map columns from: a whole-file problem, not bad rows
        where = "line" if fmt == "jsonl" else "record"
        first = min(bad, key=lambda b: b["line"])
        raise DataError(f"{path}: no record is a JSON object ({where} {first['line']}: {first['why']})")
    # dtype=object keeps integer labels as integers even when some records lack the field
    frame = pd.DataFrame(good, dtype=object)
    frame["_line"] = lines  # JSON Lines: the line, JSON: the position (bad records use the same numbering)
    return frame, bad


def read_file(path: str, cfg: DataConfig) -> tuple[pd.DataFrame, list[dict]]:
    """Read one file into a frame of strings plus a list of records that could not be parsed.

    Raises:
        DataError: the file is empty, binary or otherwise unreadable as a whole; the message names it.
    """
    if is_hf_dataset_dir(path):
        return _read_hf_dataset(path), []
    if cfg.format == "parquet" or Path(path).suffix.lower() in (".parquet", ".pq"):
        with fsspec.open(path, "rb") as fh:
            if not fh.read(1):
                raise DataError(f"{path}: file is empty")
            fh.seek(0)
            try:
                return pd.read_parquet(fh), []
            except Exception as exc:  # pyarrow raises several types for corrupt files
                raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    text = _decode(_read_bytes(path), path, cfg.encoding)
    if not text.strip():  # checked after decoding: a lone BOM or Unicode spaces are empty too
        raise DataError(f"{path}: file is empty")
    fmt = detect_format(path, text[:4096], cfg.format)
    if fmt in ("json", "jsonl"):
        return _read_json_records(text, path, fmt)
    if fmt == "tsv":
        return _read_delimited(text, path, "\t", cfg)
    return _read_delimited(text, path, _pick_delimiter(text, cfg), cfg)


def _pick_delimiter(text: str, cfg: DataConfig) -> str:
    """The delimiter of a CSV-like file, decided by how each candidate splits the first records.

    With a header, a candidate must split the header into several fields; without one, it must give the
    configured number of columns. Among those, the one under which most of the following records have
    that many fields wins; on ties, the one giving more columns, then the first of ``DELIMITERS`` (comma).
    Unlike ``csv.Sniffer``, which only decides when these rules do not, this is not fooled by semicolons
    or pipes inside the text of an ordinary comma-separated file.
    """
    head = text[:65536]
    best, best_key = None, (-1.0, 0)
    for sep in DELIMITERS:
        reader = csv.reader(io.StringIO(head, newline=""), delimiter=sep)
        try:
            records = [f for f in itertools.islice(reader, 51) if not _is_blank(f, sep)]
        except csv.Error:
            continue
        if cfg.has_header:
            if not records or len(records[0]) < 2:
                continue
            width, sample = len(records[0]), records[1:]
        else:
            width, sample = len(cfg.column_names), records
        fit = sum(len(f) == width for f in sample) / len(sample) if sample else 0.0
        if not cfg.has_header and fit == 0.0:
            continue
        if (fit, width) > best_key:
            best, best_key = sep, (fit, width)
    return best if best is not None else _sniff_delimiter(text)


def _sniff_delimiter(text: str) -> str:
    try:
        return csv.Sniffer().sniff(text[:8192], delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def _missing(value: object) -> bool:
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return value is None or value is pd.NA or value is pd.NaT


def _label_cell(value: object, encoding: str) -> tuple[str, str]:
    """A label as a string, and what is wrong with it ('' when nothing): numbers are fine as labels."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value)), ""  # integer labels read as float because of missing values
    if isinstance(value, (str, int, float, np.number, np.bool_)) or _missing(value):
        return _text_cell(str(value) if not _missing(value) else None, encoding)
    return _text_cell(value, encoding)


def _text_cell(value: object, encoding: str) -> tuple[str, str]:
    """A text cell as a string, and what is wrong with it ('' when nothing).

    Strings are text; bytes are decoded by the rules for files; anything else (a JSON object or list, a
    Parquet list or struct, a number) is not text: it is shown (as JSON) and its row quarantined.
    """
    if _missing(value):
        return "", ""
    if isinstance(value, str):
        return value, ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = decode_cell(bytes(value), encoding)
        return (text, "") if text is not None else (repr(bytes(value)[:200]), "binary data")
    if isinstance(value, np.ndarray):
        value = value.tolist()
    kind = {dict: "a JSON object", list: "a list", tuple: "a list", bool: "a boolean"}.get(type(value))
    if kind is None:
        kind = "a number" if isinstance(value, (int, float, np.number)) else f"a {type(value).__name__}"
    return json.dumps(value, ensure_ascii=False, default=str)[:2000], kind


def _require(frame: pd.DataFrame, wanted: list[str], path: str) -> None:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        have = ", ".join(str(c) for c in frame.columns if not str(c).startswith("_")) or "(none)"
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the file has: {have}")


class _Columns:
    """Reads a file's columns as stripped strings, remembering per row what was not text in which column."""

    def __init__(self, frame: pd.DataFrame, encoding: str) -> None:
        self.frame, self.encoding = frame, encoding
        self.problems = pd.Series("", index=frame.index, dtype=object)

    def get(self, name: str, label: bool = False) -> pd.Series:
        if name not in self.frame.columns:
            return pd.Series("", index=self.frame.index, dtype=object)
        read = _label_cell if label else _text_cell
        cells = [read(v, self.encoding) for v in self.frame[name].tolist()]
        for i, (_, kind) in zip(self.frame.index, cells, strict=True):
            if kind and not self.problems[i]:
                self.problems[i] = f"not_text: column {name!r} holds {kind}, not text"
        return pd.Series([t for t, _ in cells], index=self.frame.index, dtype=object).str.strip()


def _labelled_text(frame: pd.DataFrame, path: str, cfg: DataConfig, cols: _Columns) -> dict[str, object]:
    _require(frame, [*cfg.text_columns, cfg.label_column], path)
    parts = [cols.get(c) for c in cfg.text_columns]
    # Empty parts are skipped so that a missing title does not leave a dangling separator.
    text = [cfg.text_separator.join(p for p in values if p) for values in zip(*parts, strict=True)]
    labels = cols.get(cfg.label_column, label=True)
    if cfg.label_names:
        labels = labels.map(lambda raw: cfg.label_names.get(raw, raw))
    return {"text": text, "label": labels}


def _instruction(frame: pd.DataFrame, path: str, cfg: DataConfig, cols: _Columns) -> dict[str, object]:
    present = [c for c in cfg.answer_columns if c in frame.columns]
    if not present:
        _require(frame, [cfg.instruction_column, " or ".join(cfg.answer_columns)], path)
    _require(frame, [cfg.instruction_column], path)
    answers = cols.get(present[0])
    for other in present[1:]:  # files that mix `output` and `response` records
        answers = answers.where(answers != "", cols.get(other))
    columns = {
        "instruction": cols.get(cfg.instruction_column),
        "input": cols.get(cfg.input_column),
        "output": answers,
    }
    # `text` (prompt and answer together) is what dedup, split hashing and length limits look at
    text = [
        "\n\n".join(p for p in parts if p)
        for parts in zip(columns["instruction"], columns["input"], columns["output"], strict=True)
    ]
    out = {"text": text, "label": "", **columns}
    if HISTORY_COLUMN in frame.columns:  # alpaca multi-turn: earlier turns that are not trained on (yet)
        out[DROPPED_TURNS] = frame[HISTORY_COLUMN].map(_turns).to_numpy()
    return out


def _turns(value: object) -> int:
    """The number of earlier turns in an alpaca ``history`` cell ([[prompt, answer], ...])."""
    if isinstance(value, np.ndarray):
        return len(value)
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, str) and value.strip() not in ("", "[]"):
        return 1
    return 0


def _mark_undecodable(out: pd.DataFrame) -> None:
    """Rows holding bytes that did not decode: quarantined as ``undecodable``, shown with U+FFFD."""
    for name in ("text", "label", "instruction", "input", "output"):
        if name not in out.columns or out.empty:
            continue
        hit = out[name].str.contains(tx.UNDECODABLE, regex=False)
        if hit.any():
            fresh = hit & (out["error"] == "")
            out.loc[fresh, "error"] = f"undecodable: column {name!r} holds bytes that do not decode"
            out.loc[hit, name] = out.loc[hit, name].str.replace(tx.UNDECODABLE, "\ufffd")


def map_columns(  # noqa: PLR0913 - the file and how to read it
    frame: pd.DataFrame,
    bad: list[dict],
    path: str,
    cfg: DataConfig,
    kind: str = "labelled_text",
    fmt: str = "auto",
) -> pd.DataFrame:
    """Build the standard columns from one file's frame.

    Args:
        kind: ``labelled_text`` (text + label), ``instruction`` (instruction/input/output, label empty),
            ``conversation``, or ``preference`` (read by :mod:`tunery.data.preferences` in format ``fmt``).

    Returns:
        Columns text, label, source, row, error (+ instruction, input, output for instruction data).

    Raises:
        DataError: a configured column is missing from the file, or appears in it more than once.
    """
    if kind in ("conversation", "preference"):
        return _record_rows(frame, bad, path, cfg, kind, fmt)
    if kind == "instruction":
        used = {cfg.instruction_column, cfg.input_column, *cfg.answer_columns}
    else:
        used = {*cfg.text_columns, cfg.label_column}
    # frame[name] would be a frame, not a column, and it is not ours to guess which one is meant
    repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()] if c in used})
    if repeated:
        raise DataError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
    cols = _Columns(frame, cfg.encoding)
    read = _instruction if kind == "instruction" else _labelled_text
    mapped = read(frame, path, cfg, cols)
    source = path if "_split" not in frame.columns else path + "[" + frame["_split"].astype(str) + "]"
    out = pd.DataFrame(
        {
            **mapped,
            "source": source,
            # CSV/TSV/JSONL: the line a record starts on; JSON/Parquet/datasets: the record number
            "row": frame["_line"] if "_line" in frame.columns else range(1, len(frame) + 1),
            "error": cols.problems.to_numpy(),
        }
    )
    _mark_undecodable(out)
    if bad:
        malformed = pd.DataFrame(
            {
                "text": [b["raw"].replace(tx.UNDECODABLE, "\ufffd") for b in bad],
                "label": "",
                "source": path,
                "row": [b.get("line", 0) for b in bad],
                "error": [b["why"] for b in bad],
            }
        )
        out = pd.concat([out, malformed], ignore_index=True).fillna("")
    return out


def _record_rows(frame: pd.DataFrame, bad: list[dict], path: str, cfg: DataConfig, kind: str, fmt: str):
    """Conversation (tunery.data.conversations) or preference (tunery.data.preferences) records with their
    location; malformed lines kept as rows with an error."""
    records, columns = frame.to_dict("records"), [c for c in frame.columns if not str(c).startswith("_")]
    column = "conversation" if kind == "conversation" else "pair"
    try:
        read = conversations.table if kind == "conversation" else preferences.table
        mapped = read(records, frame.columns, cfg) if kind == "conversation" else read(records, columns, fmt)
    except ValueError as exc:  # no preference format matches the columns: every row would be refused
        raise DataError(f"{path}: {exc}") from None
    rows = frame["_line"] if "_line" in frame.columns else range(1, len(frame) + 1)
    out = pd.DataFrame({**mapped, "label": "", "source": path, "row": rows})
    malformed = pd.DataFrame(
        {"text": [b["raw"] for b in bad], "source": path, "row": [b.get("line", 0) for b in bad]}
    ).assign(label="", prompt="", **{column: ""}, error=[b["why"] for b in bad])
    return pd.concat([out, malformed], ignore_index=True) if bad else out


def ingest(cfg: DataConfig, kind: str = "labelled_text", preference_format: str = "auto") -> pd.DataFrame:
    """Read every file of the source and map its columns.

    Args:
        cfg: the recipe's data section.
        kind: ``labelled_text`` (classification), ``instruction`` (instruction tuning), ``conversation``
            (columns text, prompt, conversation) or ``preference`` (columns text, prompt, pair).
        preference_format: preference data: one of :data:`tunery.data.preferences.FORMATS`, or auto.

    Returns:
        A frame with columns text, label, source, row, error (error is non-empty for malformed records),
        plus instruction, input, output for instruction data.

    Raises:
        DataError: nothing matches the source, a file is unreadable as a whole, or no file has a record.
    """
    files = expand_source(cfg.source)
    frames, columns_only = [], []
    for path in files:
        frame, bad = read_file(path, cfg)
        if len(frame) == 0 and not bad:
            # A shard without records (a header-only CSV part, an empty JSON array) is not an error as
            # long as other files have records; a source without any record is.
            columns_only.extend(str(c) for c in frame.columns if not str(c).startswith("_"))
            continue
        frames.append(map_columns(frame, bad, path, cfg, kind, preference_format))
    if not frames:
        where = files[0] if len(files) == 1 else f"{cfg.source} ({len(files)} files: {', '.join(files[:3])})"
        names = ", ".join(dict.fromkeys(columns_only))
        raise DataError(f"{where}: no records" + (f" (only the column names: {names})" if names else ""))
    result = pd.concat(frames, ignore_index=True)
    result["row"] = result["row"].astype("int64")
    if DROPPED_TURNS in result.columns:
        result[DROPPED_TURNS] = result[DROPPED_TURNS].fillna(0).astype("int64")
    if kind == "labelled_text" and not cfg.labels:
        _check_label_kinds(result, cfg)
    return result


def _check_label_kinds(rows: pd.DataFrame, cfg: DataConfig) -> None:
    """Labels that are numbers and names at once are two encodings of the classes, not more classes.

    Raises:
        DataError: the label column mixes numbers and names and the recipe has no ``labels`` list.
    """
    values = pd.unique(rows.loc[(rows["error"] == "") & (rows["label"] != ""), "label"])
    numbers = sorted((v for v in values if _NUMBER.fullmatch(v)), key=float)
    names = sorted(v for v in values if not _NUMBER.fullmatch(v))
    if numbers and names:
        raise DataError(
            f"{cfg.source}: column {cfg.label_column!r} mixes numbers ({', '.join(numbers[:5])}) and names "
            f"({', '.join(names[:5])}) as labels; list the classes in data.labels (rows with other labels "
            "are quarantined) or map the numbers to names with data.label_names"
        )
