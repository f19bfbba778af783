"""Frames that waited in the capture buffer are queued as one group: each object still its own
file and rows, but one transaction and one fsync of the folder for all of them (n + 2 flushes
to disk instead of 3n), all or none, so that a capture behind a slow disk catches up."""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from agent.acquisition import SPOOL_GROUP_MAX, Acquisition
from agent.errors import AlreadyQueuedError, QueueError, SpoolFullError
from agent.iod import UIDSource
from agent.queue import NewObject, QueueStore
from agent.queue import store as store_module
from agent.queue.spool import observe_fsync
from agent.records import DeviceInfo, Order, QueuedObject

SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEVICE = DeviceInfo("OT", "Example Medical", "Test-1", "1", "ROOM1", "", "test")
ORDER = Order(patient_name="Test^Patient", patient_id="T1")


class CountingFsync:
    def __init__(self) -> None:
        self.count = 0

    def time(self) -> AbstractContextManager[object]:
        self.count += 1
        return nullcontext()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    queue = QueueStore(tmp_path / "spool", ["pacs", "backup"])
    queue.open()
    yield queue
    queue.close()


@pytest.fixture
def fsyncs() -> Iterator[CountingFsync]:
    counter = CountingFsync()
    observe_fsync(counter)
    yield counter
    observe_fsync(None)


def new(index: int, size: int = 1000) -> NewObject:
    return NewObject(bytes([index % 256]) * size, f"2.25.{7000 + index}", SC, EXPLICIT_LE)


def commits(store: QueueStore) -> list[str]:
    seen: list[str] = []
    store.conn.set_trace_callback(
        lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


def nothing_left_behind(store: QueueStore) -> None:
    assert list(store.spool.objects_dir.iterdir()) == []
    assert list(store.spool.tmp_dir.iterdir()) == []
    assert store.conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 0
    assert store.conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0


def test_a_group_is_each_object_durably_in_one_transaction(
        store: QueueStore, fsyncs: CountingFsync) -> None:
    objects = [new(index, 1000 + index) for index in range(4)]
    seen = commits(store)
    queued = store.enqueue_many(objects)
    assert [q.sop_instance_uid for q in queued] == [o.sop_instance_uid for o in objects]
    for obj, done in zip(objects, queued, strict=True):
        assert store.object_path(done.queue_id).read_bytes() == obj.payload
        assert done.sha256 == hashlib.sha256(obj.payload).hexdigest()
        assert done.size_bytes == len(obj.payload)
        assert store.get_object(done.queue_id) == done
    assert len(store.deliveries(destination="pacs")) == 4
    assert len(store.deliveries(destination="backup")) == 4
    assert fsyncs.count == 4 + 1                 # the four files, the folder once
    assert len(seen) == 1                        # one commit
    assert list(store.spool.tmp_dir.iterdir()) == []


def test_one_at_a_time_costs_what_the_group_spares(store: QueueStore,
                                                   fsyncs: CountingFsync) -> None:
    seen = commits(store)
    for index in range(4):
        obj = new(index)
        store.enqueue(obj.payload, sop_instance_uid=obj.sop_instance_uid,
                      sop_class_uid=obj.sop_class_uid,
                      transfer_syntax_uid=obj.transfer_syntax_uid)
    assert fsyncs.count == 4 * 2 and len(seen) == 4


def test_a_uid_already_queued_refuses_the_whole_group(store: QueueStore) -> None:
    store.enqueue_many([new(2)])
    before = sorted(store.spool.objects_dir.iterdir())
    with pytest.raises(AlreadyQueuedError, match=r"2\.25\.7002"):
        store.enqueue_many([new(1), new(2), new(3)])
    assert sorted(store.spool.objects_dir.iterdir()) == before
    assert list(store.spool.tmp_dir.iterdir()) == []
    assert store.conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 1


def test_the_same_uid_twice_in_a_group_is_refused(store: QueueStore) -> None:
    with pytest.raises(AlreadyQueuedError):
        store.enqueue_many([new(1), new(1)])
    nothing_left_behind(store)


def test_a_disk_full_while_writing_the_group_leaves_nothing(
        store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store_module.write_synced
    calls: list[Path] = []

    def third_fails(path: Path, payload: bytes) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, payload)

    monkeypatch.setattr(store_module, "write_synced", third_fails)
    with pytest.raises(SpoolFullError, match="disk full"):
        store.enqueue_many([new(index) for index in range(4)])
    nothing_left_behind(store)


def test_a_failed_rename_rolls_the_group_back(store: QueueStore,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = store_module.os.replace
    calls: list[object] = []

    def second_fails(src: object, dst: object) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)       # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "replace", second_fails)
    with pytest.raises(QueueError, match="queue write failed"):
        store.enqueue_many([new(index) for index in range(3)])
    nothing_left_behind(store)


def test_an_empty_group_is_nothing(store: QueueStore, fsyncs: CountingFsync) -> None:
    assert store.enqueue_many([]) == []
    assert fsyncs.count == 0


class SlowFirstQueue(QueueStore):
    """A spool whose first object waits for the test (a slow disk); records the groups."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.groups: list[int] = []
        self.refuse_groups = False

    def enqueue_many(self, objects: list[NewObject]) -> list[QueuedObject]:  # type: ignore[override]
        if not self.groups:
            self.gate.wait(timeout=30)
        self.groups.append(len(objects))
        if self.refuse_groups and len(objects) > 1:
            raise QueueError("group refused by the test")
        return super().enqueue_many(objects)


def acquire_behind_a_slow_disk(tmp_path: Path, queue: SlowFirstQueue,
                               frames: int) -> tuple[object, Acquisition]:
    acquisition = Acquisition(driver_name="simulated",
                              driver_options={"width": 32, "height": 32, "frame_rate": 500.0},
                              device=DEVICE, queue=queue, uids=UIDSource(), buffer_frames=16)
    acquisition.open()
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(acquisition.acquire(ORDER, frames)))
    worker.start()
    deadline = time.monotonic() + 20
    while acquisition.status().frames_read < frames:
        assert time.monotonic() < deadline, "the device did not deliver"
        time.sleep(0.01)
    queue.gate.set()
    worker.join(timeout=30)
    [outcome] = result
    return outcome, acquisition


def test_frames_that_waited_are_queued_in_groups(tmp_path: Path) -> None:
    queue = SlowFirstQueue(tmp_path / "spool", ["pacs"])
    queue.open()
    try:
        outcome, acquisition = acquire_behind_a_slow_disk(tmp_path, queue, 13)
        acquisition.close()
        objects = outcome.objects                               # type: ignore[attr-defined]
        assert not outcome.error and len(objects) == 13         # type: ignore[attr-defined]
        # what was taken before the disk stalled (the first frame, rarely one more), then the
        # frames that waited, SPOOL_GROUP_MAX at a time
        assert sum(queue.groups) == 13 and max(queue.groups) == SPOOL_GROUP_MAX
        assert queue.groups[1:-1] == [SPOOL_GROUP_MAX] * (len(queue.groups) - 2)
        assert len(queue.groups) <= 1 + 12 // SPOOL_GROUP_MAX
        # in the device's order, numbered as before
        assert [o.frame_sequence_number for o in objects] == sorted(
            o.frame_sequence_number for o in objects)
        rows = queue.deliveries(destination="pacs")
        assert sorted(r.queue_id for r in rows) == [o.queue_id for o in objects]
    finally:
        queue.close()


def test_a_group_that_cannot_be_queued_together_goes_one_at_a_time(tmp_path: Path) -> None:
    queue = SlowFirstQueue(tmp_path / "spool", ["pacs"])
    queue.refuse_groups = True
    queue.open()
    try:
        outcome, acquisition = acquire_behind_a_slow_disk(tmp_path, queue, 6)
        acquisition.close()
        assert not outcome.error                                 # type: ignore[attr-defined]
        assert len(outcome.objects) == 6                         # type: ignore[attr-defined]
        assert len(queue.deliveries(destination="pacs")) == 6
    finally:
        queue.close()
