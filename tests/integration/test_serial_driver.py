"""The `serial` driver against the firmware stub on a real pseudo-terminal, fault by fault.

The driver opens the pty (through a symlink, as a udev by-id link) with serial_for_url; the
stub injects each fault of RELIABILITY.md 3.12 on command. Every delivered frame is compared
pixel for pixel with the stub's phantom for its frame id, and the stub's exposure counter shows
that no repair ever cost a second exposure. Nothing here waits with sleep(): conditions are
polled with a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support.peers import wait_until

from drivers.errors import (
    DeviceDisconnectedError,
    DeviceRefusedError,
    DriverConfigError,
    DriverTimeoutError,
    FrameCorruptError,
    ProtocolError,
)
from drivers.frame import Frame
from drivers.registry import create_driver
from drivers.serial.driver import SerialDriver
from firmware_stubs.pty_host import serve
from firmware_stubs.serial_device import SerialFirmware

pytestmark = pytest.mark.integration

ROWS, COLUMNS, BITS, CHUNK = 24, 40, 12, 128
CHUNKS = -(-ROWS * COLUMNS * 2 // CHUNK)         # 15
REPLY_TIMEOUT_S = 0.2
READ_TIMEOUT_S = 3.0


def make_firmware(**kwargs: object) -> SerialFirmware:
    return SerialFirmware(rows=ROWS, columns=COLUMNS, bits_stored=BITS, chunk_size=CHUNK,
                          **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def firmware() -> SerialFirmware:
    return make_firmware()


@pytest.fixture
def link(tmp_path: Path, firmware: SerialFirmware) -> Iterator[Path]:
    path = tmp_path / "ttyXRAY"
    with serve(firmware, link=path):
        yield path


@pytest.fixture
def driver(link: Path) -> Iterator[SerialDriver]:
    driver = SerialDriver(port=str(link), timeout_s=REPLY_TIMEOUT_S, kvp=70.4, mas=8.0,
                          exposure_ms=10.0)
    driver.open()
    try:
        yield driver
    finally:
        driver.close()


def assert_exact(frame: Frame, firmware: SerialFirmware) -> None:
    frame_id = frame.device_parameters["device_frame_id"]
    assert np.array_equal(frame.pixels, firmware.expected_frame(frame_id)), \
        f"frame {frame_id} differs from the phantom"


# -- the normal case -------------------------------------------------------------------------

def test_frames_are_exact_and_carry_what_the_device_delivered(
        driver: SerialDriver, firmware: SerialFirmware) -> None:
    frames = [driver.read_frame(READ_TIMEOUT_S) for _ in range(3)]
    for index, frame in enumerate(frames):
        assert_exact(frame, firmware)
        assert frame.sequence_number == index
        assert frame.device_parameters["device_frame_id"] == index
        assert frame.bits_stored == BITS and frame.pixels.dtype == np.uint16
        # asked 70.4 kV; the generator sets whole kilovolts and reports what it delivered
        # protocol version 2: the dose-area product the device reported for this exposure
        dap = firmware.dap_centi_dgycm2(700, 800) / 100
        assert dict(frame.device_parameters) == {"kvp": 70.0, "mas": 8.0, "exposure_ms": 10.0,
                                                 "device_frame_id": index, "dap_dgycm2": dap}
        assert frame.pixel_spacing_mm == (0.15, 0.15)
    status = driver.status()
    assert (status.is_open, status.online, status.frames_read) == (True, True, 3)
    assert "XR-STUB-1 s/n STUB-0001" in status.detail
    assert firmware.counters["exposures"] == 3
    assert not any(driver.link_counters.values())


def test_the_registry_builds_it_from_options(link: Path, firmware: SerialFirmware) -> None:
    with create_driver("serial", {"port": str(link), "timeout_s": REPLY_TIMEOUT_S}) as driver:
        assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)


def test_faults_present_from_power_on_are_survived(tmp_path: Path) -> None:
    firmware = make_firmware(faults=["garbage@1:nbytes=300", "bad_crc@2", "duplicate_packet@3"])
    with serve(firmware) as path, SerialDriver(port=path, timeout_s=REPLY_TIMEOUT_S) as driver:
        assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)
        assert len(firmware.faults_fired) == 3
        counters = driver.link_counters
        assert counters["garbage_bytes"] >= 300
        assert counters["crc_errors"] == 1
        assert counters["duplicate_packets"] == 1


# -- one fault at a time, mid-session ---------------------------------------------------------

@pytest.mark.parametrize(("fault", "evidence"), [
    ("garbage:on=chunk,nbytes=200", "garbage_bytes"),
    ("garbage:on=ack", "garbage_bytes"),
    ("bad_crc:on=chunk", "chunk_resends"),
    ("bad_crc:on=ack", "retransmits"),
    ("bad_crc:on=header", "frame_resends"),
    ("drop_packet:on=chunk", "chunk_resends"),
    ("drop_packet:on=header", "frame_resends"),
    ("drop_packet:on=end", "lost_packets"),
    ("drop_packet:on=ack", "retransmits"),
    ("duplicate_packet:on=chunk", "duplicate_packets"),
    ("duplicate_packet:on=ack", "duplicate_packets"),
    ("duplicate_packet:on=header", "duplicate_packets"),
    ("truncate:on=chunk", "chunk_resends"),
    ("truncate:on=ack", "retransmits"),
    ("huge_length:on=chunk", "oversize_lengths"),
    ("corrupt_pixels", "frame_crc_errors"),
    ("stall:on=chunk,seconds=0.3", "chunk_resends"),
])
def test_each_fault_is_repaired_into_an_exact_frame(
        driver: SerialDriver, firmware: SerialFirmware, fault: str, evidence: str) -> None:
    assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)
    before = driver.link_counters
    firmware.inject(fault)
    frame = driver.read_frame(READ_TIMEOUT_S)
    assert firmware.faults_fired, "the fault never fired"
    assert_exact(frame, firmware)
    assert frame.device_parameters["device_frame_id"] == 1
    assert driver.link_counters[evidence] > before[evidence], driver.link_counters
    assert firmware.counters["exposures"] == 2          # repaired without exposing again
    assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)


def test_a_lost_ack_to_expose_does_not_expose_twice(
        driver: SerialDriver, firmware: SerialFirmware) -> None:
    firmware.inject("drop_packet", at=2, on="ack")      # ACK 1 answers ARM, ACK 2 EXPOSE
    frame = driver.read_frame(READ_TIMEOUT_S)
    (fired,) = firmware.faults_fired
    assert fired.startswith("drop_packet on ack")
    assert_exact(frame, firmware)
    assert firmware.counters["exposures"] == 1
    assert firmware.counters["replayed_commands"] == 1  # EXPOSE answered again, not redone
    assert driver.link_counters["retransmits"] == 1


def test_a_frame_that_stays_corrupt_is_dropped_never_delivered(
        driver: SerialDriver, firmware: SerialFirmware) -> None:
    firmware.inject("corrupt_pixels")                   # first chunk of the frame
    firmware.inject("corrupt_pixels", at=CHUNKS + 1)    # first chunk of its whole resend
    with pytest.raises(FrameCorruptError, match="frame 0 dropped, no image made") as info:
        driver.read_frame(READ_TIMEOUT_S)
    assert "CRC-32" in str(info.value)
    assert len(firmware.faults_fired) == 2
    assert driver.status().frames_read == 0
    assert driver.link_counters["frames_dropped"] == 1
    frame = driver.read_frame(READ_TIMEOUT_S)           # the next exposure is fine
    assert frame.sequence_number == 0 and frame.device_parameters["device_frame_id"] == 1
    assert_exact(frame, firmware)


def test_a_stalled_device_times_out_cleanly_then_recovers(
        driver: SerialDriver, firmware: SerialFirmware) -> None:
    assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)
    firmware.inject("stall", at=0)
    started = time.monotonic()
    with pytest.raises(DriverTimeoutError, match=r"no frame within 0.6 s"):
        driver.read_frame(0.6)
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 1.2, elapsed
    assert driver.status().online                       # slow is not gone
    assert firmware.counters["exposures"] == 1
    firmware.clear_faults()
    frame = driver.read_frame(READ_TIMEOUT_S)
    assert_exact(frame, firmware)
    assert frame.sequence_number == 1


def test_a_stall_during_readout_times_out_and_the_late_data_is_not_taken(
        driver: SerialDriver, firmware: SerialFirmware) -> None:
    firmware.inject("stall", on="chunk", seconds=0.8)
    with pytest.raises(DriverTimeoutError):
        driver.read_frame(0.5)
    wait_until(lambda: firmware.armed_faults == 0, 5, "the stall to have fired")
    frame = driver.read_frame(READ_TIMEOUT_S)
    assert frame.device_parameters["device_frame_id"] == 1   # not the abandoned frame 0
    assert_exact(frame, firmware)


def test_a_long_silence_mid_frame_is_waited_out_not_called_corrupt(
        driver: SerialDriver, firmware: SerialFirmware) -> None:
    firmware.inject("drop_packet", on="header")
    firmware.inject("stall", on="chunk", seconds=6 * REPLY_TIMEOUT_S)
    frame = driver.read_frame(READ_TIMEOUT_S)
    assert_exact(frame, firmware)
    # asked again after 1, 2 and 4 reply timeouts, not at every one of them
    assert driver.link_counters["frame_resends"] <= 4, driver.link_counters
    assert driver.link_counters["frames_dropped"] == 0


def test_giving_up_on_a_read_cuts_the_exposure_short(link: Path,
                                                     firmware: SerialFirmware) -> None:
    with SerialDriver(port=str(link), timeout_s=REPLY_TIMEOUT_S, mas=100.0,
                      exposure_ms=2000.0) as driver:
        with pytest.raises(DriverTimeoutError):
            driver.read_frame(0.3)
        wait_until(lambda: firmware.counters["aborted_exposures"] == 1, 5,
                   "the device to receive ABORT while exposing")
    assert firmware.counters["exposures"] == 1


# -- unplug, replug, restart -------------------------------------------------------------------

def test_disconnect_mid_frame_is_reported_then_recovered_after_replug(
        driver: SerialDriver, firmware: SerialFirmware, link: Path) -> None:
    assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)
    firmware.inject("disconnect", on="chunk")
    started = time.monotonic()
    with pytest.raises(DeviceDisconnectedError, match="the exposure was made"):
        driver.read_frame(READ_TIMEOUT_S)
    assert time.monotonic() - started < 1.0             # noticed at once, not at the timeout
    status = driver.status()
    assert (status.is_open, status.online) == (True, False)
    assert status.detail.startswith("offline: ")
    assert not link.exists() and firmware.tty_path is None
    with pytest.raises(DeviceDisconnectedError, match="cannot open"):
        driver.read_frame(READ_TIMEOUT_S)               # still unplugged: tried, reported
    firmware.replug()
    wait_until(lambda: firmware.tty_path is not None and link.exists(), 5,
               "the stub to come back on a new pty")
    frame = driver.read_frame(READ_TIMEOUT_S)
    assert_exact(frame, firmware)
    assert frame.sequence_number == 1
    assert driver.status().online
    assert driver.link_counters["reconnects"] == 1


def test_an_unplug_between_frames_is_reopened_without_an_error(
        driver: SerialDriver, firmware: SerialFirmware, link: Path) -> None:
    assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)
    firmware.unplug()
    wait_until(lambda: firmware.tty_path is None, 5, "the stub to unplug")
    firmware.replug()
    wait_until(lambda: firmware.tty_path is not None and link.exists(), 5, "the stub to return")
    frame = driver.read_frame(READ_TIMEOUT_S)
    assert_exact(frame, firmware)
    assert driver.link_counters["reconnects"] == 1
    assert firmware.counters["exposures"] == 2


def test_an_unplug_that_ends_by_itself(driver: SerialDriver, firmware: SerialFirmware,
                                       link: Path) -> None:
    firmware.unplug(seconds=0.2)
    wait_until(lambda: firmware.tty_path is None, 5, "the stub to unplug")
    wait_until(lambda: firmware.tty_path is not None and link.exists(), 5, "the stub to return")
    assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)


def test_a_device_restart_on_the_line_is_given_its_technique_again(
        driver: SerialDriver, firmware: SerialFirmware) -> None:
    assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)
    firmware.inject("restart", at=0)
    frame = driver.read_frame(READ_TIMEOUT_S)
    assert_exact(frame, firmware)
    assert frame.device_parameters["device_frame_id"] == 0   # its counter restarted
    assert frame.device_parameters["kvp"] == 70.0
    assert driver.link_counters["technique_resets"] == 1
    assert driver.link_counters["duplicate_packets"] == 0    # SEQ 0 again is not a repeat


# -- refusals and ports ------------------------------------------------------------------------

def test_an_open_interlock_is_reported_and_nothing_is_exposed(
        driver: SerialDriver, firmware: SerialFirmware) -> None:
    firmware.inject("interlock")
    with pytest.raises(DeviceRefusedError, match="refused ARM: door interlock open"):
        driver.read_frame(READ_TIMEOUT_S)
    assert firmware.counters["exposures"] == 0
    assert_exact(driver.read_frame(READ_TIMEOUT_S), firmware)


def test_a_technique_the_device_refuses_fails_open(link: Path) -> None:
    driver = SerialDriver(port=str(link), timeout_s=REPLY_TIMEOUT_S, mas=100.0, exposure_ms=10.0)
    with pytest.raises(DeviceRefusedError, match="tube current 10000 mA above 1000 mA"):
        driver.open()
    assert not driver.is_open


def test_a_port_with_nothing_answering_times_out_at_open() -> None:
    started = time.monotonic()
    driver = SerialDriver(port="loop://", timeout_s=REPLY_TIMEOUT_S)  # hears its own echo
    with pytest.raises(DriverTimeoutError, match="no answer to IDENTIFY on loop://"):
        driver.open()
    assert time.monotonic() - started < 2.0
    assert not driver.is_open


def test_a_missing_port_and_a_bad_url(tmp_path: Path) -> None:
    with pytest.raises(DeviceDisconnectedError, match="cannot open"):
        SerialDriver(port=str(tmp_path / "ttyNONE")).open()
    with pytest.raises(DriverConfigError, match="port: 'bogus://x' cannot be opened"):
        SerialDriver(port="bogus://x").open()


def test_the_same_driver_works_over_tcp_with_socket_url() -> None:
    firmware = make_firmware()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve_one() -> None:
        connection, _ = server.accept()
        with connection:
            firmware.run(connection.fileno(), stop)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        with SerialDriver(port=f"socket://127.0.0.1:{port}", timeout_s=REPLY_TIMEOUT_S) as drv:
            assert_exact(drv.read_frame(READ_TIMEOUT_S), firmware)
    finally:
        stop.set()
        thread.join(5)
        server.close()


# -- the entry point the CLI wires up as `simulate serial` ------------------------------------

def test_main_serves_until_sigterm_and_keeps_the_link(tmp_path: Path) -> None:
    link = tmp_path / "ttyXRAY"
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; from firmware_stubs.serial_device import main; "
                               f"sys.exit(main({str(link)!r}))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            slave = process.stdout.readline().strip()
            assert slave.startswith("/dev/pts/"), slave
            assert os.readlink(link) == slave
            with SerialDriver(port=str(link), timeout_s=REPLY_TIMEOUT_S) as driver:
                frame = driver.read_frame(10.0)
            assert frame.pixels.shape == (512, 512) and frame.bits_stored == 12
            process.send_signal(signal.SIGTERM)   # this PID only
            _, errors = process.communicate(timeout=10)
            assert process.returncode == 0, errors
            assert not link.exists()
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


# -- protocol versions (drivers/PROTOCOL.md §6) -------------------------------------------------

def test_version_1_firmware_keeps_working_without_dap(tmp_path: Path) -> None:
    firmware = make_firmware(protocol_version=1)
    with serve(firmware, link=tmp_path / "ttyV1"), SerialDriver(
            port=str(tmp_path / "ttyV1"), timeout_s=REPLY_TIMEOUT_S) as driver:
        frame = driver.read_frame(READ_TIMEOUT_S)
        assert_exact(frame, firmware)
        assert "dap_dgycm2" not in frame.device_parameters
        assert frame.device_parameters["kvp"] == 70.0
        assert driver.identity is not None and driver.identity.protocol_version == 1


def test_an_unknown_protocol_version_is_refused_at_open(tmp_path: Path) -> None:
    firmware = make_firmware(protocol_version=3)
    with serve(firmware, link=tmp_path / "ttyV3"):
        driver = SerialDriver(port=str(tmp_path / "ttyV3"), timeout_s=REPLY_TIMEOUT_S)
        with pytest.raises(ProtocolError, match="speaks protocol version 3; this driver "
                                                "speaks 1, 2"):
            driver.open()
        assert firmware.counters["exposures"] == 0
