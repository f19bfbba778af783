"""The `simulated` driver: patterns, colour, cine loops, pacing and its fault switch."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import numpy as np
import pytest

from drivers.errors import DeviceDisconnectedError, DriverTimeoutError
from drivers.simulated import (
    COLOR_BARS,
    PATTERNS,
    SimulatedDriver,
    pattern_image,
    phantom,
)


def read(options: dict[str, Any], count: int, timeout: float = 2.0) -> list[Any]:
    with SimulatedDriver(**options) as driver:
        return [driver.read_frame(timeout) for _ in range(count)]


#: SHA-256 of phantom(24, 32, 12, index) for index 0, 1, 2 (little-endian uint16), computed
#: with the phantom of the first release: the demo's and the existing tests' frames stay put
PHANTOM_24x32x12_SHA256 = "5735299db17948eac3265deb0483e1e98d4477fc7c1becd27ddc002f5619dfd7"


def test_the_phantom_is_the_one_of_the_first_release() -> None:
    digest = hashlib.sha256()
    for index in range(3):
        digest.update(phantom(24, 32, 12, index).astype("<u2").tobytes())
    assert digest.hexdigest() == PHANTOM_24x32x12_SHA256


def test_defaults_are_unchanged_phantom_frames() -> None:
    frames = read({"width": 32, "height": 24}, 2)
    for index, frame in enumerate(frames):
        assert np.array_equal(frame.pixels, phantom(24, 32, 12, index))
        assert frame.bits_stored == 12 and frame.photometric_interpretation == "MONOCHROME2"
        assert frame.sequence_number == index
        assert dict(frame.device_parameters) == {"kvp": 70.0, "mas": 10.0, "exposure_ms": 20.0}


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize(("bits", "color"), [(8, False), (12, False), (16, False), (8, True)])
def test_every_pattern_is_exact_per_index_and_within_range(pattern: str, bits: int,
                                                           color: bool) -> None:
    frames = read({"width": 64, "height": 16, "bits_stored": bits, "color": color,
                   "pattern": pattern, "seed": 7}, 2)
    for index, frame in enumerate(frames):
        expected = pattern_image(pattern, 16, 64, bits, index, color, 7)
        assert np.array_equal(frame.pixels, expected)
        assert frame.pixels.shape == ((16, 64, 3) if color else (16, 64))
        assert frame.photometric_interpretation == ("RGB" if color else "MONOCHROME2")
        assert int(frame.pixels.max()) < 1 << bits
    assert not np.array_equal(frames[0].pixels, frames[1].pixels), "frames should move"


def test_bars_and_gradient_span_the_range() -> None:
    bars = pattern_image("bars", 4, 64, 12, 0)
    assert list(np.unique(bars[0])) == [round(k * 4095 / 7) for k in range(8)]
    color = pattern_image("bars", 4, 64, 8, 0, color=True)
    assert [tuple(color[0, x]) for x in range(4, 64, 8)] == [tuple(c) for c in COLOR_BARS]
    ramp = pattern_image("gradient", 2, 100, 16, 0)
    assert (int(ramp.min()), int(ramp.max())) == (0, 65535)


def test_noise_is_fixed_by_the_seed() -> None:
    first = pattern_image("noise", 8, 8, 12, 3, seed=1)
    assert np.array_equal(first, pattern_image("noise", 8, 8, 12, 3, seed=1))
    assert not np.array_equal(first, pattern_image("noise", 8, 8, 12, 3, seed=2))
    assert not np.array_equal(first, pattern_image("noise", 8, 8, 12, 4, seed=1))


def test_a_cine_loop_repeats_its_content_but_not_its_sequence() -> None:
    frames = read({"width": 32, "height": 8, "cine_frames": 3}, 7)
    assert [f.sequence_number for f in frames] == list(range(7))
    for frame in frames:
        assert np.array_equal(frame.pixels, phantom(8, 32, 12, frame.sequence_number % 3))


def test_frame_rate_paces_delivery() -> None:
    started = time.monotonic()
    read({"width": 8, "height": 8, "frame_rate": 20.0}, 5)
    # the first frame is due at once, the next four 50 ms apart
    assert time.monotonic() - started >= 4 / 20 - 0.01


def test_fail_after_disconnects_then_the_device_comes_back() -> None:
    with SimulatedDriver(width=8, height=8, fail_after=2) as driver:
        assert [driver.read_frame(1.0).sequence_number for _ in range(2)] == [0, 1]
        with pytest.raises(DeviceDisconnectedError, match="fault switch"):
            driver.read_frame(1.0)
        assert not driver.status().online
        assert [driver.read_frame(1.0).sequence_number for _ in range(2)] == [2, 3]
        assert driver.status().online
        with pytest.raises(DeviceDisconnectedError):
            driver.read_frame(1.0)                     # again after two more


def test_fail_after_timeout_waits_out_the_deadline() -> None:
    with SimulatedDriver(width=8, height=8, fail_after=0, failure="timeout") as driver:
        started = time.monotonic()
        with pytest.raises(DriverTimeoutError):
            driver.read_frame(0.2)
        assert time.monotonic() - started >= 0.2
        assert driver.status().online


def test_inject_fault_from_another_thread_hits_the_next_read() -> None:
    with SimulatedDriver(width=8, height=8) as driver:
        thread = threading.Thread(target=driver.inject_fault, args=("disconnect",))
        thread.start()
        thread.join(5)
        with pytest.raises(DeviceDisconnectedError):
            driver.read_frame(1.0)
        frame = driver.read_frame(1.0)
        assert driver.status().online
        assert frame.sequence_number == 0
        with pytest.raises(ValueError, match="failure: expected one of"):
            driver.inject_fault("fire")
