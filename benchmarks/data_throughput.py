"""Data-cleaning throughput: tunery's ``clean()`` against a straightforward pandas ``.apply`` baseline.

Both sides get the same ingested rows (ingestion is done once, up front, and is not timed) and run
alternately ``--repeats`` times each in one process; the median wall time gives rows/s for both and the
ratio tunery / baseline (target: >= 2.0).

* tunery: ``tunery.data.clean.clean(rows, CleaningConfig())`` end to end (e-mail parsing, HTML, NFKC, PII
  placeholders, whitespace, quarantine accounting, exact and near-duplicate removal), with the default
  config, which cleans in one process per usable CPU (``tunery.ops.cpus.usable_cpus``: affinity mask and
  cgroup quota) when there are at least 5,000 rows.
* baseline: what a competent person writes without tuning: one ``.apply`` pass per step over the text
  column, each step a plain standard-library function (``email`` with the default policy, ``re`` + ``html``,
  ``unicodedata``, one ``re.sub`` per placeholder), ``drop_duplicates`` on the lower-cased text, and
  near-duplicates with ``datasketch`` when it is importable, else with tunery's own
  ``near_duplicate_clusters`` (then the near-duplicate step is identical on both sides and only the text
  steps differ).

Usage::

    python benchmarks/data_throughput.py            # full data sets, 3 repeats each
    python benchmarks/data_throughput.py --quick    # first 1,000 rows of each, 1 repeat (smoke test)

Results go to ``benchmarks/results/data_throughput.json`` (``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import html
import json
import os
import re
import shlex
import statistics
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hostinfo

if TYPE_CHECKING:
    import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "data_throughput.json"
TARGET_RATIO = 2.0
QUICK_ROWS = 1_000
WARMUP_ROWS = 200


@dataclass(frozen=True)
class DataSet:
    """One benchmark input: a file under the data folder and how tunery's ingest reads it."""

    name: str
    relpath: str
    text_columns: tuple[str, ...]
    label_column: str = "label"


DATASETS = (
    DataSet("spam_assassin", "spam_assassin/spam_assassin.jsonl", ("text",)),
    DataSet("sst2", "sst2/train.tsv", ("sentence",)),
)


# --------------------------------------------------------------------------------------------------------
# Baseline: a straightforward pandas .apply implementation of the same steps
# --------------------------------------------------------------------------------------------------------

# The placeholders cover the same kinds of data as tunery's, without checksums (Luhn, mod-97) or digit-count
# callbacks: one re.sub each.
_EMAIL_START = re.compile(
    r"From \S+ |(?:Return-Path|Received|Delivered-To|From|Date|Subject|Message-ID):", re.IGNORECASE
)
_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")
_URL = re.compile(r"(?:(?:https?|ftp)://|www\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(
    r"(?<![\w-])(?:[0-9]{4}[ -]?){3}[0-9]{4}(?:[ -]?[0-9]{3})?(?![0-9])"
    r"|(?<![\w-])[0-9]{4}[ -]?[0-9]{6}[ -]?[0-9]{4,5}(?![0-9])"
    r"|(?<![0-9])[0-9]{13,19}(?![0-9])"
)
_PHONE = re.compile(
    r"(?<![\w.])(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,5}\)[ .-]?)?"
    r"[0-9]{2,4}[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}(?!\w)"
)


def baseline_email(raw: str) -> str:
    """Subject and body of a raw e-mail with the standard library's modern policy; other text unchanged."""
    if not _EMAIL_START.match(raw):
        return raw
    try:
        msg = email.message_from_string(raw, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain", "html"))
        content = body.get_content() if body is not None else ""
        subject = str(msg.get("subject", "") or "")
        return f"{subject}\n\n{content}" if subject else content
    except Exception:  # broken MIME, unknown charset, ...: keep the raw text
        return raw


def baseline_html(text: str) -> str:
    """Drop tags and unescape entities (applied to every row)."""
    return html.unescape(_TAG.sub(" ", text))


def baseline_nfkc(text: str) -> str:
    """NFKC normalisation (applied to every row)."""
    return unicodedata.normalize("NFKC", text)


def baseline_urls(text: str) -> str:
    """Replace URLs by [URL]."""
    return _URL.sub("[URL]", text)


def baseline_emails(text: str) -> str:
    """Replace e-mail addresses by [EMAIL]."""
    return _EMAIL.sub("[EMAIL]", text)


def baseline_ibans(text: str) -> str:
    """Replace IBAN-shaped strings by [IBAN]."""
    return _IBAN.sub("[IBAN]", text)


def baseline_cards(text: str) -> str:
    """Replace card-number-shaped digit runs by [CARD]."""
    return _CARD.sub("[CARD]", text)


def baseline_phones(text: str) -> str:
    """Replace phone-number-shaped digit groups by [PHONE]."""
    return _PHONE.sub("[PHONE]", text)


def baseline_whitespace(text: str) -> str:
    """Collapse runs of whitespace into one space."""
    return " ".join(text.split())


def baseline_steps() -> list[Callable[[str], str]]:
    """The per-row text steps, in tunery's order; each becomes one ``.apply`` pass."""
    return [
        baseline_email,
        baseline_html,
        baseline_nfkc,
        baseline_urls,
        baseline_emails,
        baseline_ibans,
        baseline_cards,
        baseline_phones,
        baseline_whitespace,
    ]


def near_dup_impl() -> str:
    """``datasketch`` when it can be imported, else ``tunery.near_duplicate_clusters``."""
    try:
        import datasketch  # noqa: F401
    except ImportError:
        return "tunery.near_duplicate_clusters"
    return "datasketch"


def _near_dup_keep_datasketch(texts: list[str], threshold: float) -> list[bool]:
    """Keep a text unless MinHash LSH finds an earlier kept text at the threshold (char 5-grams)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    keep = []
    for i, text in enumerate(texts):
        norm = " ".join(text.lower().split())
        mh = MinHash(num_perm=128)
        mh.update_batch([norm[j : j + 5].encode() for j in range(max(1, len(norm) - 4))])
        duplicate = bool(lsh.query(mh))
        if not duplicate:
            lsh.insert(str(i), mh)
        keep.append(not duplicate)
    return keep


def _near_dup_keep_tunery(texts: list[str], threshold: float) -> list[bool]:
    from tunery.data.near_dup import near_duplicate_clusters

    reps = near_duplicate_clusters(texts, threshold=threshold)
    return [rep == i for i, rep in enumerate(reps)]


def baseline_clean(rows: pd.DataFrame, cfg: Any, impl: str) -> tuple[pd.DataFrame, pd.Series]:
    """Clean rows the straightforward way.

    Args:
        rows: ingested rows (text, label, source, row, error).
        cfg: a ``CleaningConfig`` (for lengths and the near-duplicate threshold).
        impl: ``datasketch`` or ``tunery.near_duplicate_clusters``.

    Returns:
        The kept rows, and the cleaned text of every input row (for the agreement figure).
    """
    frame = rows.copy()
    text = frame["text"]
    for step in baseline_steps():
        text = text.apply(step)
    frame["text"] = text
    # quarantine: malformed, missing label, empty or too long after cleaning
    lengths = frame["text"].str.len()
    ok = (frame["error"] == "") & (frame["label"] != "") & (lengths >= cfg.min_chars)
    ok &= lengths <= cfg.max_chars
    valid = frame[ok].copy()
    valid["key"] = valid["text"].str.lower()
    valid = valid.drop_duplicates(subset="key")
    if cfg.near_duplicates and len(valid):
        keep_fn = _near_dup_keep_datasketch if impl == "datasketch" else _near_dup_keep_tunery
        valid = valid[keep_fn(valid["text"].tolist(), cfg.near_duplicate_threshold)]
    return valid.drop(columns=["key"]).reset_index(drop=True), frame["text"]


# --------------------------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------------------------


def load_rows(data_dir: Path, spec: DataSet, limit: int | None) -> pd.DataFrame:
    """Ingest one data set with tunery's ingest (not timed); keep the first ``limit`` rows if given."""
    from tunery.config import DataConfig
    from tunery.data.ingest import ingest

    path = data_dir / spec.relpath
    if not path.is_file():
        raise SystemExit(f"data file not found: {path} (see --data-dir)")
    cfg = DataConfig(source=str(path), text_columns=list(spec.text_columns), label_column=spec.label_column)
    rows = ingest(cfg)
    return rows.head(limit).reset_index(drop=True) if limit else rows


def tunery_num_proc(rows: pd.DataFrame, cfg: Any) -> int:
    """The process count ``clean()`` uses for these rows."""
    from tunery.data.clean import process_count

    return process_count(rows, cfg)


def agreement(rows: pd.DataFrame, baseline_text: pd.Series, tunery_kept: pd.DataFrame) -> tuple[float, int]:
    """Fraction of the rows tunery keeps whose baseline-cleaned text is equal (whitespace-normalised).

    Returns:
        ``(fraction, compared_rows)``.
    """
    import pandas as pd

    base = pd.DataFrame({"source": rows["source"], "row": rows["row"], "base": baseline_text.to_numpy()})
    both = tunery_kept[["source", "row", "text"]].merge(base, on=["source", "row"], how="inner")
    if not len(both):
        return 1.0, 0
    equal = [
        " ".join(a.split()) == " ".join(b.split()) for a, b in zip(both["text"], both["base"], strict=True)
    ]
    return sum(equal) / len(equal), len(equal)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_dataset(rows: pd.DataFrame, repeats: int, impl: str) -> dict[str, Any]:
    """Run baseline and tunery alternately ``repeats`` times each on the same rows; summarise."""
    from tunery.config import CleaningConfig
    from tunery.data.clean import clean

    cfg = CleaningConfig()
    base_times: list[float] = []
    tunery_times: list[float] = []
    base_kept = base_text = tunery_result = None
    for _ in range(repeats):
        seconds, (base_kept, base_text) = _timed(lambda: baseline_clean(rows, cfg, impl))
        base_times.append(seconds)
        seconds, tunery_result = _timed(lambda: clean(rows, cfg))
        tunery_times.append(seconds)
    n = len(rows)
    base_s, tunery_s = statistics.median(base_times), statistics.median(tunery_times)
    base_rps, tunery_rps = n / base_s, n / tunery_s
    ratio = tunery_rps / base_rps
    agree, compared = agreement(rows, base_text, tunery_result.kept)
    return {
        "rows": n,
        "baseline_s": round(base_s, 4),
        "tunery_s": round(tunery_s, 4),
        "baseline_rows_per_s": round(base_rps, 1),
        "tunery_rows_per_s": round(tunery_rps, 1),
        "ratio": round(ratio, 3),
        "target": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "agreement": round(agree, 4),
        "agreement_rows": compared,
        "num_proc": tunery_num_proc(rows, cfg),
        "near_dup_impl": impl,
        "baseline_runs_s": [round(t, 4) for t in base_times],
        "tunery_runs_s": [round(t, 4) for t in tunery_times],
        "baseline_kept": len(base_kept),
        "tunery_kept": int(tunery_result.stats["kept"]),
    }


def warm_up(rows: pd.DataFrame, impl: str) -> None:
    """Run both sides once on a few rows (untimed), so imports are not charged to the first repeat."""
    from tunery.config import CleaningConfig
    from tunery.data.clean import clean

    head = rows.head(WARMUP_ROWS).reset_index(drop=True)
    cfg = CleaningConfig(max_quarantine_fraction=1.0)
    baseline_clean(head, cfg, impl)
    clean(head, cfg)


def machine_info() -> dict[str, Any]:
    """The machine and the versions of the packages that do the work in this benchmark."""
    return hostinfo.machine_info(("pandas", "datasets", "numpy", "pyarrow", "datasketch", "tunery"))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """A compact fixed-width table of the per-data-set figures."""
    header = (
        f"{'data set':<14}{'rows':>8}{'base s':>9}{'tunery s':>10}{'base rows/s':>13}"
        f"{'tunery rows/s':>15}{'ratio':>8}{'>=2x':>6}{'agree':>8}{'procs':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<14}{r['rows']:>8}{r['baseline_s']:>9.2f}{r['tunery_s']:>10.2f}"
            f"{r['baseline_rows_per_s']:>13.1f}{r['tunery_rows_per_s']:>15.1f}{r['ratio']:>8.2f}"
            f"{'yes' if r['meets_target'] else 'no':>6}{r['agreement']:>8.3f}{r['num_proc']:>7}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder of the shared data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side per data set")
    parser.add_argument(
        "--quick", action="store_true", help=f"first {QUICK_ROWS:,} rows of each data set, 1 repeat"
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=[d.name for d in DATASETS],
        default=[d.name for d in DATASETS],
        help="which data sets to run",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON and print the table; returns the JSON document."""
    args = parse_args(argv)
    limit = QUICK_ROWS if args.quick else None
    impl = near_dup_impl()
    machine = machine_info()  # before the work, so the load average shows what else was running
    specs = [d for d in DATASETS if d.name in args.datasets]
    loaded = {spec.name: load_rows(args.data_dir, spec, limit) for spec in specs}  # ingest: not timed
    results = {}
    for spec in specs:
        warm_up(loaded[spec.name], impl)
        results[spec.name] = bench_dataset(loaded[spec.name], args.repeats, impl)
    note = (
        "near-duplicate step identical on both sides (datasketch not importable): only the text steps, "
        "quarantine and exact dedup differ"
        if impl != "datasketch"
        else "baseline near-duplicates: datasketch MinHashLSH (128 perms, char 5-grams)"
    )
    doc = {
        "benchmark": "data_throughput",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {"repeats": args.repeats, "quick": args.quick, "row_limit": limit, "statistic": "median"},
        "near_dup_impl": impl,
        "notes": [
            note,
            "ratio = tunery_rows_per_s / baseline_rows_per_s; target >= 2.0",
            "agreement = fraction of rows kept by tunery whose baseline-cleaned text is equal after "
            "whitespace normalisation (they differ where tunery's parser is more careful)",
            "timings are wall time on a shared machine: compare the load averages with cpu_count",
            "peak_rss_mb is the whole benchmark process (baseline and tunery both ran in it); tunery's "
            "datasets worker processes are not included",
        ],
        "peak_rss_mb": peak_rss_mb(),
        "datasets": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print_table(results)
    print(f"near-dup: {impl}; cpu_count={os.cpu_count()}; peak RSS {doc['peak_rss_mb']} MiB")
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
