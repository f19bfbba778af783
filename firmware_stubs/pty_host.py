"""Runs a firmware stub on the master end of a pseudo-terminal (pyserial's test_pty.py idea).

The driver opens the slave path with `serial.serial_for_url`, as it would `/dev/ttyUSB0`. When
the firmware unplugs, the pty is closed (its slave path vanishes and open descriptors get EIO,
as with a pulled USB adapter) and the link, if any, is removed; at replug a new pty is made and
the link moved to it, the way a udev by-id symlink follows a replugged device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class Firmware(Protocol):
    """What the host needs of a firmware stub (firmware_stubs.serial_device.SerialFirmware)."""

    def run(self, fd: int, stop: threading.Event) -> str: ...

    def wait_for_replug(self, stop: threading.Event) -> bool: ...

    def attach(self, tty_path: str | None) -> None: ...


class PtyHost:
    """One firmware on a succession of ptys, on a daemon thread, until `stop`."""

    def __init__(self, firmware: Firmware, link: str | os.PathLike[str] | None = None) -> None:
        self.firmware = firmware
        self.link = Path(link) if link is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: tuple[int, int] | None = None
        self._path: str | None = None
        self._error: BaseException | None = None

    @property
    def path(self) -> str | None:
        """The current slave path; None while the firmware is unplugged."""
        return self._path

    def start(self) -> str:
        """Make the first pty and start serving; returns its slave path.

        Raises
        ------
        OSError
            If no pty can be made or the link cannot be written.
        """
        path = self._open_pty()
        self._thread = threading.Thread(target=self._serve, name="firmware-stub", daemon=True)
        self._thread.start()
        return path

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the firmware, close the pty, remove the link.

        Raises
        ------
        RuntimeError
            If the firmware thread died of an exception (chained), or did not stop in time.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        self._close_pty()
        if thread is not None and thread.is_alive():
            raise RuntimeError(f"firmware stub did not stop within {timeout_s} s")
        if self._error is not None:
            raise RuntimeError(f"firmware stub died: {self._error!r}") from self._error

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                assert self._fds is not None
                reason = self.firmware.run(self._fds[0], self._stop)
                if reason != "disconnect":
                    break
                logger.info("stub: unplugged from %s", self._path)
                self._close_pty()
                if not self.firmware.wait_for_replug(self._stop):
                    break
                path = self._open_pty()
                logger.info("stub: plugged in again on %s", path)
        except BaseException as err:   # reported by stop(): a test must not hang on it
            self._error = err
            logger.exception("stub: firmware thread died")

    def _open_pty(self) -> str:
        master, slave = os.openpty()
        # raw from the start: no echo, no CR/LF translation before any driver opens it
        tty.setraw(slave)
        path = os.ttyname(slave)
        # the host keeps the slave open too, so the master never reads EIO between two
        # openings by the driver
        self._fds = (master, slave)
        self._path = path
        if self.link is not None:
            temporary = self.link.with_name(self.link.name + ".new")
            temporary.unlink(missing_ok=True)
            os.symlink(path, temporary)
            os.replace(temporary, self.link)
        self.firmware.attach(path)
        return path

    def _close_pty(self) -> None:
        fds, self._fds = self._fds, None
        self._path = None
        self.firmware.attach(None)
        if self.link is not None:
            self.link.unlink(missing_ok=True)
        if fds is not None:
            for fd in fds:
                with contextlib.suppress(OSError):   # already closed: nothing to release
                    os.close(fd)


@contextlib.contextmanager
def serve(firmware: Firmware, link: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Serve `firmware` on a new pty; yields the slave tty path (also `firmware.tty_path`).

    With `link`, a symlink there always points at the current pty (removed while unplugged).

    Raises
    ------
    RuntimeError
        On exit, if the firmware thread died of an exception.
    """
    host = PtyHost(firmware, link)
    path = host.start()
    try:
        yield path
    finally:
        host.stop()
