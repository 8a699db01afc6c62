"""Continuous learning: fold new drops into the versioned dataset, check drift, warm-start, check forgetting.

The steps, as the ``continuous-learning`` flow calls them:

1. :func:`update_dataset` (under the dataset lock): stage every pending drop (ingest, clean, dedup against
   the history), measure drift of the new rows against the history, then commit them as a new version, or
   hold them for a human decision (drift action ``pause``), or reject them (``block``).
2. :func:`resolve_held`: commit or reject held drops once a decision arrives.
3. :func:`needs_training`: whether the latest version already has a registered model.
4. :func:`materialise`: write a version's splits, data report and lineage into a run folder.
5. :func:`tunery.registry.warm_start`: the champion's weights as the starting point (when its labels match).
6. :func:`forgetting_check`: the model against the champion on each earlier drop's test rows.

Drops are processed exactly once: the manifest's status moves under the dataset lock, and the version
file (the source of truth for which drops are in) is written before the status changes.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from tunery.config import Recipe
from tunery.continual import drift
from tunery.continual.drops import Drop, Manifest
from tunery.continual.history import VERDICT, DropDataset
from tunery.data import report as data_report
from tunery.data.clean import QuarantineLimitExceeded
from tunery.data.ingest import DataError
from tunery.data.split import check_leakage
from tunery.layout import SPLITS, RunLayout
from tunery.registry import trained_versions


def _near_threshold(recipe: Recipe) -> float | None:
    """Near-duplicate threshold of the history's dedup and of the leakage check; none for preference rows:
    near-identical pairs are separate judgements (as in cleaning), and they split by their exact prompt."""
    if recipe.task == "preference" or not recipe.cleaning.near_duplicates:
        return None
    return recipe.cleaning.near_duplicate_threshold


def reconcile(manifest: Manifest, dataset: DropDataset) -> list[str]:
    """Mark drops of the latest version committed where a crash left them pending (call under the lock)."""
    latest = dataset.latest()
    if latest is None:
        return []
    fixed = [e["id"] for e in latest["drops"] if manifest.get(e["id"]).status != "committed"]
    for entry in latest["drops"]:
        if entry["id"] in fixed:
            version = next(n for n in dataset.version_numbers() if entry["id"] in _ids(dataset.version(n)))
            manifest.set_status([entry["id"]], "committed", version=version, detail="")
    return fixed


def _ids(version: dict) -> set[str]:
    return {e["id"] for e in version["drops"]}


def update_dataset(recipe: Recipe, owner: str) -> dict:
    """Stage the pending drops, measure drift, then commit, hold or reject them (see the module docstring).

    Args:
        recipe: a recipe with a ``continuous`` section.
        owner: who holds drops waiting for a decision (the flow run's id): :func:`resolve_held` takes it.

    Returns:
        ``version`` (the latest version number, or None), ``committed``, ``held``, ``rejected``, ``failed``
        (drop ids with reasons for failed ones), ``drift`` (the report, or None) and ``drift_dir``.
    """
    manifest, dataset = Manifest.of(recipe), DropDataset.of(recipe)
    result: dict = {
        "committed": [],
        "held": [],
        "rejected": [],
        "failed": {},
        "drift": None,
        "drift_dir": None,
    }
    with dataset.lock():
        reconcile(manifest, dataset)
        result["rejected"] = expire_held(recipe, manifest)
        pending = manifest.drops("pending")
        latest = dataset.latest()
        staged = _stage_all(recipe, dataset, latest, pending, manifest, result["failed"])
        if staged:
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
            out = dataset.root / "drift" / stamp
            report = drift.drift_report(
                drift_side(dataset.rows(latest)), _new_rows(dataset, staged), recipe.continuous.drift, out
            )
            result["drift"], result["drift_dir"] = report, str(out)
            action = recipe.continuous.drift.action if report["drifted"] else "commit"
            if action in ("commit", "warn"):
                result["committed"] = _commit(dataset, manifest, staged, "")
            elif action == "pause":
                detail = "waiting for a drift decision: " + "; ".join(report["high"])
                manifest.set_status([d.id for d in staged], "held", owner=owner, detail=detail)
                result["held"] = [d.id for d in staged]
            else:
                detail = "rejected: high drift (drift.action block): " + "; ".join(report["high"])
                manifest.set_status([d.id for d in staged], "rejected", detail=detail)
                result["rejected"] += [d.id for d in staged]
        # drops this owner holds, including from an earlier try of this task (a retry must still pause)
        result["held"] = [d.id for d in manifest.drops("held") if d.owner == owner]
        latest = dataset.latest()
    result["version"] = latest["version"] if latest else None
    return result


HELD_GRACE_MINUTES = 10.0


def expire_held(recipe: Recipe, manifest: Manifest, now: float | None = None) -> list[str]:
    """Reject drops held for a drift decision longer than ``pause_timeout_minutes`` (plus a grace period):
    their run timed out, crashed or was cancelled while paused, and nobody decided. Returns their ids."""
    import time

    limit = (recipe.continuous.drift.pause_timeout_minutes + HELD_GRACE_MINUTES) * 60
    now = time.time() if now is None else now
    stale = [
        d.id for d in manifest.drops("held") if now - datetime.fromisoformat(d.updated_at).timestamp() > limit
    ]
    if stale:
        minutes = recipe.continuous.drift.pause_timeout_minutes
        detail = f"rejected: high drift and no decision within {minutes:g} minutes (the paused run ended)"
        manifest.set_status(stale, "rejected", detail=detail)
    return stale


def _commit(dataset: DropDataset, manifest: Manifest, staged: list[Drop], detail: str) -> list[str]:
    """Commit staged drops as a new version (call under the lock). Drops that kept no row (all duplicates
    of the history, or quarantined) are marked committed without making a version: there is nothing new
    to train on. Returns the committed ids."""
    adding = [d for d in staged if _kept_rows(dataset, d.id) > 0]
    latest = dataset.latest()
    if adding:
        latest = dataset.commit(adding)
        manifest.set_status([d.id for d in adding], "committed", version=latest["version"], detail=detail)
    empty = [d for d in staged if d not in adding]
    if empty:
        note = "no new rows (each one a duplicate of the history, or quarantined): no new version"
        version = latest["version"] if latest else None
        manifest.set_status(
            [d.id for d in empty], "committed", version=version, detail=f"{detail} {note}".strip()
        )
    return [d.id for d in staged]


def _kept_rows(dataset: DropDataset, drop_id: str) -> int:
    return int(json.loads((dataset.drop_dir(drop_id) / "report.json").read_text(encoding="utf-8"))["kept"])


def drift_side(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows as the drift measures read them (``text``, ``label``). sft data drifts on its prompts: the
    first user turn of a conversation, the instruction and input of an instruction row (no label)."""
    if not len(rows):
        return pd.DataFrame({"text": [], "label": []})
    if "prompt" in rows.columns:
        prompts = rows["prompt"].astype(str)
    elif "instruction" in rows.columns:
        prompts = (rows["instruction"].astype(str) + "\n" + rows["input"].fillna("").astype(str)).str.strip()
    else:
        return rows[["text", "label"]].reset_index(drop=True)
    return pd.DataFrame({"text": prompts.to_numpy(), "label": ""})


def _new_rows(dataset: DropDataset, drops: list[Drop]) -> pd.DataFrame:
    return drift_side(
        pd.concat(
            [pd.read_parquet(dataset.drop_dir(d.id) / "rows.parquet") for d in drops], ignore_index=True
        )
    )


def _stage_all(
    recipe: Recipe,
    dataset: DropDataset,
    latest: dict | None,
    pending: list[Drop],
    manifest: Manifest,
    failed: dict,
) -> list[Drop]:
    """Stage each pending drop in arrival order; unreadable ones are marked failed with the reason."""
    if not pending:
        return []
    from tunery.data.stages import clean_settings, data_kind

    history = dataset.history(latest, _near_threshold(recipe))
    history_version = latest["version"] if latest else None
    tokenizer, settings = clean_settings(recipe)
    staged = []
    for drop in pending:
        try:
            dataset.stage(recipe, drop, history, data_kind(recipe), tokenizer, history_version, settings)
        except (DataError, QuarantineLimitExceeded, UnicodeDecodeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            manifest.set_status([drop.id], "failed", detail=reason)
            failed[drop.id] = reason
            continue
        staged.append(drop)
    return staged


def resolve_held(recipe: Recipe, owner: str, approve: bool, note: str = "") -> dict:
    """Commit (approve) or reject the drops ``owner`` holds. Held drops are re-deduplicated against rows
    committed while they waited (the staging is redone when the history changed)."""
    manifest, dataset = Manifest.of(recipe), DropDataset.of(recipe)
    with dataset.lock():
        reconcile(manifest, dataset)  # a retried call whose commit landed: those drops are committed now
        held = [d for d in manifest.drops("held") if d.owner == owner]
        if not held:
            latest = dataset.latest()
            return {"version": latest["version"] if latest else None, "committed": [], "rejected": []}
        if not approve:
            manifest.set_status(
                [d.id for d in held], "rejected", detail=f"drift: rejected by a person. {note}".strip()
            )
            latest = dataset.latest()
            return {
                "version": latest["version"] if latest else None,
                "committed": [],
                "rejected": [d.id for d in held],
            }
        latest = dataset.latest()
        staged_against = {d.id: _staged_version(dataset, d.id) for d in held}
        if any(v != (latest["version"] if latest else None) for v in staged_against.values()):
            failed: dict = {}
            held = _stage_all(recipe, dataset, latest, held, manifest, failed)
        committed = _commit(dataset, manifest, held, f"drift approved. {note}".strip())
        latest = dataset.latest()
    return {"version": latest["version"] if latest else None, "committed": committed, "rejected": []}


def _staged_version(dataset: DropDataset, drop_id: str) -> int | None:
    return json.loads((dataset.drop_dir(drop_id) / "report.json").read_text(encoding="utf-8")).get(
        "history_version"
    )


def needs_training(recipe: Recipe, version: int | None) -> bool:
    """A version exists and no registered model was trained on it yet."""
    return version is not None and version not in trained_versions(recipe)


def materialise(
    recipe: Recipe, layout: RunLayout, number: int, drift_dir: str | None = None
) -> dict[str, str]:
    """Write a dataset version into a run folder: the splits (with ``drop_id``), the data report (row
    accounting summed over the drops, quarantine of every drop), the drift files and ``lineage.json``.

    Raises:
        LeakageError: a text (or near-duplicate) in two splits (dedup against the history prevents it).
    """
    dataset = DropDataset.of(recipe)
    version = dataset.version(number)
    rows = dataset.rows(version)
    parts = {
        name: rows[rows["split"] == name]
        .drop(columns=[c for c in ("key", "split", VERDICT) if c in rows.columns])
        .reset_index(drop=True)
        for name in SPLITS
    }
    check_leakage(parts, _near_threshold(recipe))
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in parts.items():
        layout.split(name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(layout.split(name), index=False)
    with layout.quarantine.open("w", encoding="utf-8") as out:
        for entry in version["drops"]:
            out.write((dataset.drop_dir(entry["id"]) / "quarantine.jsonl").read_text(encoding="utf-8"))
    summary = data_report.split_summary(parts)
    report = {
        "clean": dataset.clean_stats(version),
        "quarantine_file": str(layout.quarantine),
        "split": summary,
        "warnings": [
            f"class {label!r} has no rows in {name}"
            for label in sorted(rows["label"].unique())
            for name in SPLITS
            if not (parts[name]["label"] == label).any()
        ],
        "plots": [
            str(data_report.plot_lengths(parts, layout.data_dir / "lengths.png")),
            str(data_report.plot_labels(summary, layout.data_dir / "labels.png")),
        ],
        "dataset": {"version": number, "drops": len(version["drops"]), "new_drops": version["new_drops"]},
    }
    layout.data_report.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    if drift_dir and Path(drift_dir).is_dir():
        shutil.copytree(drift_dir, layout.root / "drift", dirs_exist_ok=True)
    lineage = {
        "dataset_version": number,
        "dataset": str(dataset.root),
        "drops": version["drops"],
        "new_drops": version["new_drops"],
    }
    (layout.root / "lineage.json").write_text(json.dumps(lineage, indent=2), encoding="utf-8")
    return {name: str(layout.split(name)) for name in SPLITS}
