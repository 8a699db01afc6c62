"""The versioned dataset of a continuous-learning recipe: a version is a list of drops.

Each drop is ingested and cleaned once, on its own (the cost is that of the drop, not of the history), and
deduplicated against the rows already in the dataset, into its own folder::

    <state>/dataset/drops/<drop id>/rows.parquet       kept rows: text, label, ..., key, split, drop_id
                                   /quarantine.jsonl   every row not kept, with a reason
                                   /signatures.npy     MinHash signatures of the kept rows (near-dup checks)
                                   /report.json        row accounting of the drop
    <state>/dataset/versions/v000003.json              version 3: its drops (ids, hashes, rows), parent 2

A row's split is decided by the seeded hash of its normalised text (:mod:`tunery.data.split`), so a row
never moves between splits as drops are added: the golden test set only grows by new rows. Exact and
near duplicates of earlier rows are removed (``duplicate``) or quarantined when their label differs
(``conflicting_duplicate``), so no text can sit in two splits. Preference rows split by their prompt and
are compared by what they judge (the same answers to the same prompt, :func:`tunery.data.preferences.
dedup_key`): the same judgement again is a duplicate, the reverse one conflicts; near-identical pairs are
separate judgements and stay (as in cleaning).

Writers take the dataset's lock (``fcntl.flock`` on ``<state>/dataset/.lock``): staging and committing are
serialised across processes, and a version file is written atomically before the manifest says
``committed`` (a crash in between is repaired by :meth:`DropDataset.reconcile`).
"""

from __future__ import annotations

import glob
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tunery.config import Recipe
from tunery.continual.drops import Drop, content_sha256, state_dir
from tunery.data import preferences
from tunery.data.clean import clean
from tunery.data.ingest import DataError, ingest
from tunery.data.near_dup import NearDuplicateIndex
from tunery.data.normalise import normalise_many
from tunery.data.split import assign, cluster_buckets
from tunery.data.stages import check_objective
from tunery.layout import SPLITS
from tunery.ops.locking import exclusive

# rows.parquet of preference rows: what a pair judges (the order of its two answers), compared instead of
# the label when a later drop repeats its answers
VERDICT = "verdict"
_ROW_COUNTS = ("rows_in", "kept", "quarantined", "deduplicated", "exact_duplicates", "near_duplicates")


@dataclass
class History:
    """The rows already in the dataset, as dedup needs them: normalised-text keys and MinHash signatures."""

    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (drop id, label or verdict)
    near: NearDuplicateIndex | None = None
    labels: dict[str, str] = field(default_factory=dict)  # near-index key "drop:row" -> label
    paired: bool | None = None  # preference rows: pairs (True) or unpaired KTO rows (False); else None

    def add(self, rows: pd.DataFrame, signatures: np.ndarray | None) -> None:
        judged = rows[VERDICT] if VERDICT in rows.columns else rows["label"]
        if VERDICT in rows.columns and len(rows) and self.paired is None:
            self.paired = rows[VERDICT].iloc[0] not in preferences.UNPAIRED_VERDICTS
        for key, drop_id, label in zip(rows["key"], rows["drop_id"], judged, strict=True):
            self.keys.setdefault(key, (drop_id, label))
        if self.near is not None and signatures is not None and len(rows):
            names = [f"{d}:{i}" for d, i in zip(rows["drop_id"], range(len(rows)), strict=True)]
            self.near.add(signatures, names)
            self.labels.update(zip(names, rows["label"], strict=True))


class DropDataset:
    """One recipe's versioned dataset (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "drops").mkdir(parents=True, exist_ok=True)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, recipe: Recipe) -> DropDataset:
        return cls(state_dir(recipe) / "dataset")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (blocks until the holder is done)."""
        with exclusive(self.root / ".lock"):
            yield

    def drop_dir(self, drop_id: str) -> Path:
        return self.root / "drops" / drop_id

    def version_numbers(self) -> list[int]:
        return sorted(int(p.stem[1:]) for p in (self.root / "versions").glob("v*.json"))

    def version(self, number: int) -> dict:
        path = self.root / "versions" / f"v{number:06d}.json"
        if not path.is_file():
            raise KeyError(f"dataset version {number} not found in {self.root}")
        return json.loads(path.read_text(encoding="utf-8"))

    def latest(self) -> dict | None:
        numbers = self.version_numbers()
        return self.version(numbers[-1]) if numbers else None

    def rows(self, version: dict | None, columns: list[str] | None = None) -> pd.DataFrame:
        """The kept rows of a version's drops (empty for no version)."""
        frames = [
            pd.read_parquet(self.drop_dir(d["id"]) / "rows.parquet", columns=columns)
            for d in (version or {}).get("drops", [])
        ]
        if not frames:
            return pd.DataFrame(columns=columns or ["text", "label", "key", "split", "drop_id"])
        return pd.concat(frames, ignore_index=True)

    def history(self, version: dict | None, near_threshold: float | None) -> History:
        """The dedup view of a version's rows (keys, labels, and signatures when near dedup is on)."""
        near = NearDuplicateIndex(threshold=near_threshold) if near_threshold is not None else None
        history = History(near=near)
        for entry in (version or {}).get("drops", []):
            folder = self.drop_dir(entry["id"])
            stored = pq.read_schema(folder / "rows.parquet").names
            columns = ["key", "drop_id", "label"] + ([VERDICT] if VERDICT in stored else [])
            if "pair" in stored and VERDICT not in stored:  # a preference drop staged before verdicts
                rows = _judged(pd.read_parquet(folder / "rows.parquet", columns=[*columns, "pair"]))
            else:
                rows = pd.read_parquet(folder / "rows.parquet", columns=columns)
            signatures = None
            if near is not None:
                signatures = np.load(folder / "signatures.npy")
                if signatures.shape != (len(rows), near.num_perm):  # staged while near dedup was off
                    texts = pd.read_parquet(folder / "rows.parquet", columns=["text"])["text"].tolist()
                    signatures = near.signatures(texts)
            history.add(rows, signatures)
        return history

    def stage(
        self,
        recipe: Recipe,
        drop: Drop,
        history: History,
        kind: str,
        tokenizer: str | None,
        history_version: int | None,
        settings: dict | None = None,
    ) -> dict:
        """Ingest, clean and dedup one drop against ``history`` into its folder; add it to ``history``.

        ``history_version`` is the dataset version ``history`` was read from (recorded in the report: a drop
        held for a decision is staged again if the dataset moved on meanwhile). ``tokenizer`` and
        ``settings`` are cleaning's (``tunery.data.stages.clean_settings``). Conversations take their split
        from their first user turn, so that a later drop's conversation opening with the same request
        lands in the same split.

        Returns:
            The drop's report (row accounting; ``rows_in == kept + quarantined + deduplicated``; ``seconds``
            spent reading, cleaning, deduplicating and writing it).

        Raises:
            DataError, QuarantineLimitExceeded: the drop cannot be used (the caller marks it failed).
        """
        clock = time.perf_counter()
        if content_sha256(drop.file_list()) != drop.sha256:
            raise DataError(
                f"drop {drop.id} ({drop.uri}) changed after it was registered: write a new file instead of "
                "rewriting one in place (its new content will be taken as a new drop)"
            )
        frames = [
            ingest(recipe.data.model_copy(update={"source": _exact(uri)}), kind, recipe.preference.format)
            for uri in drop.file_list()
        ]
        ingested = pd.concat(frames, ignore_index=True)
        if kind == "preference":  # KTO rows for a paired objective, or another kind than the history's
            check_objective(recipe, ingested, history.paired)
        seconds = {"ingest": time.perf_counter() - clock}
        folder = self.drop_dir(drop.id)
        work = folder.with_name(f".{drop.id}.staging")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            clock = time.perf_counter()
            cleaned = clean(
                ingested, recipe.cleaning, recipe.data.labels, work / ".arrow", tokenizer, settings
            )
            seconds["clean"] = time.perf_counter() - clock
            clock = time.perf_counter()
            kept, not_kept, stats, signatures = _dedup_against(cleaned.kept, history, drop.id)
            prompts = kept["prompt"].tolist() if "prompt" in kept.columns else None
            kept["split"] = assign(
                cluster_buckets(kept["text"].tolist(), recipe.split.seed, None, prompts), recipe.split
            )
            seconds["dedup_split"] = time.perf_counter() - clock
            clock = time.perf_counter()
            quarantine = pd.concat([cleaned.quarantined, not_kept], ignore_index=True)
            report = {**_drop_report(drop, cleaned.stats, stats, kept), "history_version": history_version}
            kept.drop(columns=["raw_text"], errors="ignore").to_parquet(work / "rows.parquet", index=False)
            quarantine.to_json(work / "quarantine.jsonl", orient="records", lines=True, force_ascii=False)
            empty = np.zeros((0, 0), np.uint32)
            np.save(work / "signatures.npy", signatures if signatures is not None else empty)
            seconds["write"] = time.perf_counter() - clock
            report["seconds"] = {**seconds, "total": sum(seconds.values())}
            (work / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
            shutil.rmtree(work / ".arrow", ignore_errors=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # a failed drop leaves nothing half-staged behind
            raise
        shutil.rmtree(folder, ignore_errors=True)  # an earlier, uncommitted staging of this drop
        work.rename(folder)
        history.add(kept, signatures)
        return report

    def commit(self, drops: list[Drop]) -> dict:
        """Write the next version: the latest version's drops plus ``drops`` (call under :meth:`lock`)."""
        parent = self.latest()
        entries = list(parent["drops"]) if parent else []
        present = {e["id"] for e in entries}
        for drop in drops:
            if drop.id in present:
                continue
            report = json.loads((self.drop_dir(drop.id) / "report.json").read_text(encoding="utf-8"))
            entries.append({**drop.summary(), "rows": report["kept"], "split_rows": report["split_rows"]})
        number = (parent["version"] if parent else 0) + 1
        version = {
            "version": number,
            "parent": parent["version"] if parent else None,
            "drops": entries,
            "new_drops": [d.id for d in drops if d.id not in present],
            "rows": sum(e["rows"] for e in entries),
        }
        path = self.root / "versions" / f"v{number:06d}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(version, indent=2), encoding="utf-8")
        tmp.replace(path)
        return version

    def clean_stats(self, version: dict) -> dict:
        """The row accounting of a version: the sum over its drops' reports."""
        totals = dict.fromkeys(_ROW_COUNTS, 0)
        reasons: dict[str, int] = {}
        for entry in version["drops"]:
            report = json.loads((self.drop_dir(entry["id"]) / "report.json").read_text(encoding="utf-8"))
            for key in _ROW_COUNTS:
                totals[key] += int(report[key])
            for reason, count in report["quarantine_reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + int(count)
        return {**totals, "quarantine_reasons": dict(sorted(reasons.items()))}


def _exact(uri: str) -> str:
    """A drop's file as an ingest source that matches only that file.

    Ingest expands glob characters in local paths, and a dropped file may be named ``export[1].csv``
    (which as a glob reads ``export1.csv``). fsspec URIs are left alone: fsspec takes an existing path as is.
    """
    return uri if "://" in uri else glob.escape(uri)


def _judged(rows: pd.DataFrame) -> pd.DataFrame:
    """Preference rows with ``key`` (what they judge: the prompt and its two answers, or the one answer)
    and ``verdict`` (which answer is preferred, or whether the answer is desirable), from their pair."""
    judgements = [preferences.dedup_key(json.loads(pair)) for pair in rows["pair"]]
    return rows.assign(
        key=normalise_many([key for key, _ in judgements]), **{VERDICT: [v for _, v in judgements]}
    )


def _dedup_against(
    kept: pd.DataFrame, history: History, drop_id: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict, np.ndarray | None]:
    """Remove rows whose text the history already has (exact, or near when the history has a MinHash index).

    Returns:
        The rows kept (with ``key`` and ``drop_id``), the rows not kept (quarantine-table columns), counts
        ``history_exact``, ``history_near``, ``history_conflicts``, and the kept rows' MinHash signatures
        (None without near dedup), computed once for the query and for the history.
    """
    kept = kept.reset_index(drop=True).copy()
    judged = "pair" in kept.columns  # preference rows: the same answers to the same prompt, and their order
    if judged:
        kept = _judged(kept)
    else:
        kept["key"] = normalise_many(kept["text"].tolist())
    kept["drop_id"] = drop_id
    reason = pd.Series("", index=kept.index, dtype=object)
    detail = pd.Series("", index=kept.index, dtype=object)
    for i, (key, label) in enumerate(zip(kept["key"], kept[VERDICT if judged else "label"], strict=True)):
        earlier = history.keys.get(key)
        if earlier is None:
            continue
        other_drop, other_label = earlier
        reason[i] = "duplicate" if other_label == label else "conflicting_duplicate"
        if judged:
            detail[i] = f"a row of drop {other_drop} judges the same answers to this prompt" + (
                "" if other_label == label else f": {other_label} (this row: {label})"
            )
        else:
            detail[i] = f"exact duplicate of a row of drop {other_drop}" + (
                "" if other_label == label else f" labelled {other_label!r} (this row: {label!r})"
            )
    exact = int((reason != "").sum())
    near = 0
    signatures = history.near.signatures(kept["text"].tolist()) if history.near is not None else None
    if history.near is not None and len(history.near):
        open_rows = kept.index[reason == ""]
        hits = history.near.query(signatures[open_rows.to_numpy()])
        for i, found in zip(open_rows, hits, strict=True):
            if found:
                other_label = history.labels[found[0]]
                note = "" if other_label == kept.at[i, "label"] else f" (its label is {other_label!r})"
                reason[i], detail[i] = (
                    "duplicate",
                    f"near-duplicate of a row of drop {found[0].split(':')[0]}{note}",
                )
                near += 1
    removed = kept[reason != ""]
    not_kept = pd.DataFrame(
        {
            "source": removed["source"],
            "row": removed["row"],
            "reason": reason[removed.index],
            "detail": detail[removed.index],
            "label": removed["label"],
            "raw_text": removed["raw_text"],
        }
    )
    stats = {
        "history_exact": exact - int((reason == "conflicting_duplicate").sum()),
        "history_conflicts": int((reason == "conflicting_duplicate").sum()),
        "history_near": near,
    }
    keep = (reason == "").to_numpy()
    kept_signatures = signatures[keep] if signatures is not None else None
    return kept[keep].reset_index(drop=True), not_kept, stats, kept_signatures


def _drop_report(drop: Drop, clean_stats: dict, history_stats: dict, kept: pd.DataFrame) -> dict:
    """Row accounting of a drop: cleaning's, plus the rows removed as duplicates of the history."""
    duplicates = history_stats["history_exact"] + history_stats["history_near"]
    conflicts = history_stats["history_conflicts"]
    reasons = dict(clean_stats["quarantine_reasons"])
    if conflicts:
        reasons["conflicting_duplicate"] = reasons.get("conflicting_duplicate", 0) + conflicts
    report = {
        "drop": drop.summary(),
        "rows_in": clean_stats["rows_in"],
        "kept": len(kept),
        "quarantined": clean_stats["quarantined"] + conflicts,
        "deduplicated": clean_stats["deduplicated"] + duplicates,
        "exact_duplicates": clean_stats["exact_duplicates"] + history_stats["history_exact"],
        "near_duplicates": clean_stats["near_duplicates"] + history_stats["history_near"],
        "history_duplicates": duplicates,
        "history_conflicts": conflicts,
        "quarantine_reasons": dict(sorted(reasons.items())),
        "label_counts": {str(k): int(v) for k, v in kept["label"].value_counts().sort_index().items()},
        "split_rows": {name: int((kept["split"] == name).sum()) for name in SPLITS},
    }
    if report["kept"] + report["quarantined"] + report["deduplicated"] != report["rows_in"]:
        raise AssertionError(f"row accounting broken for drop {drop.id}: {report}")  # a tunery bug
    return report
