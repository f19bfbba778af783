"""The audit spool: durable before the event returns, in order, private, crash-safe; a full disk
refuses the event instead of losing it."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from agent.audit.spool import DB_NAME, AuditSpool, AuditUnavailable
from agent.errors import AgentError


def message(number: int) -> bytes:
    return f"message {number}".encode()


def fill(spool: AuditSpool, count: int) -> list[int]:
    return [spool.append(message, now=1000.0 + n) for n in range(count)]


def drain(spool: AuditSpool) -> list[bytes]:
    sent = []
    while (item := spool.next_pending()) is not None:
        sent.append(item.data)
        spool.delete(item.seq)
    return sent


def test_messages_come_out_in_order_with_their_numbers(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit")
    assert fill(spool, 3) == [1, 2, 3]
    assert drain(spool) == [b"message 1", b"message 2", b"message 3"]
    # numbers are never reused: a later message is never mistaken for a resend
    assert spool.append(message, now=2000.0) == 4
    spool.close()


def test_folder_and_files_are_private(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    spool = AuditSpool(folder)
    fill(spool, 1)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    spool.close()


def test_a_crash_after_the_write_loses_and_repeats_nothing(tmp_path: Path) -> None:
    # "kill -9 between writing and sending": the process vanishes without closing anything;
    # the next process opens the same spool and finds every committed message, in order
    first = AuditSpool(tmp_path / "audit")
    fill(first, 5)
    item = first.next_pending()
    assert item is not None
    first.mark_sent(item.seq, now=2000.0)       # written to a connection, never confirmed
    second = AuditSpool(tmp_path / "audit")
    second.recover(release_held=False)
    assert drain(second) == [message(n) for n in range(1, 6)]
    assert second.counts().waiting == 0
    first.close()
    second.close()


def test_a_broken_connection_requeues_unconfirmed_messages_in_order(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit")
    fill(spool, 3)
    for _ in range(2):
        item = spool.next_pending()
        assert item is not None
        spool.mark_sent(item.seq, now=100.0 + item.seq)
    assert spool.confirm_sent(written_before=101.0) == 1       # only the first was confirmed
    spool.unsend()
    assert drain(spool) == [b"message 2", b"message 3"]
    spool.close()


def test_held_messages_stay_until_released(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit")
    fill(spool, 2)
    spool.hold(1)
    counts = spool.counts()
    assert (counts.waiting, counts.held, counts.oldest_created_at) == (1, 1, 1000.0)
    assert drain(spool) == [b"message 2"]
    spool.recover(release_held=False)
    assert spool.next_pending() is None
    spool.recover(release_held=True)
    assert drain(spool) == [b"message 1"]
    spool.close()


def test_a_full_disk_refuses_the_event_and_keeps_the_rest(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit")
    fill(spool, 1)
    # SQLite's own limit gives the SQLITE_FULL a full disk gives, on this spool's connection
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(AuditUnavailable, match="cannot record the event") as info:
        spool.append(lambda n: b"x" * 100_000, now=2000.0)
    assert isinstance(info.value, AgentError) and isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert drain(spool) == [b"message 1"]
    spool.close()


def test_an_unwritable_folder_is_audit_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AuditUnavailable, match="cannot open it"):
        AuditSpool(blocker / "audit")
