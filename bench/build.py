"""Scenario 6, build: per object, what the capture path costs before the network: building the
Secondary Capture dataset, checking it, encoding Part 10 bytes, and queueing them durably
(QueueStore.enqueue: sha256, write, fsync, rename, fsync dir, SQLite row with synchronous=FULL),
for the sizes of the other scenarios. References in the same run: pydicom's own dcmwrite of the
same dataset, a copy of the pixels (memory bandwidth), and sha256 of the bytes.
"""

from __future__ import annotations

import hashlib
import struct
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


def bmp_8bit(pixels: Any) -> bytes:
    """An 8-bit grayscale BMP (palette, rows bottom-up, padded to 4 bytes): what DCMTK img2dcm
    reads, so it can convert the same frame."""
    import numpy as np

    rows, columns = pixels.shape
    stride = (columns + 3) & ~3
    body = np.zeros((rows, stride), dtype=np.uint8)
    body[:, :columns] = pixels[::-1]
    palette = bytes(b for v in range(256) for b in (v, v, v, 0))
    offset = 14 + 40 + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + body.nbytes, 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, columns, rows, 1, 8, 0, body.nbytes, 2835, 2835,
                       256, 256)
    return header + info + palette + body.tobytes()


def _eight_bit_rows(ws: Workspace, iterations: int, order: Any, device: Any, series: Any,
                    uids: Any, json_rows: list[dict[str, Any]],
                    table_rows: list[list[Any]]) -> None:
    """Where DCMTK img2dcm applies (an 8-bit frame) it runs beside the agent on the same frame
    (its time includes starting the process); and a 100-frame 1024x1024 8-bit multi-frame
    object, which img2dcm does not make."""
    import subprocess

    from agent.iod import build_image, encode_part10, validate_image
    from drivers.frame import Frame
    from drivers.simulated import phantom

    size = 64 if tiny() else 1024
    frames = [Frame(pixels=phantom(size, size, 8, i), bits_stored=8,
                    photometric_interpretation="MONOCHROME2", t_mono=i / 30.0,
                    t_wall=time.time(), sequence_number=i) for i in range(3 if tiny() else 100)]
    bmp = ws.root / "frame.bmp"
    bmp.write_bytes(bmp_8bit(frames[0].pixels))
    out = ws.root / "img2dcm.dcm"

    def ours_single() -> bytes:
        ds = build_image("secondary-capture", frames[:1], order=order, device=device,
                         series=series, instance_number=1, sop_instance_uid=uids.new_uid())
        validate_image(ds)
        return encode_part10(ds)

    def ours_multi() -> bytes:
        ds = build_image("multiframe-grayscale-byte-sc", frames, order=order, device=device,
                         series=series, instance_number=1, sop_instance_uid=uids.new_uid())
        validate_image(ds)
        return encode_part10(ds)

    def img2dcm() -> None:
        subprocess.run(["/usr/bin/img2dcm", "-i", "BMP", str(bmp), str(out)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    cases: list[tuple[str, str, Callable[[], Any], int]] = [
        (f"{size}x{size} 8-bit", "agent build+validate+encode", ours_single,
         len(ours_single())),
        (f"{size}x{size} 8-bit", "ref: DCMTK img2dcm (BMP, whole process)", img2dcm,
         size * size),
        (f"{len(frames)}x{size}x{size} 8-bit", "agent multi-frame build+validate+encode",
         ours_multi, len(ours_multi())),
    ]
    for label, name, fn, nbytes in cases:
        stats = summary(_time(fn, iterations))
        json_rows.append({"pixels": label, "bytes": nbytes, "step": name,
                          "min_ms": stats["min"] * 1000, "median_ms": stats["median"] * 1000,
                          "mb_s": nbytes / MB / stats["median"]})
        table_rows.append([label, name, nbytes / MB, stats["min"] * 1000,
                           stats["median"] * 1000, nbytes / MB / stats["median"]])
    say("build: 8-bit and multi-frame done")


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
    _eight_bit_rows(ws, iterations, order, device, series, uids, json_rows, table_rows)
    text = table(
        f"build ({'quick, ' if quick else ''}{iterations} iterations per step; per object)",
        ["pixels", "step", "object MB", "min ms", "median ms", "MB/s"],
        table_rows, left=2,
        notes=["the spool is on the same disk as the other scenarios' (ext4, fsync'd); "
               "MB/s = object size / median"],
    )
    return {"rows": json_rows}, [text]
