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
