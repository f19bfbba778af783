"""Service tools for a spool: an online backup and a read-only verification.

Both work while the daemon runs: they never take the spool lock and open the live database
read-only (WAL lets readers see a consistent snapshot while the daemon writes). Their reports
name queue ids and our own file names (`objects/<queue id>.dcm`), never patient data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import QueueError
from agent.queue import schema
from agent.queue.spool import SPOOL_MARKER, Spool, fsync_dir, write_durably

logger = logging.getLogger(__name__)

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_CHUNK = 1 << 20


@dataclass
class VerifyReport:
    """What `verify_spool` found. `problems` is empty when the spool is sound."""

    schema_version: int
    objects: int = 0              # rows of objects still held (not purged)
    purged: int = 0               # rows whose file was removed after retention, as intended
    files: int = 0                # files in objects/
    hashes_checked: int = 0       # files whose SHA-256 was compared with their row
    quarantined: int = 0          # files recovery moved to quarantine/ (to inspect by hand)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"schema version {self.schema_version}: {self.objects} objects, {self.files} "
                f"files, {self.hashes_checked} SHA-256 checked, {self.purged} purged, "
                f"{self.quarantined} in quarantine: "
                f"{'OK' if self.ok else f'{len(self.problems)} problem(s)'}")


@dataclass
class BackupReport:
    """What `backup_spool` copied. `problems` is empty when the backup is complete."""

    dest: Path
    schema_version: int
    objects: int = 0              # rows of objects held in the copied database
    files_copied: int = 0
    bytes_copied: int = 0
    purged_meanwhile: int = 0     # purged by the daemon during the backup: marked so in the copy
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"backup in {self.dest}: queue.db (schema version {self.schema_version}), "
                f"{self.files_copied} of {self.objects} object files, {self.bytes_copied} "
                f"bytes: {'OK' if self.ok else f'{len(self.problems)} problem(s)'}")


def _object_name(queue_id: int) -> str:
    return f"objects/{queue_id:010d}.dcm"


def _open_live(db_path: Path) -> sqlite3.Connection:
    """The live database, read-only, its version checked (a newer schema is not ours to read)."""
    if not db_path.is_file():
        raise QueueError(f"no queue database at {db_path}")
    try:
        conn = sqlite3.connect(schema.ro_uri(db_path), uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        schema.refuse_newer(db_path, schema.read_version(conn))
    except sqlite3.DatabaseError as err:
        raise QueueError(f"{db_path}: cannot read ({err})") from err
    except QueueError:
        conn.close()
        raise
    return conn


def _live_objects(conn: sqlite3.Connection) -> dict[int, sqlite3.Row]:
    """{queue_id: row} of every object, in one statement (one consistent snapshot)."""
    return {r["queue_id"]: r for r in conn.execute(
        "SELECT queue_id, size_bytes, sha256, purged_at FROM objects")}


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- verify ----------------------------------------------------------------------------------
def verify_spool(spool_dir: Path) -> VerifyReport:
    """Check that every held row has its file, every file in objects/ its row, and that sizes
    and SHA-256 match the rows. Read-only; safe while the daemon runs.

    Raises
    ------
    QueueError
        If there is no queue database, it cannot be read, or it is of a newer schema.
    """
    spool = Spool(spool_dir)
    conn = _open_live(spool.db_path)
    try:
        report = VerifyReport(schema.read_version(conn))
        rows = _live_objects(conn)
        files, strangers = _object_files(spool)
        missing, orphans = _compare(report, spool, rows, files)
        # the daemon may have queued or purged since the snapshot: look again before blaming
        fresh = _live_objects(conn) if missing or orphans else rows
    finally:
        conn.close()
    for queue_id in missing:
        if fresh.get(queue_id) is not None and fresh[queue_id]["purged_at"] is None:
            report.problems.append(
                f"queue item {queue_id}: file {_object_name(queue_id)} missing (data loss)")
    for queue_id in orphans:
        if queue_id not in fresh:
            report.problems.append(
                f"queue item {queue_id}: {_object_name(queue_id)} has no queue record")
    report.problems.sort(key=_queue_id_of_problem)
    if strangers:
        noun = "file" if len(strangers) == 1 else "files"
        report.problems.append(f"objects/: {len(strangers)} {noun} not named "
                               "<queue id>.dcm (names logged at DEBUG)")
        for name in strangers:
            logger.debug("spool verify: unexpected file objects/%r", name)
    if spool.quarantine_dir.is_dir():
        report.quarantined = sum(1 for _ in spool.quarantine_dir.iterdir())
    logger.info("spool verify: %s", report.summary())
    return report


def _queue_id_of_problem(line: str) -> int:
    # every line so far starts "queue item <id>:"; the order is the queue's
    return int(line.split(maxsplit=3)[2].rstrip(":"))


def _object_files(spool: Spool) -> tuple[dict[int, Path], list[str]]:
    """({queue_id: path} of our files in objects/, names of anything else there)."""
    files: dict[int, Path] = {}
    strangers: list[str] = []
    if not spool.objects_dir.is_dir():
        return files, strangers
    for path in spool.objects_dir.iterdir():
        queue_id = Spool.queue_id_of(path)
        if queue_id is None or path.is_symlink() or not path.is_file():
            strangers.append(path.name)
        else:
            files[queue_id] = path
    return files, strangers


def _compare(report: VerifyReport, spool: Spool, rows: dict[int, sqlite3.Row],
             files: dict[int, Path]) -> tuple[list[int], list[int]]:
    """Fill the counts and the file problems; return (rows without file, files without row)."""
    report.files = len(files)
    missing: list[int] = []
    for queue_id, row in sorted(rows.items()):
        if row["purged_at"] is not None:
            report.purged += 1
            if queue_id in files:
                report.notes.append(f"queue item {queue_id}: purged, its file still there "
                                    "(an interrupted purge; removed at the next start)")
            continue
        report.objects += 1
        path = files.get(queue_id)
        if path is None:
            missing.append(queue_id)
            continue
        problem = _check_file(report, queue_id, path, row)
        if problem:
            report.problems.append(problem)
    orphans = sorted(set(files) - set(rows))
    return missing, orphans


def _check_file(report: VerifyReport, queue_id: int, path: Path,
                row: sqlite3.Row) -> str | None:
    name = _object_name(queue_id)
    try:
        size = path.stat().st_size
        if size != row["size_bytes"]:
            return f"queue item {queue_id}: {name} has {size} bytes, the record says " \
                   f"{row['size_bytes']}"
        if not row["sha256"]:
            # every schema so far records it (NOT NULL); a blank one is only size-checked
            report.notes.append(f"queue item {queue_id}: no SHA-256 recorded; size checked")
            return None
        digest = _sha256_of(path)
    except OSError as err:
        return f"queue item {queue_id}: cannot read {name} ({err.strerror})"
    report.hashes_checked += 1
    if digest != row["sha256"]:
        return f"queue item {queue_id}: SHA-256 of {name} differs from the record"
    return None


# -- backup ----------------------------------------------------------------------------------
def backup_spool(spool_dir: Path, dest: Path) -> BackupReport:
    """Copy the queue database (SQLite backup API: a consistent snapshot while the daemon
    writes) to `dest/queue.db`, then every object file that copy references to
    `dest/objects/`. Files queued after the snapshot are not needed; an object purged in
    between is marked purged in the copy. `dest` (0700, files 0600) is a spool the agent can
    open: restoring is copying it back with the daemon stopped.

    Raises
    ------
    QueueError
        If `dest` is inside the spool, exists and is not an empty folder, or its parent is
        missing; if the spool has no readable database or one of a newer schema; if writing
        the backup fails (what was written stays in `dest`, to be removed).
    """
    spool = Spool(spool_dir)
    _check_dest(spool, dest)
    live = _open_live(spool.db_path)
    try:
        _make_dest(dest)
        copy_path = dest / spool.db_path.name
        version = _copy_database(live, copy_path)
        report = BackupReport(dest, version)
        copy = sqlite3.connect(copy_path, isolation_level=None)
        copy.row_factory = sqlite3.Row
        try:
            _copy_files(report, spool, live, copy, dest / "objects")
        finally:
            copy.close()
        fsync_dir(dest / "objects")
        write_durably(dest / (SPOOL_MARKER + ".tmp"), dest / SPOOL_MARKER,
                      b"modality-agent spool backup: do not put other files here\n")
    except sqlite3.DatabaseError as err:
        raise QueueError(f"backup to {dest}: {err}; the backup is incomplete, remove it") \
            from err
    except OSError as err:
        raise QueueError(f"backup to {dest}: {err.strerror} ({err.filename}); the backup is "
                         "incomplete, remove it") from err
    finally:
        live.close()
    logger.info("spool backup: %s", report.summary())
    return report


def _check_dest(spool: Spool, dest: Path) -> None:
    root, target = spool.root.resolve(), dest.resolve()
    if target == root or root in target.parents:
        raise QueueError(f"backup destination {dest} is inside the spool {spool.root}: "
                         "choose a folder elsewhere (another disk, ideally)")
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise QueueError(f"backup destination {dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise QueueError(f"backup destination {dest} is not empty: give a new or empty folder "
                         "(an older backup is never overwritten)")
    if not dest.parent.is_dir():
        raise QueueError(f"backup destination {dest}: folder {dest.parent} does not exist")


def _make_dest(dest: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        for folder in (dest, dest / "objects"):
            folder.mkdir(mode=_DIR_MODE, exist_ok=True)
            os.chmod(folder, _DIR_MODE)
    finally:
        os.umask(old_umask)


def _copy_database(live: sqlite3.Connection, copy_path: Path) -> int:
    """The backup API in one step (pages=-1): one read transaction, so one consistent snapshot
    however much the daemon writes meanwhile. Returns the copy's schema version."""
    fd = os.open(copy_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
    os.close(fd)                      # SQLite keeps the mode of the file it finds
    copy = sqlite3.connect(copy_path, isolation_level=None)
    try:
        copy.execute("PRAGMA synchronous=FULL")
        live.backup(copy, pages=-1)
        # one self-contained file: no -wal beside it to lose when the folder is copied
        copy.execute("PRAGMA journal_mode=DELETE")
        return schema.read_version(copy)
    finally:
        copy.close()


def _copy_files(report: BackupReport, spool: Spool, live: sqlite3.Connection,
                copy: sqlite3.Connection, objects_dest: Path) -> None:
    held = copy.execute("SELECT queue_id, size_bytes, sha256 FROM objects "
                        "WHERE purged_at IS NULL ORDER BY queue_id").fetchall()
    report.objects = len(held)
    for row in held:
        queue_id = row["queue_id"]
        source = spool.object_path(queue_id)
        try:
            size, digest = _copy_file(source, objects_dest / source.name)
        except FileNotFoundError:
            _missing_in_spool(report, live, copy, queue_id)
            continue
        logger.debug("spool backup: copied %s", source.name)
        report.files_copied += 1
        report.bytes_copied += size
        if size != row["size_bytes"] or (row["sha256"] and digest != row["sha256"]):
            report.problems.append(f"queue item {queue_id}: {_object_name(queue_id)} in the "
                                   "spool differs from its record (copied as it is)")


def _missing_in_spool(report: BackupReport, live: sqlite3.Connection,
                      copy: sqlite3.Connection, queue_id: int) -> None:
    now = live.execute("SELECT purged_at FROM objects WHERE queue_id=?",
                       (queue_id,)).fetchone()
    if now is not None and now["purged_at"] is not None:
        # purged after the snapshot (final everywhere for the retention time already then):
        # the copy says so too, or a restore would report it as data loss
        copy.execute("UPDATE objects SET purged_at=? WHERE queue_id=?",
                     (now["purged_at"], queue_id))
        report.objects -= 1
        report.purged_meanwhile += 1
        return
    report.problems.append(
        f"queue item {queue_id}: file {_object_name(queue_id)} missing in the spool (data loss)")


def _copy_file(source: Path, target: Path) -> tuple[int, str]:
    """Copy, fsync; returns (size, SHA-256) of what was copied."""
    digest = hashlib.sha256()
    size = 0
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
        try:
            while chunk := os.read(src, _CHUNK):
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return size, digest.hexdigest()
