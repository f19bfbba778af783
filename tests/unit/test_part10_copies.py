"""The capture path copies a frame's pixels as few times as it can: each fresh copy of a 1024²
16-bit frame is 2 MB of new pages, and on the virtual machines these run on a page fault cost
~4.5 µs (2,565 faults and 12 ms of system time per frame before, a third of a core at 30 fps).
The bytes must stay exactly what pydicom's own dcmwrite makes of the same dataset."""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Callable
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian
from test_iod_images import build, frames_of, mono, rgb

from agent.iod import encode_part10
from agent.iod.modules import pixel_data_bytes
from agent.iod.part10 import _file_meta
from drivers.frame import Frame
from drivers.simulated import pattern_image

MB2 = 1024 * 1024 * 2


def pydicom_part10(ds: Dataset) -> bytes:
    """What encode_part10 did before it appended Pixel Data itself: all through dcmwrite."""
    out = Dataset(ds)
    out.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
    fp = BytesIO()
    dcmwrite(fp, out, enforce_file_format=True)
    return fp.getvalue()


def peak_allocated(fn: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of fn() beyond what was allocated before (numpy's array
    data is traced too)."""
    fn()                                  # imports, caches
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - before


def frame_16bit(rows: int = 1024, columns: int = 1024, index: int = 3) -> Frame:
    pixels = pattern_image("bars", rows, columns, 16, index)
    return Frame(pixels=pixels, bits_stored=16, photometric_interpretation="MONOCHROME2",
                 t_mono=1.0 + index / 30, t_wall=1_700_000_000.0 + index / 30,
                 sequence_number=index)


@pytest.mark.parametrize(("iod", "kind", "count", "rows", "columns"), [
    ("secondary-capture", "mono16", 1, 40, 33),
    ("secondary-capture", "mono8", 1, 41, 33),          # odd length: padded with one zero
    ("secondary-capture", "rgb", 1, 40, 33),
    ("dx", "mono12", 1, 64, 64),
    ("multiframe-grayscale-word-sc", "mono16", 3, 40, 33),
    ("multiframe-grayscale-byte-sc", "mono8", 3, 41, 33),
    ("multiframe-true-color-sc", "rgb", 2, 40, 33),
])
def test_same_bytes_as_pydicoms_dcmwrite(iod: str, kind: str, count: int, rows: int,
                                         columns: int) -> None:
    ds = build(iod, frames_of(kind, count, rows, columns))
    assert encode_part10(ds) == pydicom_part10(ds)


def test_strided_and_big_endian_pixels_give_little_endian_bytes_in_c_order() -> None:
    base = mono(40, 33, 16, 1)
    for pixels in (base.pixels[:, ::-1], base.pixels.astype(">u2")):
        frame = dataclasses.replace(base)
        object.__setattr__(frame, "pixels", pixels)     # past Frame's dtype check, on purpose
        assert pixel_data_bytes(frame) == np.ascontiguousarray(pixels, dtype="<u2").tobytes()


def test_an_element_after_pixel_data_is_left_to_pydicom() -> None:
    ds = build("secondary-capture", [mono(40, 33, 16, 1)])
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 4)            # Data Set Trailing Padding
    data = encode_part10(ds)
    assert data == pydicom_part10(ds)
    assert data.endswith(b"\xfc\xff\xfc\xffOB\x00\x00\x04\x00\x00\x00" + b"\x00" * 4)


def test_a_dataset_without_pixel_data_is_encoded_as_pydicom_does() -> None:
    ds = build("secondary-capture", [mono(40, 33, 16, 1)])
    del ds.PixelData
    assert encode_part10(ds) == pydicom_part10(ds)


def test_the_callers_dataset_keeps_its_pixel_data() -> None:
    ds = build("secondary-capture", [mono(40, 33, 16, 1)])
    pixels = ds.PixelData
    encode_part10(ds)
    assert ds.PixelData is pixels and not hasattr(ds, "file_meta")


def test_pixel_data_bytes_copies_a_frame_once() -> None:
    frame = frame_16bit()
    # numpy copied an explicit '<' dtype, and a not C-contiguous frame was copied again
    assert peak_allocated(lambda: pixel_data_bytes(frame)) < 1.1 * MB2


def test_encoding_copies_the_pixels_once() -> None:
    ds = build("secondary-capture", [frame_16bit()])
    # pydicom's buffer, then its getvalue(): 2 copies and more as the buffer grew
    assert peak_allocated(lambda: encode_part10(ds)) < 1.1 * MB2


def test_a_multiframe_value_copies_the_pixels_once() -> None:
    frames = [frame_16bit(256, 256, index) for index in range(16)]             # 2 MB together
    # np.stack, then tobytes: two copies of the whole
    assert peak_allocated(lambda: build("multiframe-grayscale-word-sc", frames)) < 1.1 * MB2


@pytest.mark.parametrize("pattern", ["bars", "gradient", "noise", "phantom"])
@pytest.mark.parametrize("color", [False, True])
def test_simulated_frames_are_laid_out_as_a_device_buffer(pattern: str, color: bool) -> None:
    # a broadcast view's astype kept its layout: every later copy walked the frame column-wise
    assert pattern_image(pattern, 64, 48, 8 if color else 12, 5, color=color).flags.c_contiguous


def test_rgb_frames_round_trip_through_the_appended_value() -> None:
    frame = rgb(40, 33, 2)
    ds = build("secondary-capture", [frame])
    from pydicom import dcmread
    back = dcmread(BytesIO(encode_part10(ds)))
    assert np.array_equal(back.pixel_array, frame.pixels)
