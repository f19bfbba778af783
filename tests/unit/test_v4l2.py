"""The `v4l2` driver's buffer handling and pixel conversion, on the fake grabber (no kernel).

firmware_stubs.fake_grabber keeps the V4L2 streaming rules (only queued buffers are filled,
double QBUF is EINVAL, STREAMOFF takes buffers back), so these tests run the driver's real
queue/dequeue cycle, its YUYV/GREY/RGB24 conversion, stride handling and short-buffer refusal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from drivers.errors import DeviceDisconnectedError, DriverConfigError, DriverTimeoutError
from drivers.v4l2.capture import BufferRing, Format
from drivers.v4l2.driver import V4L2Driver
from drivers.v4l2.pixels import ShortBufferError, required_bytes, to_image, yuyv_to_rgb
from firmware_stubs.fake_grabber import FakeGrabber, card_image, luma_of

WIDTH, HEIGHT = 64, 12


def open_driver(grabber: FakeGrabber, **options: object) -> V4L2Driver:
    driver = V4L2Driver(capture_device_factory=lambda path: grabber, width=WIDTH,
                        height=HEIGHT, **options)
    driver.open()
    return driver


@pytest.fixture
def grabber() -> FakeGrabber:
    return FakeGrabber(padding=40)


@pytest.fixture
def driver(grabber: FakeGrabber) -> Iterator[V4L2Driver]:
    driver = open_driver(grabber, buffers=3)
    yield driver
    driver.close()


@pytest.mark.parametrize(("pixel_format", "color", "tolerance"), [
    ("YUYV", True, 2), ("YUYV", False, 1), ("GREY", False, 0), ("RGB24", True, 0),
    ("RGB24", False, 1),
])
@pytest.mark.parametrize("padding", [0, 40])
def test_each_format_becomes_the_right_frame(pixel_format: str, color: bool, tolerance: int,
                                             padding: int) -> None:
    grabber = FakeGrabber(padding=padding)
    driver = open_driver(grabber, pixel_format=pixel_format, color=color, buffers=2)
    try:
        for _ in range(5):                      # more reads than buffers: they come back
            frame = driver.read_frame(1.0)
            sequence = frame.device_parameters["v4l2_sequence"]
            rgb = card_image(WIDTH, HEIGHT, sequence)
            expected = rgb if color else luma_of(rgb)
            assert frame.pixels.shape == expected.shape
            assert frame.photometric_interpretation == ("RGB" if color else "MONOCHROME2")
            difference = np.abs(frame.pixels.astype(int) - expected.astype(int)).max()
            assert difference <= tolerance, (pixel_format, color, difference)
            assert frame.bits_stored == 8
        assert grabber.queued_count == grabber.buffer_count == 2
    finally:
        driver.close()
    assert not grabber.streaming and grabber.closed


def test_bt601_reference_colours() -> None:
    # Y, U, V of 100 % white, black, red, green, blue (limited range), two pixels each
    quads = np.array([[235, 128, 235, 128], [16, 128, 16, 128], [81, 90, 81, 240],
                      [145, 54, 145, 34], [41, 240, 41, 110]], dtype=np.uint8)
    rgb = yuyv_to_rgb(quads.reshape(1, -1), "limited").reshape(5, 2, 3)[:, 0].astype(int)
    reference = np.array([(255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)])
    assert np.abs(rgb - reference).max() <= 2


def test_padding_is_stripped_and_the_last_row_may_lack_it() -> None:
    fmt = Format(width=4, height=3, fourcc="GREY", bytes_per_line=7, size_image=21)
    rows = [b"\x01\x02\x03\x04\xee\xee\xee", b"\x05\x06\x07\x08\xee\xee\xee", b"\x09\x0a\x0b\x0c"]
    assert required_bytes(fmt) == 18
    image = to_image(b"".join(rows), fmt, color=False)
    assert image.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    with pytest.raises(ShortBufferError, match="holds 17 bytes, a 4x3 GREY frame needs 18"):
        to_image(b"".join(rows)[:17], fmt, color=False)
    with pytest.raises(DriverConfigError, match="bytes_per_line 3 is shorter"):
        required_bytes(Format(4, 3, "GREY", 3, 9))


@pytest.mark.parametrize("fault", ["short", "error"])
def test_a_torn_or_flagged_buffer_is_never_a_frame(driver: V4L2Driver, grabber: FakeGrabber,
                                                   fault: str) -> None:
    assert driver.read_frame(1.0).device_parameters["v4l2_sequence"] == 0
    grabber.inject(fault, count=4)              # more than the 3 buffers
    frame = driver.read_frame(1.0)
    assert frame.device_parameters["v4l2_sequence"] == 5
    rgb = card_image(WIDTH, HEIGHT, 5)
    assert np.abs(frame.pixels.astype(int) - luma_of(rgb).astype(int)).max() <= 1
    counter = {"short": "short_buffers", "error": "error_buffers"}[fault]
    assert driver.counters[counter] == 4
    assert grabber.queued_count == 3            # every refused buffer went back to the queue


def test_frames_the_grabber_dropped_are_counted(driver: V4L2Driver,
                                                grabber: FakeGrabber) -> None:
    driver.read_frame(1.0)
    grabber.inject("drop", count=2)
    frame = driver.read_frame(1.0)
    assert frame.device_parameters["v4l2_sequence"] == 3
    assert driver.counters["grabber_dropped"] == 2
    assert "2 grabber dropped" in driver.status().detail


def test_no_signal_times_out_then_frames_resume(driver: V4L2Driver,
                                                grabber: FakeGrabber) -> None:
    grabber.inject("stall")
    started = time.monotonic()
    with pytest.raises(DriverTimeoutError, match=r"v4l2: no frame within 0.3 s"):
        driver.read_frame(0.3)
    assert time.monotonic() - started >= 0.3
    assert driver.read_frame(1.0).sequence_number == 0


def test_unplugged_grabber_goes_offline_and_a_new_one_is_opened() -> None:
    grabbers: list[FakeGrabber] = []

    def plug_in(path: str) -> FakeGrabber:
        if len(grabbers) == 2:
            raise OSError(2, "No such file or directory", path)   # not back yet
        grabbers.append(FakeGrabber())
        return grabbers[-1]

    driver = V4L2Driver(capture_device_factory=plug_in, width=WIDTH, height=HEIGHT)
    driver.open()
    try:
        driver.read_frame(1.0)
        grabbers[0].inject("disconnect")
        with pytest.raises(DeviceDisconnectedError, match=r"dequeue: .*No such device"):
            driver.read_frame(1.0)
        assert not driver.status().online
        frame = driver.read_frame(1.0)            # reopened: grabber 2
        assert frame.sequence_number == 1 and frame.device_parameters["v4l2_sequence"] == 0
        assert driver.status().online
        grabbers[1].inject("disconnect")
        with pytest.raises(DeviceDisconnectedError):
            driver.read_frame(1.0)
        with pytest.raises(DeviceDisconnectedError, match=r"open: .*No such file"):
            driver.read_frame(1.0)                # the reopen is tried and fails
        assert "offline" in driver.status().detail
    finally:
        driver.close()


def test_a_format_the_device_cannot_deliver_is_refused_and_it_is_closed() -> None:
    grabber = FakeGrabber(fourccs=("GREY",))
    driver = V4L2Driver(capture_device_factory=lambda path: grabber, pixel_format="YUYV")
    with pytest.raises(DriverConfigError, match=r"cannot deliver YUYV \(it offers GREY\)"):
        driver.open()
    assert grabber.closed and not driver.is_open


def test_the_ring_requeues_even_when_copying_fails() -> None:
    grabber = FakeGrabber()
    grabber.set_format(8, 2, "GREY")
    ring = BufferRing(grabber, 2)
    ring.start()
    assert grabber.queued_count == 2
    capture = ring.next_capture(time.monotonic() + 1)
    assert capture is not None and len(capture.data) == 16
    assert grabber.queued_count == 2
    grabber.inject("short")
    capture = ring.next_capture(time.monotonic() + 1)
    assert capture is not None and len(capture.data) == 8
    assert grabber.queued_count == 2
    ring.stop()
    assert grabber.queued_count == 0


def test_double_queueing_is_an_error_the_fake_enforces() -> None:
    grabber = FakeGrabber()
    grabber.set_format(8, 2, "GREY")
    grabber.request_buffers(2)
    grabber.queue_buffer(0)
    with pytest.raises(OSError, match="already queued"):
        grabber.queue_buffer(0)
