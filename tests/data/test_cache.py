"""Content keys of the data stages, the index of live cached outputs, and adopting reused files."""

from __future__ import annotations

import json

import pandas as pd

from tunery.config import Recipe
from tunery.data import cache
from tunery.data.stages import adopt_data
from tunery.layout import RunLayout


def _recipe(source, workdir, **sections) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "cache",
            "data": {"source": str(source), "text_columns": ["text"], "label_column": "label"},
            "mlflow": {"registered_model": "cache"},
            "workdir": str(workdir),
            **sections,
        }
    )


def test_fingerprint_follows_content_not_timestamps(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\nhello,a\n")
    first = cache.source_fingerprint(str(data))
    data.write_text("text,label\nhello,a\n")  # same bytes, new mtime
    assert cache.source_fingerprint(str(data)) == first
    data.write_text("text,label\nhello,b\n")
    assert cache.source_fingerprint(str(data)) != first


def test_a_new_file_in_a_folder_changes_the_fingerprint(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nx,1\n")
    before = cache.source_fingerprint(str(tmp_path))
    (tmp_path / "b.csv").write_text("text,label\ny,2\n")
    assert cache.source_fingerprint(str(tmp_path)) != before


def test_keys_change_only_from_the_stage_whose_inputs_changed(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\nhello,a\n")
    base = cache.stage_keys(_recipe(data, tmp_path))
    seed = cache.stage_keys(_recipe(data, tmp_path, split={"seed": 7}))
    assert (
        seed["ingest"] == base["ingest"] and seed["clean"] == base["clean"] and seed["split"] != base["split"]
    )
    cleaning = cache.stage_keys(_recipe(data, tmp_path, cleaning={"lowercase": True}))
    assert cleaning["ingest"] == base["ingest"]
    assert cleaning["clean"] != base["clean"] and cleaning["split"] != base["split"]
    data.write_text("text,label\nhello,a\nworld,b\n")
    grown = cache.stage_keys(_recipe(data, tmp_path))
    assert all(grown[s] != base[s] for s in cache.STAGES)
    # where runs go and how the model trains do not touch the data stages
    other = cache.stage_keys(_recipe(data, tmp_path / "elsewhere", training={"epochs": 9}))
    assert other == grown


def test_index_reuses_a_key_only_while_its_outputs_exist(tmp_path):
    index = cache.StageIndex(tmp_path)
    fresh = index.cache_key("clean", "c" * 64)
    assert (
        fresh.startswith("tunery-clean-") and index.cache_key("clean", "c" * 64) != fresh
    )  # unknown: unique
    output = tmp_path / "clean.parquet"
    output.write_bytes(b"x")
    index.record("clean", "c" * 64, fresh, [str(output)])
    assert index.cache_key("clean", "c" * 64) == fresh
    output.unlink()  # e.g. make clean-runs
    assert index.cache_key("clean", "c" * 64) != fresh


def _record_many(workdir: str, writer: int, count: int) -> None:
    index = cache.StageIndex(workdir)
    for i in range(count):
        key = f"{writer:02d}{i:062d}"
        index.record("clean", key, f"tunery-clean-{key}-{writer}", [f"/out/{writer}/{i}"])


def test_concurrent_runs_sharing_a_workdir_lose_no_index_entry(tmp_path):
    # four real processes record 40 entries each into one index at the same time (runs sharing a workdir).
    # Spawned, not forked: a fork copies the test process's threads' locks (pytest-xdist runs an execnet
    # I/O thread), and a child could start with one held and hang.
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_record_many, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
    assert [p.exitcode for p in writers] == [0, 0, 0, 0]
    index = json.loads(cache.StageIndex(tmp_path).path.read_text(encoding="utf-8"))
    assert len(index) == 160  # a read-modify-write race would drop some
    assert index[f"clean:{3:02d}{39:062d}"]["outputs"] == ["/out/3/39"]
    assert not list(index_dir_leftovers(tmp_path))


def index_dir_leftovers(workdir):
    """Temporary index files left behind (each write replaces the index atomically from one)."""
    return (
        p
        for p in (workdir / "cache").iterdir()
        if p.name.startswith(".data-stages.json.") and "lock" not in p.name
    )


def test_adopt_data_completes_the_run_folder_and_never_writes_through_links(tmp_path):
    old = RunLayout.create(tmp_path, "old")
    old.data_dir.mkdir(parents=True)
    pd.DataFrame({"text": ["a"], "label": ["x"]}).to_parquet(old.cleaned)
    old.quarantine.write_text('{"reason": "empty_text"}\n')
    (old.data_dir / "lengths.png").write_bytes(b"png")
    report = {
        "clean": {"rows_in": 2},
        "quarantine_file": str(old.quarantine),
        "plots": [str(old.data_dir / "lengths.png")],
    }
    old.data_report.write_text(json.dumps(report))
    (old.data_dir / ".arrow").mkdir()
    (old.data_dir / ".arrow" / "scratch").write_text("scratch")

    new = RunLayout.create(tmp_path, "new")
    taken = adopt_data(new, [old.cleaned])
    assert set(taken) == {"clean.parquet", "quarantine.jsonl", "lengths.png", "report.json"}
    assert not (new.data_dir / ".arrow").exists()
    adopted = json.loads(new.data_report.read_text())
    assert adopted["quarantine_file"] == str(new.quarantine)
    assert adopted["plots"] == [str(new.data_dir / "lengths.png")]
    assert json.loads(old.data_report.read_text()) == report, "the earlier run's report is untouched"
    assert adopt_data(new, [old.cleaned]) == [], "nothing left to take"


def test_cache_keys_carry_their_content_key():
    index_key = cache.StageIndex("/unused").cache_key("split", "a" * 64)
    assert cache.StageIndex.parse(index_key) == ("split", "a" * 64)
    assert cache.StageIndex.parse("some-other-key") is None


def test_adopt_data_takes_each_file_from_the_latest_stage_that_made_it(tmp_path):
    """Split cached from run B, clean cached from run A (other split seed): the splits and report are B's."""
    run_a, run_b = RunLayout.create(tmp_path, "a"), RunLayout.create(tmp_path, "b")
    for run, tag in ((run_a, "seed-0"), (run_b, "seed-7")):
        run.split("train").parent.mkdir(parents=True)
        pd.DataFrame({"text": [tag], "label": ["x"]}).to_parquet(run.split("train"))
        run.data_report.write_text(json.dumps({"split": {"train": {"digest": tag}}, "plots": []}))
        pd.DataFrame({"text": ["a"], "label": ["x"]}).to_parquet(run.cleaned)
    new = RunLayout.create(tmp_path, "new")
    adopt_data(new, [run_a.ingested, run_a.cleaned, run_b.split("train")])
    assert pd.read_parquet(new.split("train"))["text"].tolist() == ["seed-7"]
    assert json.loads(new.data_report.read_text())["split"]["train"]["digest"] == "seed-7"


def test_conversations_are_cleaned_again_for_another_model_length(tmp_path):
    """Conversations are checked against the model's template and fitted to its max_length in the clean
    stage: another length must not reuse that cleaning (classification rows do not depend on it)."""
    data = tmp_path / "c.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    )

    def keys(max_length: int, conversation: bool) -> dict:
        sections = {"task": "sft", "model": {"base": "smollm2", "max_length": max_length}}
        recipe = _recipe(data, tmp_path, **sections)
        if conversation:
            recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"conversation": {}})})
            recipe = Recipe.model_validate(recipe.model_dump())
        return cache.stage_keys(recipe)

    short, long = keys(256, True), keys(512, True)
    assert short["ingest"] == long["ingest"] and short["clean"] != long["clean"]
    assert keys(256, False)["clean"] == keys(512, False)["clean"]
