"""The TOML config: frozen dataclasses, and `load_config`, which checks every key in one place.

The section and key names are a public contract (shared/design/ARCHITECTURE.md): extend, never
rename.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import urllib.parse
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from agent.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


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
    tls: bool = False                         # only TLS associations, our [tls] identity
    # the client's certificate must name the address it connects from (agent.net.tls)
    verify_hostname: bool = True


@dataclass(frozen=True)
class ApiSection:
    host: str = "127.0.0.1"
    port: int = 8470
    # the bearer token the CLI sends; load_config makes it absolute, absent = <spool_dir>/api-token
    token_file: Path = Path("api-token")
    max_frames: int = 100                     # frames one acquire request may ask for
    # folders `import` through the API may read from; () = the API refuses `import`
    import_folders: tuple[Path, ...] = ()
    max_import_files: int = 1000              # files one import request may queue
    max_connections: int = 32                 # HTTP connections held open at once
    idle_timeout_s: float = 10.0              # an HTTP connection idle this long is closed
    # Host header names answered besides the localhost forms and `host` (lower case): a page on
    # another name reaching us through DNS rebinding is refused
    allowed_hosts: tuple[str, ...] = ()


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
    # DX: Patient Orientation (0020,0020), row and column direction, e.g. ("L", "F")
    patient_orientation: tuple[str, ...] = ()
    # Anatomic Region Sequence item (code value, coding scheme, meaning); video-photographic
    # needs it
    anatomic_region: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorklistSection:
    host: str
    port: int
    called_ae: str
    refresh_s: float = 60.0
    max_results: int = 500                    # more: C-CANCEL, shown as "more than N"
    days_before: int = 0                      # SPS Start Date range around today
    days_after: int = 0
    timeout_s: float = 20.0                   # total deadline for one worklist refresh
    # used to decode a response without (0008,0005); () refuses non-ASCII text instead
    fallback_charsets: tuple[str, ...] = ("ISO_IR 192", "ISO_IR 100")
    tls: bool = False                         # DICOM TLS with our [tls] identity, never plaintext
    verify_hostname: bool = True              # the RIS certificate must name `host`
    # the broad query matches Scheduled Station AE Title = [agent] ae_title; false for a RIS
    # that schedules by modality only
    filter_station_ae: bool = True
    filter_modality: bool = True              # ... and Modality = [modality] modality


@dataclass(frozen=True)
class DestinationSection:
    name: str
    host: str = ""                          # kind "dimse": required
    port: int = 0                           # kind "dimse": required
    called_ae: str = ""                     # kind "dimse": required
    storage_commitment: bool = True
    commitment_timeout_s: float = 3600.0
    #: 3 measured best on 2 cores (bench send): each is a process, see agent.net.store_process
    max_associations: int = 3
    dimse_timeout_s: float = 60.0           # a response or PDU later than this: abort, resend
    commitment_report_wait_s: float = 0.0   # keep the association open this long for a report
    tls: bool = False                       # DICOM TLS with our [tls] identity, never plaintext
    verify_hostname: bool = True            # the archive's certificate must name `host`
    kind: str = "dimse"                     # one of DESTINATION_KINDS: "dimse" | "stow-rs"
    # kind "stow-rs": the DICOMweb base URL (http or https), e.g. "https://pacs/dicom-web";
    # instances go to <url>/studies, HTTPS is verified against [tls] ca_file
    url: str = ""
    token_file: Path | None = None          # (stow-rs) bearer token, one line, owner-only
    credentials_file: Path | None = None    # (stow-rs) basic auth "user:password", owner-only
    # (stow-rs) confirm each instance by a QIDO-RS lookup before it counts as committed (the
    # DICOMweb stand-in for Storage Commitment); false: delivered = done
    verify: bool = False
    max_request_mb: int = 64                # (stow-rs) instances per request up to this size
    request_timeout_s: float = 120.0        # (stow-rs) one HTTP request, connect to response
    # archive group: an object goes to one healthy member of each group, tried in the order
    # of [[destinations]]; "" = not grouped, gets every object
    group: str = ""


@dataclass(frozen=True)
class MppsSection:
    host: str
    port: int
    called_ae: str
    tls: bool = False
    verify_hostname: bool = True


@dataclass(frozen=True)
class TlsSection:
    """This station's DICOM TLS identity (PS3.15 Annex B); paths are absolute after loading."""

    certificate: Path                   # our certificate, PEM (chain allowed)
    private_key: Path                   # its key, PEM, unencrypted, readable by its owner only
    ca_file: Path                       # PEM bundle of the CAs trusted for every peer
    profile: str = "bcp195-nd"          # one of TLS_PROFILES


@dataclass(frozen=True)
class AuditSection:
    """Where DICOM audit messages (PS3.15 A.5) go: an audit record repository over syslog."""

    host: str
    port: int
    transport: str = "tls"              # one of AUDIT_TRANSPORTS; tls uses the [tls] identity
    verify_hostname: bool = True        # (tls) the repository's certificate must name `host`
    # the oldest undelivered message older than this is an error in status and the console
    backlog_alert_s: float = 3600.0
    # (udp) a larger datagram is held in the spool, never truncated (RFC 5426 section 3.2)
    udp_max_bytes: int = 8192
    retry_initial_s: float = 1.0        # first wait after the repository could not be reached
    retry_max_s: float = 60.0           # the wait doubles up to this


@dataclass(frozen=True)
class WatchFolderSection:
    path: Path                          # resolved against the config file's folder
    settle_s: float = 1.0               # unchanged this long = completely written
    after_import: str = "move"          # move (to done/) | delete
    use_close_events: bool = True       # also take a file when its writer closes it
    rescan_s: float = 5.0               # look again (a full spool, missed events)
    # done/ and rejected/ hold patient data: kept this long; load_config: absent = [queue]'s
    retention_s: float = 86400.0
    max_file_mb: int = 2048             # a larger dropped file is rejected without being read


@dataclass(frozen=True)
class QueueSection:
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    retention_s: float = 86400.0
    min_free_mb: float = 512.0               # capture stops before the spool's disk has less


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
    watch_folder: WatchFolderSection | None = None
    tls: TlsSection | None = None             # None: no [tls]; then no section may set tls = true
    audit: AuditSection | None = None         # None: no [audit], no audit trail


KNOWN_IODS: tuple[str, ...] = (
    "secondary-capture", "multiframe-grayscale-byte-sc", "multiframe-grayscale-word-sc",
    "multiframe-true-color-sc", "dx", "video-photographic",
)
"""Values accepted for `[modality] iod` (the same names as agent.iod.KNOWN_IODS: config does
not import the IOD builder; a unit test keeps the two equal)."""

KNOWN_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "explicit-little", "rle", "jpeg-ls-lossless", "jpeg2000-lossless",
)
"""Values accepted for `[modality] transfer_syntax`; whether the encoder is installed here is
checked at start (check-config)."""

TLS_PROFILES: tuple[str, ...] = ("bcp195-nd", "bcp195", "bcp195-extended")
"""Values accepted for `[tls] profile`: PS3.15 B.10 Non-Downgrading BCP 195 (the default), B.9 BCP
195, B.11 Extended BCP 195 (agent.net.tls builds them; config does not import the network)."""

AUDIT_TRANSPORTS: tuple[str, ...] = ("tls", "tcp", "udp")
"""Values accepted for `[audit] transport`: syslog over TLS (RFC 5425, PS3.15 A.6), over TCP with
octet counting (RFC 6587) or over UDP (RFC 5426, PS3.15 A.7)."""

DESTINATION_KINDS: tuple[str, ...] = ("dimse", "stow-rs")
"""Values accepted for `[[destinations]] kind`: DIMSE C-STORE, or DICOMweb STOW-RS (PS3.18 10.5)."""

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")

CONFIG_PATH_ENV = "MODALITY_AGENT_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/modality-agent/agent.toml")

# A UID is at most 64 characters (PS3.5 9.1); 40 for the root leaves 24 for the suffixes that
# make study, series and instance UIDs unique.
_UID_ROOT_MAX_LEN = 40
_UID_ROOT_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
# (0008,0060) Modality is CS: upper case, digits, space and underscore (PS3.5 6.2).
_MODALITY_RE = re.compile(r"[A-Z0-9_ ]{1,16}")
# Driver names are entry-point names and module-ish identifiers; keep them boring.
_DRIVER_RE = re.compile(r"[a-z0-9_-]+")
_DESTINATION_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_GROUP_NAME_RE = re.compile(r"[A-Za-z0-9_-]*")
# Long values would drown the message; the key and the expectation already locate the problem.
_SHOW_MAX_CHARS = 40


def default_config_path() -> Path:
    """The config file to read when none is given on the command line.

    Returns
    -------
    Path
        ``$MODALITY_AGENT_CONFIG`` if set and non-empty, else ``/etc/modality-agent/agent.toml``.

    Raises
    ------
    Nothing
        The file is neither read nor checked here; `load_config` reports a missing file.
    """
    # An empty value is what `MODALITY_AGENT_CONFIG= modality-agent ...` sets to clear it; treating
    # it as "." would make the agent try to read a directory.
    from_env = os.environ.get(CONFIG_PATH_ENV, "")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> AgentConfig:
    """Read and validate the config file.

    Every key of every section is checked and every problem is collected before raising, so one
    edit-and-restart cycle fixes them all. Relative paths are resolved against the folder of the
    config file; nothing on disk is created or touched.

    Parameters
    ----------
    path
        The TOML file; relative to the current directory if not absolute.

    Returns
    -------
    AgentConfig
        Frozen, with defaults filled in, AE titles stripped and paths absolute.

    Raises
    ------
    ConfigError
        If the file cannot be read or is not TOML (one problem naming the file, with the line and
        column for a syntax error), or if any value is invalid: one problem per key, each as
        ``<file name>: [section] key: expected X, got Y``.
    """
    path = Path(path).absolute()
    document = _read_toml(path)
    problems = _Problems(path.name)
    config = _check_document(document, path, problems)
    if problems.lines or config is None:
        raise ConfigError(problems.lines)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError([f"{path}: cannot read config file: {err.strerror or err}"]) from err
    try:
        # utf-8-sig: editors on Windows prepend a BOM, which TOML parsers otherwise reject.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            [f"{path}: not UTF-8 (byte {err.start} is {raw[err.start]:#04x}); TOML files are UTF-8"]
        ) from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # The message already carries "(at line L, column C)".
        raise ConfigError([f"{path}: not valid TOML: {err}"]) from err
    except ValueError as err:
        # An integer longer than Python's int/str conversion limit escapes tomllib as ValueError.
        raise ConfigError([f"{path}: not valid TOML: {err}"]) from err
    except RecursionError as err:
        raise ConfigError([f"{path}: not valid TOML: arrays or tables nested too deeply"]) from err


class _Problems:
    """Collects problems as `file: where: expected X, got Y` lines."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self.lines: list[str] = []

    def add(self, where: str, expected: str, got: str) -> None:
        self.lines.append(f"{self.file_name}: {where}: expected {expected}, got {got}")


class _Invalid(Exception):
    """Raised by a check's `convert`; `note` says why when the value alone does not show it."""

    def __init__(self, note: str = "") -> None:
        super().__init__(note)
        self.note = note


@dataclass(frozen=True)
class _Check:
    expected: str
    convert: Callable[[Any], Any]       # returns the value to store, or raises _Invalid


_MISSING: Any = object()                # a required key without a value
_INVALID: Any = object()                # a value already reported as a problem


def _show(value: Any) -> str:
    """The value as it would be written in TOML, so the user can find it in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value[:_SHOW_MAX_CHARS]
        # Escape so a problem stays on one line and invisible characters become visible.
        escaped = "".join(
            "\\" + char if char in '"\\' else char if char.isprintable() else f"\\u{ord(char):04x}"
            for char in text
        )
        return f'"{escaped}"' + ("..." if len(value) > _SHOW_MAX_CHARS else "")
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        digits = str(value)
        return digits if len(digits) <= 20 else f"an integer of {len(digits)} digits"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, datetime.datetime):
        return f"the date-time {value.isoformat()}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, datetime.time):
        return f"the time {value.isoformat()}"
    return type(value).__name__


# --- checks: each knows what it expects and turns a TOML value into the stored value ----------


def _integer(low: int, high: int) -> _Check:
    def convert(value: Any) -> int:
        # bool first: isinstance(True, int) is True, and `port = true` is a typo, not port 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid()
        if not low <= value <= high:
            raise _Invalid()
        return value

    return _Check(f"an integer {low}..{high}", convert)


def _number(low: float, high: float) -> _Check:
    """A number within [low, high]: both ends finite, so no key takes 1e-6 s (a loop that burns a
    core) or 1e300 s (an overflow in `now + delay`) (issue 13, finding 11)."""

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid()
        try:
            number = float(value)
        except OverflowError as err:
            raise _Invalid("too large") from err
        # NaN compares false both ways, so the range test also refuses it; inf is out of range.
        if not low <= number <= high:
            raise _Invalid()
        return number

    return _Check(f"a number {_plain(low)}..{_plain(high)}", convert)


def _plain(number: float) -> str:
    """A range end as a service engineer writes it: 31536000, not 3.1536e+07."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def _convert_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid()
    return value


_BOOL = _Check("true or false", _convert_bool)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid()
    return value


def _convert_ae_title(value: Any) -> str:
    text = _string(value)
    # PS3.5 6.2 AE: leading and trailing spaces are not significant; 16 characters of the default
    # repertoire (ASCII) without backslash or control characters; all spaces is "no title".
    stripped = text.strip(" ")
    if not stripped:
        raise _Invalid("empty or all spaces")
    if len(stripped) > 16:
        raise _Invalid(f"{len(stripped)} characters")
    if "\\" in stripped:
        raise _Invalid("contains a backslash")
    if not (stripped.isascii() and stripped.isprintable()):
        raise _Invalid("contains a control or non-ASCII character")
    return stripped


_AE_TITLE = _Check(
    "an AE title: 1..16 printable ASCII characters, no backslash, not all spaces",
    _convert_ae_title,
)


def _convert_host(value: Any) -> str:
    text = _string(value)
    if not text or any(char.isspace() or not char.isprintable() for char in text):
        raise _Invalid()
    return text


_HOST = _Check("a host name or IP address (non-empty, no whitespace)", _convert_host)


def _convert_http_url(value: Any) -> str:
    text = _string(value)
    if any(char.isspace() or not char.isprintable() for char in text):
        raise _Invalid("contains whitespace or a control character")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid()
    if parts.username is not None or parts.password is not None:
        # a password in the config would end up in logs and `status`: use credentials_file
        raise _Invalid("credentials in the URL; use token_file or credentials_file")
    if parts.query or parts.fragment:
        raise _Invalid("has a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise _Invalid("port out of range") from None
    return text.rstrip("/")


_HTTP_URL = _Check('an http:// or https:// URL of the DICOMweb service, e.g. '
                   '"https://pacs.example/dicom-web"', _convert_http_url)
_PORT = _integer(1, 65535)


def _dicom_text(max_chars: int, vr: str) -> _Check:
    def convert(value: Any) -> str:
        # LO and SH (PS3.5 6.2): leading/trailing spaces are padding, backslash separates values.
        text = _string(value).strip(" ")
        if len(text) > max_chars:
            raise _Invalid(f"{len(text)} characters")
        if "\\" in text:
            raise _Invalid("contains a backslash")
        if not text.isprintable():
            raise _Invalid("contains a control character")
        return text

    return _Check(
        f"a string of at most {max_chars} characters, no backslash or control characters "
        f"(DICOM {vr})",
        convert,
    )


def _one_of(choices: tuple[str, ...]) -> _Check:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Invalid()
        return value

    return _Check("one of " + ", ".join(f'"{choice}"' for choice in choices), convert)


def _matching(pattern: re.Pattern[str], expected: str) -> _Check:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _Invalid()
        return value

    return _Check(expected, convert)


def _convert_modality(value: Any) -> str:
    # CS: leading and trailing spaces are not significant (PS3.5 6.2).
    text = _string(value).strip(" ")
    if not _MODALITY_RE.fullmatch(text):
        raise _Invalid()
    return text


_MODALITY = _Check(
    'a DICOM modality code: 1..16 of A-Z 0-9 _ and space, e.g. "OT", "DX"', _convert_modality
)


def _convert_uid_root(value: Any) -> str:
    text = _string(value)
    if text == "":
        return text
    if len(text) > _UID_ROOT_MAX_LEN:
        raise _Invalid(f"{len(text)} characters")
    if not _UID_ROOT_RE.fullmatch(text):
        raise _Invalid()
    return text


_UID_ROOT = _Check(
    f'"" or a UID root: digits and dots, at most {_UID_ROOT_MAX_LEN} characters, no component '
    'with a leading zero, not ending with a dot, e.g. "1.2.826.0.1.3680043.10.1234"',
    _convert_uid_root,
)


def _convert_path(value: Any) -> Path:
    text = _string(value)
    if not text or "\x00" in text:
        raise _Invalid()
    if text.startswith("~"):
        # The daemon runs as a service user; "~" would silently become a folder named "~".
        raise _Invalid("~ is not expanded")
    return Path(text)


_PATH = _Check(
    "a path, absolute or relative to the config file's folder (non-empty)", _convert_path
)


def _convert_path_list(value: Any) -> tuple[Path, ...]:
    if not isinstance(value, list):
        raise _Invalid()
    paths = []
    for number, item in enumerate(value, start=1):
        try:
            paths.append(_convert_path(item))
        except _Invalid as err:
            # the array is shown by its length; say which item is wrong, and why if known
            note = f"#{number}: {err.note}" if err.note else f"#{number} is not a path"
            raise _Invalid(note) from None
    return tuple(paths)


_PATH_LIST = _Check(
    "a list of paths, absolute or relative to the config file's folder (non-empty strings)",
    _convert_path_list,
)


def _convert_host_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid()
    hosts = []
    for number, item in enumerate(value, start=1):
        try:
            host = _convert_host(item)
        except _Invalid:
            raise _Invalid(f"#{number} is not a host name") from None
        if "/" in host:
            # a Host header never holds "/"; a URL pasted here would never match
            raise _Invalid(f"#{number} is not a host name")
        # host names are case-insensitive (RFC 3986 3.2.2); the API compares lower case
        hosts.append(host.lower())
    return tuple(hosts)


_HOST_LIST = _Check(
    'a list of host names (non-empty, no whitespace, no "/"), e.g. ["modality1.ward.example"]',
    _convert_host_list,
)


def _convert_options(value: Any) -> MappingProxyType[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid()
    # The driver checks its own options when it is built (drivers/base.py); here they only
    # become read-only.
    return MappingProxyType(value)


_OPTIONS = _Check("a table ([device.options])", _convert_options)


# --- sections -------------------------------------------------------------------------------


_SectionT = TypeVar("_SectionT", bound="DataclassInstance")


class _Table(Generic[_SectionT]):
    """One TOML table being turned into one section dataclass.

    Defaults come from the dataclass fields, so they are written down once.
    """

    def __init__(
        self, problems: _Problems, label: str, table: dict[str, Any], cls: type[_SectionT]
    ) -> None:
        self.problems = problems
        self.label = label
        self.table = table
        self.cls = cls
        self.values: dict[str, Any] = {}
        self.valid = True

    def _default(self, key: str) -> Any:
        for item in fields(self.cls):
            if item.name == key:
                if item.default is not MISSING:
                    return item.default
                if item.default_factory is not MISSING:
                    return item.default_factory()
                return _MISSING
        raise AssertionError(f"{self.cls.__name__} has no field {key}")

    def take(self, key: str, check: _Check) -> Any:
        """Check `key`, remember the value for `build`, and return it (or `_INVALID`)."""
        if key not in self.table:
            value = self._default(key)
            if value is _MISSING:
                self.report(key, check.expected, "nothing (the key is required)")
                value = _INVALID
        else:
            raw = self.table[key]
            try:
                value = check.convert(raw)
            except _Invalid as err:
                got = _show(raw) + (f" ({err.note})" if err.note else "")
                self.report(key, check.expected, got)
                value = _INVALID
        self.values[key] = value
        return value

    def report(self, key: str, expected: str, got: str) -> None:
        self.valid = False
        self.problems.add(f"{self.label} {key}", expected, got)

    def build(self) -> _SectionT | None:
        """The dataclass, or None if any key was invalid; unknown keys are problems too."""
        known = [item.name for item in fields(self.cls)]
        for key in self.table:
            if key not in known:
                self.report(key, f"one of the keys ({', '.join(known)})", "an unknown key")
        missed = [key for key in known if key not in self.values]
        assert not missed, f"{self.cls.__name__}: keys never checked: {missed}"
        return self.cls(**self.values) if self.valid else None


def _section_table(
    document: dict[str, Any], name: str, problems: _Problems
) -> dict[str, Any] | None:
    """The table for section `name`, {} if absent, None if it is not a table."""
    table = document.get(name, {})
    if not isinstance(table, dict):
        problems.add(f"[{name}]", "a table", _show(table))
        return None
    return table


_SECTIONS: tuple[str, ...] = (
    # "audit" before "destinations": the listing in the unknown-section message keeps its tail
    "agent", "listener", "api", "device", "modality", "worklist", "audit", "destinations", "mpps",
    "queue", "watch_folder", "tls",
)


def _check_document(
    document: dict[str, Any], path: Path, problems: _Problems
) -> AgentConfig | None:
    known = ", ".join(
        f"[[{name}]]" if name == "destinations" else f"[{name}]" for name in _SECTIONS
    )
    for name, value in document.items():
        if name not in _SECTIONS:
            where = f"[{name}]" if isinstance(value, dict) else name
            got = "an unknown section" if isinstance(value, dict) else "an unknown top-level key"
            problems.add(where, f"one of the sections ({known})", got)

    config_dir = path.parent
    agent = _check_agent(_section_table(document, "agent", problems), problems, config_dir)
    listener = _check_endpoint(
        _section_table(document, "listener", problems), "listener", ListenerSection, problems
    )
    spool_dir = agent.spool_dir if agent is not None else config_dir / AgentSection.spool_dir
    api = _check_api(_section_table(document, "api", problems), problems, config_dir, spool_dir)
    device = _check_device(_section_table(document, "device", problems), problems)
    modality = _check_modality(_section_table(document, "modality", problems), problems)
    worklist = None
    if "worklist" in document:
        worklist = _check_worklist(_section_table(document, "worklist", problems), problems)
    destinations = _check_destinations(document.get("destinations"), problems, config_dir)
    mpps = None
    if "mpps" in document:
        mpps = _check_mpps(_section_table(document, "mpps", problems), problems)
    queue = _check_queue(_section_table(document, "queue", problems), problems)
    watch_folder = None
    if "watch_folder" in document:
        retention_s = queue.retention_s if queue is not None else QueueSection.retention_s
        watch_folder = _check_watch_folder(
            _section_table(document, "watch_folder", problems), problems, config_dir, retention_s)
    tls = None
    if "tls" in document:
        tls = _check_tls(_section_table(document, "tls", problems), problems, config_dir)
    else:
        _require_tls_section(listener, worklist, destinations, mpps, problems)
    audit = None
    if "audit" in document:
        audit = _check_audit(_section_table(document, "audit", problems), problems)
        if audit is not None and audit.transport == "tls" and "tls" not in document:
            # syslog over TLS presents this station's certificate: without one, never plaintext
            problems.add("[audit] transport",
                         'a [tls] section (certificate, private_key, ca_file) when transport = '
                         '"tls", or transport = "tcp" / "udp"', "no [tls] section")

    # Each section is None only if it had a problem; the explicit checks are for the type checker.
    if (
        problems.lines
        or agent is None
        or listener is None
        or api is None
        or device is None
        or modality is None
        or queue is None
    ):
        return None
    return AgentConfig(
        path=path,
        agent=agent,
        listener=listener,
        api=api,
        device=device,
        modality=modality,
        worklist=worklist,
        destinations=destinations,
        mpps=mpps,
        queue=queue,
        watch_folder=watch_folder,
        tls=tls,
        audit=audit,
    )


def _check_agent(
    table: dict[str, Any] | None, problems: _Problems, config_dir: Path
) -> AgentSection | None:
    if table is None:
        return None
    section = _Table(problems, "[agent]", table, AgentSection)
    section.take("ae_title", _AE_TITLE)
    spool_dir = section.take("spool_dir", _PATH)
    if spool_dir is not _INVALID:
        # Relative to the config file, not the working directory, which differs between a shell
        # and systemd. Joining leaves an absolute path as it is. No resolve(): it would follow
        # symlinks on disk, and this function does not touch the file system beyond the file.
        section.values["spool_dir"] = config_dir / spool_dir
    section.take("log_level", _one_of(LOG_LEVELS))
    section.take("uid_root", _UID_ROOT)
    return section.build()


def _check_endpoint(
    table: dict[str, Any] | None, name: str, cls: type[ListenerSection], problems: _Problems
) -> ListenerSection | None:
    if table is None:
        return None
    section = _Table(problems, f"[{name}]", table, cls)
    section.take("host", _HOST)
    section.take("port", _PORT)
    section.take("tls", _BOOL)
    section.take("verify_hostname", _BOOL)
    return section.build()


def _check_tls(
    table: dict[str, Any] | None, problems: _Problems, config_dir: Path
) -> TlsSection | None:
    if table is None:
        return None
    section = _Table(problems, "[tls]", table, TlsSection)
    for key in ("certificate", "private_key", "ca_file"):
        path = section.take(key, _PATH)
        if path is not _INVALID:
            section.values[key] = config_dir / path
    section.take("profile", _one_of(TLS_PROFILES))
    return section.build()


def _require_tls_section(
    listener: ListenerSection | None,
    worklist: WorklistSection | None,
    destinations: tuple[DestinationSection, ...],
    mpps: MppsSection | None,
    problems: _Problems,
) -> None:
    """`tls = true` without a `[tls]` identity: reported here, never a silent plaintext path."""
    labelled: list[tuple[str, Any]] = [("[listener]", listener), ("[worklist]", worklist)]
    labelled += [(f"[[destinations]] #{n}", d) for n, d in enumerate(destinations, start=1)]
    labelled.append(("[mpps]", mpps))
    for label, section in labelled:
        if section is not None and section.tls:
            problems.add(f"{label} tls",
                         "a [tls] section (certificate, private_key, ca_file) when tls = true",
                         "no [tls] section")


def _check_audit(table: dict[str, Any] | None, problems: _Problems) -> AuditSection | None:
    if table is None:
        return None
    section = _Table(problems, "[audit]", table, AuditSection)
    section.take("host", _HOST)
    section.take("port", _PORT)
    section.take("transport", _one_of(AUDIT_TRANSPORTS))
    section.take("verify_hostname", _BOOL)
    section.take("backlog_alert_s", _number(10, 30 * 86_400))
    # 480 octets: what every IPv4 receiver must take; 65507: the largest UDP/IPv4 payload
    section.take("udp_max_bytes", _integer(480, 65_507))
    initial = section.take("retry_initial_s", _number(0.1, 3600))
    maximum = section.take("retry_max_s", _number(0.1, 3600))
    if initial is not _INVALID and maximum is not _INVALID and maximum < initial:
        section.report("retry_max_s", f"a number >= retry_initial_s ({initial:g})",
                       _show(table.get("retry_max_s", maximum)))
    return section.build()


def _check_api(
    table: dict[str, Any] | None, problems: _Problems, config_dir: Path, spool_dir: Path
) -> ApiSection | None:
    if table is None:
        return None
    section = _Table(problems, "[api]", table, ApiSection)
    section.take("host", _HOST)
    section.take("port", _PORT)
    token_file = section.take("token_file", _PATH)
    if "token_file" not in table:
        # beside the queue: the one folder the service user owns and nobody else may read
        section.values["token_file"] = spool_dir / "api-token"
    elif token_file is not _INVALID:
        section.values["token_file"] = config_dir / token_file
    # 10,000 frames of 512x512x2 bytes are 5 GB of spool for one unauthenticated click
    section.take("max_frames", _integer(1, 10_000))
    folders = section.take("import_folders", _PATH_LIST)
    if folders is not _INVALID:
        section.values["import_folders"] = tuple(config_dir / folder for folder in folders)
    section.take("max_import_files", _integer(1, 100_000))
    # at least 4: the console polls while the CLI waits and another acquires
    section.take("max_connections", _integer(4, 1024))
    section.take("idle_timeout_s", _number(1, 300))
    section.take("allowed_hosts", _HOST_LIST)
    return section.build()


def _check_device(table: dict[str, Any] | None, problems: _Problems) -> DeviceSection | None:
    if table is None:
        return None
    section = _Table(problems, "[device]", table, DeviceSection)
    section.take(
        "driver", _matching(_DRIVER_RE, 'a driver name of a-z 0-9 _ -, e.g. "simulated"')
    )
    section.take("options", _OPTIONS)
    return section.build()


def _check_modality(table: dict[str, Any] | None, problems: _Problems) -> ModalitySection | None:
    if table is None:
        return None
    section = _Table(problems, "[modality]", table, ModalitySection)
    section.take("modality", _MODALITY)
    section.take("iod", _one_of(KNOWN_IODS))
    section.take("manufacturer", _dicom_text(64, "LO"))
    section.take("model_name", _dicom_text(64, "LO"))
    section.take("device_serial_number", _dicom_text(64, "LO"))
    section.take("station_name", _dicom_text(16, "SH"))
    section.take("institution_name", _dicom_text(64, "LO"))
    section.take("transfer_syntax", _one_of(KNOWN_TRANSFER_SYNTAXES))
    section.take("patient_orientation", _string_list(2, 2, 16))
    section.take("anatomic_region", _string_list(3, 3, 64))
    return section.build()


def _string_list(low: int, high: int, max_chars: int) -> _Check:
    def convert(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not low <= len(value) <= high or not all(
                isinstance(v, str) and v.strip() and len(v) <= max_chars
                and "\\" not in v for v in value):
            raise _Invalid()
        return tuple(v.strip() for v in value)

    count = f"{low}" if low == high else f"{low}..{high}"
    return _Check(f"a list of {count} non-empty strings", convert)


def _check_worklist(table: dict[str, Any] | None, problems: _Problems) -> WorklistSection | None:
    if table is None:
        return None
    section = _Table(problems, "[worklist]", table, WorklistSection)
    section.take("host", _HOST)
    section.take("port", _PORT)
    section.take("called_ae", _AE_TITLE)
    section.take("refresh_s", _number(1, 86_400))
    section.take("max_results", _integer(1, 100_000))
    section.take("days_before", _integer(0, 31))
    section.take("days_after", _integer(0, 31))
    # a total deadline for one refresh (association, every C-FIND response, release), not per
    # message: a RIS trickling one response every 19 s cannot hold the worklist for hours
    section.take("timeout_s", _number(1, 600))
    section.take("fallback_charsets", _CHARSET_LIST)
    section.take("tls", _BOOL)
    section.take("verify_hostname", _BOOL)
    section.take("filter_station_ae", _BOOL)
    section.take("filter_modality", _BOOL)
    return section.build()


def _convert_charset_list(value: Any) -> tuple[str, ...]:
    # the names are checked against pydicom's table when the worklist starts (config does not
    # import pydicom); here only the shape
    if not isinstance(value, list) or not all(
            isinstance(v, str) and v.strip() and len(v) <= 64 for v in value):
        raise _Invalid()
    return tuple(v.strip() for v in value)


_CHARSET_LIST = _Check('a list of character set names such as ["ISO_IR 192", "ISO_IR 100"]',
                       _convert_charset_list)


def _check_watch_folder(
    table: dict[str, Any] | None, problems: _Problems, config_dir: Path, queue_retention_s: float
) -> WatchFolderSection | None:
    if table is None:
        return None
    section = _Table(problems, "[watch_folder]", table, WatchFolderSection)
    path = section.take("path", _PATH)
    if path is not _INVALID:
        section.values["path"] = config_dir / path
    section.take("settle_s", _number(0, 3600))
    section.take("after_import", _one_of(("move", "delete")))
    section.take("use_close_events", _BOOL)
    section.take("rescan_s", _number(0.5, 3600))
    section.take("retention_s", _RETENTION_S)
    if "retention_s" not in table:
        # done/ and rejected/ hold patient data like the spool: kept as long, unless told apart
        section.values["retention_s"] = queue_retention_s
    section.take("max_file_mb", _integer(1, 65_536))
    return section.build()


def _check_mpps(table: dict[str, Any] | None, problems: _Problems) -> MppsSection | None:
    if table is None:
        return None
    section = _Table(problems, "[mpps]", table, MppsSection)
    section.take("host", _HOST)
    section.take("port", _PORT)
    section.take("called_ae", _AE_TITLE)
    section.take("tls", _BOOL)
    section.take("verify_hostname", _BOOL)
    return section.build()


def _check_destinations(
    value: Any, problems: _Problems, config_dir: Path
) -> tuple[DestinationSection, ...]:
    if value is None:
        problems.add("[[destinations]]", "at least one [[destinations]] table", "none")
        return ()
    if not isinstance(value, list):
        got = _show(value)
        if isinstance(value, dict):
            got += " (write each archive as [[destinations]] with a name key)"
        problems.add("[[destinations]]", "one or more [[destinations]] tables", got)
        return ()
    if not value:
        problems.add("[[destinations]]", "at least one [[destinations]] table", "an empty array")
        return ()

    destinations = []
    first_use: dict[str, int] = {}
    groups: dict[str, int] = {}
    for number, table in enumerate(value, start=1):
        label = f"[[destinations]] #{number}"
        if not isinstance(table, dict):
            problems.add(label, "a table", _show(table))
            continue
        section = _Table(problems, label, table, DestinationSection)
        name = section.take(
            "name", _matching(_DESTINATION_NAME_RE, "a name of A-Z a-z 0-9 _ -, e.g. \"pacs\"")
        )
        if name is not _INVALID:
            # Names key the queue's per-destination state; two archives sharing one would share it.
            if name in first_use:
                section.report(
                    "name",
                    "a name no other destination uses",
                    f"{_show(name)} (also #{first_use[name]})",
                )
            else:
                first_use[name] = number
        kind = section.take("kind", _one_of(DESTINATION_KINDS))
        if kind == "stow-rs":
            for key in ("host", "port", "called_ae", "tls", "storage_commitment"):
                if key in table:
                    hint = ("verify = true confirms delivery over DICOMweb"
                            if key == "storage_commitment" else "the url says where and how")
                    section.report(key, f'no {key} for kind = "stow-rs" ({hint})',
                                   _show(table[key]))
            if "url" not in table:
                section.report("url", _HTTP_URL.expected + ' for kind = "stow-rs"',
                               "nothing (the key is required)")
            section.take("url", _HTTP_URL)
            section.values["storage_commitment"] = False
            for key in ("host", "port", "called_ae", "tls"):
                section.values[key] = section._default(key)
        else:
            for key in ("url", "token_file", "credentials_file", "verify", "max_request_mb",
                        "request_timeout_s"):
                if key in table:
                    section.report(key, f'no {key} unless kind = "stow-rs"', _show(table[key]))
            for key, check in (("host", _HOST), ("port", _PORT), ("called_ae", _AE_TITLE)):
                if key in table:
                    section.take(key, check)
                else:  # required for a DIMSE archive (the dataclass default serves stow-rs)
                    section.report(key, check.expected, "nothing (the key is required)")
                    section.values[key] = _INVALID
            section.values["url"] = ""
        for key in ("token_file", "credentials_file"):
            path = section.take(key, _PATH)
            if path is not _INVALID and path is not None:
                section.values[key] = config_dir / path
        if table.get("token_file") is not None and table.get("credentials_file") is not None:
            section.report("credentials_file", "token_file or credentials_file, not both",
                           "both")
        section.take("verify", _BOOL)
        section.take("max_request_mb", _integer(1, 4096))
        section.take("request_timeout_s", _number(1, 3600))
        group = section.take("group", _matching(
            _GROUP_NAME_RE, 'a group name of A-Z a-z 0-9 _ -, e.g. "archive", or ""'))
        if group not in (_INVALID, ""):
            groups[group] = groups.get(group, 0) + 1
        if "storage_commitment" not in section.values:
            section.take("storage_commitment", _BOOL)
        # below 10 s an archive that commits in batches would be asked again and again
        section.take("commitment_timeout_s", _number(10, 604_800))
        section.take("max_associations", _integer(1, 16))
        section.take("dimse_timeout_s", _number(1, 3600))
        section.take("commitment_report_wait_s", _number(0, 600))
        if "tls" not in section.values:
            section.take("tls", _BOOL)
        section.take("verify_hostname", _BOOL)
        built = section.build()
        if built is not None:
            destinations.append(built)
    for group in groups:
        if group in first_use:
            # a group and a destination share the queue's routing names
            problems.add("[[destinations]] group",
                         "a group name that is not also a destination's name",
                         f"{_show(group)} (destination #{first_use[group]})")
    return tuple(destinations)


def _check_queue(table: dict[str, Any] | None, problems: _Problems) -> QueueSection | None:
    if table is None:
        return None
    section = _Table(problems, "[queue]", table, QueueSection)
    initial = section.take("retry_initial_s", _number(0.1, 3600))
    maximum = section.take("retry_max_s", _number(0.1, 86_400))
    if initial is not _INVALID and maximum is not _INVALID and maximum < initial:
        if "retry_max_s" in table:
            got = _show(table["retry_max_s"])
        else:
            got = f"{maximum:g} (the default)"
        section.report("retry_max_s", f"a number >= retry_initial_s ({initial:g})", got)
    section.take("retention_s", _RETENTION_S)
    # 100 TB: larger than any acquisition computer's disk, far from float trouble
    section.take("min_free_mb", _number(0, 100_000_000))
    return section.build()


#: a year: long enough for any site's policy, short enough that patient data does not stay forever
_RETENTION_S = _number(0, 365 * 86_400)
