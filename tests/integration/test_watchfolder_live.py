"""The watch folder with its real threads (watchdog's inotify observer and the worker) and a
real QueueStore: slow writers are never read half-way, images get the selected patient or are
rejected, and each file is imported exactly once, across a restart too."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from support.peers import wait_until

from agent.iod import UIDSource
from agent.queue import QueueStore
from agent.records import DeviceInfo, Order
from agent.watchfolder import NO_PROCEDURE, WatchFolder

pytestmark = pytest.mark.integration

SETTLE_S = 0.5
CHUNKS = 6
#: pause between a slow writer's chunks: shorter than the settle time, so only the close
#: event or the settle time can tell a complete file from a pausing writer
CHUNK_PAUSE_S = SETTLE_S * 0.6
TIMEOUT_S = 10.0
DEVICE = DeviceInfo(modality="OT", manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1", institution_name="",
                    software_versions="test")
ORDER = Order(patient_name="Watch^Folder", patient_id="PHI-SENTINEL-7")


class Procedure:
    """The daemon's `image_order`: the selected procedure, or None."""

    def __init__(self, order: Order | None) -> None:
        self.order = order

    def __call__(self) -> Order | None:
        return self.order


def dicom_bytes(seed: int) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.PatientName, ds.PatientID, ds.Modality = "Watch^Folder", "PHI-SENTINEL-7", "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 64, 64, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.random.default_rng(seed).integers(0, 4096, (64, 64), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def gray_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (6, 10), dtype=np.uint8)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 6, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    q = QueueStore(tmp_path / "spool", ["pacs"])
    q.open()
    yield q
    q.close()


def watch(folder: Path, store: QueueStore, procedure: Procedure,
          queued: list[int]) -> WatchFolder:
    return WatchFolder(folder, queue=store, image_order=procedure, device=DEVICE,
                       uids=UIDSource(), settle_s=SETTLE_S, rescan_s=0.5,
                       on_queued=queued.append)


def write_slowly(path: Path, payload: bytes) -> None:
    """A slow copy: one handle, chunks flushed to the file with pauses between them."""
    step = -(-len(payload) // CHUNKS)
    with path.open("wb") as f:
        for start in range(0, len(payload), step):
            f.write(payload[start:start + step])
            f.flush()
            time.sleep(CHUNK_PAUSE_S)   # the writer's pace, not a synchronisation


def object_rows(store: QueueStore) -> list[tuple[int, str]]:
    return [(r["queue_id"], r["sop_instance_uid"])
            for r in store.conn.execute("SELECT * FROM objects ORDER BY queue_id")]


def test_dropped_files_are_imported_exactly_once(tmp_path: Path, store: QueueStore,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    folder = tmp_path / "in"
    folder.mkdir()
    before_start = dicom_bytes(seed=10)
    (folder / "waiting.dcm").write_bytes(before_start)    # dropped while the agent was down
    slow = {f"slow{i}.dcm": dicom_bytes(seed=i) for i in range(2)}
    procedure = Procedure(None)
    queued: list[int] = []
    wf = watch(folder, store, procedure, queued)
    wf.start()
    try:
        wait_until(lambda: (wf.done_dir / "waiting.dcm").exists(), TIMEOUT_S,
                   "the file present at start to be imported")

        writers = [threading.Thread(target=write_slowly, args=(folder / name, payload))
                   for name, payload in slow.items()]
        for writer in writers:
            writer.start()
        (folder / "nobody.png").write_bytes(gray_png(1))   # no procedure selected yet
        (folder / "notes.txt").write_text("not an image\n")
        for writer in writers:
            writer.join(TIMEOUT_S)
        wait_until(lambda: all((wf.done_dir / name).exists() for name in slow), TIMEOUT_S,
                   "the slowly written DICOM files to be imported")
        wait_until(lambda: (wf.rejected_dir / "notes.txt.reason.txt").exists()
                   and (wf.rejected_dir / "nobody.png.reason.txt").exists(), TIMEOUT_S,
                   "the text file and the image without a patient to be rejected")

        procedure.order = ORDER
        (folder / "shot.png").write_bytes(gray_png(2))
        wait_until(lambda: (wf.done_dir / "shot.png").exists(), TIMEOUT_S,
                   "the image to be imported for the selected procedure")
    finally:
        wf.stop()

    rows = object_rows(store)
    assert len(rows) == 4, rows
    assert sorted(queued) == [queue_id for queue_id, _ in rows]
    by_uid = {uid: queue_id for queue_id, uid in rows}
    for name, payload in [*slow.items(), ("waiting.dcm", before_start)]:
        uid = str(dcmread(wf.done_dir / name).SOPInstanceUID)
        # never read half-written: the queued bytes are the complete file
        assert store.object_path(by_uid[uid]).read_bytes() == payload, name
    image_ids = set(by_uid.values()) - {by_uid[str(dcmread(wf.done_dir / n).SOPInstanceUID)]
                                        for n in [*slow, "waiting.dcm"]}
    [image_id] = image_ids
    image = dcmread(store.object_path(image_id))
    assert (image.PatientID, image.ConversionType) == (ORDER.patient_id, "WSD")

    assert (wf.rejected_dir / "nobody.png.reason.txt").read_text() == NO_PROCEDURE + "\n"
    assert "PNG" in (wf.rejected_dir / "notes.txt.reason.txt").read_text()
    assert sorted(p.name for p in folder.iterdir()) == [".state", "done", "rejected"]
    assert list(wf.state_dir.iterdir()) == []
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "queue item" in logged                      # the check below looks at real logs
    assert ORDER.patient_id not in logged and ORDER.patient_name not in logged

    # a restart, with everything dropped again under new names: nothing is queued twice
    for path in wf.done_dir.iterdir():
        if path.suffix == ".dcm":
            (folder / f"again-{path.name}").write_bytes(path.read_bytes())
    second = watch(folder, store, Procedure(ORDER), [])
    second.start()
    try:
        wait_until(lambda: not any(folder.glob("again-*")), TIMEOUT_S,
                   "the copies to be handled")
    finally:
        second.stop()
    assert object_rows(store) == rows
    assert sorted(p.name for p in second.rejected_dir.glob("again-*.reason.txt")) == \
        sorted(f"again-{name}.reason.txt" for name in [*slow, "waiting.dcm"])


def test_stop_joins_every_thread_it_started(tmp_path: Path, store: QueueStore) -> None:
    before = set(threading.enumerate())
    wf = watch(tmp_path / "in", store, Procedure(Order("X^Y", "1")), [])
    wf.start()
    wf.stop()
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_a_writer_that_reopens_to_append_is_waited_for_without_close_events(
        tmp_path: Path, store: QueueStore) -> None:
    """Each chunk closes the file (IN_CLOSE_WRITE): only the settle time tells it is done."""
    folder = tmp_path / "in"
    payload = dicom_bytes(seed=20)
    wf = WatchFolder(folder, queue=store, image_order=Procedure(None), device=DEVICE,
                     uids=UIDSource(), settle_s=SETTLE_S, rescan_s=0.5,
                     use_close_events=False)
    wf.start()
    try:
        step = -(-len(payload) // CHUNKS)
        for start in range(0, len(payload), step):
            with (folder / "append.dcm").open("ab") as f:
                f.write(payload[start:start + step])
            time.sleep(CHUNK_PAUSE_S)   # the writer's pace, not a synchronisation
        wait_until(lambda: (wf.done_dir / "append.dcm").exists(), TIMEOUT_S,
                   "the appended file to be imported")
    finally:
        wf.stop()
    [(queue_id, _)] = object_rows(store)
    assert store.object_path(queue_id).read_bytes() == payload
    assert list(wf.rejected_dir.iterdir()) == []
