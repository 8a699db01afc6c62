"""Content keys of the data stages, so that an orchestrator can skip a stage whose inputs did not change.

A stage's key hashes everything its output depends on:

- ingest: the content of every source file, held-out sets included (SHA-256 of local files; fsspec's
  ``ukey`` for remote ones, which hashes what the store reports: ETag, size, modification time), the
  recipe's ``data`` and ``task``, the held-out sets' settings and the data code's version;
- clean: the ingest key, the ``cleaning`` section (and the model and its ``max_length`` when ``max_tokens``
  is set, or for conversations, which are checked against the model's template and fitted to its length);
- split: the clean key and the ``split`` section.

So a change to the split seed re-runs only the split; a new file in the source re-runs all three.

:class:`StageIndex` records, per workdir, which cache key produced which output and where the output is,
so that a key whose output folder was deleted (e.g. ``make clean-runs``) is not reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from functools import lru_cache
from pathlib import Path

from tunery.config import Recipe
from tunery.data.ingest import expand_source
from tunery.data.stages import held_out_sources
from tunery.ops.locking import exclusive

STAGES = ("ingest", "clean", "split")
_CODE = Path(__file__).resolve().parent


def _sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a local file (memoised on path, size and mtime: hashing twice per run is wasted time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_fingerprint(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for file in files:
        stat = file.stat()
        out.append(f"{file.name}:{stat.st_size}:{_file_sha256(str(file), stat.st_size, stat.st_mtime_ns)}")
    return out


def source_fingerprint(source: str) -> str:
    """A hash of the data source's content: the same files with the same bytes give the same value.

    Raises:
        DataError: nothing matches the source.
    """
    parts = []
    for name in expand_source(source):
        if "://" in name and not name.startswith("file://"):
            import fsspec

            fs, _, (path,) = fsspec.get_fs_token_paths(name)
            parts.append(f"{name}:{fs.ukey(path)}")
        else:
            parts.append(f"{name}:" + ",".join(_local_fingerprint(Path(name.removeprefix("file://")))))
    return _sha256(*parts)


def code_version() -> str:
    """A hash of the data stages' source code: changed cleaning code must not reuse old outputs."""
    files = sorted(_CODE.glob("*.py"))
    return _sha256(*(f"{f.name}:{hashlib.sha256(f.read_bytes()).hexdigest()}" for f in files))


def stage_keys(recipe: Recipe) -> dict[str, str]:
    """The content key of each data stage for this recipe and the current source files."""

    def section(name: str) -> str:
        return json.dumps(recipe.model_dump(mode="json")[name], sort_keys=True)

    # preference data: its format decides the reading, its objective whether unpaired rows are refused
    preference = section("preference") if recipe.task == "preference" else ""
    ingest = _sha256(
        "ingest",
        code_version(),
        recipe.task,
        section("data"),
        preference,
        source_fingerprint(recipe.data.source),
        # held-out sets (data.test_source, validation_source, evaluation.sets): their names and bytes
        *(
            f"{name}={held.model_dump_json()}:{source_fingerprint(held.source)}"
            for name, held in held_out_sources(recipe).items()
        ),
    )
    uses_model = (
        recipe.cleaning.max_tokens or recipe.data.conversation is not None or recipe.task == "preference"
    )
    tokenizer = f"{recipe.model.base}:{recipe.model.max_length}" if uses_model else ""
    clean = _sha256("clean", ingest, section("cleaning"), tokenizer)
    split = _sha256("split", clean, section("split"))
    return {"ingest": ingest, "clean": clean, "split": split}


class StageIndex:
    """``<workdir>/cache/data-stages.json``: content key -> (the orchestrator's cache key, output path).

    The orchestrator caches a stage's result under a cache key; this index lets it reuse that key only
    while the output it points to still exists, and otherwise hand out a fresh key (a cache miss).
    """

    def __init__(self, workdir: str | Path) -> None:
        self.path = Path(workdir) / "cache" / "data-stages.json"

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def cache_key(self, stage: str, content_key: str) -> str:
        """The cache key to use: the recorded one if its output still exists, else a new unique one."""
        entry = self._load().get(f"{stage}:{content_key}")
        if entry and all(Path(p).exists() for p in entry["outputs"]):
            return entry["cache_key"]
        return f"tunery-{stage}-{content_key}-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def parse(cache_key: str) -> tuple[str, str] | None:
        """``(stage, content key)`` of a cache key made by :meth:`cache_key`, else None.

        The content key is read back from the cache key, not recomputed: the source may have changed
        while the stage ran, and its outputs belong to the content the key was computed for."""
        parts = cache_key.split("-")
        if len(parts) == 4 and parts[0] == "tunery" and parts[1] in STAGES and len(parts[2]) == 64:
            return parts[1], parts[2]
        return None

    def record(self, stage: str, content_key: str, cache_key: str, outputs: list[str]) -> None:
        """Remember that ``cache_key`` produced ``outputs``.

        Read-modify-write under a lock file (runs sharing a workdir record concurrently: without it, one
        run's entry could be lost), then an atomic replace (readers never see a half-written index)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(self.path.with_name(f".{self.path.name}.lock")):
            index = self._load()
            index[f"{stage}:{content_key}"] = {"cache_key": cache_key, "outputs": [str(p) for p in outputs]}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
            tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
            tmp.replace(self.path)
