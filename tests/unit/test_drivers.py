"""The driver interface (drivers/base.py), the registry, and every built-in driver's options.

Option problems come back as one DriverConfigError, "key: problem; key: problem", which the
daemon splits per key; a missing SDK is a reason, not a crash.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from drivers import registry
from drivers.base import Driver, DriverStatus
from drivers.errors import (
    DeviceDisconnectedError,
    DriverConfigError,
    DriverError,
    DriverNotFoundError,
    DriverStateError,
    DriverTimeoutError,
    DriverUnavailableError,
)
from drivers.frame import Frame
from drivers.v4l2.driver import V4L2Driver


def test_every_built_in_driver_is_known_and_loads() -> None:
    assert {"simulated", "serial", "replay", "v4l2"} <= set(registry.known_drivers())
    for name in ("simulated", "serial", "replay", "v4l2"):
        assert registry.driver_class(name).name == name


def test_an_unknown_driver_lists_the_known_ones() -> None:
    with pytest.raises(DriverNotFoundError, match=r"unknown driver 'xray9'.*serial.*simulated"):
        registry.driver_class("xray9")


def test_a_plugin_whose_sdk_is_missing_is_a_reason_not_a_crash(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_plugin_backends",
                        lambda: {"vendorx": "vendorx_sdk_binding:VendorDriver"})
    with pytest.raises(DriverUnavailableError, match=r"'vendorx' cannot be loaded.*vendorx_sdk"):
        registry.driver_class("vendorx")
    availability = registry.driver_availability()
    assert availability["simulated"] is None
    assert "vendorx_sdk_binding" in (availability["vendorx"] or "")


def test_v4l2_without_linuxpy_gives_the_reason_and_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "linuxpy", None)    # import linuxpy -> ImportError
    monkeypatch.setitem(sys.modules, "drivers.v4l2.linuxpy_device", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert "linuxpy is not installed" in (V4L2Driver.unavailable_reason() or "")
    assert "modality-agent[v4l2]" in (registry.driver_availability()["v4l2"] or "")
    driver = registry.create_driver("v4l2", {"device": "/dev/video0"})   # options still checked
    with pytest.raises(DriverUnavailableError, match=r"cannot be loaded.*\[v4l2\]"):
        driver.open()
    assert not driver.is_open


# -- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "options", "problems"), [
    ("serial", {}, ["port: required by driver 'serial'"]),
    ("serial", {"port": "/dev/ttyUSB0", "kvp": 200.0, "mas": 0, "exposure_ms": "20"},
     ["exposure_ms: expected float, got '20'"]),
    ("serial", {"port": "/dev/ttyUSB0", "kvp": 200.0, "mas": 0, "timeout_s": 0.0,
                "baudrate": 10},
     ["baudrate: expected 50..4000000, got 10", "timeout_s: expected 0.05..60 seconds, got 0.0",
      "kvp: expected 40..150 kV, got 200", "mas: expected 0.1..1000 mAs, got 0"]),
    ("serial", {"port": " ", "bauds": 9600},
     ["bauds: unknown option for driver 'serial'", 'port: expected a device path']),
    ("serial", {"port": "/dev/ttyUSB0", "baudrate": True}, ["baudrate: expected int, got True"]),
    ("replay", {"folder": "/nonexistent/frames", "bits_stored": 17, "frame_rate": -1.0},
     ["folder: expected an existing folder, got '/nonexistent/frames'",
      "frame_rate: expected 0..1000, got -1.0",
      "bits_stored: expected 0 (from the file) or 1..16"]),
    ("v4l2", {"pixel_format": "MJPG", "buffers": 1, "width": 641, "yuv_range": "tv"},
     ["pixel_format: expected one of YUYV, GREY, RGB24, got 'MJPG'",
      "buffers: expected 2..32, got 1", "yuv_range: expected limited or full, got 'tv'"]),
    ("v4l2", {"pixel_format": "GREY", "color": True}, ["color: GREY frames are monochrome"]),
    ("v4l2", {"width": 641}, ["width: YUYV needs an even width, got 641"]),
    ("simulated", {"pattern": "plaid", "fail_after": -2, "failure": "explode", "seed": -1,
                   "cine_frames": -1},
     ["pattern: expected one of phantom, bars, gradient, noise, got 'plaid'",
      "seed: expected >= 0", "cine_frames: expected >= 0", "fail_after: expected -1 (never)",
      "failure: expected one of disconnect, timeout, got 'explode'"]),
])
def test_option_problems_are_all_reported_key_by_key(
        name: str, options: dict[str, Any], problems: list[str]) -> None:
    with pytest.raises(DriverConfigError) as info:
        registry.driver_class(name).validate_options(options)
    parts = str(info.value).split("; ")
    for problem in problems:
        assert any(part.startswith(problem) for part in parts), (problem, parts)
    assert all(part.split(":", 1)[0].isidentifier() for part in parts), parts


def test_defaults_fill_in_and_ints_become_floats(tmp_path: Path) -> None:
    serial = registry.driver_class("serial").validate_options({"port": "loop://", "kvp": 80})
    assert serial == {"port": "loop://", "baudrate": 921600, "timeout_s": 0.5, "kvp": 80.0,
                      "mas": 10.0, "exposure_ms": 20.0}
    replay = registry.driver_class("replay").validate_options({"folder": str(tmp_path)})
    assert replay["loop"] is False and replay["frame_rate"] == 0.0
    simulated = registry.driver_class("simulated").validate_options({})
    assert (simulated["width"], simulated["height"], simulated["bits_stored"]) == (512, 512, 12)
    assert (simulated["pattern"], simulated["fail_after"]) == ("phantom", -1)


# -- the shared work of the public methods -----------------------------------------------------

class ScriptedDriver(Driver):
    """A driver whose device fails as the test says."""

    name = "scripted"
    option_types: ClassVar[Mapping[str, tuple[type | tuple[type, ...], Any]]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.plugged_in = True
        self.opens = 0
        self.closes = 0

    def _open(self) -> None:
        if not self.plugged_in:
            raise DeviceDisconnectedError("scripted: no such device")
        self.opens += 1

    def _close(self) -> None:
        self.closes += 1

    def _read_frame(self, deadline: float) -> Frame | None:
        if not self.plugged_in:
            raise DeviceDisconnectedError("scripted: cable pulled")
        return Frame(np.zeros((2, 2), np.uint8), 8, "MONOCHROME2", 0.0, 1.0,
                     self.next_sequence_number)


@pytest.fixture
def scripted() -> Iterator[ScriptedDriver]:
    driver = ScriptedDriver()
    driver.open()
    yield driver
    driver.close()


def test_read_before_open_is_a_state_error() -> None:
    with pytest.raises(DriverStateError, match="before open"):
        ScriptedDriver().read_frame(1.0)


def test_a_vanished_device_is_offline_until_a_read_reopens_it(scripted: ScriptedDriver) -> None:
    assert scripted.read_frame(1.0).sequence_number == 0
    scripted.plugged_in = False
    with pytest.raises(DeviceDisconnectedError, match="cable pulled"):
        scripted.read_frame(1.0)
    status = scripted.status()
    assert (status.is_open, status.online) == (True, False)
    assert status.detail == "offline: scripted: cable pulled; reopening at the next read"
    with pytest.raises(DeviceDisconnectedError, match="no such device"):
        scripted.read_frame(1.0)                        # reopen tried, still gone
    assert "no such device" in scripted.status().detail
    scripted.plugged_in = True
    frame = scripted.read_frame(1.0)
    assert frame.sequence_number == 1                   # the sequence survives a reconnect
    assert scripted.status() == DriverStatus("scripted", True, 2, 1.0, "", True)
    assert scripted.opens == 2 and scripted.closes == 2   # one failed reopen


def test_none_from_a_backend_is_a_timeout(scripted: ScriptedDriver,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scripted, "_read_frame", lambda deadline: None)
    with pytest.raises(DriverTimeoutError, match=r"scripted: no frame within 0.2 s"):
        scripted.read_frame(0.2)
    assert scripted.status().online


def test_driver_errors_are_catchable_as_their_builtins() -> None:
    assert issubclass(DriverTimeoutError, TimeoutError)
    assert issubclass(DeviceDisconnectedError, ConnectionError)
    assert issubclass(DriverUnavailableError, ImportError)
    for error in (DriverTimeoutError, DeviceDisconnectedError, DriverConfigError):
        assert issubclass(error, DriverError)
