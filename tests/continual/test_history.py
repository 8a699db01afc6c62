"""The versioned dataset of continuous learning, driven as the flow drives it: scan the zone, then update.

Real SMS Spam Collection slices are dropped into a temporary zone; every test checks what ends up in the
dataset versions, the drops' reports and quarantine files, and the manifest.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SHARED_DATA, read_sms_spam
from tunery.config import CleaningConfig, ContinuousConfig, DataConfig, DriftConfig, MlflowConfig, Recipe
from tunery.continual import continuous, drops
from tunery.continual.history import DropDataset
from tunery.data.clean import clean
from tunery.data.normalise import normalise_many

pytestmark = pytest.mark.realdata


@functools.cache
def _pool() -> pd.DataFrame:
    """The first 1,000 SMS messages that survive default cleaning: no exact or near duplicates among them
    (after PII scrubbing), so every overlap between the drops below is one that the test put there."""
    full = read_sms_spam(SHARED_DATA)
    rows = full.iloc[:1000].rename(columns={"SMS": "text", "Label": "label"})
    rows = rows.assign(source="pool", row=range(len(rows)), error="")
    kept = clean(rows, CleaningConfig()).kept
    texts = kept["raw_text"].str.strip()  # as ingest reads them back from a TSV
    return pd.DataFrame({"Label": kept["label"], "SMS": texts}).reset_index(drop=True)


@pytest.fixture
def pool(shared_data) -> pd.DataFrame:
    return _pool()


def _recipe(tmp_path: Path, drift: DriftConfig | None = None) -> Recipe:
    zone = tmp_path / "zone"
    zone.mkdir(parents=True, exist_ok=True)
    return Recipe(
        name="sms",
        data=DataConfig(source=str(zone), text_columns=["SMS"], label_column="Label"),
        continuous=ContinuousConfig(settle_seconds=0, drift=drift or DriftConfig()),
        mlflow=MlflowConfig(registered_model="sms"),
        workdir=str(tmp_path / "work"),
    )


def _drop(recipe: Recipe, name: str, rows: pd.DataFrame) -> None:
    path = Path(drops.zone_uri(recipe)) / name
    rows[["Label", "SMS"]].to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE)


def _update(recipe: Recipe, owner: str = "flow-run-1") -> dict:
    drops.scan(recipe)
    return continuous.update_dataset(recipe, owner)


def _report(dataset: DropDataset, drop_id: str) -> dict:
    return json.loads((dataset.drop_dir(drop_id) / "report.json").read_text(encoding="utf-8"))


def _quarantine(dataset: DropDataset, drop_id: str) -> pd.DataFrame:
    path = dataset.drop_dir(drop_id) / "quarantine.jsonl"
    if not path.read_text(encoding="utf-8").strip():  # nothing quarantined: an empty file
        return pd.DataFrame(columns=["source", "row", "reason", "detail", "label", "raw_text"])
    return pd.read_json(path, lines=True, dtype=False)


def _rows(dataset: DropDataset, drop_id: str) -> pd.DataFrame:
    return pd.read_parquet(dataset.drop_dir(drop_id) / "rows.parquet")


def _id_of(recipe: Recipe, name: str) -> str:
    (drop,) = [d for d in drops.Manifest.of(recipe).drops() if d.name == name]
    return drop.id


def _splits(dataset: DropDataset, version: dict) -> dict[str, str]:
    rows = dataset.rows(version, columns=["key", "split"])
    assert rows["key"].is_unique  # no text twice in a version (hence never in two splits)
    return dict(zip(rows["key"], rows["split"], strict=True))


def _cleaned_texts(rows: pd.DataFrame) -> list[str]:
    """The texts of pool rows as a drop stores them (cleaned: PII scrubbed, whitespace collapsed)."""
    frame = rows.rename(columns={"SMS": "text", "Label": "label"}).assign(source="x", row=0, error="")
    return clean(frame, CleaningConfig()).kept["text"].tolist()


def _raw_texts(pool: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """The pool's raw texts whose cleaned text is one of ``rows`` (kept rows store the cleaned text)."""
    cleaned = dict(zip(_cleaned_texts(pool), pool["SMS"], strict=True))
    return [cleaned[t] for t in rows["text"]]


# --- row accounting and dedup against the history -----------------------------------------------------


def test_each_drop_accounts_for_every_row_and_overlaps_are_removed_naming_the_earlier_drop(tmp_path, pool):
    recipe = _recipe(tmp_path)
    _drop(recipe, "a.tsv", pool.iloc[0:200])
    assert _update(recipe)["version"] == 1
    dataset = DropDataset.of(recipe)
    a = _id_of(recipe, "a.tsv")

    flipped = pool.iloc[[10]].assign(Label=lambda f: f["Label"].map({"ham": "spam", "spam": "ham"}))
    _drop(recipe, "b.tsv", pd.concat([pool.iloc[150:300], flipped]))
    result = _update(recipe)
    b = _id_of(recipe, "b.tsv")
    assert result["version"] == 2 and result["committed"] == [b]

    for drop_id, rows_in in ((a, 200), (b, 151)):
        report, kept, quarantine = (
            _report(dataset, drop_id),
            _rows(dataset, drop_id),
            _quarantine(dataset, drop_id),
        )
        assert report["rows_in"] == rows_in
        assert report["rows_in"] == report["kept"] + report["quarantined"] + report["deduplicated"]
        assert report["kept"] == len(kept) and len(quarantine) == rows_in - len(kept)
        assert (quarantine["reason"] == "duplicate").sum() == report["deduplicated"]
        assert (quarantine["reason"] != "duplicate").sum() == report["quarantined"]
        assert sum(report["quarantine_reasons"].values()) == report["quarantined"]
        assert sum(report["split_rows"].values()) == report["kept"]

    assert _report(dataset, a)["kept"] == 200  # the pool is clean: drop a keeps everything
    quarantine = _quarantine(dataset, b).set_index("raw_text")
    overlap = pool.iloc[150:200]["SMS"]
    assert set(overlap) <= set(quarantine.index)  # all 50 rows b shares with a are removed ...
    assert (quarantine.loc[overlap, "reason"] == "duplicate").all()
    assert quarantine.loc[overlap, "detail"].str.contains(f"of a row of drop {a}").all()  # ... naming a
    assert _report(dataset, b)["history_duplicates"] == 50

    conflict = quarantine.loc[pool.iloc[10]["SMS"]]
    assert conflict["reason"] == "conflicting_duplicate" and conflict["label"] == flipped["Label"].iloc[0]
    assert a in conflict["detail"] and repr(pool.iloc[10]["Label"]) in conflict["detail"]
    assert _report(dataset, b)["quarantine_reasons"] == {"conflicting_duplicate": 1}
    assert _report(dataset, b)["kept"] == 100  # rows 200..299 are new

    assert not set(_rows(dataset, a)["key"]) & set(_rows(dataset, b)["key"])  # no text in two drops
    version = dataset.latest()
    assert version["rows"] == 300 and [e["rows"] for e in version["drops"]] == [200, 100]
    assert version["parent"] == 1 and version["new_drops"] == [b]
    assert dataset.clean_stats(version)["rows_in"] == 351
    assert drops.Manifest.of(recipe).get(b).status == "committed"
    assert drops.Manifest.of(recipe).get(b).version == 2


def test_a_drop_that_only_repeats_the_history_adds_no_rows(tmp_path, pool):
    recipe = _recipe(tmp_path)
    _drop(recipe, "a.tsv", pool.iloc[0:120])
    _update(recipe)
    _drop(recipe, "again.tsv", pool.iloc[0:120].iloc[::-1])  # other bytes (reversed), same rows
    result = _update(recipe)
    dataset = DropDataset.of(recipe)
    again = _id_of(recipe, "again.tsv")
    report = _report(dataset, again)
    assert result["committed"] == [again]
    assert report["kept"] == 0 and report["deduplicated"] == 120 and report["rows_in"] == 120
    assert dataset.latest()["rows"] == 120
    # nothing new to train on: no new version, and the drop says why
    assert dataset.version_numbers() == [1] and result["version"] == 1
    drop = drops.Manifest.of(recipe).get(again)
    assert drop.status == "committed" and drop.version == 1 and "no new rows" in drop.detail


def test_a_drop_whose_name_looks_like_a_glob_is_read_from_that_file(tmp_path, pool):
    # regression: `export[1].tsv` used to be read as the glob matching `export1.tsv`
    recipe = _recipe(tmp_path)
    _drop(recipe, "export[1].tsv", pool.iloc[0:100])
    _drop(recipe, "export1.tsv", pool.iloc[100:200])
    _drop(recipe, "what?.tsv", pool.iloc[200:300])
    _update(recipe)
    dataset = DropDataset.of(recipe)
    zone = Path(drops.zone_uri(recipe))
    for name, start in (("export[1].tsv", 0), ("export1.tsv", 100), ("what?.tsv", 200)):
        rows = _rows(dataset, _id_of(recipe, name))
        assert set(rows["source"]) == {str(zone / name)}
        assert set(rows["key"]) == set(normalise_many(_cleaned_texts(pool.iloc[start : start + 100])))


# --- splits never move --------------------------------------------------------------------------------


def _grow(recipe: Recipe, parts: list[tuple[str, pd.DataFrame]]) -> DropDataset:
    for name, rows in parts:
        _drop(recipe, name, rows)
        assert _update(recipe)["committed"] == [_id_of(recipe, name)]
    return DropDataset.of(recipe)


def test_rows_keep_their_split_as_drops_arrive_and_in_any_order(tmp_path, pool):
    parts = [("a.tsv", pool.iloc[0:150]), ("b.tsv", pool.iloc[100:250]), ("c.tsv", pool.iloc[200:350])]
    dataset = _grow(_recipe(tmp_path / "forward"), parts)
    assert dataset.version_numbers() == [1, 2, 3]
    v1, v3 = dataset.version(1), dataset.version(3)
    first, last = _splits(dataset, v1), _splits(dataset, v3)
    assert len(first) == 150 and len(last) == 350
    assert {key: last[key] for key in first} == first  # no row of version 1 moved
    test_v1 = {k for k, s in first.items() if s == "test"}
    test_v3 = {k for k, s in last.items() if s == "test"}
    assert test_v1 and test_v1 < test_v3  # the golden test set only grows
    assert set(last.values()) == {"train", "validation", "test"}
    assert _splits(dataset, dataset.version(1)) == first  # an old version still reads the same

    backward = _grow(_recipe(tmp_path / "backward"), parts[::-1])
    assert _splits(backward, backward.latest()) == last  # same rows, same split per text


# --- failures, crashes, drift decisions ---------------------------------------------------------------


def test_bad_drops_fail_with_a_reason_and_the_good_ones_are_committed(tmp_path, pool):
    recipe = _recipe(tmp_path)
    zone = Path(drops.zone_uri(recipe))
    _drop(recipe, "a.tsv", pool.iloc[0:100])
    pool.iloc[100:200][["SMS"]].to_csv(zone / "no-label.tsv", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    (zone / "garbage.csv").write_bytes(bytes(range(256)) * 8)
    _drop(recipe, "c.tsv", pool.iloc[200:300])

    result = _update(recipe)
    ids = {name: _id_of(recipe, name) for name in ("a.tsv", "no-label.tsv", "garbage.csv", "c.tsv")}
    assert sorted(result["committed"]) == sorted([ids["a.tsv"], ids["c.tsv"]])
    assert set(result["failed"]) == {ids["no-label.tsv"], ids["garbage.csv"]}
    manifest = drops.Manifest.of(recipe)
    no_label, garbage = manifest.get(ids["no-label.tsv"]), manifest.get(ids["garbage.csv"])
    assert no_label.status == "failed" and "Label" in no_label.detail and "no-label.tsv" in no_label.detail
    assert garbage.status == "failed" and "binary" in garbage.detail
    version = DropDataset.of(recipe).latest()
    assert version["version"] == 1 and {e["id"] for e in version["drops"]} == {ids["a.tsv"], ids["c.tsv"]}
    assert version["rows"] == 200

    # requeued without a fix: tried once more, failed again, nothing committed
    manifest.requeue(ids["no-label.tsv"])
    assert list(continuous.update_dataset(recipe, "flow-run-2")["failed"]) == [ids["no-label.tsv"]]
    assert manifest.get(ids["no-label.tsv"]).status == "failed"  # still unreadable: failed again
    assert DropDataset.of(recipe).version_numbers() == [1]


def test_reconcile_repairs_a_crash_between_the_version_file_and_the_manifest(tmp_path, pool):
    recipe = _recipe(tmp_path)
    _drop(recipe, "a.tsv", pool.iloc[0:100])
    _update(recipe)
    _drop(recipe, "b.tsv", pool.iloc[100:200])
    _drop(recipe, "c.tsv", pool.iloc[200:300])
    drops.scan(recipe)
    manifest, dataset = drops.Manifest.of(recipe), DropDataset.of(recipe)
    pending = manifest.drops("pending")
    assert len(pending) == 2

    # what update_dataset does, up to the crash: staged and written as version 2, manifest not told
    with dataset.lock():
        history = dataset.history(dataset.latest(), recipe.cleaning.near_duplicate_threshold)
        for drop in pending:
            dataset.stage(recipe, drop, history, "labelled_text", None, 1)
        dataset.commit(pending)
    assert [d.status for d in manifest.drops() if d.id in {p.id for p in pending}] == ["pending"] * 2

    fixed = continuous.reconcile(manifest, dataset)
    assert sorted(fixed) == sorted(d.id for d in pending)
    assert all(manifest.get(d.id).status == "committed" and manifest.get(d.id).version == 2 for d in pending)
    assert manifest.get(_id_of(recipe, "a.tsv")).version == 1
    assert continuous.reconcile(manifest, dataset) == []  # nothing left to repair

    result = continuous.update_dataset(recipe, "flow-run-2")  # the restarted flow: nothing to redo
    assert result["version"] == 2 and result["committed"] == []
    assert dataset.version_numbers() == [1, 2]


# Default thresholds: a small slice of the same corpus scores a raw vocabulary PSI near 0.3 by chance, but
# drift is judged net of that sampling noise, so the "ordinary" drops below do not drift.
LABEL_DRIFT: dict = {}


def _history_and_spam(tmp_path: Path, pool: pd.DataFrame, action: str) -> Recipe:
    """Version 1 from 250 mixed rows, and a drop of 60 spam-only rows waiting in the zone."""
    recipe = _recipe(tmp_path, DriftConfig(action=action, **LABEL_DRIFT))
    _drop(recipe, "history.tsv", pool.iloc[0:250])
    assert _update(recipe)["version"] == 1
    spam = pool.iloc[250:][pool.iloc[250:]["Label"] == "spam"].iloc[:60]
    _drop(recipe, "spam-only.tsv", spam)
    return recipe


def test_drift_action_block_rejects_the_drop_and_creates_no_version(tmp_path, pool):
    recipe = _history_and_spam(tmp_path, pool, "block")
    result = _update(recipe)
    spam = _id_of(recipe, "spam-only.tsv")
    assert result["rejected"] == [spam] and result["committed"] == [] and result["version"] == 1
    assert result["drift"]["drifted"] and any("label PSI" in line for line in result["drift"]["high"])
    drop = drops.Manifest.of(recipe).get(spam)
    assert drop.status == "rejected" and "drift" in drop.detail and "label PSI" in drop.detail
    dataset = DropDataset.of(recipe)
    assert dataset.version_numbers() == [1]
    assert (dataset.rows(dataset.latest())["label"] == "ham").mean() > 0.8  # the history, unchanged
    assert _update(recipe)["rejected"] == []  # not taken again


def test_drift_action_pause_holds_the_drop_until_its_owner_approves(tmp_path, pool):
    recipe = _history_and_spam(tmp_path, pool, "pause")
    result = _update(recipe, owner="flow-run-A")
    spam = _id_of(recipe, "spam-only.tsv")
    assert result["held"] == [spam] and result["version"] == 1
    manifest, dataset = drops.Manifest.of(recipe), DropDataset.of(recipe)
    held = manifest.get(spam)
    assert held.status == "held" and held.owner == "flow-run-A" and "label PSI" in held.detail
    assert manifest.to_announce(300, now=10**12) == []  # held drops start no retrain

    assert continuous.resolve_held(recipe, "flow-run-B", approve=True)["committed"] == []  # not its drops
    assert manifest.get(spam).status == "held"

    # the dataset moves on while the decision waits: a normal drop that shares 5 spam texts with the held one
    spam_rows = _rows(dataset, spam)
    shared = pool[pool["SMS"].isin(_raw_texts(pool, spam_rows))].iloc[:5]
    _drop(recipe, "ordinary.tsv", pd.concat([pool.iloc[700:850], shared]))
    moved = _update(recipe, owner="flow-run-C")
    ordinary = _id_of(recipe, "ordinary.tsv")
    assert moved["committed"] == [ordinary] and moved["version"] == 2

    approved = continuous.resolve_held(recipe, "flow-run-A", approve=True, note="new spam campaign")
    assert approved == {"version": 3, "committed": [spam], "rejected": []}
    drop = manifest.get(spam)
    assert drop.status == "committed" and drop.version == 3 and "new spam campaign" in drop.detail
    version = dataset.version(3)
    assert version["new_drops"] == [spam] and version["parent"] == 2
    # staged again against version 2: the 5 shared texts stay with the drop that committed them first
    report = _report(dataset, spam)
    assert report["history_version"] == 2 and report["history_duplicates"] == 5
    assert report["kept"] == len(spam_rows) - 5
    assert not set(_rows(dataset, spam)["key"]) & set(_rows(dataset, ordinary)["key"])
    assert (_rows(dataset, spam)["label"] == "spam").all()


def test_drift_action_pause_then_a_refusal_rejects_the_held_drop(tmp_path, pool):
    recipe = _history_and_spam(tmp_path, pool, "pause")
    _update(recipe, owner="flow-run-A")
    spam = _id_of(recipe, "spam-only.tsv")
    result = continuous.resolve_held(recipe, "flow-run-A", approve=False, note="looks like an attack")
    assert result == {"version": 1, "committed": [], "rejected": [spam]}
    drop = drops.Manifest.of(recipe).get(spam)
    assert drop.status == "rejected" and "looks like an attack" in drop.detail
    assert DropDataset.of(recipe).version_numbers() == [1]
    assert continuous.resolve_held(recipe, "flow-run-A", approve=True)["committed"] == []  # decided once


# --- review follow-ups: nothing stuck, nothing staged twice, nothing read from rewritten files -----------


def test_a_retried_update_still_reports_the_drops_it_holds(tmp_path, pool):
    recipe = _history_and_spam(tmp_path, pool, "pause")
    held = _update(recipe, owner="flow-run-A")["held"]
    spam = _id_of(recipe, "spam-only.tsv")
    assert held == [spam]
    # the task is retried (e.g. publishing its artifact failed): nothing is pending, but it must still pause
    assert continuous.update_dataset(recipe, "flow-run-A")["held"] == [spam]
    assert continuous.update_dataset(recipe, "flow-run-Z")["held"] == []


def test_a_held_drop_whose_run_ended_is_rejected_after_the_pause_timeout(tmp_path, pool):
    import time

    recipe = _history_and_spam(tmp_path, pool, "pause")
    _update(recipe, owner="flow-run-A")  # ... and that run crashes while paused
    spam = _id_of(recipe, "spam-only.tsv")
    manifest = drops.Manifest.of(recipe)
    limit = (recipe.continuous.drift.pause_timeout_minutes + continuous.HELD_GRACE_MINUTES) * 60
    assert continuous.expire_held(recipe, manifest, now=time.time() + limit - 60) == []
    assert manifest.get(spam).status == "held"
    assert continuous.expire_held(recipe, manifest, now=time.time() + limit + 60) == [spam]
    drop = manifest.get(spam)
    assert drop.status == "rejected" and "no decision within" in drop.detail


def test_resolve_held_does_not_stage_again_a_drop_whose_commit_already_landed(tmp_path, pool):
    recipe = _history_and_spam(tmp_path, pool, "pause")
    _update(recipe, owner="flow-run-A")
    spam = _id_of(recipe, "spam-only.tsv")
    dataset, manifest = DropDataset.of(recipe), drops.Manifest.of(recipe)
    kept = _report(dataset, spam)["kept"]
    with dataset.lock():
        dataset.commit([manifest.get(spam)])  # the commit landed, then the status update failed: a retry
    assert continuous.resolve_held(recipe, "flow-run-A", approve=True)["committed"] == []
    assert dataset.version_numbers() == [1, 2]
    assert manifest.get(spam).status == "committed" and manifest.get(spam).version == 2
    assert _report(dataset, spam)["kept"] == kept == len(_rows(dataset, spam)) > 0  # rows intact


def test_a_drop_rewritten_in_place_after_registration_fails_and_the_new_bytes_are_a_new_drop(tmp_path, pool):
    recipe = _recipe(tmp_path)
    _drop(recipe, "a.tsv", pool.iloc[0:100])
    drops.scan(recipe)
    first = _id_of(recipe, "a.tsv")
    _drop(recipe, "a.tsv", pool.iloc[100:220])  # the producer rewrites the registered file in place
    result = continuous.update_dataset(recipe, "flow-run-1")
    assert first in result["failed"] and "changed after it was registered" in result["failed"][first]
    assert drops.Manifest.of(recipe).get(first).status == "failed"
    assert DropDataset.of(recipe).version_numbers() == []
    result = _update(recipe)  # the watcher sees the new bytes as a new drop
    (second,) = result["committed"]
    assert second != first and _report(DropDataset.of(recipe), second)["rows_in"] == 120
