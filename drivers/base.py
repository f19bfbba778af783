"""The Driver interface: the public methods do the shared work, backends write `_open`,
`_close` and `_read_frame` (python-can's BusABC/_recv_internal pattern)."""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from drivers.errors import (
    DeviceDisconnectedError,
    DriverConfigError,
    DriverError,
    DriverStateError,
    DriverTimeoutError,
)
from drivers.frame import Frame

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriverStatus:
    """What `status` shows about the device."""

    name: str
    is_open: bool
    frames_read: int
    last_frame_t_wall: float | None
    detail: str = ""
    #: open and not known to be disconnected: False after the device vanished (the driver stays
    #: open and tries to reopen the device at the next read_frame)
    online: bool = False


class Driver(abc.ABC):
    """Base class of every device driver.

    Subclasses set `name` and `option_types`, and implement `_open`, `_close` and `_read_frame`.
    Options are checked here against `option_types` before the subclass sees them.

    A `DeviceDisconnectedError` from `_read_frame` marks the device offline (see `status`); the
    next `read_frame` first calls `_reconnect` (by default `_close` then `_open`).
    """

    name: ClassVar[str] = "abstract"
    #: True for a device whose frames are made by ionising radiation (an X-ray generator): the
    #: agent then acquires only on a deliberately confirmed request from this station's own
    #: console or CLI (issue 13), never on a request a web page could forge
    emits_radiation: ClassVar[bool] = False
    #: option name -> (type or tuple of types, default); a default of `REQUIRED` marks it required
    option_types: ClassVar[Mapping[str, tuple[type | tuple[type, ...], Any]]] = {}

    REQUIRED: ClassVar[object] = object()

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = self.validate_options(options)
        self._is_open = False
        self._frames_read = 0
        self._last_frame_t_wall: float | None = None
        self._offline_reason: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this driver cannot work here (a missing SDK or optional extra), or None.

        A cheap check (no SDK import) for `registry.driver_availability`; the driver's `open`
        raises `DriverUnavailableError` with the actual import error.
        """
        return None

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Return the options with defaults filled in.

        Raises
        ------
        DriverConfigError
            Listing every unknown, missing or mistyped option.
        """
        problems: list[str] = []
        result: dict[str, Any] = {}
        for key in options:
            if key not in cls.option_types:
                known = ", ".join(sorted(cls.option_types)) or "none"
                problems.append(f"{key}: unknown option for driver {cls.name!r} (known: {known})")
        for key, (expected, default) in cls.option_types.items():
            if key not in options:
                if default is cls.REQUIRED:
                    problems.append(f"{key}: required by driver {cls.name!r}")
                else:
                    result[key] = default
                continue
            value = options[key]
            types = expected if isinstance(expected, tuple) else (expected,)
            # bool is an int in Python: only accept it where bool is asked for
            ok = isinstance(value, types) and not (
                isinstance(value, bool) and bool not in types
            )
            if float in types and isinstance(value, int) and not isinstance(value, bool):
                ok = True
                value = float(value)
            if not ok:
                names = " or ".join(t.__name__ for t in types)
                problems.append(f"{key}: expected {names}, got {value!r}")
                continue
            result[key] = value
        # range checks need every option with a value of the right type; an unknown extra key
        # does not stop them, so all problems are reported at once
        if set(result) == set(cls.option_types):
            problems.extend(cls._check_option_values(result))
        if problems:
            raise DriverConfigError("; ".join(problems))
        return result

    @classmethod
    def _check_option_values(cls, options: Mapping[str, Any]) -> list[str]:
        """Range checks beyond types; subclasses return a list of problems."""
        return []

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Open the device.

        Raises
        ------
        DriverError
            Any leaf: `DriverUnavailableError` (SDK missing), `DeviceDisconnectedError` (no such
            device), `DriverTimeoutError` (the device does not answer), ... The driver stays
            closed.
        """
        if self._is_open:
            return
        self._open()
        self._is_open = True
        self._frames_read = 0
        self._offline_reason = None
        logger.info("driver %s opened", self.name)

    def close(self) -> None:
        if not self._is_open:
            return
        try:
            self._close()
        finally:
            self._is_open = False
            self._offline_reason = None
            logger.info("driver %s closed after %d frames", self.name, self._frames_read)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._is_open

    # -- frames ----------------------------------------------------------------------------
    def read_frame(self, timeout: float) -> Frame:
        """Return the next frame.

        Raises
        ------
        DriverStateError
            If the driver is not open.
        DriverTimeoutError
            If no frame arrives within `timeout` seconds.
        DeviceDisconnectedError
            If the device vanished, or is still gone when this call tried to reopen it. The
            driver stays open and offline; the next call tries again.
        DriverError
            Other leaves, per driver: `FrameCorruptError` (a frame was dropped),
            `DeviceRefusedError`, `EndOfStreamError`, ...
        """
        if not self._is_open:
            raise DriverStateError(f"{self.name}: read_frame() before open()")
        with self._lock:
            deadline = time.monotonic() + timeout
            if self._offline_reason is not None:
                try:
                    self._reconnect(deadline)
                except DriverError as err:
                    self._mark_offline(str(err))
                    raise
                logger.info("driver %s: device back online", self.name)
                self._offline_reason = None
            try:
                frame = self._read_frame(deadline=deadline)
            except DeviceDisconnectedError as err:
                self._mark_offline(str(err))
                raise
            if frame is None:
                raise DriverTimeoutError(f"{self.name}: no frame within {timeout:.1f} s")
            self._frames_read += 1
            self._last_frame_t_wall = frame.t_wall
        return frame

    def status(self) -> DriverStatus:
        offline = self._offline_reason
        detail = self._status_detail()
        if offline is not None:
            detail = f"offline: {offline}; reopening at the next read" + (
                f" ({detail})" if detail else "")
        return DriverStatus(
            name=self.name,
            is_open=self._is_open,
            frames_read=self._frames_read,
            last_frame_t_wall=self._last_frame_t_wall,
            detail=detail,
            online=self._is_open and offline is None,
        )

    @property
    def next_sequence_number(self) -> int:
        """`Frame.sequence_number` for the frame being read: frames delivered since `open`."""
        return self._frames_read

    def _mark_offline(self, reason: str) -> None:
        if self._offline_reason is None:
            logger.warning("driver %s: device offline: %s", self.name, reason)
        self._offline_reason = reason

    def _status_detail(self) -> str:
        return ""

    def _reconnect(self, deadline: float) -> None:
        """Reopen a device that vanished; raise a `DriverError` if it is still gone.

        `deadline` is the pending read's; the default ignores it and calls `_close`, `_open`.
        """
        self._close()
        self._open()

    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def _read_frame(self, deadline: float) -> Frame | None:
        """Return a frame, or None when `deadline` (time.monotonic()) passes without one."""
