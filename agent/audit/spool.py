"""The durable audit queue: `<spool>/audit/audit.db`, SQLite in WAL mode with synchronous=FULL.

An event is reported done only once its complete syslog message is committed here (the same rule
as the image queue: what the agent has said happened is never lost). Each row holds the exact
bytes to send, so a resend is byte-identical. States:

    pending --send--> sent --receiver still connected after the write--> (deleted)
       ^                |
       +---- recover / connection lost (at-least-once: may arrive twice, byte-identical)
    pending --larger than the UDP limit--> held (kept; released when the transport changes)

The folder is 0700 and the database 0600 (SQLite gives -wal and -shm the database's mode): these
messages carry patient IDs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError

DB_NAME = "audit.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,          -- wall clock, seconds since the epoch
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'held')),
    sent_at REAL,
    data BLOB NOT NULL                 -- the complete RFC 5424 message
);
"""


class AuditUnavailable(AgentError, OSError):
    """An audit event could not be recorded durably (disk full, spool unwritable): the action it
    describes must be refused (issue 15: an event that cannot be audited does not happen)."""


@dataclass(frozen=True)
class SpooledMessage:
    seq: int
    created_at: float
    data: bytes


@dataclass(frozen=True)
class SpoolCounts:
    waiting: int                        # pending + sent (not yet confirmed)
    held: int
    oldest_created_at: float | None     # of pending, sent and held


class AuditSpool:
    """The audit queue; thread-safe (one connection, one lock: events are small and rare).

    Raises
    ------
    AuditUnavailable
        From the constructor and every method if the database cannot be opened or written.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / DB_NAME
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except (OSError, sqlite3.Error) as err:
            raise AuditUnavailable(f"audit spool {self.path}: cannot open it ({err}); audited "
                                   "actions are refused until it can be written") from err

    def _open(self) -> sqlite3.Connection:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)        # mkdir's mode is filtered by the umask
        # created 0600 before SQLite opens it; SQLite gives -wal and -shm this file's mode
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # per connection; NORMAL could lose a committed event at a power cut (RELIABILITY 1.5)
        db.execute("PRAGMA synchronous=FULL")
        synchronous = db.execute("PRAGMA synchronous").fetchone()[0]
        if synchronous != 2:
            raise sqlite3.OperationalError(f"synchronous is {synchronous}, FULL (2) needed")
        db.executescript(_SCHEMA)
        return db

    def _write(self, what: str, action: Callable[[sqlite3.Connection], object]) -> object:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = action(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
            except sqlite3.Error as err:
                raise AuditUnavailable(f"audit spool {self.path}: cannot {what} ({err}); "
                                       "audited actions are refused until it can be "
                                       "written") from err

    def _read(self, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(query, args).fetchall()
            except sqlite3.Error as err:
                raise AuditUnavailable(f"audit spool {self.path}: cannot read it "
                                       f"({err})") from err

    # --- writing events ------------------------------------------------------------------------

    def append(self, build: Callable[[int], bytes], *, now: float) -> int:
        """Commit one message; `build(number)` makes its bytes from the number it gets (the
        syslog sequenceId), inside the same transaction. Returns that number.

        Raises
        ------
        AuditUnavailable
            If it could not be committed (disk full, I/O error): nothing was recorded.
        """
        def insert(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
            number = (row[0] if row else 0) + 1
            db.execute("INSERT INTO messages (seq, created_at, data) VALUES (?, ?, ?)",
                       (number, now, build(number)))
            return number

        return int(self._write("record the event", insert))  # type: ignore[call-overload]

    # --- the sender's side ---------------------------------------------------------------------

    def recover(self, *, release_held: bool) -> None:
        """At start: what was written to a connection but not confirmed is sent again; held
        messages go back in line when the transport can now carry them."""
        states = ("sent", "held") if release_held else ("sent",)
        marks = ", ".join("?" for _ in states)
        self._write("recover", lambda db: db.execute(
            f"UPDATE messages SET state = 'pending', sent_at = NULL WHERE state IN ({marks})",  # noqa: S608
            states))

    def next_pending(self) -> SpooledMessage | None:
        """The oldest message waiting to be written, or None."""
        rows = self._read("SELECT seq, created_at, data FROM messages WHERE state = 'pending' "
                          "ORDER BY seq LIMIT 1")
        if not rows:
            return None
        seq, created_at, data = rows[0]
        return SpooledMessage(int(seq), float(created_at), bytes(data))  # type: ignore[arg-type]

    def mark_sent(self, seq: int, *, now: float) -> None:
        self._write("mark a message sent", lambda db: db.execute(
            "UPDATE messages SET state = 'sent', sent_at = ? WHERE seq = ?", (now, seq)))

    def delete(self, seq: int) -> None:
        """A message the receiver has (UDP: handed to the network, all UDP can promise)."""
        self._write("prune a delivered message", lambda db: db.execute(
            "DELETE FROM messages WHERE seq = ?", (seq,)))

    def confirm_sent(self, *, written_before: float) -> int:
        """Prune the messages written to a connection that was still healthy afterwards."""
        def prune(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM messages WHERE state = 'sent' AND sent_at <= ?",
                              (written_before,)).rowcount

        return int(self._write("prune delivered messages", prune))  # type: ignore[call-overload]

    def unsend(self) -> None:
        """The connection broke: every unconfirmed message goes out again, in order."""
        self._write("requeue unconfirmed messages", lambda db: db.execute(
            "UPDATE messages SET state = 'pending', sent_at = NULL WHERE state = 'sent'"))

    def hold(self, seq: int) -> None:
        self._write("hold a message", lambda db: db.execute(
            "UPDATE messages SET state = 'held' WHERE seq = ?", (seq,)))

    def has_unconfirmed(self) -> bool:
        return bool(self._read("SELECT 1 FROM messages WHERE state = 'sent' LIMIT 1"))

    def counts(self) -> SpoolCounts:
        rows = self._read(
            "SELECT COALESCE(SUM(state != 'held'), 0), COALESCE(SUM(state = 'held'), 0), "
            "MIN(created_at) FROM messages")
        waiting, held, oldest = rows[0]
        return SpoolCounts(int(waiting), int(held),  # type: ignore[call-overload]
                           None if oldest is None else float(oldest))  # type: ignore[arg-type]

    def all_messages(self) -> list[bytes]:
        """Every message still in the spool, in order (tests, and a service engineer's export)."""
        return [bytes(row[0]) for row in  # type: ignore[call-overload]
                self._read("SELECT data FROM messages ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
