"""Exceptions raised by drivers. drivers/ cannot import agent/, so this is its own hierarchy."""


class DriverError(Exception):
    """Root of everything a driver raises on purpose."""


class DriverConfigError(DriverError, ValueError):
    """A driver option is missing or has a bad value; the message names the option."""


class DriverNotFoundError(DriverError, LookupError):
    """No driver is registered under the requested name."""


class DriverUnavailableError(DriverError, ImportError):
    """The driver is known but its module or SDK cannot be imported here."""


class DriverStateError(DriverError, RuntimeError):
    """The driver was used in the wrong state (for example read before open)."""


class DriverTimeoutError(DriverError, TimeoutError):
    """No frame arrived within the timeout."""


class DeviceDisconnectedError(DriverError, ConnectionError):
    """The device vanished (port closed, cable pulled)."""


class DeviceRefusedError(DriverError, RuntimeError):
    """The device answered a command with a refusal (a NAK); the message carries its reason."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        #: the device's refusal code, if it gave one (serial: drivers/PROTOCOL.md, NAK codes)
        self.code = code


class ProtocolError(DriverError, ValueError):
    """Bytes from the device break the wire protocol (a malformed message or frame)."""


class FrameCorruptError(DriverError, ValueError):
    """A frame failed its checks and could not be recovered: it was dropped, never delivered."""


class EndOfStreamError(DriverError, EOFError):
    """A finite source (the replay folder) has no more frames."""
