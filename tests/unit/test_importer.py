"""`import PATH...` intake (issue 13, finding 5): only regular files inside the configured
folders, never blocking on a FIFO, bounded walks, and a file cut short is refused."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from agent.importer import (
    IMPORT_DISABLED,
    ImportDisabled,
    ImportRefused,
    ImportSelection,
    check_part10_complete,
    collect_import_files,
    printable_name,
    queue_import_files,
    read_dicom_file,
)
from agent.queue import QueueStore


def dicom_bytes(syntax: str = ExplicitVRLittleEndian, *, encapsulated: bool = False,
                seed: int = 0) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if encapsulated else syntax
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.PatientName, ds.PatientID, ds.Modality = "PHI^SENTINEL", "PHI-SENTINEL-ID", "OT"
    seq_item = Dataset()
    seq_item.CodeValue = "121311"
    ds.ConceptNameCodeSequence = [seq_item]
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if encapsulated:
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(range(100)) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = np.random.default_rng(seed).integers(
            0, 255, (8, 8), dtype=np.uint8).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    return folder


def collect(paths: list[Path], allowed: Path, max_files: int = 100) -> ImportSelection:
    return collect_import_files(paths, allowed_folders=[allowed], max_files=max_files)


# -- where files may come from ----------------------------------------------------------------
def test_no_import_folder_configured_refuses_import(allowed: Path) -> None:
    (allowed / "a.dcm").write_bytes(dicom_bytes())
    with pytest.raises(ImportDisabled) as caught:
        collect_import_files([allowed / "a.dcm"], allowed_folders=[], max_files=10)
    assert str(caught.value) == IMPORT_DISABLED
    assert "[api] import_folders" in IMPORT_DISABLED


def test_a_file_outside_the_import_folders_is_refused(tmp_path: Path, allowed: Path) -> None:
    other = tmp_path / "other-patient.dcm"
    other.write_bytes(dicom_bytes())
    inside = allowed / "a.dcm"
    inside.write_bytes(dicom_bytes())
    selection = collect([other, inside, allowed / ".." / "other-patient.dcm"], allowed)
    assert selection.files == (inside.resolve(),)
    assert [r.path for r in selection.refused] == [other, allowed / ".." / "other-patient.dcm"]
    assert all("outside the import folders" in r.reason for r in selection.refused)


def test_a_symlink_is_checked_where_it_leads(tmp_path: Path, allowed: Path) -> None:
    secret = tmp_path / "secret.dcm"
    secret.write_bytes(dicom_bytes())
    (allowed / "link.dcm").symlink_to(secret)
    (allowed / "sub").mkdir()
    (allowed / "sub" / "link.dcm").symlink_to(secret)
    (allowed / "dirlink").symlink_to(tmp_path)
    inner = allowed / "real.dcm"
    inner.write_bytes(dicom_bytes())
    (allowed / "good-link.dcm").symlink_to(inner)
    selection = collect([allowed / "link.dcm", allowed], allowed)
    assert selection.files == (inner.resolve(),)       # the good link leads to the same file
    assert secret not in selection.files
    assert any(r.path == allowed / "link.dcm" for r in selection.refused)


def test_a_fifo_or_device_is_refused_without_blocking(allowed: Path) -> None:
    fifo = allowed / "pipe.dcm"
    os.mkfifo(fifo)
    selection = collect([fifo, allowed], allowed)
    assert selection.files == ()
    assert {r.reason for r in selection.refused} == {"not a regular file"}
    # read_dicom_file itself never blocks on one either (a writer-less FIFO would hang open()
    # without O_NONBLOCK, and read() with it): run it on a thread with a deadline
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_dicom_file(fifo)
        except ImportRefused as err:
            outcome.append(err)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "read_dicom_file blocked on a FIFO"
    assert outcome and "not a regular file" in str(outcome[0])


def test_a_folder_walk_is_bounded(allowed: Path) -> None:
    for i in range(30):
        (allowed / f"{i:02d}.dcm").write_bytes(b"x")
    selection = collect([allowed], allowed, max_files=10)
    assert len(selection.files) == 10
    assert "10" in selection.limit_reached and selection.limit_reached
    # entries visited count too: a folder of sub-folders is not walked without end
    deep = allowed / "deep"
    deep.mkdir()
    for i in range(50):
        (deep / f"d{i:02d}").mkdir()
    selection = collect_import_files([deep], allowed_folders=[allowed], max_files=10,
                                     max_entries=20)
    assert selection.files == () and selection.limit_reached


def test_hidden_files_are_skipped_and_duplicates_taken_once(allowed: Path) -> None:
    (allowed / ".hidden.dcm").write_bytes(b"x")
    (allowed / "a.dcm").write_bytes(b"x")
    selection = collect([allowed, allowed / "a.dcm"], allowed)
    assert selection.files == ((allowed / "a.dcm").resolve(),)


def test_a_relative_path_is_refused(allowed: Path) -> None:
    selection = collect([Path("a.dcm")], allowed)
    assert selection.files == () and "absolute" in selection.refused[0].reason


# -- what is read ------------------------------------------------------------------------------
def test_a_file_above_the_size_cap_is_refused_before_reading(allowed: Path) -> None:
    path = allowed / "big.dcm"
    path.write_bytes(dicom_bytes())
    with pytest.raises(ImportRefused, match="more than 100 bytes"):
        read_dicom_file(path, max_bytes=100)


@pytest.mark.parametrize("kind", ["explicit", "implicit", "encapsulated"])
def test_every_cut_of_a_dicom_file_is_refused(kind: str, allowed: Path) -> None:
    payload = dicom_bytes(ImplicitVRLittleEndian if kind == "implicit" else
                          ExplicitVRLittleEndian, encapsulated=kind == "encapsulated")
    check_part10_complete(payload)
    path = allowed / "cut.dcm"
    for cut in range(0, len(payload)):
        path.write_bytes(payload[:cut])
        with pytest.raises(ImportRefused):
            read_dicom_file(path)
    path.write_bytes(payload)
    assert read_dicom_file(path).payload == payload


def test_an_element_length_past_the_end_is_named(allowed: Path) -> None:
    payload = dicom_bytes()
    with pytest.raises(ImportRefused, match=r"\(7FE0,0010\).*past the end"):
        check_part10_complete(payload[:-10])


# -- queueing, and what reaches the log ---------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    q = QueueStore(tmp_path / "spool", ["pacs"])
    q.open()
    yield q
    q.close()


def test_queue_import_files_keeps_the_result_shape_and_logs_no_names(
        tmp_path: Path, allowed: Path, store: QueueStore,
        caplog: pytest.LogCaptureFixture) -> None:
    good = allowed / "PHI^SENTINEL\nFORGED LOG LINE.dcm"
    good.write_bytes(dicom_bytes())
    bad = allowed / "PHI^SENTINEL-bad.dcm"
    bad.write_bytes(b"not dicom")
    outside = tmp_path / "PHI^SENTINEL-elsewhere.dcm"
    outside.write_bytes(dicom_bytes())
    caplog.set_level(logging.DEBUG)
    results = queue_import_files([good, bad, outside], queue=store,
                                 allowed_folders=[allowed], max_files=10)
    by_path = {r["path"]: r for r in results}
    assert set(by_path) == {str(good.resolve()), str(bad.resolve()), str(outside)}
    assert set(by_path[str(good.resolve())]) == {"path", "queue_id", "sop_instance_uid"}
    assert "error" in by_path[str(bad.resolve())] and "error" in by_path[str(outside)]
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message, message
        if record.levelno >= logging.INFO:
            assert "PHI" not in message, message
    assert any("PHI^SENTINEL\\nFORGED" in r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG)


def test_printable_name_escapes_controls_and_bidi() -> None:
    assert printable_name("a\nb") == "'a\\nb'"
    assert printable_name("x\u202eexe.dcm") == "'x\\u202eexe.dcm'"
    assert printable_name("bad\udcffbyte") == "'bad\\udcffbyte'"
    assert printable_name("Müller.dcm") == "'Müller.dcm'"
