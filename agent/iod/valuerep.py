"""Value-representation checks (PS3.5 Table 6.2-1), one function per VR, and the one setter
that writes an element with pydicom's validation set to RAISE and never changes an attribute a
module already wrote (IODs are built by adding modules, never by patching).

Every check names the IOD module and the attribute; a value that may be patient data is left
out of the message (STYLE.md, Logging). No I/O.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from agent.errors import IODError
from agent.iod.uids import is_valid_uid

#: UTF-8 (PS3.3 C.12.1.1.2): every name a worklist can send us is representable
SPECIFIC_CHARACTER_SET = "ISO_IR 192"

#: largest value of an IS attribute (PS3.5 Table 6.2-1: a signed 32-bit integer)
MAX_IS = 2**31 - 1

#: largest even value length a 32-bit length field can carry (0xFFFFFFFF means undefined)
MAX_VALUE_LENGTH = 0xFFFFFFFE

#: control characters, and the backslash that separates values (PS3.5 6.2: not allowed in
#: SH, LO, PN, CS); ESC is a control character too, and ISO_IR 192 never needs it
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x1f\x7f\\]")
_CS_PATTERN = re.compile(r"[A-Z0-9 _]*")
_DT_PATTERN = re.compile(r"\d{14}(\.\d{1,6})?")


def check_text(module: str, keyword: str, value: object, max_chars: int, *,
               phi: bool = False, required: bool = False) -> None:
    """Raise IODError unless `value` is an SH (16) / LO (64) style value: a str of at most
    `max_chars` characters, without control characters or backslash, encodable in UTF-8.
    With `phi`, the message leaves the value out."""
    shown = "" if phi else f" {value!r}"
    if not isinstance(value, str):
        raise IODError(f"{module}: {keyword} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise IODError(f"{module}: {keyword} is Type 1 and must not be empty")
    if len(value) > max_chars:
        raise IODError(
            f"{module}: {keyword}{shown} has {len(value)} characters, at most {max_chars} allowed"
        )
    if _FORBIDDEN_IN_TEXT.search(value):
        raise IODError(
            f"{module}: {keyword}{shown} contains a control character or a backslash"
        )
    check_utf8(module, keyword, value)


def check_utf8(module: str, keyword: str, value: str) -> None:
    """Every str can be written in ISO_IR 192 except one holding lone surrogates (e.g. bytes
    decoded with errors="surrogateescape"); catch those here, not halfway through writing."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise IODError(
            f"{module}: {keyword} holds a character at position {err.start} that UTF-8 "
            f"({SPECIFIC_CHARACTER_SET}) cannot encode"
        ) from err


def check_cs(module: str, keyword: str, value: object, *, required: bool = False) -> None:
    """CS: at most 16 of A-Z, 0-9, space, underscore (PS3.5 Table 6.2-1)."""
    check_text(module, keyword, value, 16, required=required)
    if not isinstance(value, str) or not _CS_PATTERN.fullmatch(value):
        raise IODError(
            f"{module}: {keyword} {value!r} may hold only upper-case letters, digits, space "
            "and underscore"
        )


def check_pn(module: str, keyword: str, value: object) -> None:
    """PN: up to 3 component groups (alphabetic=ideographic=phonetic) of up to 64 characters
    and 5 components each (PS3.5 6.2.1). Never shows the value: it is a person's name."""
    if not isinstance(value, str):
        raise IODError(f"{module}: {keyword} must be text, got {type(value).__name__}")
    if _FORBIDDEN_IN_TEXT.search(value):
        raise IODError(f"{module}: {keyword} contains a control character or a backslash")
    check_utf8(module, keyword, value)
    groups = value.split("=")
    if len(groups) > 3:
        raise IODError(f"{module}: {keyword} has {len(groups)} component groups, at most 3")
    for group in groups:
        if len(group) > 64:
            raise IODError(
                f"{module}: {keyword} has a component group of {len(group)} characters, "
                "at most 64"
            )
        if group.count("^") > 4:
            raise IODError(
                f"{module}: {keyword} has {group.count('^') + 1} components, at most 5 "
                "(Family^Given^Middle^Prefix^Suffix)"
            )


def check_uid(module: str, keyword: str, value: object) -> None:
    """Raise IODError unless `value` is a valid UID (PS3.5 §9.1)."""
    if not is_valid_uid(value):
        raise IODError(
            f"{module}: {keyword} {value!r} is not a valid UID (digits and dots, no leading "
            "zeros in a component, 1-64 characters)"
        )


def check_dt(module: str, keyword: str, value: object) -> None:
    """A DT without offset, YYYYMMDDHHMMSS[.FFFFFF], that names a real instant."""
    if not isinstance(value, str) or not _DT_PATTERN.fullmatch(value):
        raise IODError(f"{module}: {keyword} {value!r} is not YYYYMMDDHHMMSS[.FFFFFF]")
    try:
        datetime.strptime(value[:14], "%Y%m%d%H%M%S")
    except ValueError as err:
        raise IODError(f"{module}: {keyword} {value!r} is not a valid date and time") from err


def check_integer(module: str, keyword: str, value: object, low: int, high: int) -> None:
    """Raise IODError unless `value` is an int (not a bool) in low..high."""
    # bool is an int: reject it explicitly (STYLE.md, Config)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise IODError(f"{module}: {keyword} must be an integer {low}..{high}, got {value!r}")


def put(ds: Dataset, keyword: str, value: object, *, vr: str | None = None) -> None:
    """Set one attribute, validated with RAISE: pydicom checks a new element against its
    *reading* validation mode (WARN by default), which would let a bad value through with
    only a warning."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise IODError(f"{keyword} is not a DICOM keyword")  # a bug in this module
    element = DataElement(tag, vr or dictionary_VR(tag), value, validation_mode=config.RAISE)
    if tag in ds and ds[tag].value != element.value:
        # two modules of one IOD may name the same attribute (e.g. Burned In Annotation in
        # General Image and SC Multi-frame Image), but they must agree: a builder adds,
        # it never rewrites what another module wrote
        raise IODError(f"{keyword}: two modules of the IOD write different values (a bug)")
    ds[tag] = element



# --- DA, TM and DT ---------------------------------------------------------------------

def local_datetime(t_wall: float, tz: tzinfo | None = None) -> datetime:
    """The wall-clock time `t_wall` (seconds since the epoch) in `tz`, or in this machine's
    local zone when `tz` is None. A conversion, not a clock read."""
    return datetime.fromtimestamp(t_wall, tz=tz)


def format_dt(moment: datetime) -> str:
    """DICOM DT without offset: YYYYMMDDHHMMSS.FFFFFF (the wall-clock fields of `moment`)."""
    return moment.strftime("%Y%m%d%H%M%S.%f")


def date_part(dt_value: str) -> str:
    return dt_value[:8]


def time_part(dt_value: str) -> str:
    return dt_value[8:]


#: Timezone Offset From UTC (0008,0201): "+HHMM" or "-HHMM" (PS3.3 C.12.1.1.8)
_OFFSET_PATTERN = re.compile(r"[+-](\d{2})(\d{2})")


def check_timezone_offset(module: str, value: object) -> str:
    """Raise IODError unless `value` is a UTC offset "+HHMM"/"-HHMM" within -1200..+1400."""
    match = _OFFSET_PATTERN.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match.group(2)) >= 60 \
            or not -12 * 60 <= _offset_minutes(value) <= 14 * 60:   # type: ignore[arg-type]
        raise IODError(f"{module}: TimezoneOffsetFromUTC {value!r} is not +HHMM or -HHMM "
                       "between -1200 and +1400")
    return value   # type: ignore[return-value]


def _offset_minutes(value: str) -> int:
    minutes = int(value[1:3]) * 60 + int(value[3:5])
    return -minutes if value[0] == "-" else minutes


def utc_offset_of(moment: datetime) -> str:
    """The UTC offset "+HHMM"/"-HHMM" of `moment`; a naive `moment` is taken as this machine's
    local time (as `local_datetime` with no zone makes it). A conversion, not a clock read."""
    offset = (moment if moment.tzinfo is not None else moment.astimezone()).utcoffset()
    minutes = 0 if offset is None else round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"

