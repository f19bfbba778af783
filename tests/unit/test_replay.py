"""The `replay` driver and its PNG reader (drivers/replay.py, drivers/png.py).

The reader is checked two ways: against PNG files written by libpng (an independent encoder,
its bytes embedded below), and, with hypothesis, against a small encoder written here that puts
each of the five row filters where told.
"""

from __future__ import annotations

import base64
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from drivers.errors import DriverConfigError, EndOfStreamError, FrameCorruptError
from drivers.png import PngError, read_png
from drivers.replay import ReplayDriver

#: PNG files written by libpng (netpbm pnmtopng 10.x, adaptive filters: Sub, Up, Average and
#: Paeth all occur), from 13 x 9 test arrays; the arrays, as raw little-endian bytes
LIBPNG_G12 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAA0AAAAJEAAAAACcgSX1AAAAAXNCSVQM4WefgAAAAOBJREFUCJkFwbFxgzAUAFCE"
    "fQf6X5L1JaCG1GnIBGiD0Lj3CJTpjCeIvAFluoi7DKB07sIGgQ0o0+U9ll6t00sVaLSbbc1Y9qe+8LYthhSmnDBk"
    "E2e8Ewl0MCiHI7TQHEGrBWu1q0HtOcMFUu7ERdY4s9pUDbmC9MVSOevWumK3K4XqlmLIV/To5S49v0IiX3FFBm02"
    "pqJDDR3EnHgPQUwY+Tv/RYbJkUfRY8N/MAqS3/CZ3TACk43YDs+bgtMbebXrD3zo1fzpSd31i36w85cdSmaCmU0w"
    "VI7k7FI8UWPZP/kQO6HdBt9BAAAAAElFTkSuQmCC"
)
ARRAY_G12 = np.frombuffer(base64.b64decode(
    "KABcAVkCtAPMBPoFLQdFCJoJjwrIC/sMMg7CAN0BBAMuBFwFjgbtB+kIMQpjC3AMng3UDmMBugK2Aw0FMwZiB2II"
    "nwnZCv0LMw1gDosPAQJjA3cEuAW+Bu8HOgk9CmELoAzeDekOQgC8AuEDIAVhBo0HuAjCCd0KNgxeDY4OjA+6AHAD"
    "kgTEBQ0HDghNCW0KlwviDOcNHA89AGoBDARRBXYGmge2CAcKMws+DF8Nmw68Dw8BKwLEBOMFHAdkCGQJsAquC+wM"
    "PQ5mD2MAvAHoAmsFkgbiBw0JKApDC2QMvA3ADv0PMAFCAnID"
), dtype='<u2').reshape(9, 13)
LIBPNG_G8 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAA0AAAAJCAAAAADMEfm2AAAAXUlEQVQImQXBAQ4CMQgEQLvAAoXDeKbR/39UZxbn"
    "e173/elz3gN0aJqRJha4QmC617MnG+IWevFyBYmwaSrXr5yO2JqbnF5VgJgBbGYtFEYiavMR2U6IS0qigcz+A0jv"
    "BMVyR9eMAAAAAElFTkSuQmCC"
)
ARRAY_G8 = np.frombuffer(base64.b64decode(
    "BhQsQVJkdo2ZrsPW5AggNEVbaXuTn7PG2+wVKDdHYG2FlK6/1OT4GC88T2R6i6G1w9bq/iA0SltqfpGitM7d8AUo"
    "Pk5kdISXsMDP6PsHK0NTZnaKo7bJ2un9EjlGW26BlKm20eP1BBg8TV53hJ2rwtPl/g0k"
), dtype='u1').reshape(9, 13)
LIBPNG_G16 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAA0AAAAJEAAAAACcgSX1AAAA/klEQVQImQHzAAz/AQNbEEkVdBb1EaIUXRMPEq4U"
    "oRfJECwU9hTpBAldD48L0wj4DFgMwAyuDYcMEwiIDQYMfA3pBA0aCgcNWAz5DEMK7Qy9C1MMHA30DMgLJA3RAgvP"
    "CxcKpw4XC1MM+Qu2DAQLUwxkDWQM8gplAg6IDaINTgsaC80NSAsjDQcMXQqoCRYO7QtEAyP/EDAOrBL5EMwRrhE3"
    "D6gQqRK0ESIQHw/7AgqYDRsPegvIC2gJEQzQC5cMyQ2eC/YKhwzLBA6ECL4KIQw9DYgOOAtbDaUM4goJEzoOJwoL"
    "AzX5DwcSng8LD9gRug/CEMEQDpH5DiYQSRCVWBNBv9hZKxcAAAAASUVORK5CYII="
)
ARRAY_G16 = np.frombuffer(base64.b64decode(
    "WwOkExgoDT6vTwxjG3bJiGqcM7Nfw1XXPuu4DEci6zPjRjtbzG96glCVY6i7u8HQPeMm+NIZTixDQDxSfme5eTeO"
    "iqCmtK/Id9xh7g4FoSRlN+pKU2DRcrKF7ZmOrPm/E9Tb6VP6cw8pMgdEOFdta559+pIQpJW5Vsu73vHyQAi3GhM8"
    "PVDmYaJ4bIphn2+yKsTp14bs3QCtFK0mq0ZYXWBwaoPUlXKoP77Bz7LjJPnTCzQeeDIvVO1lDnpLj1yilLbNyXLc"
    "VO8tAw0WNCyDPBBfhXHnh6SaWK0wwkDUGuhF+zIQRSGFNhlJ"
), dtype='<u2').reshape(9, 13)
LIBPNG_RGB = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAA0AAAAJCAIAAABmGDE9AAAAg0lEQVQYlU3PMQ4DIQxE0ReJgIEtKbn/OVMQr2gs"
    "2TPjb3+wzCWWsbTlyVqXvsTyLFHswaQxCYJOZdLpBK3Yky+ntvQFjcqgEsU+6VcbxLU7qDzFPtNK40mhZfsnvNyR"
    "6ZFbj7UfdLFrglqij6/f+fvfnvJ55b21Mw63Xtpxfy/6oP8An+oFxpCjPmIAAAAASUVORK5CYII="
)
ARRAY_RGB = np.frombuffer(base64.b64decode(
    "AAAAFAALKAATPAAdUAAkZAAweAA3jABDoABJtABSyABa3ABm8ABuABwKFBwWKBwdPBwoUBwwZBw4eBxBjBxJoBxU"
    "tBxdyBxm3Bxu8Bx1ADgVFDgbKDgoPDgtUDg3ZDhAeDhKjDhSoDhbtDhjyDhw3Dh28Dh+AFQeFFQkKFQxPFQ5UFRA"
    "ZFRKeFRSjFRdoFRltFRtyFR43FR+8FSKAHAmFHAxKHA3PHBAUHBMZHBUeHBajHBkoHBstHB5yHCA3HCI8HCTAIwx"
    "FIw2KIxBPIxJUIxUZIxeeIxljIxvoIx2tIyAyIyJ3IyT8IyZAKg3FKg/KKhMPKhTUKhcZKhleKhsjKh5oKiCtKiH"
    "yKiT3Kib8KijAMRBFMRMKMRTPMRcUMRmZMRveMR3jMSCoMSJtMSTyMSb3MSk8MSuAOBMFOBSKOBbPOBlUOBtZOB4"
    "eOCCjOCHoOCQtOCdyOCk3OCu8OC3"
), dtype='u1').reshape(9, 13, 3)
LIBPNG_G8_INTERLACED = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAA0AAAAJCAAAAAG7FskgAAAAiUlEQVQImQXBuw3CMBAAUPsUjO2c7TvnHEUJigg/"
    "EQkaagpqJBrGYCP2YBNWYBDeU+atrl/1/MHlptavz0Kf7g8Yhx6kn3TZzPv5sIN21Y5D6bWct/N0BDFuyRFQOCaE"
    "VKNgAM8N1qRtJ9zG3KE0hStK1jumKJFSrihRIY+pxswO2AYfKBuW4PgPlfQM+yXbNvIAAAAASUVORK5CYII="
)


# -- a PNG writer for the tests, from the PNG spec ---------------------------------------------

def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filter(kind: int, row: bytes, previous: bytes, bpp: int) -> bytes:
    out = bytearray()
    for i, value in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = previous[i]
        c = previous[i - bpp] if i >= bpp else 0
        predictor = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind] if kind <= 4 else 0
        out.append((value - predictor) & 0xFF)
    return bytes([kind]) + bytes(out)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write_png(pixels: np.ndarray, filters: list[int] | None = None, *, sbit: int | None = None,
              interlace: int = 0, color_type: int | None = None,
              extra: bytes = b"") -> bytes:
    rgb = pixels.ndim == 3
    depth = pixels.dtype.itemsize * 8
    height, width = pixels.shape[:2]
    raw_rows = pixels.astype(">u2" if depth == 16 else "u1").reshape(height, -1)
    bpp = (3 if rgb else 1) * depth // 8
    stride = raw_rows.shape[1] * raw_rows.itemsize
    previous = bytes(stride)
    body = b""
    for y in range(height):
        row = raw_rows[y].tobytes()
        body += _filter((filters or [0])[y % len(filters or [0])], row, previous, bpp)
        previous = row
    header = struct.pack(">IIBBBBB", width, height, depth,
                         color_type if color_type is not None else (2 if rgb else 0), 0, 0,
                         interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + (_chunk(b"sBIT", bytes([sbit])) if sbit else b"") + extra
            + _chunk(b"IDAT", zlib.compress(body)) + _chunk(b"IEND", b""))


# -- the PNG reader ----------------------------------------------------------------------------

@pytest.mark.parametrize(("png", "expected", "bits"), [
    (LIBPNG_G12, ARRAY_G12, 12),        # 16-bit samples, sBIT 12, scaled linearly by libpng
    (LIBPNG_G8, ARRAY_G8, 8),
    (LIBPNG_G16, ARRAY_G16, 16),
    (LIBPNG_RGB, ARRAY_RGB, 8),
], ids=["grey12-sbit", "grey8", "grey16", "rgb8"])
def test_png_written_by_libpng_reads_back_exactly(png: bytes, expected: np.ndarray,
                                                 bits: int) -> None:
    image = read_png(png)
    assert image.bits_stored == bits
    assert image.pixels.dtype == (np.uint16 if expected.itemsize == 2 else np.uint8)
    assert np.array_equal(image.pixels, expected)


images = st.one_of(
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12)),
    hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12)),
    hnp.arrays(np.uint8, st.tuples(st.integers(1, 10), st.integers(1, 10), st.just(3))),
)


@settings(max_examples=150)
@given(images, st.lists(st.integers(0, 4), min_size=1, max_size=12))
def test_every_filter_type_is_undone(pixels: np.ndarray, filters: list[int]) -> None:
    image = read_png(write_png(pixels, filters))
    assert np.array_equal(image.pixels, pixels)
    assert image.bits_stored == pixels.dtype.itemsize * 8


def test_paeth_prefers_up_over_upper_left_on_a_tie() -> None:
    # left a = 10, up b = 40, upper-left c = 20: estimate 30 is 10 from both b and c (PNG 9.4)
    pixels = np.array([[20, 40], [10, 99]], dtype=np.uint8)
    assert np.array_equal(read_png(write_png(pixels, [0, 4])).pixels, pixels)


@pytest.mark.parametrize("scaling", ["shift", "replicate", "unscaled"])
def test_sbit_scaling_is_undone_whichever_way_the_encoder_scaled(scaling: str) -> None:
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    stored = {"shift": values << 4, "replicate": (values << 4) | (values >> 8),
              "unscaled": values}[scaling]
    image = read_png(write_png(stored, [4], sbit=12))
    assert image.bits_stored == 12
    assert np.array_equal(image.pixels, values)


@pytest.mark.parametrize(("mangle", "problem"), [
    (lambda png: png[1:], "signature"),
    (lambda png: png[:60], "truncated"),
    (lambda png: png[:40] + bytes([png[40] ^ 1]) + png[41:], "CRC mismatch"),
    (lambda png: LIBPNG_G8_INTERLACED, "interlaced"),
    (lambda png: write_png(np.zeros((2, 2), np.uint8), color_type=3), "palette is not supported"),
    (lambda png: write_png(np.zeros((2, 2), np.uint8), color_type=4), "alpha"),
    (lambda png: write_png(np.zeros((2, 2), np.uint8), extra=_chunk(b"ZZZZ", b"")),
     "unsupported critical chunk 'ZZZZ'"),
    (lambda png: write_png(np.zeros((2, 2), np.uint8), [5]), "unknown filter type 5"),
    (lambda png: write_png(np.full((2, 2), 9, np.uint16), sbit=3), "neither scaled"),
])
def test_bad_or_unsupported_png_says_why(mangle: object, problem: str) -> None:
    png = write_png(np.arange(12, dtype=np.uint8).reshape(3, 4))
    with pytest.raises(PngError, match=problem):
        read_png(mangle(png))  # type: ignore[operator]


def test_a_decompression_bomb_is_not_inflated_past_the_image_size() -> None:
    header = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(bytes(50_000_000))) + _chunk(b"IEND", b""))
    with pytest.raises(PngError, match="4x4 needs 20"):
        read_png(bomb)


# -- the replay driver -------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    frames = tmp_path / "frames"
    frames.mkdir()
    np.save(frames / "a.npy", ARRAY_G16.astype(np.uint16))
    np.save(frames / "b.npy", ARRAY_RGB.copy())
    (frames / "c.png").write_bytes(LIBPNG_G12)
    np.save(frames / "d.npy", ARRAY_G12.astype(">u2"))          # big-endian file
    (frames / "notes.txt").write_text("not an image")
    return frames


def test_files_play_in_name_order_exactly(folder: Path) -> None:
    with ReplayDriver(folder=str(folder)) as driver:
        frames = [driver.read_frame(1.0) for _ in range(4)]
        with pytest.raises(EndOfStreamError, match="all 4 files played; set loop = true"):
            driver.read_frame(1.0)
    expected = [(ARRAY_G16, 16, "MONOCHROME2"), (ARRAY_RGB, 8, "RGB"),
                (ARRAY_G12, 12, "MONOCHROME2"), (ARRAY_G12, 16, "MONOCHROME2")]
    for index, (frame, (pixels, bits, photometric)) in enumerate(zip(frames, expected,
                                                                      strict=True)):
        assert np.array_equal(frame.pixels, pixels)
        assert (frame.bits_stored, frame.photometric_interpretation) == (bits, photometric)
        assert frame.sequence_number == index
        assert frame.device_parameters["replay_index"] == index
        assert frame.pixel_spacing_mm is None


def test_loop_starts_again_and_the_sequence_goes_on(folder: Path) -> None:
    with ReplayDriver(folder=str(folder), loop=True, pixel_spacing_mm=0.2) as driver:
        frames = [driver.read_frame(1.0) for _ in range(6)]
    assert [f.sequence_number for f in frames] == list(range(6))
    assert np.array_equal(frames[4].pixels, frames[0].pixels)
    assert frames[4].device_parameters["replay_index"] == 0
    assert frames[0].pixel_spacing_mm == (0.2, 0.2)


def test_frame_rate_paces_playback(folder: Path) -> None:
    started = time.monotonic()
    with ReplayDriver(folder=str(folder), frame_rate=20.0) as driver:
        for _ in range(4):
            driver.read_frame(1.0)
    assert time.monotonic() - started >= 3 / 20 - 0.01


def test_bits_stored_option_is_enforced_per_file(folder: Path) -> None:
    with ReplayDriver(folder=str(folder), bits_stored=12) as driver:
        with pytest.raises(FrameCorruptError, match=r"file 1 \(a.npy\): pixel value \d+ does "
                                                   "not fit bits_stored 12"):
            driver.read_frame(1.0)
        with pytest.raises(FrameCorruptError, match="RGB frames are 8-bit"):
            driver.read_frame(1.0)
        assert driver.read_frame(1.0).bits_stored == 12   # the bad files are skipped, not stuck


@pytest.mark.parametrize(("write", "problem"), [
    (lambda p: np.save(p, np.array([{"x": 1}], dtype=object), allow_pickle=True),
     "not a plain numeric array"),
    (lambda p: np.save(p, np.zeros((2, 2), np.float32)), "dtype float32"),
    (lambda p: np.save(p, np.zeros((2, 2, 2), np.uint8)), r"shape \(2, 2, 2\)"),
    (lambda p: np.save(p, np.zeros((0, 4), np.uint8)), "rows and columns must be 1..65535"),
    (lambda p: p.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"), "truncated"),
])
def test_a_bad_file_is_reported_by_name_and_never_becomes_a_frame(
        tmp_path: Path, write: object, problem: str) -> None:
    write(tmp_path / "bad.npy")  # type: ignore[operator]
    np.save(tmp_path / "good.npy", np.ones((2, 2), np.uint8))
    with ReplayDriver(folder=str(tmp_path)) as driver:
        with pytest.raises(FrameCorruptError, match=problem):
            driver.read_frame(1.0)
        assert driver.read_frame(1.0).pixels.sum() == 4
        assert driver.status().frames_read == 1


def test_an_empty_folder_fails_at_open(tmp_path: Path) -> None:
    driver = ReplayDriver(folder=str(tmp_path))
    with pytest.raises(DriverConfigError, match=r"holds no .npy or .png files"):
        driver.open()
    assert not driver.is_open
