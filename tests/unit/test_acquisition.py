"""Capture runs on its own thread with a bounded buffer: a stalled spool drops and counts
frames instead of stalling the device, and what was captured is durable."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from agent.acquisition import Acquisition
from agent.iod import UIDSource
from agent.queue import QueueStore
from agent.records import DeviceInfo, Order, QueuedObject

DEVICE = DeviceInfo("OT", "Example Medical", "Test-1", "1", "ROOM1", "", "test")
ORDER = Order(patient_name="Test^Patient", patient_id="T1")


class GatedQueue(QueueStore):
    """A spool whose first write waits until the test opens the gate (a slow disk)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()

    def enqueue(self, payload: bytes, **kwargs: str) -> QueuedObject:
        self.gate.wait(timeout=30)
        return super().enqueue(payload, **kwargs)


def make(tmp_path: Path, queue: QueueStore, **options: object) -> Acquisition:
    return Acquisition(driver_name="simulated",
                       driver_options={"width": 32, "height": 32, **options},
                       device=DEVICE, queue=queue, uids=UIDSource(), buffer_frames=4)


def test_a_stalled_spool_drops_and_counts_frames_but_never_stalls_the_device(
        tmp_path: Path) -> None:
    queue = GatedQueue(tmp_path / "spool", ["pacs"])
    queue.open()
    acquisition = make(tmp_path, queue, frame_rate=500.0)
    acquisition.open()
    try:
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(acquisition.acquire(ORDER, 20)))
        worker.start()
        deadline = time.monotonic() + 20
        # the device delivers all 20 frames while the spool is stuck on the first one
        while acquisition.status().frames_read < 20:
            assert time.monotonic() < deadline, "the device was stalled by the spool"
            time.sleep(0.01)
        queue.gate.set()
        worker.join(timeout=30)
        [outcome] = result
        captured = len(outcome.objects)                       # type: ignore[attr-defined]
        assert outcome.dropped_frames == 20 - captured        # type: ignore[attr-defined]
        assert captured == 1 + 4                              # one in hand, four buffered
        assert "dropped" in outcome.error                     # type: ignore[attr-defined]
        assert acquisition.dropped_total == 15
        assert len(queue.deliveries(destination="pacs")) == captured
    finally:
        acquisition.close()
        queue.close()


def test_a_device_fault_keeps_what_was_captured(tmp_path: Path) -> None:
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    acquisition = make(tmp_path, queue, fail_after=3)
    acquisition.open()
    try:
        outcome = acquisition.acquire(ORDER, 10)
        assert len(outcome.objects) == 3 and "after 3 of 10 frames" in outcome.error
        assert len(queue.deliveries(destination="pacs")) == 3
        # the device comes back: the next acquisition works and keeps numbering its own series
        again = acquisition.acquire(ORDER, 2)
        assert len(again.objects) == 2 and again.series_instance_uid != outcome.series_instance_uid
        assert len(queue.deliveries(destination="pacs")) == 5
    finally:
        acquisition.close()
        queue.close()
