"""Continuous learning: the cost of taking in drop k as the history grows to 10 drops.

Ten drops of the same size (disjoint slices of a real data set, shuffled once: by default the raw e-mails
of ../shared/data/spam_assassin, headers and HTML included, as JSONL; or sms_spam as TSV) arrive one after
another in a drop zone. For each drop k, side by side in one run:

* tunery: ``tunery.continuous.update_dataset`` takes the new drop alone: ingest, clean and dedup it against
  the history's stored keys and MinHash signatures (``stage``, timed inside and recorded in the drop's
  report), then the drift report against the history and the commit of a new dataset version (``update``:
  the whole call, timed here).
* baseline: what a pipeline without a versioned dataset does: ingest and clean *every* file of the zone
  again (``tunery.data.ingest.ingest`` + ``tunery.data.clean.clean`` on all k drops).

Drops of the same size still differ in content (e-mails of other lengths and markup), and cleaning cost
follows content. So the sequence runs ``--repeats`` times (default 10) in fresh work folders, each time with
the slices rotated by one more place: every slice is drop 1 once, drop 2 once, ... drop 10 once. The median
per position then compares positions, not contents. The baseline runs in the first ``--baseline-repeats``
sequences only (its linear growth needs no more).
Target: flat for tunery: ``stage`` of drop 10 / drop 1 at most 1.2 (the baseline grows ~linearly).

Usage::

    python benchmarks/drop_ingest.py                      # spam_assassin: 10 x 600 e-mails, 10 rotations
    python benchmarks/drop_ingest.py --dataset sms_spam   # 10 drops x 550 SMS
    python benchmarks/drop_ingest.py --quick              # 4 drops x 100 rows, 1 repeat (smoke test)

Results go to ``benchmarks/results/drop_ingest.json`` (``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hostinfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "drop_ingest.json"
TARGET_RATIO = 1.2
DATASETS = {
    # name: (file under the data folder, reader options, text column, label column, drop suffix)
    "spam_assassin": ("spam_assassin/spam_assassin.jsonl", {"lines": True}, "text", "label", ".jsonl"),
    "sms_spam": (
        "sms_spam/SMSSpamCollection",
        {"sep": "\t", "quoting": csv.QUOTE_NONE},
        "SMS",
        "Label",
        ".tsv",
    ),
}


def _recipe(root: Path, zone: Path, dataset: str):
    from tunery.config import load_recipe, resolve_paths

    _, _, text, label, _ = DATASETS[dataset]
    path = root / "recipe.yaml"
    path.write_text(
        "name: drop-bench\n"
        f"data: {{source: {zone}, text_columns: [{text}], label_column: {label}, labels: [ham, spam]}}\n"
        "continuous: {settle_seconds: 0}\n"
        f"workdir: {root / 'work'}\n"
        "mlflow: {registered_model: drop-bench}\n",
        encoding="utf-8",
    )
    return resolve_paths(load_recipe(path), root)


def _baseline(recipe) -> float:
    """Ingest and clean every file of the zone again (no versioned dataset)."""
    from tunery.data.clean import clean
    from tunery.data.ingest import ingest

    started = time.perf_counter()
    rows = ingest(recipe.data, "labelled_text")
    with tempfile.TemporaryDirectory() as cache:
        clean(rows, recipe.cleaning, recipe.data.labels, Path(cache))
    return time.perf_counter() - started


def _write_drop(frame, zone: Path, name: str, suffix: str) -> None:
    """Write a drop under a temporary name, then rename it (the drop-zone protocol)."""
    part = zone / f"{name}{suffix}.part"
    if suffix == ".jsonl":
        frame.to_json(part, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(part, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    part.rename(zone / f"{name}{suffix}")


def one_sequence(drops: list, dataset: str, baseline: bool) -> list[dict[str, float]]:
    """Drop the slices one by one into a fresh zone; time tunery's update (and the baseline) per drop."""
    from tunery.continual import continuous
    from tunery.continual import drops as drop_zone
    from tunery.continual.history import DropDataset

    root = Path(tempfile.mkdtemp(prefix="tunery-drop-bench-"))
    try:
        zone = root / "zone"
        zone.mkdir()
        recipe = _recipe(root, zone, dataset)
        timings = []
        for k, frame in enumerate(drops, start=1):
            _write_drop(frame, zone, f"drop-{k:02d}", DATASETS[dataset][4])
            new = drop_zone.scan(recipe).new
            started = time.perf_counter()
            result = continuous.update_dataset(recipe, owner="bench")
            update_s = time.perf_counter() - started
            if result["committed"] != [new[0]["id"]]:
                raise RuntimeError(f"drop {k} was not committed: {result}")
            report = json.loads(
                (DropDataset.of(recipe).drop_dir(new[0]["id"]) / "report.json").read_text(encoding="utf-8")
            )
            row = {"drop": k, "update_s": update_s, **{f"{n}_s": v for n, v in report["seconds"].items()}}
            row["history_rows"] = (
                sum(d["rows"] for d in DropDataset.of(recipe).latest()["drops"]) - report["kept"]
            )
            if baseline:
                row["baseline_s"] = _baseline(recipe)
            timings.append(row)
        return timings
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _median_rows(sequences: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    out = []
    for rows in zip(*sequences, strict=True):
        keys = dict.fromkeys(k for r in rows for k in r if k not in ("drop", "slice"))
        medians = {k: statistics.median(r[k] for r in rows if k in r) for k in keys}
        out.append({"drop": rows[0]["drop"], **medians})
    return out


def _offset(repeat: int, args: argparse.Namespace) -> int:
    """Rotation of the slices in sequence ``repeat``: spread evenly over the drops."""
    return (repeat * args.drops // args.repeats) % args.drops


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import pandas as pd

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="spam_assassin")
    parser.add_argument("--drops", type=int, default=10)
    parser.add_argument("--rows", type=int, default=600, help="rows per drop")
    parser.add_argument("--repeats", type=int, default=10, help="sequences, each with the slices rotated")
    parser.add_argument(
        "--baseline-repeats", type=int, default=1, help="sequences that also time the baseline"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip re-ingesting the history")
    parser.add_argument("--quick", action="store_true", help="4 drops x 100 rows, 1 repeat")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.drops, args.rows, args.repeats = 4, 100, 1
    file, options, text, label, _ = DATASETS[args.dataset]
    read = pd.read_json if options.get("lines") else pd.read_csv
    full = read(
        args.data_dir / file,
        dtype=str,
        **({} if options.get("lines") else {"keep_default_na": False}),
        **options,
    )
    full = full[[label, text]]
    if args.drops * args.rows > len(full):
        parser.error(f"{args.drops} drops x {args.rows} rows exceed the {len(full)} rows of {args.dataset}")
    shuffled = full.sample(frac=1.0, random_state=0).reset_index(drop=True)
    slices = [shuffled.iloc[k * args.rows : (k + 1) * args.rows] for k in range(args.drops)]
    machine = hostinfo.machine_info(("pandas", "datasets", "scikit-learn", "tunery"))
    one_sequence(
        slices[:2], args.dataset, baseline=False
    )  # warm-up: imports, tokenizer-free cleaning pool start-up
    sequences = [
        one_sequence(
            slices[_offset(r, args) :] + slices[: _offset(r, args)],
            args.dataset,
            baseline=not args.no_baseline and r < args.baseline_repeats,
        )
        for r in range(args.repeats)
    ]
    per_drop = _median_rows(sequences)
    first, last = per_drop[0], per_drop[-1]
    # drop 1 has no history, hence no drift report: its update is not comparable; drop 2 is the first that is
    ratios = {
        "stage": last["total_s"] / first["total_s"],
        "update_vs_drop_2": last["update_s"] / per_drop[1]["update_s"],
    }
    if not args.no_baseline:
        ratios["baseline"] = last["baseline_s"] / first["baseline_s"]
    doc = {
        "benchmark": "drop_ingest",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "setup": {
            "drops": args.drops,
            "rows_per_drop": args.rows,
            "repeats": args.repeats,
            "rotations": [_offset(r, args) for r in range(args.repeats)],
            "baseline_repeats": min(args.baseline_repeats, args.repeats),
            "data": args.dataset,
        },
        "per_drop_median": per_drop,
        "ratio_last_over_first": ratios,
        "target": {"stage_ratio_at_most": TARGET_RATIO, "met": ratios["stage"] <= TARGET_RATIO},
        "sequences": sequences,
    }
    hostinfo.write_result(args.out, doc)
    print(f"{'drop':>4} {'history':>8} {'stage s':>8} {'update s':>9} {'baseline s':>11}")
    for row in per_drop:
        base = f"{row['baseline_s']:>11.2f}" if "baseline_s" in row else f"{'-':>11}"
        print(
            f"{row['drop']:>4} {row['history_rows']:>8.0f} {row['total_s']:>8.2f} "
            f"{row['update_s']:>9.2f} {base}"
        )
    print("drop last / drop 1: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print(
        f"target stage ratio <= {TARGET_RATIO}: {'met' if doc['target']['met'] else 'NOT met'} -> {args.out}"
    )
    return doc


if __name__ == "__main__":
    main()
