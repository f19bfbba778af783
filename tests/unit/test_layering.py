"""Dependencies point one way (ARCHITECTURE.md, module map): checked on every import statement."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: (package or module prefix, imports it must never make)
FORBIDDEN: list[tuple[str, tuple[str, ...]]] = [
    ("drivers", ("agent", "pydicom", "pynetdicom")),
    ("firmware_stubs", ("agent", "drivers", "pydicom", "pynetdicom")),
    ("agent.iod", ("agent.net", "agent.queue", "agent.forwarder", "agent.listener",
                   "agent.daemon", "agent.api", "agent.cli", "pynetdicom")),
    ("agent.queue", ("pydicom", "pynetdicom", "agent.iod", "agent.net", "drivers")),
    ("agent.records", ("agent.", "drivers", "pydicom", "pynetdicom")),
    ("agent.errors", ("agent.", "drivers", "pydicom", "pynetdicom")),
    ("agent.implementation", ("agent.", "drivers", "pydicom", "pynetdicom")),
    ("agent.config", ("agent.iod", "agent.net", "agent.queue", "drivers", "pydicom",
                      "pynetdicom")),
    ("agent.net", ("agent.queue", "agent.iod", "agent.daemon", "agent.cli", "drivers")),
    ("agent.worklist", ("agent.queue", "agent.daemon", "agent.api", "agent.cli", "drivers")),
    ("agent.mpps", ("agent.daemon", "agent.api", "agent.cli", "agent.acquisition", "drivers")),
    ("agent.procedures", ("agent.daemon", "agent.api", "agent.cli", "drivers", "pynetdicom")),
    # the API stands on the station's protocol only: never the daemon or the parts it wires
    # (issue 13: api.py and daemon.py imported each other)
    ("agent.api", ("agent.daemon", "agent.cli", "agent.forwarder", "agent.listener",
                   "agent.queue", "agent.acquisition", "agent.worklist", "drivers", "pynetdicom")),
    ("agent.station", ("agent.daemon", "agent.api", "agent.cli")),
    ("agent.daemon", ("agent.cli",)),
]
#: agent/ reaches drivers only through the registry (plus the plain Frame/Driver/error types)
AGENT_MAY_IMPORT_FROM_DRIVERS = {"drivers.registry", "drivers.base", "drivers.errors",
                                 "drivers.frame", "drivers.simulated", "drivers.png"}
#: agent.watchfolder decodes dropped PNG files with drivers.png (pure, no hardware)
AGENT_DRIVER_IMPORTERS = {"agent.acquisition", "agent.daemon", "agent.watchfolder"}
#: the IOD builder takes Frames: a plain record, no driver code (STYLE.md (c))
FRAME_ONLY = {"drivers.frame"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (absolute imports keep this honest)"
            names.append(node.module or "")
    return names


SOURCES = sorted(p for pkg in ("agent", "drivers", "firmware_stubs")
                 for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    module = module_name(path)
    imported = imports_of(path)
    for prefix, banned in FORBIDDEN:
        if module == prefix or module.startswith(prefix + "."):
            bad = [name for name in imported
                   if any(name == b.rstrip(".") or name.startswith(b if b.endswith(".")
                                                                  else b + ".")
                          or name == b for b in banned)]
            assert not bad, f"{module} must not import {bad}"
    if module.startswith("agent"):
        from_drivers = [n for n in imported if n == "drivers" or n.startswith("drivers.")]
        if from_drivers and not set(from_drivers) <= FRAME_ONLY:
            assert module in AGENT_DRIVER_IMPORTERS, \
                f"{module} imports {from_drivers}: only agent.acquisition touches drivers"
            assert set(from_drivers) <= AGENT_MAY_IMPORT_FROM_DRIVERS, from_drivers


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pydicom\nfrom agent.errors import AgentError\n")
    assert imports_of(bad) == ["pydicom", "agent.errors"]
