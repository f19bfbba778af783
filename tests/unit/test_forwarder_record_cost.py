"""What the forwarder does per stored object (issue 18 item 3: its CPU per object): a Success
is classified without building a pydicom Dataset, and the outcomes of one batch are recorded
in few transactions, never recorded as sent when they were not and in the order they came.

The worker runs one round against a scripted sending process (no network, no child): the queue
is real, so its rows say what was recorded."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent.config import DestinationSection, QueueSection
from agent.forwarder import RECORD_GROUP_MAX, DestinationWorker, store_result
from agent.iod import UIDSource
from agent.net.messages import StoreOutcome
from agent.net.status import classify_store_status
from agent.net.store_process import StoreProcessError
from agent.queue import QueueStore
from agent.records import DeliveryState

DEST = "pacs"
SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"


class Clock:
    """A queue clock that moves on at every reading: recorded times give the order."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1000)

    def __call__(self) -> float:
        return float(next(self._ticks))


class ScriptedSender:
    """Stands in for StoreProcess: answers the batch's objects with `script`, one entry per
    object (a status, None for no answer, or an exception raised at that point)."""

    def __init__(self, script: Sequence[int | Exception | None]) -> None:
        self.script = list(script)
        self.is_established = False
        self.max_pdu: int | None = 16384

    def associate(self, request: object) -> None:
        self.is_established = True

    def store(self, items: Sequence[tuple[int, Path]]) -> Iterator[StoreOutcome]:
        for (key, _path), answer in zip(items, self.script, strict=False):
            if isinstance(answer, Exception):
                self.is_established = False
                raise answer
            yield StoreOutcome(key, status=answer, seconds=0.001)

    def release(self) -> None:
        self.is_established = False

    def close(self) -> None:
        pass


def make_store(tmp_path: Path, count: int) -> QueueStore:
    store = QueueStore(tmp_path / "spool", [DEST], clock=Clock())
    store.open()
    for index in range(count):
        store.enqueue(b"x" * 64, sop_instance_uid=f"1.2.3.{index + 1}", sop_class_uid=SC,
                      transfer_syntax_uid=EXPLICIT)
    return store


def make_worker(store: QueueStore, sender: ScriptedSender) -> DestinationWorker:
    worker = DestinationWorker(
        DestinationSection(DEST, "127.0.0.1", 1, "PACS", storage_commitment=False),
        ae_title="MODALITY", queue=store, queue_config=QueueSection(), uids=UIDSource(),
        report_handler=lambda report: 0)
    worker._sender = sender  # type: ignore[assignment]   # the child is not started
    return worker


def states(store: QueueStore) -> list[DeliveryState]:
    return [d.state for d in store.deliveries(destination=DEST)]


@pytest.mark.parametrize("status", [0x0000, 0x0001, 0xB000, 0xB007, 0xA700, 0xA7FF, 0x0213,
                                    0xFE00, 0xC000, 0x0110, 0x0122, None])
@pytest.mark.parametrize("comment", ["", "disk full"])
def test_the_verdict_is_classify_store_status_s(status: int | None, comment: str) -> None:
    outcome = StoreOutcome(1, status=status, comment=comment if status is not None else "")
    assert store_result(outcome) == classify_store_status(outcome.status_dataset())


def test_a_success_is_recorded_without_building_a_dataset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dataset(self: StoreOutcome) -> None:
        raise AssertionError("a Dataset was built to classify a Success")

    monkeypatch.setattr(StoreOutcome, "status_dataset", no_dataset)
    store = make_store(tmp_path, 3)
    try:
        assert make_worker(store, ScriptedSender([0, 0, 0])).run_once()
        assert states(store) == [DeliveryState.SENT] * 3
    finally:
        store.close()


def test_the_outcomes_of_a_batch_share_transactions(tmp_path: Path) -> None:
    store = make_store(tmp_path, 16)
    begins: list[str] = []
    try:
        store.conn.set_trace_callback(
            lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
        assert make_worker(store, ScriptedSender([0] * 16)).run_once()
        store.conn.set_trace_callback(None)
        assert states(store) == [DeliveryState.SENT] * 16
    finally:
        store.close()
    # two claims (this batch, then the empty next one) and the outcomes: one transaction per
    # group of RECORD_GROUP_MAX, not one per object (18 before)
    assert len(begins) <= 2 + -(-16 // RECORD_GROUP_MAX), begins


def test_outcomes_are_recorded_in_the_order_they_came(tmp_path: Path) -> None:
    """A refusal between successes is recorded after the successes before it and before the
    ones after it; a send without an answer goes back to pending, not to sent."""
    store = make_store(tmp_path, 6)
    try:
        assert make_worker(store, ScriptedSender([0, 0, 0xC000, 0, None, 0xB000])).run_once()
        rows = store.deliveries(destination=DEST)
        assert [d.state for d in rows] == [
            DeliveryState.SENT, DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.SENT,
            DeliveryState.PENDING, DeliveryState.SENT]
        recorded_at = [d.updated_at for d in rows]
        assert recorded_at[0] <= recorded_at[1] < recorded_at[2] < recorded_at[3] \
            < recorded_at[4] < recorded_at[5]
        assert "0xB000" in rows[5].last_error          # a warning's text is kept
    finally:
        store.close()


def test_what_was_answered_before_the_sender_failed_is_recorded_and_nothing_more(
        tmp_path: Path) -> None:
    store = make_store(tmp_path, 5)
    try:
        worker = make_worker(store, ScriptedSender([0, 0, StoreProcessError("child died")]))
        with pytest.raises(StoreProcessError):
            worker.run_once()
        # the two answered Success are recorded; the others were never answered: still
        # claimed by this round (the worker's loop puts them back to pending)
        assert states(store) == [DeliveryState.SENT, DeliveryState.SENT,
                                 DeliveryState.SENDING, DeliveryState.SENDING,
                                 DeliveryState.SENDING]
    finally:
        store.close()


class WatchingSender(ScriptedSender):
    """Answers Success for every object, each after a round trip of `seconds`, and notes the
    state of the previous object's row at the moment it answers the next one."""

    def __init__(self, queue: QueueStore, seconds: float, count: int) -> None:
        super().__init__([0] * count)
        self.queue = queue
        self.seconds = seconds
        self.seen: list[DeliveryState] = []

    def store(self, items: Sequence[tuple[int, Path]]) -> Iterator[StoreOutcome]:
        for index, (key, _path) in enumerate(items):
            if index:
                self.seen.append(self.queue.deliveries(destination=DEST)[index - 1].state)
            yield StoreOutcome(key, status=0, seconds=self.seconds)


@pytest.mark.parametrize(("seconds", "recorded_before_next"), [(0.001, False), (1.0, True)])
def test_a_slow_object_is_recorded_before_the_next_one_is_answered(
        tmp_path: Path, seconds: float, recorded_before_next: bool) -> None:
    """Outcomes wait to be recorded together only while objects go fast: after a round trip
    over RECORD_GROUP_WITHIN_S the object is recorded at once, not when the next one (which
    may take as long) is answered."""
    store = make_store(tmp_path, 3)
    try:
        sender = WatchingSender(store, seconds, 3)
        assert make_worker(store, sender).run_once()
        assert states(store) == [DeliveryState.SENT] * 3
        expected = DeliveryState.SENT if recorded_before_next else DeliveryState.SENDING
        assert sender.seen == [expected, expected]
    finally:
        store.close()


def test_a_recorded_group_is_one_log_record_naming_each_object(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a record per object was ~1/4 of the forwarder's CPU per 0.5 MB object (issue 18);
    # every queue item and its SOP Instance UID is still in the one record
    store = make_store(tmp_path, RECORD_GROUP_MAX)
    try:
        with caplog.at_level("INFO", logger="agent.forwarder"):
            assert make_worker(store, ScriptedSender([0] * (RECORD_GROUP_MAX - 1) + [0xB000])
                               ).run_once()
    finally:
        store.close()
    stored = [r.getMessage() for r in caplog.records if "stored at" in r.getMessage()]
    assert len(stored) == 1, stored
    for index in range(RECORD_GROUP_MAX):
        assert f"queue item {index + 1} (" in stored[0]
        assert f" as 1.2.3.{index + 1}" in stored[0]
    assert f"queue item {RECORD_GROUP_MAX} (0xB000 warning" in stored[0]
