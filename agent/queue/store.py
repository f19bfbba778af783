"""QueueStore: object x destination rows in SQLite, the Part 10 bytes in the spool.

States (ARCHITECTURE.md): pending → sending → sent → commit_requested → committed, or failed with
the reason kept. An object counts as captured only once `enqueue` returns: its file is fsynced
and renamed, the folder fsynced and the row committed with synchronous=FULL.

Every commit is flushed to disk (FULL) except the sending path's own bookkeeping: claiming a
batch (`sending`), recording what the archive stored (`sent`) and putting claimed rows back
(`pending`). Those commit with synchronous=NORMAL: written to the WAL and flushed by the next
FULL commit or checkpoint, so a power cut may undo them, and only them, in order (never a
later FULL one). Undone, a row falls back to an earlier state and the object goes out again
under the same UID, which the archive accepts (RELIABILITY.md promise 2); `begin_commitment`
is FULL, so a row is never asked to be committed while its `sent` could still be undone.
Issue 18: with an fsync of the WAL per recorded group the agent fell behind storescu x N into
an archive that fsyncs on the same disk (interleaved, 0.5 MB x 400 into Orthanc: 0.92 of
storescu x 3 with every commit FULL, 1.02 with these NORMAL).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent import crashpoints
from agent.errors import AlreadyQueuedError, QueueError, SpoolFullError, UnknownQueueItemError
from agent.queue import schema
from agent.queue.spool import Spool, fsync_dir, install_synced, write_synced
from agent.records import (
    DELIVERED_STATES,
    CommitmentResult,
    Delivery,
    DeliveryState,
    QueuedObject,
)

logger = logging.getLogger(__name__)

S = DeliveryState
_V = TypeVar("_V")


@dataclass(frozen=True)
class NewObject:
    """A Part 10 object to queue: its bytes and the UIDs the network needs."""

    payload: bytes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str

#: Failure Reason (PS3.4 J.3.3.1.2, Table J.3-2): the archive does not hold the object → resend
FAILURE_NO_SUCH_OBJECT = 0x0112
#: resource limitation: the archive may commit later → ask again after a while
FAILURE_RESOURCE_LIMITATION = 0x0213

_DELIVERY_COLUMNS = """
    d.delivery_id, d.queue_id, d.destination, d.state, d.attempts, d.next_attempt_at,
    d.last_error, d.transaction_uid, d.updated_at, o.sop_instance_uid, o.sop_class_uid,
    o.created_at, o.transfer_syntax_uid
"""


#: a rejection's row: never sent, counted apart in `counts` (not as a failure)
REJECTED = "rejected"


class RejectionConflict(QueueError, ValueError):
    """A rejection cannot be recorded as planned; nothing was changed."""


class ObjectInFlightError(RejectionConflict):
    """An object to reject is being sent right now: whether the archive got it is unknown
    until the send ends."""


class StaleRejectionError(RejectionConflict):
    """A row changed between planning a rejection and recording it (e.g. it was just sent):
    plan again."""


@dataclass(frozen=True)
class NoteToQueue:
    """A rejection note for some destinations: its Part 10 bytes and, per destination, the
    rejected objects whose rows there must reach `until_state` before it may be sent."""

    payload: bytes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    waits: Mapping[str, tuple[tuple[int, DeliveryState], ...]]   # destination -> (queue_id, state)


@dataclass(frozen=True)
class QueuedNote:
    """A note as queued: its queue id and the destinations it goes to."""

    queue_id: int
    sop_instance_uid: str
    destinations: tuple[str, ...]


@dataclass(frozen=True)
class ObjectRejection:
    """One rejected object (no patient data)."""

    queue_id: int
    sop_instance_uid: str
    reason: str
    rejected_at: float


#: a rejection note's row is due only once every rejected object it waits for is final at
#: the same destination: committed, or (where no commitment is used) stored. Constants only.
_NOT_WAITING = """NOT EXISTS (
    SELECT 1 FROM note_waits w WHERE w.delivery_id = d.delivery_id AND NOT EXISTS (
        SELECT 1 FROM deliveries r WHERE r.queue_id = w.after_queue_id
        AND r.destination = d.destination
        AND (r.state = 'committed'
             OR (w.until_state = 'sent' AND r.state IN ('sent', 'commit_requested')))))"""


@dataclass
class ReportOutcome:
    """What applying one commitment report changed (counts only: no patient data)."""

    known_transaction: bool
    committed: int = 0
    resend: int = 0
    retry_commit: int = 0
    failed: int = 0
    ignored: list[str] = field(default_factory=list)   # instance UIDs not in the transaction


#: rows per destination and state, read in the order of the deliveries_by_state index
#: (destination, state, ...): SQLite counts each group as it walks the index. Grouped by an
#: expression (the cancelled rows' "rejected" folded in) it sorted every row of the table
#: instead, on every status call, in a sort buffer that grew with the queue up to the page
#: cache's size (512 KiB): in the daemon those transient buffers, tens of thousands of them
#: over a soak, landed in glibc's heap between long-lived allocations and its RSS crept with
#: the queue (issue 18 item 4b; tests/unit/test_queue_counts_memory.py)
_COUNTS_SQL = "SELECT destination, state, COUNT(*) AS n FROM deliveries GROUP BY destination, state"
#: a cancelled row (a rejected object's, never sent) counts as "rejected", not as the
#: `failed` it is stored as. Cancellations are few: CROSS JOIN keeps them the outer loop
#: (SQLite would otherwise walk every delivery and look each up), and sorting them is cheap
_CANCELLED_COUNTS_SQL = """SELECT d.destination, d.state, COUNT(*) AS n
    FROM cancellations c CROSS JOIN deliveries d ON d.delivery_id = c.delivery_id
    GROUP BY d.destination, d.state"""


_STATE_NAMES = frozenset(s.value for s in S)

#: objects `purge` reads at a time
PURGE_BATCH = 256


def _purgeable_sql(destinations: int) -> str:
    """The objects `purge` may delete, in queue order after `:after`: not purged yet, with at
    least one delivery row, and every row either cancelled (rejected before it was sent) at
    least `:retention` s before `:now`, or in its destination's final state (`:dN` -> `:sN`,
    `destinations` pairs; a destination not listed is never final) since then.

    Decided by SQLite, row by row along the primary key and the (queue_id, destination) index
    (no sort, no temporary table): the purge pass used to fetch every unpurged object's rows
    every minute and judge them in Python, a day's worth with the default retention. In the
    daemon that was ~300 bytes of short-lived Python objects per queued object per pass
    (~15 MB at 50,000 objects): pymalloc's arenas grew to each pass's peak and other objects
    allocated meanwhile kept them, so RSS crept with the queue (issue 18 item 4b;
    tests/unit/test_queue_purge_memory.py)."""
    final = ("CASE d.destination " + " ".join(
        f"WHEN :d{n} THEN :s{n}" for n in range(destinations)) + " END") \
        if destinations else "NULL"
    return f"""SELECT o.queue_id FROM objects o
    WHERE o.queue_id > :after AND o.purged_at IS NULL
    AND EXISTS (SELECT 1 FROM deliveries d WHERE d.queue_id = o.queue_id)
    AND NOT EXISTS (
        SELECT 1 FROM deliveries d LEFT JOIN cancellations c USING (delivery_id)
        WHERE d.queue_id = o.queue_id AND NOT CASE
            WHEN c.cancelled_at IS NOT NULL THEN c.cancelled_at + :retention <= :now
            WHEN d.state = {final}
                AND COALESCE(d.committed_at, d.stored_at) + :retention <= :now THEN 1
            ELSE 0 END)
    ORDER BY o.queue_id LIMIT :limit"""  # noqa: S608 - placeholders only, no values


def _no_counts() -> dict[str, int]:
    # "rejected" appears only once a row is: readers of the released shape stay unchanged
    return {s.value: 0 for s in S}


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        delivery_id=row["delivery_id"],
        queue_id=row["queue_id"],
        destination=row["destination"],
        state=S(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        transaction_uid=row["transaction_uid"],
        updated_at=row["updated_at"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        created_at=row["created_at"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
    )


def _object(row: sqlite3.Row) -> QueuedObject:
    return QueuedObject(
        queue_id=row["queue_id"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        created_at=row["created_at"],
    )


#: SQLite's page cache per connection, KiB. Its default (2,000 KiB) fills as the database grows
#: and stays full: about half of the daemon's idle RSS creep in `bench soak --quick` (issue 18
#: item 4b: +0.6 to +1.1 MB per 1,000 objects with the default, +0.2 to +0.4 with 128 or
#: 512 KiB, no more CPU). The queue's hot pages (interior pages, the right edges where rows are
#: added, the pending rows' index leaves) fit in far less; a page that misses is read from the
#: OS page cache.
PAGE_CACHE_KIB = 512


def connect(db_path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open the queue database with the durability settings checked, not assumed."""
    if read_only:
        conn = sqlite3.connect(
            f"file:{db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(db_path, timeout=30, check_same_thread=False,
                               isolation_level=None)
    conn.row_factory = sqlite3.Row
    if not read_only:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise QueueError(f"{db_path}: cannot switch to WAL journal (got {mode})")
    # synchronous is per connection; NORMAL may lose a commit after a power cut in WAL mode
    conn.execute("PRAGMA synchronous=FULL")
    if conn.execute("PRAGMA synchronous").fetchone()[0] != 2:
        raise QueueError(f"{db_path}: PRAGMA synchronous=FULL did not take effect")
    conn.execute("PRAGMA foreign_keys=ON")
    # negative: KiB, not pages
    conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB:d}")
    return conn


def _make_private(db_path: Path) -> None:
    """Create the database file 0600 before SQLite opens it: SQLite gives the -wal and -shm
    files the database file's mode, and they hold the same patient data (issue 13)."""
    fd = os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


#: the lengths of the queue's `IN (?, ...)` lists: a list of values is padded to the next of
#: these by repeating its last value (which changes no result) and a longer one is split.
#: Python's sqlite3 caches 128 prepared statements per connection, keyed by their SQL text: a
#: list of every length made a new statement per length, each holding memory and evicting the
#: statements the forwarder prepares all the time (issue 18 item 4b)
IN_LIST_SIZES = tuple(2 ** n for n in range(9))       # 1 .. 256


def _in_lists(values: Iterable[_V]) -> Iterator[tuple[str, list[_V]]]:
    """("?,?,...", values) for each `IN (...)` query `values` take (none for no values),
    duplicates left out; the lists are of the lengths in IN_LIST_SIZES."""
    unique = list(dict.fromkeys(values))
    largest = IN_LIST_SIZES[-1]
    for start in range(0, len(unique), largest):
        chunk = unique[start:start + largest]
        size = next(n for n in IN_LIST_SIZES if n >= len(chunk))
        chunk += [chunk[-1]] * (size - len(chunk))
        yield ",".join("?" * size), chunk


class QueueStore:
    """The durable queue. Thread-safe: one connection, one lock; SQLite serialises writes anyway.

    Parameters
    ----------
    spool_dir
        The spool folder (created 0700 if missing).
    destinations
        Names of the configured destinations: every new object gets one row per name that is
        in no group.
    groups
        Archive groups, {group name: member names in order}: every new object gets one row
        per group, named after the group's current member (the first member until
        `set_route` says otherwise). The forwarder's router chooses the member; the queue
        only records it, and `reassign` moves a member's movable rows to another.
    clock
        Seconds since the epoch; tests pass their own.
    min_free_bytes
        New objects are refused when they would leave less free space than this on the
        spool's file system: capture stops before the disk fills, never by deleting.
    """

    def __init__(
        self,
        spool_dir: Path,
        destinations: Sequence[str],
        *,
        groups: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
        min_free_bytes: int = 0,
    ) -> None:
        self.spool = Spool(spool_dir)
        self.min_free_bytes = min_free_bytes
        self.destinations = tuple(destinations)
        self.groups: dict[str, tuple[str, ...]] = {
            name: tuple(members) for name, members in (groups or {}).items()}
        _check_groups(self.destinations, self.groups)
        grouped = {m for members in self.groups.values() for m in members}
        self._ungrouped = tuple(d for d in self.destinations if d not in grouped)
        # group -> its current member: where new objects go
        self._routes = {name: members[0] for name, members in self.groups.items()}
        self._now = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    # -- opening, recovery -------------------------------------------------------------------
    def open(self) -> None:
        """Create/lock the spool, open the database, bring its schema up to date, then
        recover from a previous crash.

        Raises
        ------
        SpoolLockedError
            If another agent process uses this spool.
        QueueError
            If the spool or database cannot be used, or the database is of a newer schema
            than this code knows (then it is left exactly as it was).
        """
        self.spool.create()
        self.spool.lock()
        try:
            self._open_database()
            self.recover()
        except BaseException as err:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.spool.unlock()
            if isinstance(err, sqlite3.DatabaseError):
                raise QueueError(f"{self.spool.db_path}: {err}") from err
            if isinstance(err, OSError) and not isinstance(err, QueueError):
                raise QueueError(f"{self.spool.db_path}: {err.strerror}") from err
            raise

    def _open_database(self) -> None:
        db_path = self.spool.db_path
        # read-only and before anything below writes (chmod, WAL switch, migrations): a
        # database of a newer agent is refused untouched
        schema.check_openable(db_path)
        _make_private(db_path)
        self._conn = connect(db_path)
        schema.migrate(self._conn, db_path)
        for suffix in ("", "-wal", "-shm"):
            # those of an older version were made 0644
            path = db_path.with_name(db_path.name + suffix)
            if path.exists():
                os.chmod(path, 0o600)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self.spool.unlock()

    def __enter__(self) -> QueueStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise QueueError("queue is not open")
        return self._conn

    @contextmanager
    def _tx(self, *, flush: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; SQLite errors leave here as QueueError (the boundary).
        `flush=False`: committed with synchronous=NORMAL, for the sending path's bookkeeping
        that a power cut may undo (module docstring); the connection is FULL again after."""
        with self._lock:
            conn = self.conn
            try:
                if not flush:
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.IntegrityError:
                raise
            except sqlite3.DatabaseError as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if "full" in str(err):
                    raise SpoolFullError(f"{self.spool.db_path}: disk full") from err
                raise QueueError(f"{self.spool.db_path}: {err}") from err
            finally:
                if not flush:
                    conn.execute("PRAGMA synchronous=FULL")

    def recover(self) -> dict[str, int]:
        """Undo what a crash left half done; returns counts for the log.

        - `sending` rows go back to `pending`: the same bytes, the same UIDs are sent again.
          Whether the archive got them is unknown, so they count one send without an answer
          (at least one: recoveries do not add up), which pins them to their archive group
          member (`reassign`).
        - `tmp/` files were never acknowledged: they are removed.
        - a file in `objects/` without a row was never acknowledged either: moved to
          `quarantine/` for inspection, not deleted.
        - a row whose file is missing is data loss: its deliveries fail with that reason.
        - open commitment transactions are superseded and their rows go back to `sent`: a
          report sent while we were down is lost (Orthanc tries once and gives up), so the
          commitment is asked for again under a new Transaction UID. A late report on the old
          UID is still honoured.
        """
        now = self._now()
        counts = {"requeued": 0, "tmp_removed": 0, "quarantined": 0, "missing": 0,
                  "recommit": 0}
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET state=?, updated_at=?, "
                "unknown_outcomes=MAX(unknown_outcomes, 1) WHERE state=?",
                (S.PENDING, now, S.SENDING),
            )
            counts["requeued"] = cur.rowcount
            conn.execute("UPDATE transactions SET state='superseded' WHERE state='open'")
            counts["recommit"] = conn.execute(
                "UPDATE deliveries SET state=?, next_attempt_at=?, updated_at=? WHERE state=?",
                (S.SENT, now, now, S.COMMIT_REQUESTED),
            ).rowcount
        for tmp in self.spool.tmp_dir.iterdir():
            tmp.unlink()
            counts["tmp_removed"] += 1
        known: set[int] = set()
        purged: set[int] = set()
        for row in self.conn.execute("SELECT queue_id, purged_at FROM objects"):
            (known if row["purged_at"] is None else purged).add(row["queue_id"])
        on_disk: set[int] = set()
        for path in self.spool.objects_dir.iterdir():
            queue_id = Spool.queue_id_of(path)
            if queue_id is not None and queue_id in known:
                on_disk.add(queue_id)
                continue
            if queue_id is not None and queue_id in purged:
                path.unlink()        # purge was interrupted after its row committed
                continue
            path.rename(self.spool.quarantine_dir / path.name)
            counts["quarantined"] += 1
            logger.warning("spool file %s has no queue record: moved to quarantine", path.name)
        for queue_id in sorted(known - on_disk):
            counts["missing"] += 1
            logger.error("queue item %d: spool file missing (data loss); marked failed", queue_id)
            with self._tx() as conn:
                conn.execute(
                    "UPDATE deliveries SET state=?, last_error=?, updated_at=? "
                    "WHERE queue_id=? AND state NOT IN (?, ?)",
                    (S.FAILED, "spool file missing (data loss)", now, queue_id,
                     S.COMMITTED, S.FAILED),
                )
        if any(counts.values()):
            logger.info("queue recovery: %s", counts)
        return counts

    # -- capture -----------------------------------------------------------------------------
    def enqueue(
        self,
        payload: bytes,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
    ) -> QueuedObject:
        """Store one Part 10 object durably; one pending row per destination.

        Raises
        ------
        QueueError
            If the object cannot be made durable (disk full, I/O error) or its SOP Instance
            UID is already queued (a second copy under the same UID would be a different
            object).
        """
        return self.enqueue_many([NewObject(payload, sop_instance_uid, sop_class_uid,
                                            transfer_syntax_uid)])[0]

    def enqueue_many(self, objects: Sequence[NewObject]) -> list[QueuedObject]:
        """Store several objects durably as one group, all or none: each file written and
        fsynced, then one transaction with their rows, the renames and one fsync of the
        folder. One object costs three flushes to disk (its file, the folder, the commit); a
        group of n costs n + 2, which is what lets a capture that fell behind a slow disk
        catch up (the frames that waited in its buffer are queued together).

        Raises
        ------
        QueueError
            As `enqueue`, for the group: when it is raised, none of them is queued (queue them
            one at a time to keep those that fit).
        """
        if not objects:
            return []
        now = self._now()
        self.check_room(sum(len(obj.payload) for obj in objects))
        staged: list[tuple[NewObject, Path, str]] = []
        try:
            for obj in objects:
                tmp = self.spool.tmp_path(uuid.uuid4().hex)
                staged.append((obj, tmp, hashlib.sha256(obj.payload).hexdigest()))
                write_synced(tmp, obj.payload)
            crashpoints.reached("after_tmp_write")
        except OSError as err:
            self._discard([tmp for _, tmp, _ in staged], [])
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(f"spool {self.spool.root}: disk full") from err
            raise QueueError(f"spool write failed: {err.strerror}") from err
        placed: list[Path] = []
        queued: list[QueuedObject] = []
        try:
            with self._tx() as conn:
                for obj, tmp, sha256 in staged:
                    cur = conn.execute(
                        "INSERT INTO objects (sop_instance_uid, sop_class_uid,"
                        " transfer_syntax_uid, size_bytes, sha256, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (obj.sop_instance_uid, obj.sop_class_uid, obj.transfer_syntax_uid,
                         len(obj.payload), sha256, now),
                    )
                    queue_id = int(cur.lastrowid or 0)
                    conn.executemany(
                        "INSERT INTO deliveries (queue_id, destination, state,"
                        " next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                        [(queue_id, dest, S.PENDING, now, now) for dest in self.targets()],
                    )
                    final = self.spool.object_path(queue_id)
                    os.replace(tmp, final)
                    placed.append(final)
                    queued.append(QueuedObject(queue_id, obj.sop_instance_uid,
                                               obj.sop_class_uid, obj.transfer_syntax_uid,
                                               len(obj.payload), sha256, now))
                # the files are in place before the rows commit: a row never points at nothing
                fsync_dir(self.spool.objects_dir)
                crashpoints.reached("after_rename")
        except sqlite3.IntegrityError as err:
            self._discard([tmp for _, tmp, _ in staged], placed)
            uids = [obj.sop_instance_uid for obj in objects]
            raise AlreadyQueuedError(
                f"SOP Instance UID {uids[0]} is already queued" if len(uids) == 1 else
                f"one of the SOP Instance UIDs {', '.join(uids)} is already queued"
            ) from err
        except (QueueError, OSError) as err:
            # the rows did not commit: none of the files may stay (never acknowledged)
            self._discard([tmp for _, tmp, _ in staged], placed)
            if isinstance(err, QueueError):
                raise
            raise QueueError(f"queue write failed: {err}") from err
        crashpoints.reached("after_enqueue")
        return queued

    # -- archive groups ----------------------------------------------------------------------
    def targets(self) -> tuple[str, ...]:
        """The destinations a new object gets a row for: every ungrouped one, then each
        group's current member."""
        with self._lock:
            return self._ungrouped + tuple(self._routes.values())

    def route(self, group: str) -> str:
        """The current member of `group` (KeyError for an unknown group)."""
        with self._lock:
            return self._routes[group]

    def set_route(self, group: str, member: str) -> None:
        """New objects of `group` go to `member` from now on (rows already queued stay).

        Raises
        ------
        QueueError
            If `member` is not a member of `group`.
        """
        if member not in self.groups.get(group, ()):
            raise QueueError(f"{member!r} is not a member of archive group {group!r}")
        with self._lock:
            self._routes[group] = member

    def reassign(self, from_member: str, to_member: str, group: str) -> int:
        """Move `from_member`'s movable rows to `to_member`, in one transaction; returns how
        many moved. Movable: pending and never delivered there in any way that might have
        reached the archive: never stored (`stored_at` unset), no send without an answer
        (`unknown_outcomes` 0), never in a commitment transaction, not a rejection note
        (which must follow its rejected object) and not cancelled. Everything else stays
        pinned to `from_member` and is resent there, same bytes, same UID, so the archive
        never gets one object under two routes. Moved rows are due at once and recorded in
        `reroutes`.

        Raises
        ------
        QueueError
            If the two are not both members of `group`, or the database fails.
        """
        members = self.groups.get(group, ())
        if from_member not in members or to_member not in members or from_member == to_member:
            raise QueueError(f"cannot move rows of archive group {group!r} from "
                             f"{from_member!r} to {to_member!r}")
        now = self._now()
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT d.delivery_id, d.queue_id FROM deliveries d WHERE d.destination=? "
                "AND d.state=? AND d.stored_at IS NULL AND d.unknown_outcomes=0 "
                "AND NOT EXISTS (SELECT 1 FROM transaction_items t "
                "               WHERE t.delivery_id=d.delivery_id) "
                "AND NOT EXISTS (SELECT 1 FROM note_waits w WHERE w.delivery_id=d.delivery_id) "
                "AND NOT EXISTS (SELECT 1 FROM cancellations c "
                "               WHERE c.delivery_id=d.delivery_id) "
                # one row per object and destination (the table's UNIQUE constraint)
                "AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.queue_id=d.queue_id "
                "               AND o.destination=?) ORDER BY d.delivery_id",
                (from_member, S.PENDING, to_member)).fetchall()
            conn.executemany(
                "UPDATE deliveries SET destination=?, next_attempt_at=?, updated_at=?, "
                "last_error=? WHERE delivery_id=? AND state=?",
                [(to_member, now, now, f"moved from {from_member} (not answering)",
                  r["delivery_id"], S.PENDING) for r in rows])
            conn.executemany(
                "INSERT INTO reroutes (delivery_id, group_name, from_destination, "
                "to_destination, moved_at) VALUES (?, ?, ?, ?, ?)",
                [(r["delivery_id"], group, from_member, to_member, now) for r in rows])
        if rows:
            logger.warning("archive group %s: %d queued object(s) moved from %s to %s "
                           "(queue items %s)", group, len(rows), from_member, to_member,
                           _id_ranges([r["queue_id"] for r in rows]))
        return len(rows)

    def pinned_count(self, destination: str) -> int:
        """Rows at `destination` not yet final that `reassign` would leave there: their
        outcome there may be known to the archive only (for `status` and tests)."""
        with self._lock:
            row = self.conn.execute(
                "SELECT COUNT(*) FROM deliveries d WHERE d.destination=? "
                "AND d.state IN (?, ?, ?, ?) AND (d.state<>? OR d.stored_at IS NOT NULL "
                "OR d.unknown_outcomes>0 OR EXISTS (SELECT 1 FROM transaction_items t "
                "WHERE t.delivery_id=d.delivery_id))",
                (destination, S.PENDING, S.SENDING, S.SENT, S.COMMIT_REQUESTED,
                 S.PENDING)).fetchone()
        return int(row[0])

    def reroutes(self, queue_ids: Iterable[int] | None = None) -> list[dict[str, object]]:
        """Moves recorded by `reassign` (oldest first): queue id, group, from, to, when."""
        sql = ("SELECT r.rowid AS move, d.queue_id, r.group_name, r.from_destination, "
               "r.to_destination, r.moved_at FROM reroutes r JOIN deliveries d "
               "USING (delivery_id)")
        queries: list[tuple[str, list[int]]] = [(sql, [])]
        if queue_ids is not None:
            queries = [(f"{sql} WHERE d.queue_id IN ({marks})", ids)
                       for marks, ids in _in_lists(queue_ids)]
        with self._lock:
            rows = [dict(r) for q, args in queries for r in self.conn.execute(q, args)]
        rows.sort(key=lambda r: r["move"])
        for row in rows:
            del row["move"]
        return rows

    def make_due(self, destination: str) -> int:
        """`destination`'s rows waiting out a backoff — pending ones to send, sent ones to ask
        commitment for — become due now (a member found answering again gets its pinned rows
        at once); returns how many."""
        now = self._now()
        with self._tx() as conn:
            return conn.execute(
                "UPDATE deliveries SET next_attempt_at=? WHERE destination=? "
                "AND state IN (?, ?) AND next_attempt_at>?",
                (now, destination, S.PENDING, S.SENT, now)).rowcount

    def free_bytes(self) -> int:
        stats = os.statvfs(self.spool.root)
        return stats.f_bavail * stats.f_frsize

    def check_room(self, size_bytes: int) -> None:
        """Raises SpoolFullError when `size_bytes` more would cross the free-space limit."""
        free = self.free_bytes()
        if free - size_bytes < self.min_free_bytes:
            raise SpoolFullError(
                f"spool {self.spool.root}: {free // 2**20} MB free, {size_bytes // 2**20 + 1} MB "
                f"needed above the limit of {self.min_free_bytes // 2**20} MB; capture stopped "
                f"until objects are committed and removed or space is freed"
            )

    # -- reading -----------------------------------------------------------------------------
    def get_object(self, queue_id: int) -> QueuedObject:
        with self._lock:
            row = self.conn.execute(
                "SELECT * FROM objects WHERE queue_id=?", (queue_id,)
            ).fetchone()
        if row is None:
            raise UnknownQueueItemError(f"no queue item {queue_id}")
        return _object(row)

    def object_path(self, queue_id: int) -> Path:
        return self.spool.object_path(queue_id)

    def deliveries(
        self,
        *,
        queue_ids: Iterable[int] | None = None,
        state: DeliveryState | None = None,
        destination: str | None = None,
        limit: int = 1000,
    ) -> list[Delivery]:
        # only constants and "?" placeholders are interpolated; values go through args
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN objects o USING (queue_id)"  # noqa: S608
        where: list[str] = []
        args: list[object] = []
        if state is not None:
            where.append("d.state=?")
            args.append(state)
        if destination is not None:
            where.append("d.destination=?")
            args.append(destination)
        lists: list[tuple[str, list[int]]] = [("", [])]
        if queue_ids is not None:
            lists = list(_in_lists(queue_ids))
            where.append("d.queue_id IN ({marks})")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY d.delivery_id LIMIT ?"
        with self._lock:
            rows = [_delivery(r) for marks, ids in lists
                    for r in self.conn.execute(sql.format(marks=marks), [*args, *ids, limit])]
        if len(lists) > 1:
            # each list gave its lowest `limit`: the lowest of them all
            rows.sort(key=lambda d: d.delivery_id)
            del rows[limit:]
        return rows

    def recent_queue_ids(self, limit: int = 50) -> list[int]:
        """The newest objects first (purged ones excluded)."""
        with self._lock:
            return [r[0] for r in self.conn.execute(
                "SELECT queue_id FROM objects WHERE purged_at IS NULL "
                "ORDER BY queue_id DESC LIMIT ?", (limit,))]

    def counts(self) -> dict[str, dict[str, int]]:
        """{destination: {state: n}} with every state present."""
        result: dict[str, dict[str, int]] = {dest: _no_counts() for dest in self.destinations}
        with self._lock:
            # every write goes through this connection under this lock: both see the same rows
            rows = self.conn.execute(_COUNTS_SQL).fetchall()
            cancelled = self.conn.execute(_CANCELLED_COUNTS_SQL).fetchall()
        return _fold_counts(result, rows, cancelled)

    def oldest_pending_at(self, destination: str) -> float | None:
        # one state per query: for `state IN (?, ?)` SQLite builds an ephemeral table of the
        # list, whose page cache starts with one ~87 KiB allocation, on every status call
        # (issue 18 item 4b)
        with self._lock:
            found = [row[0] for state in (S.PENDING, S.SENDING) for row in [self.conn.execute(
                "SELECT MIN(o.created_at) FROM deliveries d JOIN objects o USING (queue_id) "
                "WHERE d.destination=? AND d.state=?", (destination, state)).fetchone()]
                if row is not None and row[0] is not None]
        return min(found, default=None)

    def open_transactions(self, destination: str) -> int:
        """Commitment requests still waiting for their report."""
        with self._lock:
            row = self.conn.execute(
                "SELECT COUNT(*) FROM transactions WHERE destination=? AND state='open'",
                (destination,),
            ).fetchone()
        return int(row[0])

    def next_due_at(self, destination: str) -> float | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE destination=? AND state=?",
                (destination, S.PENDING),
            ).fetchone()
        return row[0] if row else None

    # -- sending -----------------------------------------------------------------------------
    def claim_batch(self, destination: str, *, limit: int = 64,
                    max_bytes: int | None = None) -> list[Delivery]:
        """Move up to `limit` due `pending` rows of `destination` to `sending`, oldest first,
        and no more than `max_bytes` of objects (but always one, however large)."""
        now = self._now()
        with self._tx(flush=False) as conn:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS}, o.size_bytes AS size_bytes "  # noqa: S608
                "FROM deliveries d JOIN objects o USING (queue_id) "
                "WHERE d.destination=? AND d.state=? AND d.next_attempt_at<=? "
                f"AND {_NOT_WAITING} "
                "ORDER BY d.next_attempt_at, d.delivery_id LIMIT ?",
                (destination, S.PENDING, now, limit),
            ).fetchall()
            if max_bytes is not None:
                total = 0
                for count, row in enumerate(rows):
                    total += row["size_bytes"]
                    if total > max_bytes and count > 0:
                        rows = rows[:count]
                        break
            ids = [r["delivery_id"] for r in rows]
            conn.executemany(
                "UPDATE deliveries SET state=?, attempts=attempts+1, updated_at=? "
                "WHERE delivery_id=?",
                [(S.SENDING, now, i) for i in ids],
            )
        return [
            Delivery(**{**_delivery(r).__dict__, "state": S.SENDING,
                        "attempts": r["attempts"] + 1})
            for r in rows
        ]

    def requeue(self, delivery_ids: Sequence[int]) -> int:
        """Rows still in `sending` from a round that failed part way (e.g. the disk was full
        when the outcome was to be recorded) go back to `pending`."""
        now = self._now()
        with self._tx(flush=False) as conn:
            return sum(conn.execute(
                "UPDATE deliveries SET state=?, updated_at=? WHERE delivery_id=? AND state=?",
                (S.PENDING, now, i, S.SENDING),
            ).rowcount for i in delivery_ids)

    def mark_sent(self, delivery_id: int, note: str = "") -> None:
        """The archive answered Success or Warning: it holds the object."""
        self.mark_sent_many([(delivery_id, note)])

    def mark_sent_many(self, outcomes: Sequence[tuple[int, str]]) -> None:
        """`mark_sent` for several rows, (delivery id, note) each, in one transaction: the
        commit (and its fsync) is most of what recording an outcome costs (issue 18 item 3:
        0.094 ms CPU per row one by one, 0.03 four at a time, 0.01 sixteen at a time)."""
        if not outcomes:
            return
        now = self._now()
        with self._tx(flush=False) as conn:
            conn.executemany(
                "UPDATE deliveries SET state=?, stored_at=?, updated_at=?, last_error=?, "
                "unknown_outcomes=0 WHERE delivery_id=? AND state=?",
                [(S.SENT, now, now, note, delivery_id, S.SENDING)
                 for delivery_id, note in outcomes],
            )

    def mark_retry(self, delivery_ids: Sequence[int], reason: str, next_attempt_at: float,
                   *, answered: bool = False) -> None:
        """Back to `pending`, not before `next_attempt_at`, the reason kept for `status`.

        `answered`: the archive gave these objects a status (e.g. 0xA700): their count of
        unanswered sends starts again from zero.
        """
        now = self._now()
        reset = "unknown_outcomes=0, " if answered else ""
        with self._tx() as conn:
            conn.executemany(
                "UPDATE deliveries SET state=?, next_attempt_at=?, last_error=?, "  # noqa: S608
                f"{reset}updated_at=? WHERE delivery_id=? AND state IN (?, ?, ?)",
                [(S.PENDING, next_attempt_at, reason, now, i, S.SENDING, S.SENT,
                  S.COMMIT_REQUESTED) for i in delivery_ids],
            )

    def mark_outcome_unknown(self, delivery_id: int, reason: str, next_attempt_at: float, *,
                             max_unknown: int, failed_reason: str) -> bool:
        """A send of this object got no answer (abort, timeout): back to `pending` like
        `mark_retry`, unless this makes `max_unknown` in a row, when it fails with
        `failed_reason` (an object the archive always aborts on would be resent forever).

        Returns
        -------
        bool
            True if the row is now `failed`.
        """
        now = self._now()
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE deliveries SET unknown_outcomes=unknown_outcomes+1 "
                "WHERE delivery_id=? AND state=? RETURNING unknown_outcomes",
                (delivery_id, S.SENDING),
            ).fetchone()
            if row is None:
                return False              # not ours any more (e.g. already recovered)
            if row[0] >= max_unknown:
                conn.execute(
                    "UPDATE deliveries SET state=?, last_error=?, updated_at=? "
                    "WHERE delivery_id=?",
                    (S.FAILED, failed_reason, now, delivery_id),
                )
                return True
            conn.execute(
                "UPDATE deliveries SET state=?, next_attempt_at=?, last_error=?, updated_at=? "
                "WHERE delivery_id=?",
                (S.PENDING, next_attempt_at, reason, now, delivery_id),
            )
        return False

    def postpone(self, delivery_ids: Sequence[int], next_attempt_at: float) -> None:
        """Leave the state as it is; look at these rows again from `next_attempt_at`."""
        with self._tx() as conn:
            conn.executemany(
                "UPDATE deliveries SET next_attempt_at=? WHERE delivery_id=?",
                [(next_attempt_at, i) for i in delivery_ids],
            )

    def mark_failed(self, delivery_id: int, reason: str) -> None:
        """Permanent failure: kept on disk, shown with its reason, retried only by hand."""
        now = self._now()
        with self._tx() as conn:
            conn.execute(
                "UPDATE deliveries SET state=?, last_error=?, updated_at=? WHERE delivery_id=?",
                (S.FAILED, reason, now, delivery_id),
            )

    def retry(self, queue_ids: Sequence[int]) -> int:
        """`queue retry`: failed rows of these objects go back to pending now."""
        now = self._now()
        with self._tx() as conn:
            count = 0
            for queue_id in queue_ids:
                if conn.execute("SELECT 1 FROM objects WHERE queue_id=? AND purged_at IS NULL",
                                (queue_id,)).fetchone() is None:
                    raise UnknownQueueItemError(f"no queue item {queue_id}")
                count += conn.execute(
                    "UPDATE deliveries SET state=?, next_attempt_at=?, attempts=0, "
                    "unknown_outcomes=0, updated_at=? WHERE queue_id=? AND state=? "
                    # a rejected object's cancelled rows are never sent (IOCM)
                    "AND delivery_id NOT IN (SELECT delivery_id FROM cancellations)",
                    (S.PENDING, now, now, queue_id, S.FAILED),
                ).rowcount
        return count

    # -- rejection (IHE IOCM) ----------------------------------------------------------------
    def objects_by_uid(self, sop_instance_uids: Iterable[str]) -> dict[str, QueuedObject]:
        """The queued objects of these SOP Instance UIDs (purged ones too); unknown UIDs are
        simply absent."""
        found: dict[str, QueuedObject] = {}
        with self._lock:
            for marks, uids in _in_lists(sop_instance_uids):
                for row in self.conn.execute(
                    f"SELECT * FROM objects WHERE sop_instance_uid IN ({marks})",  # noqa: S608
                    uids,
                ):
                    found[row["sop_instance_uid"]] = _object(row)
        return found

    def rejections(self, queue_ids: Iterable[int] | None = None) -> dict[int, ObjectRejection]:
        """Rejected objects (all, or those of `queue_ids`), by queue id."""
        sql = ("SELECT r.queue_id, o.sop_instance_uid, r.reason, r.rejected_at "
               "FROM rejections r JOIN objects o USING (queue_id)")
        queries: list[tuple[str, list[int]]] = [(sql, [])]
        if queue_ids is not None:
            queries = [(f"{sql} WHERE r.queue_id IN ({marks})", ids)
                       for marks, ids in _in_lists(queue_ids)]
        with self._lock:
            return {row["queue_id"]: ObjectRejection(row["queue_id"], row["sop_instance_uid"],
                                                     row["reason"], row["rejected_at"])
                    for q, args in queries for row in self.conn.execute(q, args)}

    def rejected_uids(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """Which of these SOP Instance UIDs are rejected: an open procedure's MPPS must not
        list them any more (issue 16 item 2)."""
        rejected: set[str] = set()
        with self._lock:
            for marks, uids in _in_lists(sop_instance_uids):
                rejected.update(row[0] for row in self.conn.execute(
                    "SELECT o.sop_instance_uid FROM rejections r JOIN objects o "  # noqa: S608
                    f"USING (queue_id) WHERE o.sop_instance_uid IN ({marks})", uids))
        return rejected

    def note_queue_ids(self, queue_ids: Iterable[int]) -> set[int]:
        """Which of these objects are rejection notes (their rows wait for another object)."""
        with self._lock:
            return {row[0] for marks, ids in _in_lists(queue_ids)
                    for row in self.conn.execute(
                        "SELECT DISTINCT d.queue_id FROM note_waits w JOIN deliveries d "  # noqa: S608
                        f"USING (delivery_id) WHERE d.queue_id IN ({marks})", ids)}

    def reject(self, queue_ids: Sequence[int], reason: str, *,
               cancel: Sequence[tuple[int, str]], notes: Sequence[NoteToQueue],
               cancel_text: str) -> list[QueuedNote]:
        """Record a rejection, all or nothing.

        The plan (made from an earlier read) must still hold inside the transaction: every row
        of `queue_ids` not yet delivered is in `cancel` (it becomes `failed` with
        `cancel_text`, never to be sent, and is counted as rejected), and every delivered
        row is waited for by exactly one note to its destination. Each note is queued like
        an object, with rows only for the destinations of its `waits`.

        Returns
        -------
        list[QueuedNote]
            The notes as queued, in the order given.

        Raises
        ------
        ObjectInFlightError
            A row of these objects is being sent right now.
        StaleRejectionError
            A row changed since the plan was made: plan again.
        RejectionConflict
            An object is already rejected, or a note's UID is already queued.
        QueueError
            The notes cannot be made durable (disk full, I/O error).
        """
        now = self._now()
        staged: list[Path] = []
        installed: list[Path] = []
        try:
            for note in notes:
                self.check_room(len(note.payload))
                tmp = self.spool.tmp_path(uuid.uuid4().hex)
                staged.append(tmp)
                write_synced(tmp, note.payload)
            with self._tx() as conn:
                self._check_rejection_plan(conn, queue_ids, cancel, notes)
                conn.executemany(
                    "INSERT INTO rejections (queue_id, reason, rejected_at) VALUES (?, ?, ?)",
                    [(q, reason, now) for q in queue_ids])
                self._cancel_rows(conn, cancel, cancel_text, now)
                queued = [self._queue_note(conn, note, tmp, installed, now)
                          for note, tmp in zip(notes, staged, strict=True)]
        except sqlite3.IntegrityError as err:
            self._discard(staged, installed)
            raise RejectionConflict(f"rejection not recorded: {err}; nothing was changed") \
                from err
        except OSError as err:
            self._discard(staged, installed)
            if isinstance(err, QueueError):
                raise
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(f"spool {self.spool.root}: disk full") from err
            raise QueueError(f"rejection note write failed: {err.strerror}") from err
        except BaseException:
            self._discard(staged, installed)
            raise
        return queued

    @staticmethod
    def _discard(staged: Sequence[Path], installed: Sequence[Path]) -> None:
        # the transaction did not commit: none of its files may stay
        for path in (*staged, *installed):
            path.unlink(missing_ok=True)

    @staticmethod
    def _check_rejection_plan(conn: sqlite3.Connection, queue_ids: Sequence[int],
                              cancel: Sequence[tuple[int, str]],
                              notes: Sequence[NoteToQueue]) -> None:
        lists = list(_in_lists(queue_ids))
        for marks, ids in lists:
            already = conn.execute(
                "SELECT o.sop_instance_uid FROM rejections r JOIN objects o "  # noqa: S608
                f"USING (queue_id) WHERE r.queue_id IN ({marks})", ids).fetchone()
            if already is not None:
                raise RejectionConflict(f"SOP Instance UID {already[0]} is already rejected; "
                                        "nothing was changed")
        rows = [row for marks, ids in lists for row in conn.execute(
            "SELECT d.queue_id, d.destination, d.state, o.sop_instance_uid "  # noqa: S608
            f"FROM deliveries d JOIN objects o USING (queue_id) WHERE d.queue_id IN ({marks})",
            ids)]
        for row in rows:
            if row["state"] == S.SENDING:
                raise ObjectInFlightError(
                    f"SOP Instance UID {row['sop_instance_uid']} is being sent to "
                    f"{row['destination']} right now; reject it again once that send has "
                    "ended (nothing was changed)")
        undelivered = {(r["queue_id"], r["destination"]) for r in rows
                       if r["state"] not in DELIVERED_STATES}
        delivered = {(r["queue_id"], r["destination"]) for r in rows
                     if r["state"] in DELIVERED_STATES}
        waited = [(q, dest) for note in notes for dest, waits in note.waits.items()
                  for q, _ in waits]
        if set(cancel) != undelivered or len(waited) != len(set(waited)) \
                or set(waited) != delivered:
            raise StaleRejectionError("the queue changed while the rejection was planned "
                                      "(an object was sent or requeued); nothing was changed")

    @staticmethod
    def _cancel_rows(conn: sqlite3.Connection, cancel: Sequence[tuple[int, str]], text: str,
                     now: float) -> None:
        for queue_id, destination in cancel:
            row = conn.execute(
                "SELECT delivery_id, state FROM deliveries WHERE queue_id=? AND destination=?",
                (queue_id, destination)).fetchone()
            conn.execute("INSERT INTO cancellations (delivery_id, cancelled_at, state_before) "
                         "VALUES (?, ?, ?)", (row["delivery_id"], now, row["state"]))
            # failed, not pending: no path that sends (claim, retry by hand, recovery) may
            # pick it up; counts() shows it as rejected
            conn.execute("UPDATE deliveries SET state=?, last_error=?, updated_at=? "
                         "WHERE delivery_id=?", (S.FAILED, text, now, row["delivery_id"]))

    def _queue_note(self, conn: sqlite3.Connection, note: NoteToQueue, tmp: Path,
                    installed: list[Path], now: float) -> QueuedNote:
        cur = conn.execute(
            "INSERT INTO objects (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
            " size_bytes, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (note.sop_instance_uid, note.sop_class_uid, note.transfer_syntax_uid,
             len(note.payload), hashlib.sha256(note.payload).hexdigest(), now))
        queue_id = int(cur.lastrowid or 0)
        for destination, waits in note.waits.items():
            waiting_for = ", ".join(str(q) for q, _ in waits)
            cur = conn.execute(
                "INSERT INTO deliveries (queue_id, destination, state, next_attempt_at,"
                " last_error, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (queue_id, destination, S.PENDING, now,
                 f"rejection note: sent once queue item(s) {waiting_for} are final here",
                 now))
            conn.executemany(
                "INSERT INTO note_waits (delivery_id, after_queue_id, until_state) "
                "VALUES (?, ?, ?)",
                [(int(cur.lastrowid or 0), q, DeliveryState(state).value)
                 for q, state in waits])
        final = self.spool.object_path(queue_id)
        # known before it is moved: a failure half way must remove it too
        installed.append(final)
        # in place before the row commits, as in enqueue: a row never points at nothing
        install_synced(tmp, final)
        return QueuedNote(queue_id, note.sop_instance_uid, tuple(note.waits))

    # -- storage commitment ------------------------------------------------------------------
    def begin_commitment(
        self, destination: str, delivery_ids: Sequence[int], transaction_uid: str,
        deadline: float,
    ) -> None:
        """Record the transaction *before* the N-ACTION goes out: the report may arrive
        within milliseconds, on another thread, and must find it."""
        now = self._now()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO transactions (transaction_uid, destination, requested_at, deadline,"
                " state) VALUES (?, ?, ?, ?, 'open')",
                (transaction_uid, destination, now, deadline),
            )
            conn.executemany(
                "INSERT INTO transaction_items (transaction_uid, delivery_id) VALUES (?, ?)",
                [(transaction_uid, i) for i in delivery_ids],
            )
            conn.executemany(
                "UPDATE deliveries SET state=?, transaction_uid=?, updated_at=? "
                "WHERE delivery_id=? AND state IN (?, ?)",
                [(S.COMMIT_REQUESTED, transaction_uid, now, i, S.SENT, S.COMMIT_REQUESTED)
                 for i in delivery_ids],
            )

    def sent_awaiting_commitment(self, destination: str, limit: int = 500) -> list[Delivery]:
        """`sent` rows that still need a commitment request (e.g. after a crash or a failed
        N-ACTION)."""
        return self.deliveries(state=S.SENT, destination=destination, limit=limit)

    def expire_transactions(self, destination: str, *, now: float | None = None) -> list[int]:
        """Close open transactions past their deadline and return their still-uncommitted
        delivery ids, back in `sent`, so a new request with a new Transaction UID is made."""
        now = self._now() if now is None else now
        with self._tx() as conn:
            expired = [
                r["transaction_uid"] for r in conn.execute(
                    "SELECT transaction_uid FROM transactions "
                    "WHERE destination=? AND state='open' AND deadline<=?",
                    (destination, now),
                )
            ]
            ids: list[int] = []
            for txn in expired:
                conn.execute(
                    "UPDATE transactions SET state='superseded' WHERE transaction_uid=?", (txn,)
                )
                rows = conn.execute(
                    "SELECT delivery_id FROM deliveries WHERE transaction_uid=? AND state=?",
                    (txn, S.COMMIT_REQUESTED),
                ).fetchall()
                ids.extend(r[0] for r in rows)
                conn.executemany(
                    "UPDATE deliveries SET state=?, updated_at=? WHERE delivery_id=?",
                    [(S.SENT, now, r[0]) for r in rows],
                )
        for txn in expired:
            logger.warning("commitment transaction %s to %s: no report before its deadline",
                           txn, destination)
        return ids

    def fail_transaction_request(
        self, transaction_uid: str, reason: str, *, next_attempt_at: float | None = None,
    ) -> None:
        """The N-ACTION itself failed: the UID is spent (PS3.4 J.3.2.1.2); its rows go back
        to `sent`, to be asked for again under a new UID from `next_attempt_at`."""
        now = self._now()
        with self._tx() as conn:
            conn.execute(
                "UPDATE transactions SET state='superseded' WHERE transaction_uid=?",
                (transaction_uid,),
            )
            conn.execute(
                "UPDATE deliveries SET state=?, last_error=?, updated_at=?, next_attempt_at=? "
                "WHERE transaction_uid=? AND state=?",
                (S.SENT, reason, now, now if next_attempt_at is None else next_attempt_at,
                 transaction_uid, S.COMMIT_REQUESTED),
            )

    def transaction_destination(self, transaction_uid: str) -> str | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT destination FROM transactions WHERE transaction_uid=?",
                (transaction_uid,),
            ).fetchone()
        return row[0] if row else None

    def apply_commitment_report(
        self, result: CommitmentResult, *, retry_commit_at: float,
    ) -> ReportOutcome:
        """Apply a validated report durably; the caller answers 0x0000 only after this returns.

        Only instances that the named transaction referenced are touched; anything else is
        counted in `ignored`. A repeated report changes nothing (idempotent). A report for a
        superseded transaction is still honoured: the archive's word on an instance holds.
        """
        now = self._now()
        with self._tx() as conn:
            txn = conn.execute(
                "SELECT destination FROM transactions WHERE transaction_uid=?",
                (result.transaction_uid,),
            ).fetchone()
            if txn is None:
                return ReportOutcome(known_transaction=False)
            outcome = ReportOutcome(known_transaction=True)
            members = {
                r["sop_instance_uid"]: (r["delivery_id"], r["state"], r["sop_class_uid"])
                for r in conn.execute(
                    "SELECT d.delivery_id, d.state, o.sop_instance_uid, o.sop_class_uid "
                    "FROM transaction_items t JOIN deliveries d USING (delivery_id) "
                    "JOIN objects o USING (queue_id) WHERE t.transaction_uid=? "
                    # a report speaks only for the member it came from: a row that is now
                    # another member's (archive groups) is not this archive's to commit
                    "AND d.destination=?",
                    (result.transaction_uid, txn["destination"]),
                )
            }
            for sop_class, sop_instance in result.committed:
                member = members.get(sop_instance)
                if member is None or member[2] != sop_class:
                    outcome.ignored.append(sop_instance)
                    continue
                delivery_id, state, _ = member
                if state in (S.SENT, S.COMMIT_REQUESTED, S.PENDING, S.FAILED):
                    conn.execute(
                        "UPDATE deliveries SET state=?, committed_at=?, updated_at=?, "
                        "last_error='' WHERE delivery_id=?",
                        (S.COMMITTED, now, now, delivery_id),
                    )
                outcome.committed += 1
            for sop_class, sop_instance, reason in result.failed:
                member = members.get(sop_instance)
                if member is None or member[2] != sop_class:
                    outcome.ignored.append(sop_instance)
                    continue
                delivery_id, state, _ = member
                if state == S.COMMITTED:
                    continue           # a stale report cannot undo a commitment
                text = f"archive did not commit (Failure Reason 0x{reason:04X})"
                if reason == FAILURE_NO_SUCH_OBJECT:
                    conn.execute(
                        "UPDATE deliveries SET state=?, next_attempt_at=?, last_error=?, "
                        "updated_at=? WHERE delivery_id=?",
                        (S.PENDING, now, text + ": resending", now, delivery_id),
                    )
                    outcome.resend += 1
                elif reason == FAILURE_RESOURCE_LIMITATION:
                    conn.execute(
                        "UPDATE deliveries SET state=?, next_attempt_at=?, last_error=?, "
                        "updated_at=? WHERE delivery_id=?",
                        (S.SENT, retry_commit_at, text + ": asking again later", now,
                         delivery_id),
                    )
                    outcome.retry_commit += 1
                else:
                    conn.execute(
                        "UPDATE deliveries SET state=?, last_error=?, updated_at=? "
                        "WHERE delivery_id=?",
                        (S.FAILED, text, now, delivery_id),
                    )
                    outcome.failed += 1
            conn.execute(
                "UPDATE transactions SET state='reported' WHERE transaction_uid=? "
                "AND state='open'",
                (result.transaction_uid,),
            )
        return outcome

    # -- retention ---------------------------------------------------------------------------
    def purge(self, *, retention_s: float, final_states: Mapping[str, DeliveryState]) -> int:
        """Delete spool files of objects final at every destination for `retention_s`.

        `final_states` gives, per destination, the state that counts as final: `committed`
        where storage commitment is used, `sent` where it is not. An object with a row for a
        destination not in `final_states` is kept.

        SQLite decides which objects are due (`_purgeable_sql`), PURGE_BATCH at a time: the
        rows of objects still within retention (a day of them) never become Python objects.
        """
        now = self._now()
        finals = sorted((str(d), str(state)) for d, state in final_states.items())
        sql = _purgeable_sql(len(finals))
        params: dict[str, object] = {"retention": retention_s, "now": now,
                                     "limit": PURGE_BATCH}
        for n, (destination, state) in enumerate(finals):
            params[f"d{n}"], params[f"s{n}"] = destination, state
        purged = 0
        after = 0
        while True:
            with self._lock:
                due = [row[0] for row in self.conn.execute(sql, {**params, "after": after})]
            for queue_id in due:
                # the row first: a crash in between leaves a purged row's file, removed at
                # recovery, never a live row without its file (which would read as data loss)
                with self._tx() as conn:
                    conn.execute("UPDATE objects SET purged_at=? WHERE queue_id=?",
                                 (now, queue_id))
                self.spool.object_path(queue_id).unlink(missing_ok=True)
                purged += 1
            if len(due) < PURGE_BATCH:
                return purged
            after = due[-1]


def _check_groups(destinations: Sequence[str], groups: Mapping[str, Sequence[str]]) -> None:
    """Raises QueueError for groups the config would have refused (a programming error)."""
    seen: dict[str, str] = {}
    for name, members in groups.items():
        if not members or name in destinations:
            raise QueueError(f"archive group {name!r}: needs members and a name that is no "
                             "destination's")
        for member in members:
            if member not in destinations or member in seen:
                raise QueueError(f"archive group {name!r}: member {member!r} is unknown or "
                                 f"already in group {seen.get(member)!r}")
            seen[member] = name


def _id_ranges(ids: Sequence[int]) -> str:
    """1,2,3,7 -> "1-3, 7": a log line stays short when thousands of rows move."""
    runs: list[tuple[int, int]] = []
    for queue_id in sorted(ids):
        if runs and runs[-1][1] == queue_id - 1:
            runs[-1] = (runs[-1][0], queue_id)
        else:
            runs.append((queue_id, queue_id))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def read_counts(db_path: Path) -> dict[str, dict[str, int]]:
    """{destination: {state: n}} read without taking the spool lock (for `status` while the
    daemon is down or busy).

    Raises
    ------
    QueueError
        If the database cannot be read.
    """
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            has_cancellations = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='cancellations'"
            ).fetchone() is not None
            rows = conn.execute(_COUNTS_SQL).fetchall()
            # a database not yet upgraded (schema < 2) has no cancelled row
            cancelled = (conn.execute(_CANCELLED_COUNTS_SQL).fetchall()
                         if has_cancellations else [])
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise QueueError(f"{db_path}: {err}") from err
    return _fold_counts({}, rows, cancelled)


def _fold_counts(result: dict[str, dict[str, int]], rows: Iterable[Sequence[Any]],
                 cancelled: Iterable[Sequence[Any]]) -> dict[str, dict[str, int]]:
    """`result` filled from (destination, state, n) rows of deliveries, and cancelled rows
    (same shape) moved from their stored state to "rejected"."""
    for destination, state, n in rows:
        result.setdefault(destination, _no_counts())[state] = n
    for destination, state, n in cancelled:
        counts = result[destination]
        counts[state] -= n
        if counts[state] == 0 and state not in _STATE_NAMES:
            del counts[state]
        counts["rejected"] = counts.get("rejected", 0) + n
    return result
