"""Driver names -> classes, imported lazily; plug-ins via the entry-point group
`modality_agent.drivers` (python-can's BACKENDS table)."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from drivers.base import Driver
from drivers.errors import DriverNotFoundError, DriverUnavailableError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "modality_agent.drivers"

#: built-in drivers: name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "simulated": ("drivers.simulated", "SimulatedDriver"),
    "serial": ("drivers.serial.driver", "SerialDriver"),
    "replay": ("drivers.replay", "ReplayDriver"),
    "v4l2": ("drivers.v4l2.driver", "V4L2Driver"),
}


def _plugin_backends() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_drivers() -> list[str]:
    """Names of every driver, built in or installed as a plug-in."""
    return sorted(set(BACKENDS) | set(_plugin_backends()))


def driver_class(name: str) -> type[Driver]:
    """Import and return the class registered under `name`.

    Raises
    ------
    DriverNotFoundError
        If no driver has that name.
    DriverUnavailableError
        If its module cannot be imported (a missing SDK or optional extra).
    """
    if name in BACKENDS:
        module_name, class_name = BACKENDS[name]
    else:
        plugins = _plugin_backends()
        if name not in plugins:
            raise DriverNotFoundError(
                f"unknown driver {name!r}; known drivers: {', '.join(known_drivers())}"
            )
        module_name, _, class_name = plugins[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, OSError) as err:
        # OSError: an SDK wrapper whose shared library is missing (ctypes.CDLL)
        raise DriverUnavailableError(
            f"driver {name!r} cannot be loaded: {err}"
        ) from err
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverUnavailableError(
            f"driver {name!r}: {module_name}:{class_name} is not a Driver subclass"
        )
    return cls


def driver_availability() -> dict[str, str | None]:
    """Every known driver's name -> why it cannot work here, or None if it can.

    Like pydicom's table of pixel-data plug-ins: a missing SDK or optional extra is a reason
    to show, not a crash.
    """
    result: dict[str, str | None] = {}
    for name in known_drivers():
        try:
            result[name] = driver_class(name).unavailable_reason()
        except DriverUnavailableError as err:
            result[name] = str(err)
    return result


def create_driver(name: str, options: dict[str, Any]) -> Driver:
    """Construct (but do not open) the named driver with validated options."""
    return driver_class(name)(**options)
