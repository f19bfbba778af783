"""The watch folder's rules, driven pass by pass with a fake clock (no threads, no sleeps)."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from agent.iod import UIDSource
from agent.queue import QueueStore
from agent.records import DeviceInfo, Order, SOPReference
from agent.watchfolder import (
    INCOMPLETE_WAIT_S,
    NO_PROCEDURE,
    PRUNE_EVERY_MAX_S,
    JpegError,
    Outcome,
    Result,
    WatchFolder,
    parse_jpeg_baseline,
)

DEVICE = DeviceInfo(modality="OT", manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1", institution_name="",
                    software_versions="test")
ORDER = Order(patient_name="PHI^SENTINEL", patient_id="PHI-SENTINEL-ID")
SETTLE_S = 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Crash(Exception):
    """Stands for the process dying at that point."""


def dicom_bytes(seed: int = 0, uid: str | None = None) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid or generate_uid(prefix=None)
    ds.PatientName, ds.PatientID, ds.Modality = "PHI^SENTINEL", "PHI-SENTINEL-ID", "OT"
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def png_bytes(pixels: npt.NDArray[np.uint8]) -> bytes:
    """A minimal valid PNG (8-bit grey or RGB), filter 0 on every row."""
    height, width = pixels.shape[:2]
    color_type = 2 if pixels.ndim == 3 else 0

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def gray_png(seed: int = 1) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 255, (6, 10), dtype=np.uint8))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    q = QueueStore(tmp_path / "spool", ["pacs"])
    q.open()
    yield q
    q.close()


class Procedure:
    def __init__(self, order: Order | None) -> None:
        self.order = order

    def __call__(self) -> Order | None:
        return self.order


@pytest.fixture
def procedure() -> Procedure:
    return Procedure(ORDER)


def make(tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure,
         **options: object) -> WatchFolder:
    wf = WatchFolder(tmp_path / "in", queue=store, image_order=procedure, device=DEVICE,
                     uids=UIDSource(), settle_s=SETTLE_S, clock=clock, **options)  # type: ignore[arg-type]
    wf.prepare()
    return wf


@pytest.fixture
def wf(tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure) -> WatchFolder:
    return make(tmp_path, store, clock, procedure)


def settle(wf: WatchFolder, clock: FakeClock) -> list[Result]:
    """First sight, then a pass after the settle time: what both passes did."""
    first = wf.poll()
    clock.advance(SETTLE_S)
    return [*first, *wf.poll()]


def objects(store: QueueStore) -> list[tuple[int, str]]:
    return [(r["queue_id"], r["sop_instance_uid"])
            for r in store.conn.execute("SELECT * FROM objects ORDER BY queue_id")]


def queued_bytes(store: QueueStore, queue_id: int | None) -> bytes:
    assert queue_id is not None
    return store.object_path(queue_id).read_bytes()


def object_file(store: QueueStore, queue_id: int | None) -> Path:
    assert queue_id is not None
    return store.object_path(queue_id)


# -- settling ---------------------------------------------------------------------------------
def test_a_file_is_taken_only_after_it_kept_still_for_the_settle_time(
        wf: WatchFolder, store: QueueStore, clock: FakeClock) -> None:
    payload = dicom_bytes()
    path = wf.folder / "a.dcm"
    path.write_bytes(payload[:200])
    assert wf.poll() == []
    clock.advance(SETTLE_S * 0.9)
    path.write_bytes(payload)             # grew: the settle time starts again
    assert wf.poll() == []
    clock.advance(SETTLE_S * 0.9)
    assert wf.poll() == []
    assert objects(store) == []
    clock.advance(SETTLE_S * 0.2)
    [result] = wf.poll()
    assert result.outcome is Outcome.QUEUED
    assert queued_bytes(store, result.queue_id) == payload
    assert not path.exists()
    assert (wf.done_dir / "a.dcm").read_bytes() == payload


def test_a_close_after_write_event_takes_the_file_without_waiting(
        wf: WatchFolder, store: QueueStore) -> None:
    (wf.folder / "a.dcm").write_bytes(dicom_bytes())
    wf.notify("a.dcm", closed=True)
    [result] = wf.poll()
    assert result.outcome is Outcome.QUEUED


def test_a_change_after_the_close_event_starts_the_settle_time_again(
        wf: WatchFolder, store: QueueStore, clock: FakeClock) -> None:
    payload = dicom_bytes()
    path = wf.folder / "a.dcm"
    path.write_bytes(payload[:300])
    wf.notify("a.dcm", closed=True)
    with path.open("ab") as f:
        f.write(payload[300:])
    os.utime(path, ns=(1, 1))             # the mtime must differ even on a coarse clock
    assert wf.poll() == []
    clock.advance(SETTLE_S)
    [result] = wf.poll()
    assert queued_bytes(store, result.queue_id) == payload


@pytest.mark.parametrize("name", [".hidden.dcm", "a.dcm.tmp", "a.dcm.part"])
def test_writers_temporary_names_are_never_taken(
        name: str, wf: WatchFolder, store: QueueStore, clock: FakeClock) -> None:
    (wf.folder / name).write_bytes(dicom_bytes())
    wf.notify(name, closed=True)
    settle(wf, clock)
    clock.advance(100)
    assert wf.poll() == []
    assert (wf.folder / name).exists()
    assert objects(store) == []


def test_a_rename_from_a_temporary_name_is_taken(
        wf: WatchFolder, store: QueueStore, clock: FakeClock) -> None:
    (wf.folder / "a.dcm.part").write_bytes(dicom_bytes())
    wf.poll()
    os.rename(wf.folder / "a.dcm.part", wf.folder / "a.dcm")
    results = settle(wf, clock)
    assert [r.outcome for r in results] == [Outcome.QUEUED]


def test_sub_folders_are_not_watched(wf: WatchFolder, store: QueueStore,
                                     clock: FakeClock) -> None:
    (wf.folder / "sub").mkdir()
    (wf.folder / "sub" / "a.dcm").write_bytes(dicom_bytes())
    assert settle(wf, clock) == []
    assert objects(store) == []


# -- DICOM and images -------------------------------------------------------------------------
def test_dicom_is_recognised_by_content_not_by_name(
        wf: WatchFolder, store: QueueStore, clock: FakeClock) -> None:
    payload = dicom_bytes()
    (wf.folder / "scan.bin").write_bytes(payload)
    [result] = settle(wf, clock)
    assert queued_bytes(store, result.queue_id) == payload


def test_png_with_a_procedure_becomes_a_secondary_capture_for_that_patient(
        tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure) -> None:
    images: list[tuple[Order, str, SOPReference]] = []
    wf = make(tmp_path, store, clock, procedure,
              on_image_queued=lambda *args: images.append(args))
    pixels = np.arange(60, dtype=np.uint8).reshape(6, 10)
    (wf.folder / "shot.png").write_bytes(png_bytes(pixels))
    [result] = settle(wf, clock)
    assert result.outcome is Outcome.QUEUED
    ds = dcmread(object_file(store, result.queue_id))
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert (ds.PatientName, ds.PatientID) == ("PHI^SENTINEL", "PHI-SENTINEL-ID")
    assert ds.ConversionType == "WSD"
    assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"]
    assert np.array_equal(ds.pixel_array, pixels)
    assert (wf.done_dir / "shot.png").exists()
    assert images == [(ORDER, ds.SeriesInstanceUID,
                       SOPReference(SecondaryCaptureImageStorage, ds.SOPInstanceUID))]


def test_png_without_a_procedure_is_rejected_never_given_a_guessed_patient(
        wf: WatchFolder, store: QueueStore, clock: FakeClock, procedure: Procedure) -> None:
    procedure.order = None
    (wf.folder / "shot.png").write_bytes(gray_png())
    [result] = settle(wf, clock)
    assert result.outcome is Outcome.REJECTED
    assert objects(store) == []
    assert (wf.rejected_dir / "shot.png").exists()
    assert (wf.rejected_dir / "shot.png.reason.txt").read_text() == NO_PROCEDURE + "\n"


def test_unreadable_files_are_rejected_with_a_one_line_reason_and_no_patient_data(
        wf: WatchFolder, store: QueueStore, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    (wf.folder / "notes.txt").write_text("hello\n")
    (wf.folder / "broken.png").write_bytes(gray_png()[:40])
    truncated = dicom_bytes()
    (wf.folder / "cut.dcm").write_bytes(truncated[:140])
    caplog.set_level("INFO")
    results = settle(wf, clock)
    # a DICOM file cut short may still be being written: it waits before it is rejected
    assert sorted(r.outcome for r in results) == [Outcome.REJECTED] * 2 + [Outcome.RETRY]
    clock.advance(INCOMPLETE_WAIT_S)
    results += wf.poll()
    assert sorted(r.outcome for r in results if r.outcome is Outcome.REJECTED) == [
        Outcome.REJECTED] * 3
    assert objects(store) == []
    for name in ("notes.txt", "broken.png", "cut.dcm"):
        reason = (wf.rejected_dir / f"{name}.reason.txt").read_text()
        assert reason.count("\n") == 1 and len(reason) > 5, reason
        assert "PHI" not in reason and str(wf.folder) not in reason
    assert "PNG" in (wf.rejected_dir / "notes.txt.reason.txt").read_text()
    assert "truncated" in (wf.rejected_dir / "broken.png.reason.txt").read_text()
    assert not any("PHI" in r.getMessage() for r in caplog.records)


def test_name_collisions_get_a_numeric_suffix_never_an_overwrite(
        wf: WatchFolder, store: QueueStore, clock: FakeClock) -> None:
    first, second = dicom_bytes(1), dicom_bytes(2)
    for payload in (first, second):
        (wf.folder / "a.dcm").write_bytes(payload)
        settle(wf, clock)
    assert (wf.done_dir / "a.dcm").read_bytes() == first
    assert (wf.done_dir / "a-1.dcm").read_bytes() == second
    for text in ("x", "y"):
        (wf.folder / "n.txt").write_text(text)
        settle(wf, clock)
    assert (wf.rejected_dir / "n.txt").read_text() == "x"
    assert (wf.rejected_dir / "n-1.txt").read_text() == "y"
    assert (wf.rejected_dir / "n-1.txt.reason.txt").exists()


def test_delete_instead_of_move(tmp_path: Path, store: QueueStore, clock: FakeClock,
                                procedure: Procedure) -> None:
    wf = make(tmp_path, store, clock, procedure, after_import="delete")
    (wf.folder / "a.dcm").write_bytes(dicom_bytes())
    settle(wf, clock)
    assert len(objects(store)) == 1
    assert not (wf.folder / "a.dcm").exists()
    assert list(wf.done_dir.iterdir()) == []


def test_a_symlink_is_refused_not_followed(wf: WatchFolder, store: QueueStore,
                                           clock: FakeClock, tmp_path: Path) -> None:
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(dicom_bytes())
    (wf.folder / "link.dcm").symlink_to(outside)
    [result] = settle(wf, clock)
    assert result.outcome is Outcome.REJECTED
    assert objects(store) == []
    moved = wf.rejected_dir / "link.dcm"
    assert moved.is_symlink() and outside.exists()              # the link moved, not the target
    assert "symbolic link" in (wf.rejected_dir / "link.dcm.reason.txt").read_text()


def test_a_done_folder_that_is_a_symlink_is_refused(tmp_path: Path, store: QueueStore,
                                                    clock: FakeClock,
                                                    procedure: Procedure) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "done").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(NotADirectoryError, match="symbolic link"):
        make(tmp_path, store, clock, procedure)


def test_a_duplicate_of_an_object_already_queued_is_rejected_not_queued_twice(
        wf: WatchFolder, store: QueueStore, clock: FakeClock) -> None:
    payload = dicom_bytes()
    (wf.folder / "a.dcm").write_bytes(payload)
    settle(wf, clock)
    (wf.folder / "again.dcm").write_bytes(payload)
    [result] = settle(wf, clock)
    assert result.outcome is Outcome.REJECTED
    assert "already queued" in result.reason
    assert len(objects(store)) == 1


# -- spool full -------------------------------------------------------------------------------
def test_a_full_spool_leaves_the_file_in_place_and_it_is_retried(
        wf: WatchFolder, store: QueueStore, clock: FakeClock) -> None:
    payload = dicom_bytes()
    (wf.folder / "a.dcm").write_bytes(payload)
    store.min_free_bytes = 1 << 62
    [result] = settle(wf, clock)
    assert result.outcome is Outcome.RETRY
    assert (wf.folder / "a.dcm").exists()
    assert list(wf.rejected_dir.iterdir()) == []
    store.min_free_bytes = 0
    assert wf.poll() == []                                      # not before rescan_s
    clock.advance(wf.rescan_s)
    [result] = wf.poll()
    assert result.outcome is Outcome.QUEUED
    assert queued_bytes(store, result.queue_id) == payload


# -- exactly once across a crash --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dicom", "png"])
def test_a_crash_between_queueing_and_moving_gives_exactly_one_queue_entry(
        kind: str, tmp_path: Path, store: QueueStore, clock: FakeClock,
        procedure: Procedure, monkeypatch: pytest.MonkeyPatch) -> None:
    wf = make(tmp_path, store, clock, procedure)
    name = "a.dcm" if kind == "dicom" else "a.png"
    (wf.folder / name).write_bytes(dicom_bytes() if kind == "dicom" else gray_png())

    def crash(_: str) -> None:
        raise Crash
    monkeypatch.setattr(wf, "_set_aside", crash)
    wf.poll()
    clock.advance(SETTLE_S)
    with pytest.raises(Crash):
        wf.poll()
    [(queue_id, uid)] = objects(store)
    assert (wf.folder / name).exists()

    procedure.order = None     # the marker, not a rebuild, says it is queued: no order needed
    restarted = make(tmp_path, store, clock, procedure)       # fresh memory, as after a restart
    [result] = settle(restarted, clock)
    assert (result.outcome, result.queue_id) == (Outcome.ALREADY_QUEUED, queue_id)
    assert objects(store) == [(queue_id, uid)]
    assert (wf.done_dir / name).exists() and not (wf.folder / name).exists()
    assert list(wf.state_dir.iterdir()) == []                  # the marker went with the file


@pytest.mark.parametrize("kind", ["dicom", "png"])
def test_a_crash_right_after_the_enqueue_is_answered_by_the_queue_not_queued_twice(
        kind: str, tmp_path: Path, store: QueueStore, clock: FakeClock,
        procedure: Procedure, monkeypatch: pytest.MonkeyPatch) -> None:
    """The narrowest window: enqueued, but the marker does not yet hold the queue id."""
    wf = make(tmp_path, store, clock, procedure)
    name = "a.dcm" if kind == "dicom" else "a.png"
    (wf.folder / name).write_bytes(dicom_bytes() if kind == "dicom" else gray_png())
    write_marker = wf._write_marker

    def crash_once_queued(*args: object, queue_id: int | None = None) -> None:
        if queue_id is not None:
            raise Crash
        write_marker(*args, queue_id=queue_id)    # type: ignore[arg-type]
    monkeypatch.setattr(wf, "_write_marker", crash_once_queued)
    wf.poll()
    clock.advance(SETTLE_S)
    with pytest.raises(Crash):
        wf.poll()
    [row] = objects(store)

    restarted = make(tmp_path, store, clock, procedure)
    [result] = settle(restarted, clock)
    assert result.outcome is Outcome.ALREADY_QUEUED
    assert objects(store) == [row]
    assert (wf.done_dir / name).exists()


def test_an_interrupted_image_import_waits_for_a_procedure_rather_than_being_rejected(
        tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure,
        monkeypatch: pytest.MonkeyPatch) -> None:
    wf = make(tmp_path, store, clock, procedure)
    (wf.folder / "a.png").write_bytes(gray_png())
    write_marker = wf._write_marker

    def crash_once_queued(*args: object, queue_id: int | None = None) -> None:
        if queue_id is not None:
            raise Crash
        write_marker(*args, queue_id=queue_id)    # type: ignore[arg-type]
    monkeypatch.setattr(wf, "_write_marker", crash_once_queued)
    wf.poll()
    clock.advance(SETTLE_S)
    with pytest.raises(Crash):
        wf.poll()
    [row] = objects(store)

    procedure.order = None                            # restarted with no procedure selected
    restarted = make(tmp_path, store, clock, procedure)
    [result] = settle(restarted, clock)
    assert result.outcome is Outcome.RETRY
    assert (wf.folder / "a.png").exists() and list(wf.rejected_dir.iterdir()) == []
    procedure.order = Order(patient_name="Other^Patient", patient_id="OTHER")
    clock.advance(wf.rescan_s)
    [result] = restarted.poll()
    assert result.outcome is Outcome.ALREADY_QUEUED
    assert objects(store) == [row]


def test_a_crash_before_the_enqueue_imports_the_image_once_under_the_uid_fixed_first(
        tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure,
        monkeypatch: pytest.MonkeyPatch) -> None:
    wf = make(tmp_path, store, clock, procedure)
    (wf.folder / "a.png").write_bytes(gray_png())

    def crash(*_: object, **__: object) -> None:
        raise Crash
    monkeypatch.setattr(store, "enqueue", crash)
    wf.poll()
    clock.advance(SETTLE_S)
    with pytest.raises(Crash):
        wf.poll()
    [marker] = wf.state_dir.iterdir()
    fixed_uid = json.loads(marker.read_text())["sop_instance_uid"]
    monkeypatch.undo()

    restarted = make(tmp_path, store, clock, procedure)
    [result] = settle(restarted, clock)
    assert result.outcome is Outcome.QUEUED
    assert [uid for _, uid in objects(store)] == [fixed_uid]


def test_a_stale_marker_of_another_file_with_the_same_name_is_ignored(
        wf: WatchFolder, store: QueueStore, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (wf.folder / "a.png").write_bytes(gray_png(1))
    settle(wf, clock)
    (wf.folder / "a.png").write_bytes(gray_png(2))           # same name, other image
    wf._write_marker("a.png", (1, 2, 3), "0" * 64, "1.2.3")   # left by a crash long ago
    [result] = settle(wf, clock)
    assert result.outcome is Outcome.QUEUED
    assert len(objects(store)) == 2


# -- JPEG baseline ----------------------------------------------------------------------------
DCMCJPEG = Path("/usr/bin/dcmcjpeg")    # DCMTK by full path; no JPEG encoder in the venv
DCMDJPEG = Path("/usr/bin/dcmdjpeg")
DCIODVFY = Path("/usr/bin/dciodvfy")


def jpeg_bitstream(tmp_path: Path, colour: bool, *options: str) -> bytes:
    """A real JPEG bitstream: DCMTK compresses a DICOM image, we take its one frame out."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    shape = (16, 24, 3) if colour else (16, 24)
    pixels = np.random.default_rng(3).integers(0, 255, shape, dtype=np.uint8)
    ds.Rows, ds.Columns = 16, 24
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    source, compressed = tmp_path / "plain.dcm", tmp_path / "jpeg.dcm"
    ds.save_as(source, enforce_file_format=True)
    subprocess.run([str(DCMCJPEG), *(options or ("+eb",)), str(source), str(compressed)],
                   check=True, timeout=30)
    [frame] = generate_frames(dcmread(compressed).PixelData, number_of_frames=1)
    return bytes(frame).rstrip(b"\x00")       # the item's pad byte is not part of the stream


@pytest.mark.parametrize("colour", [True, False])
def test_jpeg_baseline_is_encapsulated_as_is(
        colour: bool, wf: WatchFolder, store: QueueStore, clock: FakeClock,
        tmp_path: Path) -> None:
    bitstream = jpeg_bitstream(tmp_path, colour)
    info = parse_jpeg_baseline(bitstream)
    assert (info.rows, info.columns, info.components) == (16, 24, 3 if colour else 1)
    (wf.folder / "photo.jpg").write_bytes(bitstream)
    [result] = settle(wf, clock)
    assert result.outcome is Outcome.QUEUED
    ds = dcmread(object_file(store, result.queue_id))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.PhotometricInterpretation == ("YBR_FULL_422" if colour else "MONOCHROME2")
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (16, 24, 3 if colour else 1)
    assert (ds.BitsAllocated, ds.BitsStored) == (8, 8)
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    assert frame.rstrip(b"\x00") == bitstream.rstrip(b"\x00")
    path = object_file(store, result.queue_id)
    check = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                           timeout=30)
    assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr
    subprocess.run([str(DCMDJPEG), str(path), str(tmp_path / "decoded.dcm")], check=True,
                   timeout=30)     # DCMTK can decode what we labelled


def test_unsubsampled_colour_jpeg_is_ybr_full(wf: WatchFolder, store: QueueStore,
                                               clock: FakeClock, tmp_path: Path) -> None:
    (wf.folder / "photo.jpg").write_bytes(jpeg_bitstream(tmp_path, True, "+eb", "+s4"))
    [result] = settle(wf, clock)
    ds = dcmread(object_file(store, result.queue_id))
    assert ds.PhotometricInterpretation == "YBR_FULL"


def test_progressive_jpeg_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(JpegError, match="not baseline"):
        parse_jpeg_baseline(jpeg_bitstream(tmp_path, False, "+ep"))


def test_a_truncated_jpeg_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(JpegError, match="truncated"):
        parse_jpeg_baseline(jpeg_bitstream(tmp_path, True)[:-40])


# -- issue 13, finding 9: files cut short, files too large ------------------------------------
def test_a_dicom_file_cut_short_waits_then_is_rejected_never_queued(
        tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure) -> None:
    wf = make(tmp_path, store, clock, procedure, incomplete_wait_s=30.0)
    payload = dicom_bytes()
    cut_at_boundary = payload[:payload.index(b"\xe0\x7f\x10\x00")]   # before Pixel Data
    (wf.folder / "boundary.dcm").write_bytes(cut_at_boundary)
    (wf.folder / "middle.dcm").write_bytes(payload[:-7])
    results = settle(wf, clock)
    # a writer that paused longer than the settle time is not cut off: the files wait
    assert {r.name: r.outcome for r in results} == {"boundary.dcm": Outcome.RETRY,
                                                    "middle.dcm": Outcome.RETRY}
    assert all("incomplete" in r.reason for r in results)
    assert objects(store) == [] and (wf.folder / "middle.dcm").exists()
    clock.advance(30.0)
    results = wf.poll()
    assert {r.name: r.outcome for r in results} == {"boundary.dcm": Outcome.REJECTED,
                                                    "middle.dcm": Outcome.REJECTED}
    assert objects(store) == []
    reason = (wf.rejected_dir / "middle.dcm.reason.txt").read_text()
    assert "(7FE0,0010)" in reason and "incomplete" in reason


def test_a_writer_that_finishes_after_a_pause_gets_its_file_queued(
        tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure) -> None:
    wf = make(tmp_path, store, clock, procedure, incomplete_wait_s=30.0)
    payload = dicom_bytes()
    path = wf.folder / "slow.dcm"
    path.write_bytes(payload[:300])
    assert [r.outcome for r in settle(wf, clock)] == [Outcome.RETRY]
    clock.advance(10.0)
    path.write_bytes(payload)
    [result] = settle(wf, clock)
    assert result.outcome is Outcome.QUEUED
    assert queued_bytes(store, result.queue_id) == payload


def test_a_file_larger_than_the_limit_is_rejected_by_its_size_alone(
        tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure,
        monkeypatch: pytest.MonkeyPatch) -> None:
    wf = make(tmp_path, store, clock, procedure, max_file_bytes=4096)
    (wf.folder / "huge.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 8192)
    (wf.folder / "notes.bin").write_bytes(b"x" * 4000)
    read_sizes: list[int] = []
    real_read, real_pread = os.read, os.pread

    def counting_read(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        read_sizes.append(len(data))
        return data

    def counting_pread(fd: int, size: int, offset: int) -> bytes:
        data = real_pread(fd, size, offset)
        read_sizes.append(len(data))
        return data

    # the os module is shared: these count every read made during the passes below
    monkeypatch.setattr(os, "read", counting_read)
    monkeypatch.setattr(os, "pread", counting_pread)
    results = {r.name: r for r in settle(wf, clock)}
    assert results["huge.dcm"].outcome is Outcome.REJECTED
    assert "more than 4096 bytes" in results["huge.dcm"].reason
    assert results["notes.bin"].outcome is Outcome.REJECTED
    # neither was read whole: the size came from stat, the type from the first bytes
    assert sum(read_sizes) <= 2 * 132, read_sizes


# -- issue 13, finding 10: file names never reach INFO+ log lines, and are escaped -----------
def test_file_names_are_logged_escaped_and_at_debug_only(
        wf: WatchFolder, store: QueueStore, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    (wf.folder / "PHI^SENTINEL\nFORGED ERROR line.dcm").write_bytes(dicom_bytes())
    (wf.folder / "PHI^SENTINEL notes.txt").write_text("hello\n")
    (wf.folder / "PHI^SENTINEL\u202e.png").write_bytes(gray_png())
    caplog.set_level("DEBUG", logger="agent.watchfolder")
    results = settle(wf, clock)
    assert sorted(r.outcome for r in results) == sorted(
        [Outcome.QUEUED, Outcome.QUEUED, Outcome.REJECTED])
    ours = [r for r in caplog.records if r.name == "agent.watchfolder"]
    assert any(r.levelno >= logging.INFO for r in ours)
    for record in ours:
        message = record.getMessage()
        assert "\n" not in message and "\u202e" not in message, message
        if record.levelno >= logging.INFO:
            assert "PHI" not in message, message
    debug = " ".join(r.getMessage() for r in ours if r.levelno == logging.DEBUG)
    assert "PHI^SENTINEL\\nFORGED" in debug and "\\u202e" in debug


# -- issue 13, finding 12: done/ and rejected/ are private and pruned ---------------------------
def test_done_and_rejected_are_private(tmp_path: Path, store: QueueStore, clock: FakeClock,
                                       procedure: Procedure) -> None:
    folder = tmp_path / "in"
    (folder / "done").mkdir(parents=True)
    os.chmod(folder / "done", 0o755)             # as an older version left it
    old_umask = os.umask(0o022)
    try:
        wf = make(tmp_path, store, clock, procedure)
    finally:
        os.umask(old_umask)
    for sub in (wf.done_dir, wf.rejected_dir, wf.state_dir):
        assert stat.S_IMODE(sub.stat().st_mode) == 0o700, sub


def test_done_and_rejected_files_are_pruned_after_the_retention(
        tmp_path: Path, store: QueueStore, clock: FakeClock, procedure: Procedure) -> None:
    wall = FakeClock()
    wall.now = time.time()
    wf = make(tmp_path, store, clock, procedure, retention_s=3600.0, wall_clock=wall)
    (wf.folder / "a.dcm").write_bytes(dicom_bytes())
    (wf.folder / "n.txt").write_text("x")
    settle(wf, clock)
    assert (wf.done_dir / "a.dcm").exists() and (wf.rejected_dir / "n.txt.reason.txt").exists()
    wall.advance(1800)
    clock.advance(3600)
    wf.poll()
    assert (wf.done_dir / "a.dcm").exists(), "pruned before its retention"
    wall.advance(1900)
    wf.poll()
    assert (wf.done_dir / "a.dcm").exists(), "pruned again before PRUNE_EVERY_MAX_S"
    clock.advance(PRUNE_EVERY_MAX_S)
    (wf.folder / "new.txt").write_text("y")
    wf.poll()                   # pruned at the start of the pass: the new file is seen after
    assert list(wf.done_dir.iterdir()) == []
    assert list(wf.rejected_dir.iterdir()) == []
    clock.advance(SETTLE_S)
    wf.poll()
    assert sorted(p.name for p in wf.rejected_dir.iterdir()) == ["new.txt",
                                                                 "new.txt.reason.txt"]
