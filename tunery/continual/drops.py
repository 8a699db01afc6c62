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

Only regular files inside the zone are read. A local zone is listed with ``lstat`` and files are opened
with ``O_NOFOLLOW | O_NONBLOCK`` and checked again (``fstat``, real path): a symlink, FIFO, socket, device,
unreadable file or anything resolving outside the zone is refused, one entry at a time, logged and recorded
once in the ``rejects`` table with a reason of ``REJECT_REASONS``. Names are shown through :func:`shown`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import fsspec

from tunery.config import Recipe

SUCCESS_MARKER = "_SUCCESS"
_TEMP = ".part .partial .tmp .temp .inprogress .crdownload .download .filepart .swp"
TEMP_SUFFIXES = tuple(_TEMP.split())
STATUSES = ("pending", "held", "committed", "rejected", "failed")
REJECT_REASONS = ("symlink", "dangling_symlink", "outside_zone", "not_regular_file", "unreadable", "bad_name")
EVENT = "tunery.drop.arrived"
log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS drops (
    id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, name TEXT NOT NULL, uri TEXT NOT NULL,
    kind TEXT NOT NULL, files TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    arrived_at TEXT NOT NULL, status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', version INTEGER,
    owner TEXT, updated_at TEXT NOT NULL, announced_at TEXT, announcements INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS files (
    uri TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL, sha256 TEXT NOT NULL,
    drop_id TEXT NOT NULL, seen_at TEXT NOT NULL, PRIMARY KEY (uri, size, mtime)
);
CREATE TABLE IF NOT EXISTS rejects (
    uri TEXT NOT NULL, name TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
    seen_at TEXT NOT NULL, PRIMARY KEY (uri, reason)
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
        return {key: getattr(self, key) for key in ("id", "sha256", "name", "uri", "arrived_at")}


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
    return name.startswith((".", "_")) or name.endswith("~") or name.lower().endswith(TEMP_SUFFIXES)


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
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs) -> bool:
    return (fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]) in ("file", "local")


def _matches(name: str, patterns: list[str]) -> bool:
    return not _is_temporary(name) and any(fnmatch.fnmatch(name, p) for p in patterns)


def shown(text: str) -> str:
    """``text`` safe to print or log: backslash, control, format and undecodable characters escaped
    (``\\n``, ``\\\\``, ``\\x1b``; a non-UTF-8 byte of a file name as ``\\xNN``; ``\\u202e``). Names are
    stored as given; every listing, log line and reason shows them through this."""
    return "".join(_escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    if ch in _ESCAPES or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        return _ESCAPES.get(ch, ch)
    code = ord(ch) - 0xDC00 if 0xDC80 <= ord(ch) <= 0xDCFF else ord(ch)  # surrogateescape: one raw byte
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


_SURROGATE = re.compile("[\ud800-\udfff]")  # os.fsdecode of a name that is not UTF-8
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_KINDS = {stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


@dataclass(frozen=True)
class Rejected:
    """A zone entry never read (or no further): a reason code of ``REJECT_REASONS`` and a detail."""

    uri: str
    name: str
    reason: str
    detail: str
    seen_at: str = ""  # when the manifest first recorded it


class EntryRefused(ValueError):
    """A zone entry that is not read; ``args`` are a reason of ``REJECT_REASONS`` and a detail. A ValueError:
    staging a drop whose file was replaced by a link or FIFO since it was registered fails that drop."""

    def __str__(self) -> str:
        return ": ".join(self.args)


def _rejected(uri: str, name: str, exc: Exception) -> Rejected:
    args = exc.args if isinstance(exc, EntryRefused) else ("unreadable", f"{type(exc).__name__}: {exc}")
    return Rejected(uri, name, *args)


def list_candidates(
    zone: str, patterns: list[str], settle_seconds: float, now: float | None = None
) -> list[Candidate]:
    """The complete drops in a zone, by the protocol in the module docstring, oldest first.

    Raises:
        FileNotFoundError: the zone does not exist.
    """
    return survey(zone, patterns, settle_seconds, now)[0]


def survey(
    zone: str, patterns: list[str], settle_seconds: float, now: float | None = None
) -> tuple[list[Candidate], list[Rejected]]:
    """The zone's complete drops (oldest first) and its refused entries; raises FileNotFoundError as
    :func:`list_candidates` does."""
    fs, root = fsspec.core.url_to_fs(zone)
    fs.invalidate_cache()  # object stores cache listings: a long-lived watcher must see new files
    if not fs.isdir(root):
        raise FileNotFoundError(f"drop zone not found (or not a folder): {zone}")
    now = time.time() if now is None else now
    zone_real = os.path.realpath(root) if _is_local(fs) else None
    found, rejected = [], []
    entries = _local_entries(root) if zone_real else _fs_entries(fs.ls(root, detail=True))
    for path, name, kind, info in entries:
        try:
            if kind == "directory":
                candidate = _folder_candidate(fs, path, name, patterns, rejected, zone_real)
            elif kind == "linked_directory" or _matches(name, patterns):  # a folder drop has any name
                _check_regular(path, kind, zone_real)
                uri = _full_uri(fs, path)
                candidate = Candidate(uri, name, "file", int(info["size"]), _mtime(info), (uri,))
            else:
                continue
        except FileNotFoundError:
            continue  # gone since the listing (renamed or removed by its writer)
        except Exception as exc:  # one bad entry never stops the others
            rejected.append(_rejected(_full_uri(fs, path), name, exc))
            continue
        if candidate is not None and now - candidate.mtime >= settle_seconds:
            found.append(candidate)
    return sorted(found, key=lambda c: (c.mtime, c.name)), rejected


def _local_entries(folder: str) -> Iterator[tuple[str, str, str, dict]]:
    """(path, name, kind, info) of a local folder's entries, by ``lstat``: no link is followed."""
    with os.scandir(folder) as listing:
        names = sorted(e.name for e in listing if not _is_temporary(e.name))
    for name in names:
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        kind = "directory" if stat.S_ISDIR(st.st_mode) else _KINDS.get(stat.S_IFMT(st.st_mode), "device")
        if kind == "symlink" and os.path.isdir(path):
            kind = "linked_directory"
        yield path, name, kind, {"size": st.st_size, "mtime": st.st_mtime}


def _fs_entries(listing: list[dict]) -> Iterator[tuple[str, str, str, dict]]:
    for info in listing:
        name = Path(info["name"].rstrip("/")).name
        if not _is_temporary(name):
            yield info["name"], name, "symlink" if info.get("islink") else info["type"], info


def _check_regular(path: str, kind: str, zone_real: str | None) -> None:
    """Raise :class:`EntryRefused` unless the entry is a regular file (inside the local zone)."""
    link = kind in ("symlink", "linked_directory")
    if link and zone_real and not os.path.exists(path):
        raise EntryRefused("dangling_symlink", f"a symlink to {os.readlink(path)}, which does not exist")
    if zone_real and not _within(real := os.path.realpath(path), zone_real):
        raise EntryRefused("outside_zone", f"resolves to {real}, outside the zone {zone_real}")
    if link:
        raise EntryRefused("symlink", "a symlink: links are never followed, only regular files are read")
    if kind != "file":
        raise EntryRefused("not_regular_file", f"a {kind}, not a regular file")


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _folder_candidate(
    fs, path: str, name: str, patterns: list[str], rejected: list[Rejected], zone_real: str | None
) -> Candidate | None:
    """A folder drop, if its ``_SUCCESS`` marker exists; its mtime is the marker's. Its entries are
    checked like the zone's: a refused one is added to ``rejected`` and left out."""
    if zone_real:  # local
        try:
            marker = {"mtime": os.lstat(os.path.join(path, SUCCESS_MARKER)).st_mtime}
        except FileNotFoundError:
            return None
        entries = list(_local_entries(path))
    else:
        listing = fs.ls(path, detail=True)
        marker = next((i for i in listing if Path(i["name"].rstrip("/")).name == SUCCESS_MARKER), None)
        entries = list(_fs_entries(listing))
    if marker is None:
        return None
    files, size = [], 0
    for file, member, kind, info in sorted(entries, key=lambda e: e[0]):
        if kind == "directory" or not _matches(member, patterns):
            continue
        try:
            _check_regular(file, kind, zone_real)
        except FileNotFoundError:
            continue
        except Exception as exc:
            rejected.append(_rejected(_full_uri(fs, file), f"{name}/{member}", exc))
            continue
        files.append(_full_uri(fs, file))
        size += int(info["size"])
    return Candidate(_full_uri(fs, path), name, "folder", size, _mtime(marker), tuple(files))


def content_sha256(files: tuple[str, ...] | list[str], zone: str | None = None) -> str:
    """SHA-256 of a drop's content: the file's bytes; for a folder, of each file's name and digest.

    A local file is opened without following a link or blocking and read only if it is a regular file
    (inside the local folder ``zone`` if given): a FIFO or link swapped in since the listing is refused."""
    zone_real = os.path.realpath(zone) if zone is not None else None
    if len(files) == 1:
        return _file_sha256(files[0], zone_real)
    outer = hashlib.sha256()
    for uri in sorted(files):
        outer.update(f"{Path(uri).name}\x1f{_file_sha256(uri, zone_real)}\n".encode())
    return outer.hexdigest()


def _file_sha256(uri: str, zone_real: str | None = None) -> str:
    digest = hashlib.sha256()
    local = "://" not in uri or uri.startswith("file://")
    with _open_regular(uri.removeprefix("file://"), zone_real) if local else fsspec.open(uri, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


def _open_regular(path: str, zone_real: str | None):
    """A local file opened for reading if it is a regular file (inside ``zone_real``): see content_sha256."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or not os.path.lexists(path):
            raise
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):  # ELOOP: a symlink; ENXIO: a socket; ...
            _check_regular(path, _KINDS.get(stat.S_IFMT(mode), "device"), zone_real)
        raise EntryRefused("unreadable", f"{type(exc).__name__}: {exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise EntryRefused("not_regular_file", "not a regular file when opened (swapped in?)")
        proc = f"/proc/self/fd/{fd}"  # the real path of what was opened, where the system says (Linux)
        real = os.readlink(proc) if os.path.islink(proc) else os.path.realpath(path)
        if zone_real and not _within(real, zone_real):
            raise EntryRefused("outside_zone", f"opened {real}, outside {zone_real}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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
        stamp, drop_id, c = now_iso(), sha256[:16], candidate
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
                    (drop_id, sha256, c.name, c.uri, c.kind, json.dumps(list(c.files)), c.size, c.mtime)
                    + (stamp, stamp),
                )
            else:
                drop_id = existing["id"]
            db.execute(
                "INSERT OR IGNORE INTO files (uri, size, mtime, sha256, drop_id, seen_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (candidate.uri, candidate.size, candidate.mtime, sha256, drop_id, stamp),
            )
            db.execute("DELETE FROM rejects WHERE uri = ?", (candidate.uri,))  # fixed since: taken now
        return self.get(drop_id), is_new

    def reject(self, entries: list[Rejected]) -> list[Rejected]:
        """Record refused zone entries; returns those not recorded before (by uri and reason)."""
        fresh = []
        with self.transaction() as db:
            for e in entries:
                uri, name, detail = (
                    os.fsencode(t) if _SURROGATE.search(t) else t for t in (e.uri, e.name, e.detail)
                )
                cursor = db.execute(
                    "INSERT OR IGNORE INTO rejects VALUES (?, ?, ?, ?, ?)",
                    (uri, name, e.reason, detail, now_iso()),
                )
                if cursor.rowcount == 1:
                    fresh.append(e)
        return fresh

    def rejects(self) -> list[Rejected]:
        """The zone entries refused (never read), first seen first (a non-UTF-8 name is stored as bytes)."""
        with self._connect() as db:
            rows = db.execute("SELECT uri, name, reason, detail, seen_at FROM rejects ORDER BY seen_at, uri")
            return [Rejected(*(os.fsdecode(v) if isinstance(v, bytes) else v for v in r)) for r in rows]

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
    rejected: list[dict] = field(default_factory=list)  # entries refused for the first time

    def as_dict(self) -> dict:
        return asdict(self)


def scan(recipe: Recipe, now: float | None = None) -> ScanResult:
    """Register the zone's complete files that the manifest has not seen (each hashed once).

    Returns:
        The new drops, the files whose content an earlier drop already had, how many complete candidates
        the zone holds, and the entries refused (logged and recorded) for the first time.
    """
    cfg, manifest, zone = recipe.continuous, Manifest.of(recipe), zone_uri(recipe)
    candidates, rejected = survey(zone, cfg.patterns, cfg.settle_seconds, now)
    fs, root = fsspec.core.url_to_fs(zone)
    new, duplicates, local_root = [], [], root if _is_local(fs) else None
    for candidate in candidates:
        if any(_SURROGATE.search(u) for u in (candidate.uri, *candidate.files)):  # SQLite takes only UTF-8
            rejected.append(Rejected(candidate.uri, candidate.name, "bad_name", "not UTF-8: rename it"))
            continue
        if manifest.known(candidate):
            continue
        try:
            sha256 = content_sha256(candidate.files, zone=local_root)
        except FileNotFoundError:
            continue  # gone since the listing
        except Exception as exc:  # one unreadable file never stops the others
            rejected.append(_rejected(candidate.uri, candidate.name, exc))
            continue
        registered = manifest.register(candidate, sha256)
        if registered is None:  # a concurrent watcher took this file first
            continue
        drop, is_new = registered
        entry = {"id": drop.id, "sha256": drop.sha256, "name": candidate.name, "uri": candidate.uri}
        (new if is_new else duplicates).append(entry)
    fresh = manifest.reject(rejected) if rejected else []
    for e in fresh:
        log.warning("drop zone %s: skipped %s (%s): %s", shown(zone), shown(e.uri), e.reason, shown(e.detail))
    return ScanResult(new, duplicates, len(candidates), [asdict(e) for e in fresh])
