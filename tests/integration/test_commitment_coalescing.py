"""Storage Commitment requests are coalesced per destination (issue 18 item 5): objects arriving
steadily and sent over 3 associations lead to at most one N-ACTION per commitment window, not
one per batch per association (each request makes Orthanc open a new association to our
listener for its report), and every stored instance is asked for exactly once."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agent_process import AGENT_AE
from support.peers import free_port, wait_until

from agent.config import DestinationSection, QueueSection
from agent.demo.orthanc import OrthancServer, RegisteredModality
from agent.forwarder import COMMIT_WINDOW_S, DestinationHealth, DestinationWorker
from agent.iod import UIDSource, build_image, encode_part10
from agent.queue import QueueStore
from agent.records import DeviceInfo, Order, SeriesContext
from drivers.frame import Frame
from drivers.simulated import phantom

pytestmark = pytest.mark.integration

EXPLICIT = "1.2.840.10008.1.2.1"
DEVICE = DeviceInfo(modality="OT", manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1",
                    institution_name="Klinikum", software_versions="fw 2.1")
ORDER = Order(patient_name="Coalesce^Test", patient_id="COAL-1", patient_birth_date="19700101",
              patient_sex="O")
OBJECTS = 60
#: objects per second offered: fast enough that today's "one request per batch" (a batch
#: holds the one or two objects that arrived meanwhile) makes about one request per object
RATE = 60.0
WORKERS = 3


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    try:
        yield queue
    finally:
        queue.close()


def encoded_images(count: int) -> list[tuple[bytes, str, str]]:
    """(Part 10 bytes, SOP Instance UID, SOP Class UID) of `count` small images of one series."""
    uids = UIDSource()
    series = SeriesContext(study_instance_uid=uids.new_uid(), series_instance_uid=uids.new_uid(),
                           study_id="1", series_number=1, study_datetime="20240301093000.000000",
                           series_datetime="20240301093000.000000")
    made = []
    for index in range(count):
        frame = Frame(pixels=phantom(32, 32, 12, index), bits_stored=12,
                      photometric_interpretation="MONOCHROME2", t_mono=float(index),
                      t_wall=1_709_285_400.0 + index, sequence_number=index)
        sop_uid = uids.new_uid()
        ds = build_image("secondary-capture", [frame], order=ORDER, device=DEVICE, series=series,
                         instance_number=index + 1, sop_instance_uid=sop_uid)
        made.append((encode_part10(ds), sop_uid, str(ds.SOPClassUID)))
    return made


def test_commitment_requests_are_coalesced_across_associations(
        store: QueueStore, orthanc: OrthancServer) -> None:
    # Orthanc accepts N-ACTION only from an AE it knows; its reports go to a port where
    # nothing listens (this test counts requests, not reports)
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", free_port()))
    images = encoded_images(OBJECTS)
    destination = DestinationSection("pacs", "127.0.0.1", orthanc.dicom_port, orthanc.ae_title,
                                     storage_commitment=True)
    health = DestinationHealth("pacs")
    workers = [DestinationWorker(destination, ae_title=AGENT_AE, queue=store,
                                 queue_config=QueueSection(retry_initial_s=0.2, retry_max_s=1.0),
                                 uids=UIDSource(), report_handler=lambda _report: 0,
                                 index=i, health=health) for i in range(WORKERS)]
    paced = threading.Event()          # never set: its wait() paces the producer
    try:
        for worker in workers:
            worker.launch()
        for worker in workers:
            worker.wait_ready()
            worker.start()
        started = time.monotonic()
        for data, sop_uid, sop_class in images:
            store.enqueue(data, sop_instance_uid=sop_uid, sop_class_uid=sop_class,
                          transfer_syntax_uid=EXPLICIT)
            for worker in workers:
                worker.wake()
            paced.wait(1 / RATE)

        def all_requested() -> bool:
            return store.counts()["pacs"].get("commit_requested", 0) \
                + store.counts()["pacs"].get("committed", 0) == OBJECTS

        wait_until(all_requested, 60, f"not all {OBJECTS} objects were asked for commitment: "
                                      f"{store.counts()['pacs']}")
        elapsed = time.monotonic() - started
    finally:
        for worker in workers:
            worker.stop()
    conn = sqlite3.connect(store.spool.db_path)
    try:
        transactions = conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
        failed = conn.execute(
            "SELECT COUNT(*) FROM transactions WHERE state!='open'").fetchone()[0]
        asked = conn.execute(
            "SELECT delivery_id, COUNT(*) FROM transaction_items GROUP BY delivery_id").fetchall()
    finally:
        conn.close()
    twice = sum(1 for _, n in asked if n > 1)
    # one request per window (+1 for the window open when the last object was stored)
    bound = int(elapsed / COMMIT_WINDOW_S) + 2
    summary = (f"{transactions} commitment requests ({failed} failed) for {OBJECTS} objects in "
               f"{elapsed:.2f} s (at most {bound} expected); {twice} instance(s) asked twice")
    assert failed == 0, summary                         # every N-ACTION was accepted
    # exactly once each: no instance in two transactions, none left out
    assert len(asked) == OBJECTS and twice == 0, summary
    assert transactions <= bound, summary
