"""The queue database's schema, numbered: version 0 as released, then forward migrations.

The version lives in `PRAGMA user_version`. At open the pending migrations run in one
transaction together with the new version number, so a power cut leaves the old schema or the
new one, never half of it. A database from a newer agent is refused before anything writes to
it: an older agent cannot know what a newer column means, and a downgrade must never lose
queued images.

To change the schema: append a `Migration` to `MIGRATIONS` (never edit a released one nor
BASELINE), upgrade a fixture spool written by the previous release in a test (as
tests/data/spool-v0 is), and keep every reader of the database (`read_counts`, `cli queue
list`, bench) working on both versions: a step may add, never drop or rename.
"""

from __future__ import annotations

import logging
import sqlite3
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import QueueError

logger = logging.getLogger(__name__)

#: version 0: the schema released at commit 4ba70cc, as it was (IF NOT EXISTS: a version-0
#: database and an empty one take the same path)
BASELINE: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS objects (
    queue_id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid    TEXT NOT NULL UNIQUE,
    sop_class_uid       TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    size_bytes          INTEGER NOT NULL,
    sha256              TEXT NOT NULL,
    created_at          REAL NOT NULL,
    purged_at           REAL
)""",
    """CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id         INTEGER NOT NULL REFERENCES objects(queue_id),
    destination      TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT NOT NULL DEFAULT '',
    transaction_uid  TEXT,
    updated_at       REAL NOT NULL,
    stored_at        REAL,
    committed_at     REAL,
    UNIQUE (queue_id, destination)
)""",
    """CREATE INDEX IF NOT EXISTS deliveries_by_state
    ON deliveries (destination, state, next_attempt_at)""",
    """CREATE TABLE IF NOT EXISTS transactions (
    transaction_uid TEXT PRIMARY KEY,
    destination     TEXT NOT NULL,
    requested_at    REAL NOT NULL,
    deadline        REAL NOT NULL,
    state           TEXT NOT NULL          -- open | reported | superseded
)""",
    """CREATE TABLE IF NOT EXISTS transaction_items (
    transaction_uid TEXT NOT NULL REFERENCES transactions(transaction_uid),
    delivery_id     INTEGER NOT NULL REFERENCES deliveries(delivery_id),
    PRIMARY KEY (transaction_uid, delivery_id)
)""",
)


@dataclass(frozen=True)
class Migration:
    """One forward step: from `version - 1` to `version`."""

    version: int
    why: str
    apply: Callable[[sqlite3.Connection], None]


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _add_unknown_outcomes(conn: sqlite3.Connection) -> None:
    # a database made by the unreleased code between 4ba70cc and this module already has the
    # column (it was in CREATE TABLE) while its user_version is still 0
    if "unknown_outcomes" not in _columns(conn, "deliveries"):
        conn.execute("ALTER TABLE deliveries ADD COLUMN unknown_outcomes INTEGER NOT NULL "
                     "DEFAULT 0")


#: IHE IOCM rejection (issue 16 item 2), in tables of their own so that no released table
#: changes shape: what was rejected and why; delivery rows cancelled by a rejection (never to
#: be sent, kept until retention); and the rows of a rejection note that must wait until the
#: rejected object is final at the same destination (an archive refuses a note naming an
#: instance it does not hold)
_REJECTION_TABLES = (
    """CREATE TABLE IF NOT EXISTS rejections (
    queue_id      INTEGER PRIMARY KEY REFERENCES objects(queue_id),
    reason        TEXT NOT NULL,  -- quality | patient-safety | incorrect-modality-worklist
    rejected_at   REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS cancellations (
    delivery_id   INTEGER PRIMARY KEY REFERENCES deliveries(delivery_id),
    cancelled_at  REAL NOT NULL,
    state_before  TEXT NOT NULL             -- pending | failed
)""",
    """CREATE TABLE IF NOT EXISTS note_waits (
    delivery_id    INTEGER NOT NULL REFERENCES deliveries(delivery_id),
    after_queue_id INTEGER NOT NULL REFERENCES objects(queue_id),
    until_state    TEXT NOT NULL,           -- committed | sent, at the note row's destination
    PRIMARY KEY (delivery_id, after_queue_id)
)""",
)


def _add_rejection_tables(conn: sqlite3.Connection) -> None:
    for statement in _REJECTION_TABLES:
        conn.execute(statement)


#: archive groups (issue 19 item 2): a row moved from a member that stopped answering to the
#: next one keeps its delivery id and takes the new member's name; this table keeps where it
#: was first routed, so `status`, the log and a person can tell a moved row from one routed
#: there at capture (a table of its own: no released table changes shape)
_REROUTES_TABLE = """CREATE TABLE IF NOT EXISTS reroutes (
    delivery_id      INTEGER NOT NULL REFERENCES deliveries(delivery_id),
    group_name       TEXT NOT NULL,
    from_destination TEXT NOT NULL,
    to_destination   TEXT NOT NULL,
    moved_at         REAL NOT NULL
)"""


def _add_reroutes_table(conn: sqlite3.Connection) -> None:
    conn.execute(_REROUTES_TABLE)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "deliveries.unknown_outcomes: consecutive sends with no answer, bounded",
              _add_unknown_outcomes),
    Migration(2, "rejections, cancellations, note_waits: IOCM rejection before and after "
                 "sending (issue 16 item 2)", _add_rejection_tables),
    Migration(3, "reroutes: rows of an archive group moved to another member (issue 19 "
                 "item 2)", _add_reroutes_table),
)

#: the newest schema this code knows
SCHEMA_VERSION = MIGRATIONS[-1].version


def ro_uri(db_path: Path, *, immutable: bool = False) -> str:
    """A read-only SQLite URI for `db_path` (quoted: a folder name may hold '?' or '#')."""
    uri = f"file:{urllib.parse.quote(str(db_path))}?mode=ro"
    return uri + "&immutable=1" if immutable else uri


def read_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(db_path: Path, version: int) -> None:
    """Raises QueueError if `version` is newer than this code knows."""
    if version > SCHEMA_VERSION:
        raise QueueError(
            f"{db_path} is schema version {version}; this agent knows up to "
            f"{SCHEMA_VERSION}: upgrade the agent, never downgrade (the database was left "
            f"as it is)")


def stored_version(db_path: Path) -> int | None:
    """The schema version of an existing database, read without writing anything; None if
    there is no database yet. Call it with the spool lock held.

    Raises
    ------
    QueueError
        If the file is not a readable SQLite database.
    """
    if not db_path.exists():
        return None
    # without a -wal file every commit is in the main file; immutable=1 then reads it without
    # creating -wal/-shm (the spool lock keeps writers out). With one, SQLite must read it.
    has_wal = db_path.with_name(db_path.name + "-wal").exists()
    try:
        conn = sqlite3.connect(ro_uri(db_path, immutable=not has_wal), uri=True, timeout=10)
        try:
            return read_version(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise QueueError(f"{db_path}: cannot read the schema version ({err})") from err


def check_openable(db_path: Path) -> int | None:
    """`stored_version`, refusing a newer schema before anything writes to the database."""
    version = stored_version(db_path)
    if version is not None:
        refuse_newer(db_path, version)
    return version


def _apply_steps(conn: sqlite3.Connection, before: int) -> None:
    if before == 0:
        for statement in BASELINE:
            conn.execute(statement)
    for step in MIGRATIONS:
        if step.version > before:
            step.apply(conn)
    if before != SCHEMA_VERSION:
        # PRAGMA takes no parameters; SCHEMA_VERSION is our own int
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def migrate(conn: sqlite3.Connection, db_path: Path) -> tuple[int, int]:
    """Bring the database to SCHEMA_VERSION: every pending step and the new user_version in
    one BEGIN IMMEDIATE transaction. `conn` must be in autocommit mode (isolation_level None).

    Returns
    -------
    (from_version, to_version)

    Raises
    ------
    QueueError
        If the database is newer than this code, a step fails (nothing is changed then), or
        the result lacks a table or column this code needs.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = read_version(conn)
        refuse_newer(db_path, before)
        _apply_steps(conn, before)
        check_columns(conn, db_path)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if before != SCHEMA_VERSION:
        logger.info("queue database schema upgraded from version %d to %d", before,
                    SCHEMA_VERSION)
    return before, SCHEMA_VERSION


def expected_columns() -> dict[str, set[str]]:
    """{table: columns} of SCHEMA_VERSION, made by running the migrations on an empty
    in-memory database (so this cannot drift from them)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _apply_steps(conn, 0)
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {table: _columns(conn, table) for table in tables}
    finally:
        conn.close()


def check_columns(conn: sqlite3.Connection, db_path: Path) -> None:
    """Raises QueueError naming every table.column this code needs that the database lacks
    (e.g. a foreign file named queue.db, or a schema edited by hand)."""
    missing = [f"{table}.{column}"
               for table, columns in sorted(_EXPECTED.items())
               for column in sorted(columns - _columns(conn, table))]
    if missing:
        raise QueueError(f"{db_path}: schema version {read_version(conn)} lacks "
                         f"{', '.join(missing)}; not a queue database this agent can use")


_EXPECTED = expected_columns()
