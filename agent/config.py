"""The TOML config: frozen dataclasses, and `load_config`, which checks every key in one place.

The section and key names are a public contract (shared/design/ARCHITECTURE.md): extend, never
rename.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class AgentSection:
    ae_title: str = "MODALITY1"
    spool_dir: Path = Path("spool")          # resolved against the config file's folder
    log_level: str = "INFO"
    uid_root: str = ""                        # "" = 2.25.<uuid> UIDs


@dataclass(frozen=True)
class ListenerSection:
    host: str = "127.0.0.1"
    port: int = 11112


@dataclass(frozen=True)
class ApiSection:
    host: str = "127.0.0.1"
    port: int = 8470


@dataclass(frozen=True)
class DeviceSection:
    driver: str = "simulated"
    options: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ModalitySection:
    modality: str = "OT"
    iod: str = "secondary-capture"
    manufacturer: str = "Example Medical"
    model_name: str = "Example-1"
    device_serial_number: str = "0001"
    station_name: str = "ROOM1"
    institution_name: str = ""
    transfer_syntax: str = "explicit-little"


@dataclass(frozen=True)
class WorklistSection:
    host: str
    port: int
    called_ae: str
    refresh_s: float = 60.0


@dataclass(frozen=True)
class DestinationSection:
    name: str
    host: str
    port: int
    called_ae: str
    storage_commitment: bool = True
    commitment_timeout_s: float = 3600.0
    max_associations: int = 2


@dataclass(frozen=True)
class MppsSection:
    host: str
    port: int
    called_ae: str


@dataclass(frozen=True)
class QueueSection:
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    retention_s: float = 86400.0


@dataclass(frozen=True)
class AgentConfig:
    path: Path                                 # the file it was read from
    agent: AgentSection
    listener: ListenerSection
    api: ApiSection
    device: DeviceSection
    modality: ModalitySection
    worklist: WorklistSection | None
    destinations: tuple[DestinationSection, ...]
    mpps: MppsSection | None
    queue: QueueSection


def load_config(path: Path) -> AgentConfig:
    """Read and validate the config file.

    Raises
    ------
    ConfigError
        With every problem found, each as `file: [section] key: expected X, got Y`.
    """
    raise NotImplementedError("load_config is being written")
