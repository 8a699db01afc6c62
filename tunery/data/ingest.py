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
import sys
from pathlib import Path

import fsspec
import pandas as pd

from tunery.config import DataConfig

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


def _decode(raw: bytes, path: str) -> str:
    """Decode text bytes: UTF-16/32 with a BOM, else UTF-8, else line by line (UTF-8 or cp1252/latin-1).

    Line-wise fallback matters for files that were appended to by different tools: a latin-1 line in an
    otherwise UTF-8 file must not turn the whole file into mojibake.

    Raises:
        DataError: the bytes look binary (NUL bytes in a file without a UTF-16/32 BOM), or they start with
            a UTF-16/32 BOM but do not decode as such.
    """
    for bom, codec in BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: starts with a {codec.upper()} byte-order mark but is not {codec.upper()} text "
                    f"({exc.reason} at byte {exc.start})"
                ) from None
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path}: looks like a binary file (NUL bytes), not text data")
    # Removed here rather than by "utf-8-sig" so that the line-wise fallback does not keep it either
    # (it would end up in the first column name).
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(_decode_line(line) for line in raw.splitlines(keepends=True))


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return line.decode("cp1252")  # the usual legacy export encoding (Excel, Windows tools)
    except UnicodeDecodeError:
        return line.decode("latin-1")  # cp1252 leaves five bytes undefined; latin-1 maps every byte


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
    text = _decode(_read_bytes(path), path)
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


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # integer labels read as float because of missing values
    return str(value)


def _require(frame: pd.DataFrame, wanted: list[str], path: str) -> None:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        have = ", ".join(str(c) for c in frame.columns if not str(c).startswith("_")) or "(none)"
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the file has: {have}")


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        return pd.Series("", index=frame.index)
    return frame[name].map(_cell).str.strip()


def _labelled_text(frame: pd.DataFrame, path: str, cfg: DataConfig) -> dict[str, object]:
    _require(frame, [*cfg.text_columns, cfg.label_column], path)
    parts = [_column(frame, c) for c in cfg.text_columns]
    # Empty parts are skipped so that a missing title does not leave a dangling separator.
    text = [cfg.text_separator.join(p for p in values if p) for values in zip(*parts, strict=True)]
    labels = _column(frame, cfg.label_column)
    if cfg.label_names:
        labels = labels.map(lambda raw: cfg.label_names.get(raw, raw))
    return {"text": text, "label": labels}


def _instruction(frame: pd.DataFrame, path: str, cfg: DataConfig) -> dict[str, object]:
    present = [c for c in cfg.answer_columns if c in frame.columns]
    if not present:
        _require(frame, [cfg.instruction_column, " or ".join(cfg.answer_columns)], path)
    _require(frame, [cfg.instruction_column], path)
    answers = _column(frame, present[0])
    for other in present[1:]:  # files that mix `output` and `response` records
        answers = answers.where(answers != "", _column(frame, other))
    columns = {
        "instruction": _column(frame, cfg.instruction_column),
        "input": _column(frame, cfg.input_column),
        "output": answers,
    }
    # `text` (prompt and answer together) is what dedup, split hashing and length limits look at
    text = [
        "\n\n".join(p for p in parts if p)
        for parts in zip(columns["instruction"], columns["input"], columns["output"], strict=True)
    ]
    return {"text": text, "label": "", **columns}


def map_columns(
    frame: pd.DataFrame, bad: list[dict], path: str, cfg: DataConfig, kind: str = "labelled_text"
) -> pd.DataFrame:
    """Build the standard columns from one file's frame.

    Args:
        kind: ``labelled_text`` (text + label) or ``instruction`` (instruction/input/output, label empty).

    Returns:
        Columns text, label, source, row, error (+ instruction, input, output for instruction data).

    Raises:
        DataError: a configured column is missing from the file, or appears in it more than once.
    """
    if kind == "instruction":
        used = {cfg.instruction_column, cfg.input_column, *cfg.answer_columns}
    else:
        used = {*cfg.text_columns, cfg.label_column}
    # frame[name] would be a frame, not a column, and it is not ours to guess which one is meant
    repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()] if c in used})
    if repeated:
        raise DataError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
    mapped = _instruction(frame, path, cfg) if kind == "instruction" else _labelled_text(frame, path, cfg)
    source = path if "_split" not in frame.columns else path + "[" + frame["_split"].astype(str) + "]"
    out = pd.DataFrame(
        {
            **mapped,
            "source": source,
            # CSV/TSV/JSONL: the line a record starts on; JSON/Parquet/datasets: the record number
            "row": frame["_line"] if "_line" in frame.columns else range(1, len(frame) + 1),
            "error": "",
        }
    )
    if bad:
        malformed = pd.DataFrame(
            {
                "text": [b["raw"] for b in bad],
                "label": "",
                "source": path,
                "row": [b.get("line", 0) for b in bad],
                "error": [b["why"] for b in bad],
            }
        )
        out = pd.concat([out, malformed], ignore_index=True).fillna("")
    return out


def ingest(cfg: DataConfig, kind: str = "labelled_text") -> pd.DataFrame:
    """Read every file of the source and map its columns.

    Args:
        cfg: the recipe's data section.
        kind: ``labelled_text`` for classification, ``instruction`` for instruction tuning.

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
        frames.append(map_columns(frame, bad, path, cfg, kind))
    if not frames:
        where = files[0] if len(files) == 1 else f"{cfg.source} ({len(files)} files: {', '.join(files[:3])})"
        names = ", ".join(dict.fromkeys(columns_only))
        raise DataError(f"{where}: no records" + (f" (only the column names: {names})" if names else ""))
    result = pd.concat(frames, ignore_index=True)
    result["row"] = result["row"].astype("int64")
    return result
