"""Scenario 6, build: per object, what the capture path costs before the network: building the
Secondary Capture dataset, checking it, encoding Part 10 bytes, and queueing them durably
(QueueStore.enqueue: sha256, write, fsync, rename, fsync dir, SQLite row with synchronous=FULL),
for the sizes of the other scenarios. References in the same run: pydicom's own dcmwrite of the
same dataset, a copy of the pixels (memory bandwidth), and sha256 of the bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime
from io import BytesIO
from typing import Any

from bench.common import (
    EXPLICIT_VR_LE,
    MB,
    SC_IMAGE_STORAGE,
    Workspace,
    say,
    summary,
    table,
    tiny,
)

SIZES = (512, 1024, 2048)


def _time(fn: Callable[[], Any], iterations: int) -> list[float]:
    fn()    # warm-up
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian

    from agent.iod import (
        UIDSource,
        build_secondary_capture,
        encode_part10,
        new_series_context,
        validate_image,
    )
    from agent.queue import QueueStore
    from agent.records import DeviceInfo, Order
    from drivers.frame import Frame
    from drivers.simulated import phantom

    iterations = 1 if tiny() else 5 if quick else 20
    uids = UIDSource()
    order = Order(patient_name="BENCH^Build", patient_id="BENCH-0001")
    device = DeviceInfo("OT", "Example Medical", "Bench", "0001", "BENCH", "", "bench")
    series = new_series_context(uids, order, started_at=datetime.now(), series_number=1)
    store = QueueStore(ws.root / "spool", ["archive"], min_free_bytes=0)
    store.open()
    ws.on_close("queue store", store.close)
    json_rows: list[dict[str, Any]] = []
    table_rows: list[list[Any]] = []
    for size in SIZES:
        frame = Frame(pixels=phantom(size, size, 16, 0), bits_stored=16,
                      photometric_interpretation="MONOCHROME2", t_mono=time.monotonic(),
                      t_wall=time.time(), sequence_number=0)

        def build(frame: Frame = frame) -> Dataset:
            return build_secondary_capture(frame, order=order, device=device, series=series,
                                           instance_number=1, sop_instance_uid=uids.new_uid())

        ds = build()
        payload = encode_part10(ds)

        def plain_write(ds: Dataset = ds) -> bytes:
            out = Dataset(ds)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            out.file_meta = meta
            buffer = BytesIO()
            dcmwrite(buffer, out, enforce_file_format=True)
            return buffer.getvalue()

        def enqueue(payload: bytes = payload) -> None:
            store.enqueue(payload, sop_instance_uid=uids.new_uid(),
                          sop_class_uid=SC_IMAGE_STORAGE, transfer_syntax_uid=EXPLICIT_VR_LE)

        def everything(frame: Frame = frame) -> None:
            built = build(frame)
            validate_image(built)
            data = encode_part10(built)
            store.enqueue(data, sop_instance_uid=str(built.SOPInstanceUID),
                          sop_class_uid=SC_IMAGE_STORAGE, transfer_syntax_uid=EXPLICIT_VR_LE)

        pixels = frame.pixels
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("build_secondary_capture", build),
            ("validate_image", lambda ds=ds: validate_image(ds)),
            ("encode_part10", lambda ds=ds: encode_part10(ds)),
            ("QueueStore.enqueue (durable)", enqueue),
            ("all four (capture path)", everything),
            ("ref: pydicom dcmwrite", plain_write),
            ("ref: copy of the pixels", lambda pixels=pixels: pixels.tobytes()),
            ("ref: sha256 of the bytes", lambda payload=payload: hashlib.sha256(payload)),
        ]
        for name, fn in steps:
            stats = summary(_time(fn, iterations))
            json_rows.append({"pixels": f"{size}x{size}", "bytes": len(payload), "step": name,
                              "min_ms": stats["min"] * 1000,
                              "median_ms": stats["median"] * 1000,
                              "mb_s": len(payload) / MB / stats["median"]})
            table_rows.append([f"{size}x{size}", name, len(payload) / MB, stats["min"] * 1000,
                               stats["median"] * 1000, len(payload) / MB / stats["median"]])
        say(f"build: {size}x{size} done")
    text = table(
        f"build ({'quick, ' if quick else ''}{iterations} iterations per step; per object)",
        ["pixels", "step", "object MB", "min ms", "median ms", "MB/s"],
        table_rows, left=2,
        notes=["the spool is on the same disk as the other scenarios' (ext4, fsync'd); "
               "MB/s = object size / median"],
    )
    return {"rows": json_rows}, [text]
