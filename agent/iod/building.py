"""The safety net behind the checks while a module is written: pydicom refused a value (every
element is created with validation RAISE, see agent.iod.valuerep.put)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agent.errors import IODError
from agent.iod.iods import MODULES

#: modules whose values are patient data: pydicom's message may quote the value, and a
#: patient's value must not reach a log (STYLE.md, Logging)
_PHI_MODULES = frozenset({"Patient", "Patient Study"})


@contextmanager
def building(module: str) -> Iterator[None]:
    """Turn a ValueError from pydicom while writing `module` (a key of
    agent.iod.iods.MODULES, or a title) into an IODError naming the module."""
    title = MODULES[module].title if module in MODULES else module
    try:
        yield
    except ValueError as err:
        if isinstance(err, IODError):
            raise
        detail = "" if title in _PHI_MODULES else f": {err}"
        raise IODError(f"{title}: pydicom rejected a value{detail}") from err
