"""The drop zone and its manifest: every complete file dropped into a folder or bucket, taken exactly once.

Protocol for writers (documented in the README):

- **Atomic rename** (one file = one drop): write ``name.csv.part`` (or ``.tmp``, ``.partial``,
  ``.inprogress``, ``.crdownload``, ``.filepart``, ``.swp``, a trailing ``~``, or a name starting with ``.``
  or ``_``) and rename it to its final name when complete. Only names matching
  ``continuous.patterns`` at the top of the zone are taken.
- **Success marker** (a folder = one drop): write the files into a sub-folder and create ``_SUCCESS`` in it
  last. A folder without the marker is ignored, however long it has been there.
- Either way a file is taken only once it has been unchanged for ``continuous.settle_seconds``, a guard for
  writers that can do neither.

The manifest is a SQLite database in the workdir (it must be on a local or POSIX file system). Its
``files`` table remembers every complete file seen, by (uri, size, mtime), so that a restarted or concurrent
watcher hashes nothing twice; its ``drops`` table holds one row per distinct content (SHA-256): the same
bytes dropped twice, under any name, are one drop. Registration runs in one ``BEGIN IMMEDIATE``
transaction, so two watchers scanning at once register each drop once. A drop's status then moves
``pending`` -> ``committed`` (in a dataset version) or ``held`` (waiting for a drift decision) ->
``committed`` / ``rejected``, or ``failed`` (unreadable file; the reason is kept).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import fsspec

from tunery.config import Recipe

SUCCESS_MARKER = "_SUCCESS"
TEMP_SUFFIXES = (
    ".part",
    ".partial",
    ".tmp",
    ".temp",
    ".inprogress",
    ".crdownload",
    ".download",
    ".filepart",
    ".swp",
)
STATUSES = ("pending", "held", "committed", "rejected", "failed")
EVENT = "tunery.drop.arrived"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS drops (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    uri TEXT NOT NULL,
    kind TEXT NOT NULL,
    files TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    arrived_at TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    version INTEGER,
    owner TEXT,
    updated_at TEXT NOT NULL,
    announced_at TEXT,
    announcements INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS files (
    uri TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    sha256 TEXT NOT NULL,
    drop_id TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (uri, size, mtime)
);
"""


@dataclass(frozen=True)
class Candidate:
    """A complete file (or ``_SUCCESS`` folder) in the zone, not yet hashed."""

    uri: str
    name: str
    kind: str  # "file" or "folder"
    size: int
    mtime: float
    files: tuple[str, ...]  # the data files: the file itself, or the folder's files


@dataclass(frozen=True)
class Drop:
    """One row of the manifest's ``drops`` table."""

    id: str
    sha256: str
    name: str
    uri: str
    kind: str
    files: str  # JSON list of the data files' URIs
    size: int
    mtime: float
    arrived_at: str
    status: str
    detail: str
    version: int | None
    owner: str | None
    updated_at: str
    announced_at: str | None
    announcements: int

    def file_list(self) -> list[str]:
        """The drop's data files: the file itself, or the files of a ``_SUCCESS`` folder."""
        return json.loads(self.files)

    def summary(self) -> dict:
        """What lineage records of a drop."""
        return {
            "id": self.id,
            "sha256": self.sha256,
            "name": self.name,
            "uri": self.uri,
            "arrived_at": self.arrived_at,
        }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def zone_uri(recipe: Recipe) -> str:
    """The recipe's drop zone: ``continuous.drop_zone``, else ``data.source``."""
    if recipe.continuous is None:
        raise ValueError(f"recipe {recipe.name!r} has no `continuous` section: it has no drop zone")
    return recipe.continuous.drop_zone or recipe.data.source


def state_dir(recipe: Recipe) -> Path:
    """Where continuous learning keeps its manifest and dataset for this recipe."""
    return Path(recipe.workdir) / "continuous" / recipe.name


def resource_id(recipe: Recipe) -> str:
    """The Prefect event resource of the recipe's drop zone (matched by the deployment trigger)."""
    return f"tunery.drop-zone.{recipe.name}"


def _is_temporary(name: str) -> bool:
    lowered = name.lower()
    return name.startswith((".", "_")) or name.endswith("~") or lowered.endswith(TEMP_SUFFIXES)


def _mtime(info: dict) -> float:
    """Modification time in seconds from an fsspec ``info`` dict (the key differs per file system)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created", "time"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return 0.0


def _full_uri(fs, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def list_candidates(
    zone: str, patterns: list[str], settle_seconds: float, now: float | None = None
) -> list[Candidate]:
    """The complete drops in a zone, by the protocol in the module docstring, oldest first.

    Raises:
        FileNotFoundError: the zone does not exist.
    """
    fs, root = fsspec.core.url_to_fs(zone)
    fs.invalidate_cache()  # object stores cache listings: a long-lived watcher must see new files
    if not fs.isdir(root):
        raise FileNotFoundError(f"drop zone not found (or not a folder): {zone}")
    now = time.time() if now is None else now
    found: list[Candidate] = []
    for info in fs.ls(root, detail=True):
        name = Path(info["name"].rstrip("/")).name
        if _is_temporary(name):
            continue
        if info["type"] == "directory":
            folder = _folder_candidate(fs, info["name"], name, patterns)
            if folder is not None and now - folder.mtime >= settle_seconds:
                found.append(folder)
        elif any(fnmatch.fnmatch(name, p) for p in patterns):
            mtime = _mtime(info)
            if now - mtime >= settle_seconds:
                uri = _full_uri(fs, info["name"])
                found.append(Candidate(uri, name, "file", int(info["size"]), mtime, (uri,)))
    return sorted(found, key=lambda c: (c.mtime, c.name))


def _folder_candidate(fs, path: str, name: str, patterns: list[str]) -> Candidate | None:
    """A folder drop, if its ``_SUCCESS`` marker exists; its mtime is the marker's."""
    entries = {Path(i["name"].rstrip("/")).name: i for i in fs.ls(path, detail=True)}
    marker = entries.get(SUCCESS_MARKER)
    if marker is None:
        return None
    files = sorted(
        i["name"]
        for n, i in entries.items()
        if i["type"] == "file" and not _is_temporary(n) and any(fnmatch.fnmatch(n, p) for p in patterns)
    )
    size = sum(int(entries[Path(f).name]["size"]) for f in files)
    uris = tuple(_full_uri(fs, f) for f in files)
    return Candidate(_full_uri(fs, path), name, "folder", size, _mtime(marker), uris)


def content_sha256(files: tuple[str, ...] | list[str]) -> str:
    """SHA-256 of a drop's content: the file's bytes; for a folder, of each file's name and digest."""
    if len(files) == 1:
        return _file_sha256(files[0])
    outer = hashlib.sha256()
    for uri in sorted(files):
        outer.update(f"{Path(uri).name}\x1f{_file_sha256(uri)}\n".encode())
    return outer.hexdigest()


def _file_sha256(uri: str) -> str:
    digest = hashlib.sha256()
    with fsspec.open(uri, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Manifest:
    """The SQLite manifest of one recipe's drop zone (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def of(cls, recipe: Recipe) -> Manifest:
        return cls(state_dir(recipe) / "manifest.sqlite")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction: concurrent writers queue behind it."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def known(self, candidate: Candidate) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM files WHERE uri = ? AND size = ? AND mtime = ?",
                (candidate.uri, candidate.size, candidate.mtime),
            ).fetchone()
        return row is not None

    def register(self, candidate: Candidate, sha256: str) -> tuple[Drop, bool] | None:
        """Record a complete file; returns its drop and whether the drop is new (False: seen content).

        None when this very file (uri, size, mtime) is already recorded: a concurrent watcher registered
        it between our :meth:`known` check and this transaction, so it is neither new nor a copy.
        """
        stamp = now_iso()
        drop_id = sha256[:16]
        with self.transaction() as db:
            seen = db.execute(
                "SELECT 1 FROM files WHERE uri = ? AND size = ? AND mtime = ?",
                (candidate.uri, candidate.size, candidate.mtime),
            ).fetchone()
            if seen is not None:
                return None
            existing = db.execute("SELECT id FROM drops WHERE sha256 = ?", (sha256,)).fetchone()
            is_new = existing is None
            if is_new:
                db.execute(
                    "INSERT INTO drops (id, sha256, name, uri, kind, files, size, mtime, arrived_at, status,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        drop_id,
                        sha256,
                        candidate.name,
                        candidate.uri,
                        candidate.kind,
                        json.dumps(list(candidate.files)),
                        candidate.size,
                        candidate.mtime,
                        stamp,
                        stamp,
                    ),
                )
            else:
                drop_id = existing["id"]
            db.execute(
                "INSERT OR IGNORE INTO files (uri, size, mtime, sha256, drop_id, seen_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (candidate.uri, candidate.size, candidate.mtime, sha256, drop_id, stamp),
            )
        return self.get(drop_id), is_new

    def get(self, drop_id: str) -> Drop:
        with self._connect() as db:
            row = db.execute("SELECT * FROM drops WHERE id = ?", (drop_id,)).fetchone()
        if row is None:
            raise KeyError(f"no drop {drop_id!r} in {self.path}")
        return _drop(row)

    def drops(self, status: str | None = None) -> list[Drop]:
        """All drops (or those with a status), in arrival order."""
        query, args = "SELECT * FROM drops", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY arrived_at, id", args).fetchall()
        return [_drop(r) for r in rows]

    def set_status(
        self,
        drop_ids: list[str],
        status: str,
        *,
        detail: str | None = None,
        version: int | None = None,
        owner: str | None = None,
        db: sqlite3.Connection | None = None,
    ) -> None:
        """Move drops to a status (inside ``db``'s transaction when given)."""
        if status not in STATUSES:
            raise ValueError(f"unknown drop status {status!r}")
        if db is None:
            with self.transaction() as own:
                return self.set_status(drop_ids, status, detail=detail, version=version, owner=owner, db=own)
        for drop_id in drop_ids:
            db.execute(
                "UPDATE drops SET status = ?, detail = COALESCE(?, detail), version = COALESCE(?, version),"
                " owner = ?, updated_at = ? WHERE id = ?",
                (status, detail, version, owner, now_iso(), drop_id),
            )

    def to_announce(self, reannounce_seconds: float, now: float | None = None) -> list[Drop]:
        """Pending drops never announced, or announced longer ago than ``reannounce_seconds``."""
        now = time.time() if now is None else now

        def due(drop: Drop) -> bool:
            if drop.announced_at is None:
                return True
            return now - datetime.fromisoformat(drop.announced_at).timestamp() >= reannounce_seconds

        return [drop for drop in self.drops("pending") if due(drop)]

    def mark_announced(self, drop_ids: list[str]) -> None:
        with self.transaction() as db:
            for drop_id in drop_ids:
                db.execute(
                    "UPDATE drops SET announced_at = ?, announcements = announcements + 1 WHERE id = ?",
                    (now_iso(), drop_id),
                )

    def requeue(self, drop_id: str) -> Drop:
        """Put a failed, rejected or held drop back to pending (after the file or the data was fixed)."""
        drop = self.get(drop_id)
        if drop.status not in ("failed", "rejected", "held"):
            raise ValueError(
                f"drop {drop_id} is {drop.status}: only failed, rejected or held drops can be requeued"
            )
        self.set_status([drop_id], "pending", detail=f"requeued (was {drop.status}: {drop.detail})")
        return self.get(drop_id)


def _drop(row: sqlite3.Row) -> Drop:
    return Drop(**{k: row[k] for k in row.keys()})  # noqa: SIM118 (iterating a Row yields values)


@dataclass(frozen=True)
class ScanResult:
    new: list[dict]
    duplicates: list[dict]
    candidates: int

    def as_dict(self) -> dict:
        return asdict(self)


def scan(recipe: Recipe, now: float | None = None) -> ScanResult:
    """Register the zone's complete files that the manifest has not seen (each hashed once).

    Returns:
        The new drops, the files whose content an earlier drop already had, and how many complete
        candidates the zone holds.
    """
    cfg = recipe.continuous
    manifest = Manifest.of(recipe)
    candidates = list_candidates(zone_uri(recipe), cfg.patterns, cfg.settle_seconds, now)
    new, duplicates = [], []
    for candidate in candidates:
        if manifest.known(candidate):
            continue
        registered = manifest.register(candidate, content_sha256(candidate.files))
        if registered is None:  # a concurrent watcher took this file first
            continue
        drop, is_new = registered
        entry = {"id": drop.id, "sha256": drop.sha256, "name": candidate.name, "uri": candidate.uri}
        (new if is_new else duplicates).append(entry)
    return ScanResult(new=new, duplicates=duplicates, candidates=len(candidates))
