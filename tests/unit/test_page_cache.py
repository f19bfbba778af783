"""A spool file leaves the page cache once it is durable (issue 18, targets 5 and 6).

Written once and read once by the sending process, a spool file's pages are of no use in the
cache, and keeping them costs: the cache grows by every frame captured, so every page of
every new frame is a page the kernel has not used for a while. On this project's machine (a
VM whose free memory goes back to the host), such a page cost ~40 us of system CPU, 22-32 ms
per 2 MB frame, against 2-3 ms when the pages of the frame before were dropped and reused
(measured: write + fsync + read 150 x 2 MB, interleaved). On a device it keeps the cache for
what is read again, and a long exam does not push the agent's own pages out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.pagecache import page_cache_kept, resident_pages

from agent.queue import NewObject, QueueStore
from agent.queue.spool import write_synced

SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"
PAYLOAD = bytes(range(256)) * 4096          # 1 MiB: 256 pages


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    if not page_cache_kept(tmp_path):
        pytest.skip(f"{tmp_path} is on tmpfs: its pages are the file and cannot be dropped")
    return tmp_path


@pytest.fixture
def store(folder: Path) -> Iterator[QueueStore]:
    queue = QueueStore(folder / "spool", ["pacs"], min_free_bytes=0)
    queue.open()
    yield queue
    queue.close()


def test_a_plain_write_stays_in_the_cache(folder: Path) -> None:
    # the measure itself: what the kernel keeps after an ordinary write and fsync
    path = folder / "plain"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, PAYLOAD)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert resident_pages(path) > 200


def test_a_durable_write_leaves_nothing_in_the_cache(folder: Path) -> None:
    path = folder / "synced"
    write_synced(path, PAYLOAD)
    assert path.read_bytes() == PAYLOAD
    # read back to check it: cached again by that read, dropped again by the next write
    write_synced(folder / "again", PAYLOAD)
    assert resident_pages(folder / "again") == 0


def test_queued_objects_leave_nothing_in_the_cache(store: QueueStore) -> None:
    one = store.enqueue(PAYLOAD, sop_instance_uid="2.25.1", sop_class_uid=SC,
                        transfer_syntax_uid=EXPLICIT)
    group = store.enqueue_many([NewObject(PAYLOAD[:-n], f"2.25.{10 + n}", SC, EXPLICIT)
                                for n in (1, 2, 3)])
    paths = [store.object_path(q.queue_id) for q in (one, *group)]
    assert [resident_pages(p) for p in paths] == [0, 0, 0, 0]
    assert paths[0].read_bytes() == PAYLOAD
    assert paths[3].read_bytes() == PAYLOAD[:-3]
