"""The TOML config: frozen dataclasses, and `load_config`, which checks every key in one place.

The section and key names are a public contract (shared/design/ARCHITECTURE.md): extend, never
rename.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import tomllib
import urllib.parse
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
    # Protocol Name (0018,1030) of images and MPPS series when the order names no protocol;
    # "" = the model name (never an invented "default" protocol)
    protocol_name: str = ""


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
    #: the accepted values as docs/configuration.md's Range column writes them ("1..65535",
    #: "`tls`, `tcp`, `udp`"); "" when the check has no such short form
    range_text: str = ""


#: while `checks_by_key` runs: each (section class, key) -> the check `take` applied to it
_recorded_checks: dict[tuple[type, str], _Check] | None = None

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

    return _Check(f"an integer {low}..{high}", convert, f"{low}..{high}")


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

    return _Check(f"a number {_plain(low)}..{_plain(high)}", convert,
                  f"{_plain(low)}..{_plain(high)}")


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

    return _Check("one of " + ", ".join(f'"{choice}"' for choice in choices), convert,
                  ", ".join(f"`{choice}`" for choice in choices))


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
        if _recorded_checks is not None:
            _recorded_checks[(self.cls, key)] = check
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
    section.take("protocol_name", _dicom_text(64, "LO"))
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


# --- the reference: what each key means, beside the checks (docs/configuration.md is generated
# from this table, the dataclass defaults and the checks' ranges by agent.config_doc) ---------


@dataclass(frozen=True)
class KeyDoc:
    """One row of docs/configuration.md. `keys`: one key, or several that share the row.
    `default`/`range` replace what the dataclass default and the check would give (for
    defaults computed at load, ranges no check states in short); `range_note` follows the
    check's range ("(a year)", "and >= `retry_initial_s`")."""

    keys: tuple[str, ...]
    type: str
    meaning: str
    default: str | None = None
    range: str | None = None
    range_note: str = ""


def _doc(keys: str, type_: str, meaning: str, *, default: str | None = None,
         range_: str | None = None, note: str = "") -> KeyDoc:
    return KeyDoc(tuple(k.strip() for k in keys.split(",")), type_, meaning, default, range_,
                  note)


def checks_by_key() -> dict[tuple[type, str], _Check]:
    """Each key's check, as `load_config` applies it: recorded while a document naming every
    section (and both destination kinds) is checked, so the docs' ranges are the checks'."""
    global _recorded_checks
    document: dict[str, Any] = {
        name: {} for name in _SECTIONS if name != "destinations"}
    document["watch_folder"] = {"path": "in"}
    document["destinations"] = [{"name": "a", "host": "h", "port": 104, "called_ae": "A"},
                                {"name": "b", "kind": "stow-rs"}]
    _recorded_checks = {}
    try:
        _check_document(document, Path("/reference/agent.toml"), _Problems("agent.toml"))
        return dict(_recorded_checks)
    finally:
        _recorded_checks = None


def format_default(value: Any) -> str:
    """A dataclass default as docs/configuration.md writes it: TOML in backticks."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int | float):
        return f"`{_plain(value)}`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    if isinstance(value, MappingProxyType | dict):
        return "`{}`" if not value else "`{...}`"
    raise AssertionError(f"no doc form for a default of type {type(value).__name__}")


#: docs/configuration.md's rows, section by section, in the order the doc lists them
REFERENCE: dict[type, tuple[KeyDoc, ...]] = {
    AgentSection: (
        _doc('ae_title', 'AE title',
             'Our AE title: the calling AE of every association, the called AE of the listener, '
             'and the Scheduled Station AE Title used in worklist queries.',
             range_='1..16 characters'),
        _doc('spool_dir', 'path',
             'Folder for the queue database and the Part 10 files. Relative to the config '
             "file's folder.",
             range_='non-empty'),
        _doc('log_level', 'string',
             'Minimum level of log records.',
             note=' (upper case)'),
        _doc('uid_root', 'string',
             'Root of the UIDs the agent makes. `""` uses `2.25.<uuid>` UIDs (PS3.5 B.2), which '
             'need no registered root. The 40-character limit leaves room for suffixes inside '
             'the 64-character UID limit.',
             range_='`""`, or digits and dots, at most 40 characters, no component with a '
                    'leading zero (except `0` itself), not starting or ending with a dot'),
    ),
    ListenerSection: (
        _doc('host', 'host',
             'Address to listen on; `"0.0.0.0"` for all interfaces, needed when archives on '
             'other hosts send commitment reports.'),
        _doc('port', 'port',
             'Port to listen on. Register it, with `ae_title`, in each archive.'),
        _doc('tls', 'boolean',
             'Accept only DICOM TLS associations, with the `[tls]` identity (required then). A '
             'client must present a certificate that `[tls] ca_file` vouches for; a plaintext '
             'association, or one whose certificate does not verify, is refused before any '
             'DICOM message is read.'),
        _doc('verify_hostname', 'boolean',
             "With `tls`: the client's certificate must also name the address it connects from "
             '(an IP address in its subject alternative names, or a DNS name that resolves to '
             'that address). `false` accepts any certificate `ca_file` vouches for.'),
    ),
    ApiSection: (
        _doc('host', 'host',
             'Address to listen on. Keep it on loopback unless a reverse proxy adds '
             'authentication.'),
        _doc('port', 'port',
             'Port to listen on.'),
        _doc('token_file', 'path',
             'The bearer token the CLI sends with each request, created (mode 0600) at first '
             'start if missing. Relative to the config file. The default keeps it beside the '
             'queue, in the folder only the service user can read.',
             default='`<spool_dir>/api-token`'),
        _doc('max_frames', 'integer',
             'Frames one acquire request may ask for. A request for more is refused before the '
             'device is touched: one click cannot fill the spool (10,000 frames of 512 × 512 × '  # noqa: RUF001 (as the doc writes it)
             '16 bits are 5 GB).'),
        _doc('import_folders', 'list of paths',
             'Folders from which `import` through the API (console, `modality-agent import` '
             'against a running daemon) may read files; each absolute or relative to the config '
             'file. `[]` (the default) refuses `import` through the API, so a request cannot '
             'make the agent read arbitrary files. They must be outside the spool.'),
        _doc('max_import_files', 'integer',
             'Files one import request may queue.'),
        _doc('max_connections', 'integer',
             'HTTP connections held open at once; further clients wait. Bounds what a stuck or '
             'hostile client can tie up.'),
        _doc('idle_timeout_s', 'number',
             'An HTTP connection that sends nothing for this long is closed.'),
        _doc('allowed_hosts', 'list of host names',
             'Names the API answers to in the `Host` header besides the localhost forms '
             '(`localhost`, `127.0.0.1`, `[::1]`) and `host`; compared without regard to case '
             '(stored lower case). A request with any other `Host` is refused, so a web page '
             'cannot reach the API through DNS rebinding. Add the name a reverse proxy forwards.',
             range_='each non-empty, no whitespace, no `/`'),
    ),
    DeviceSection: (
        _doc('driver', 'string',
             'Name of the device driver: built in (`simulated`) or installed as a plug-in '
             '(entry point group `modality_agent.drivers`). Whether the driver exists is '
             'checked when it is loaded.',
             range_='non-empty; `a-z`, `0-9`, `_`, `-`'),
        _doc('options', 'table',
             'Written as a `[device.options]` section. Passed to the driver unchanged '
             '(read-only); the driver checks its own options when it starts.',
             range_='any'),
    ),
    ModalitySection: (
        _doc('modality', 'string',
             'Modality (0008,0060).',
             range_='1..16 of `A-Z 0-9 _` and space (DICOM CS); surrounding spaces removed'),
        _doc('iod', 'string',
             "The IOD built for each capture (`KNOWN_IODS`; docs/iods.md lists each one's "
             'modules). `dx` needs `patient_orientation` (or a device that reports it) and, per '
             'acquisition, the body part and side (docs/console.md).'),
        _doc('manufacturer', 'DICOM text (LO)',
             'Manufacturer (0008,0070).',
             range_='at most 64 characters'),
        _doc('model_name', 'DICOM text (LO)',
             "Manufacturer's Model Name (0008,1090).",
             range_='at most 64 characters'),
        _doc('device_serial_number', 'DICOM text (LO)',
             'Device Serial Number (0018,1000).',
             range_='at most 64 characters'),
        _doc('station_name', 'DICOM text (SH)',
             'Station Name (0008,1010).',
             range_='at most 16 characters'),
        _doc('institution_name', 'DICOM text (LO)',
             'Institution Name (0008,0080); empty is allowed.',
             range_='at most 64 characters'),
        _doc('transfer_syntax', 'string',
             'Transfer syntax of stored and sent objects: Explicit VR Little Endian, or a '
             'lossless compression (RLE, JPEG-LS, JPEG 2000) whose encoder `check-config` finds '
             'installed (`KNOWN_TRANSFER_SYNTAXES`).'),
        _doc('patient_orientation', 'list of 2 strings',
             'DX: Patient Orientation (0020,0020), the row and column directions (e.g. `["L", '
             '"F"]`), for a device that does not report it with each frame. `[]`: the device '
             'must report it, or a DX is refused.',
             range_='2 strings of at most 16 characters, or `[]`'),
        _doc('anatomic_region', 'list of 3 strings',
             'Anatomic Region Sequence item (code value, coding scheme, meaning), e.g. '
             '`["51185008", "SCT", "Chest"]`: the region when neither the order nor the '
             'technologist names one. `video-photographic` needs a region.',
             range_='3 strings of at most 64 characters, or `[]`'),
        _doc('protocol_name', 'DICOM text (LO)',
             'Protocol Name (0018,1030) written into the images and the MPPS series of a '
             'procedure whose scheduled step has no description (unscheduled ones). `""`: the '
             'model name. Both always carry the same value.',
             range_='at most 64 characters'),
    ),
    WorklistSection: (
        _doc('host', 'host',
             "Worklist provider's address."),
        _doc('port', 'port',
             "Worklist provider's port."),
        _doc('called_ae', 'AE title',
             "Worklist provider's AE title.",
             range_='1..16 characters'),
        _doc('refresh_s', 'number',
             'Seconds between worklist queries (each ± 10 % jitter).'),
        _doc('max_results', 'integer',
             'More matches than this: the query is cancelled (C-CANCEL) and the list is shown '
             'as "more than N".'),
        _doc('days_before, days_after', 'integer',
             'Scheduled Procedure Step Start Date range around today (0, 0: today only).'),
        _doc('timeout_s', 'number',
             'Total deadline for one worklist refresh: connecting, the association, every '
             'C-FIND response and the release together, not a limit per message (a RIS that '
             'trickles one response just under a per-message limit could otherwise hold a '
             'refresh for hours). Past it the refresh is abandoned and the cache is shown, with '
             'its age.'),
        _doc('fallback_charsets', 'list of strings',
             'How to decode an answer that carries no (0008,0005) Specific Character Set, tried '
             'in order; `[]` refuses non-ASCII text in such answers instead of guessing.',
             range_='pydicom character set names'),
        _doc('tls', 'boolean',
             'Query over DICOM TLS with the `[tls]` identity (required then). Never falls back '
             'to plaintext.'),
        _doc('verify_hostname', 'boolean',
             "With `tls`: the provider's certificate must name `host` (a DNS name, or the IP "
             'address when `host` is one).'),
        _doc('filter_station_ae', 'boolean',
             'The broad query matches Scheduled Station AE Title = `[agent] ae_title`. `false` '
             'for a RIS that schedules by modality only (it leaves the station empty or names a '
             'generic one, and a station filter then returns nothing).'),
        _doc('filter_modality', 'boolean',
             'The broad query matches Modality = `[modality] modality`.'),
    ),
    DestinationSection: (
        _doc('name', 'string',
             'Names the archive in logs, the queue and the API.',
             range_='non-empty; `A-Z a-z 0-9 _ -`; unique among destinations'),
        _doc('kind', 'string',
             'How the archive is reached: DICOM C-STORE (`dimse`), or DICOMweb STOW-RS (PS3.18 '
             '10.5) over HTTP(S) (`stow-rs`).'),
        _doc('host', 'host',
             "Archive's address. Not for `stow-rs`.",
             default='required (dimse)'),
        _doc('port', 'port',
             "Archive's DICOM port. Not for `stow-rs`.",
             default='required (dimse)'),
        _doc('called_ae', 'AE title',
             "Archive's AE title. Not for `stow-rs`.",
             default='required (dimse)', range_='1..16 characters'),
        _doc('group', 'string',
             'Archive group: an object goes to one member of each group (the first healthy one, '
             'in the order of the `[[destinations]]` blocks); an ungrouped destination (`""`) '
             'gets every object.',
             range_="`A-Z a-z 0-9 _ -`; not a destination's name"),
        _doc('url', 'URL',
             "(`stow-rs`) The DICOMweb service's base URL, e.g. "
             '`"https://pacs.example/dicom-web"`; instances are posted to `<url>/studies`. '
             'HTTPS is verified against `[tls] ca_file` when `[tls]` is present, else the '
             "system's CAs.",
             default='required (stow-rs)',
             range_='`http://` or `https://`, no credentials, query or fragment'),
        _doc('token_file', 'path',
             '(`stow-rs`) File holding a bearer token (one line), readable by its owner only.',
             range_='relative to the config file'),
        _doc('credentials_file', 'path',
             '(`stow-rs`) File holding HTTP basic credentials `user:password` (one line), '
             'readable by its owner only.',
             range_='relative to the config file; not with `token_file`'),
        _doc('verify', 'boolean',
             '(`stow-rs`) After the archive stores an instance, confirm it by a QIDO-RS lookup '
             'before the object counts as committed (the DICOMweb stand-in for Storage '
             'Commitment). `false`: stored = done.'),
        _doc('max_request_mb', 'integer',
             '(`stow-rs`) Several instances go in one request up to this many MB (one larger '
             'instance goes alone).'),
        _doc('request_timeout_s', 'number',
             '(`stow-rs`) The longest one HTTP request may take, connect to response; past it '
             'the outcome is unknown and the same bytes are sent again.'),
        _doc('dimse_timeout_s', 'number',
             'How long to wait for a response or for the next PDU from this archive before '
             'aborting the association; the object is then resent later, the same bytes under '
             'the same UID.'),
        _doc('commitment_report_wait_s', 'number',
             'For archives that send the commitment report on the same association: keep it '
             'open this long after the N-ACTION response (it is released as soon as the report '
             'arrives). Reports on a new association are always accepted; Orthanc uses only '
             'those.'),
        _doc('storage_commitment', 'boolean',
             'Ask the archive for Storage Commitment (N-ACTION) after storing; objects are '
             'deleted only once committed and `retention_s` has passed. If `false`, an object '
             'counts as delivered once C-STORE succeeds.'),
        _doc('commitment_timeout_s', 'number',
             'Seconds to wait for a commitment report; past this deadline the still-uncommitted '
             'objects are requested again under a new Transaction UID. At least 10 s, so that '
             'an archive that commits in batches is not asked again and again; at most a week.'),
        _doc('max_associations', 'integer',
             'Parallel associations to this archive, each held by its own sending process '
             '(about 50 MB resident each, 35 MB of it private). 3 measured best on a 2-core '
             'machine (`python -m bench send`, which also runs 1, 2 and 4); an archive that '
             'allows fewer parallel associations per AE title needs less.'),
        _doc('tls', 'boolean',
             'C-STORE and Storage Commitment over DICOM TLS with the `[tls]` identity (required '
             'then). A TLS failure leaves the objects pending, with the reason in `status` '
             '(certificate expired, unknown CA, host name mismatch, handshake failure...), and '
             'they are retried with backoff; plaintext is never tried instead.'),
        _doc('verify_hostname', 'boolean',
             "With `tls`: the archive's certificate must name `host` (a DNS name, or the IP "
             'address when `host` is one). Set `false` only for an archive whose certificate '
             'carries no usable name, and then trust a CA that signs nothing else.'),
    ),
    MppsSection: (
        _doc('host', 'host',
             "MPPS provider's address."),
        _doc('port', 'port',
             "MPPS provider's port."),
        _doc('called_ae', 'AE title',
             "MPPS provider's AE title.",
             range_='1..16 characters'),
        _doc('tls', 'boolean',
             'N-CREATE/N-SET over DICOM TLS with the `[tls]` identity (required then).'),
        _doc('verify_hostname', 'boolean',
             "With `tls`: the provider's certificate must name `host`."),
    ),
    TlsSection: (
        _doc('certificate', 'path',
             'Our certificate, PEM; intermediate CA certificates may follow it in the same '
             'file. It must be valid for both TLS server and client use if the listener uses '
             'TLS. `status` shows when it expires and warns 30 days before.'),
        _doc('private_key', 'path',
             'Its private key, PEM, unencrypted (the agent starts unattended). Refused if group '
             'or others may read it: `chmod 600`, owned by the service user.'),
        _doc('ca_file', 'path',
             'PEM bundle of the CA certificates trusted for every peer (archives, RIS, and the '
             'archives that send commitment reports to the listener).'),
        _doc('profile', 'string',
             'The PS3.15 secure transport connection profile: B.10 Non-Downgrading BCP 195 (the '
             "default, and DCMTK's), B.9 BCP 195, B.11 Extended BCP 195. All refuse TLS 1.1 and "
             'older, compression and renegotiation; see below.'),
    ),
    AuditSection: (
        _doc('host', 'host',
             "The audit record repository's address."),
        _doc('port', 'port',
             'Its syslog port: usually 6514 for `tls`, 514 for `udp`.'),
        _doc('transport', 'string',
             "`tls`: syslog over TLS (RFC 5425, PS3.15 A.6) with this station's `[tls]` "
             'identity (required then: `transport = "tls"` without `[tls]` is a config error); '
             "the repository's certificate is verified against `[tls] ca_file`, and nothing is "
             'ever sent in plaintext instead. `tcp`: octet-counted syslog over TCP (RFC 6587). '
             '`udp`: one message per datagram (RFC 5426, PS3.15 A.7); no delivery confirmation.'),
        _doc('verify_hostname', 'boolean',
             "With `tls`: the repository's certificate must also name `host`."),
        _doc('backlog_alert_s', 'number',
             'When the oldest undelivered audit message is older than this, `status` and the '
             'console show an error.'),
        _doc('udp_max_bytes', 'integer',
             'With `udp`: the largest datagram sent. A larger message is held in the audit '
             'spool (never cut: cut XML is unreadable) and `status` shows an error until the '
             'transport is changed to `tls` or `tcp`. RFC 5426 requires receivers to take 480 '
             'octets and recommends 2048; rsyslog takes 8 KB by default.'),
        _doc('retry_initial_s', 'number',
             'Wait after the repository could not be reached; doubled after each further '
             'failure.'),
        _doc('retry_max_s', 'number',
             'The longest wait between attempts.',
             note=', ≥ `retry_initial_s`'),
    ),
    QueueSection: (
        _doc('retry_initial_s', 'number',
             'Delay before the first retry after a failed send, in seconds.'),
        _doc('retry_max_s', 'number',
             'Retry delays grow up to this many seconds.',
             note=', and >= `retry_initial_s`'),
        _doc('retention_s', 'number',
             'How long delivered (committed) objects stay on disk, in seconds. They hold '
             "patient data: keep this as short as the site's policy allows.",
             note=' (a year)'),
        _doc('min_free_mb', 'number',
             "Free space (MB) the spool's file system must keep: a capture that would leave "
             'less is refused with a clear message before any frame is taken, and nothing '
             'uncommitted is ever deleted to make room.'),
    ),
    WatchFolderSection: (
        _doc('path', 'path',
             'The folder to watch; relative to the config file. `done/`, `rejected/` and '
             '`.state/` are made inside it.'),
        _doc('settle_s', 'number',
             'A file is taken once its size, mtime and inode have not changed for this long.'),
        _doc('after_import', 'string',
             'What happens to a file once it is durably queued.'),
        _doc('use_close_events', 'boolean',
             'Also take a file when its writer closes it (and it is unchanged since). Turn off '
             'for writers that close and reopen per chunk.'),
        _doc('rescan_s', 'number',
             'How often the folder is scanned again (a full spool, missed events).'),
        _doc('retention_s', 'number',
             'How long files moved to `done/` and `rejected/` are kept before they are deleted. '
             'They hold patient data. Absent: the same as `[queue] retention_s`.',
             default='`[queue] retention_s`', note=' (a year)'),
        _doc('max_file_mb', 'integer',
             'A dropped file larger than this many MiB is moved to `rejected/` without being '
             'read, so one huge file cannot exhaust memory or the spool.'),
    ),
}
