"""Syslog framing for audit messages: the RFC 5424 message around the XML, and the octet-counted
frame RFC 5425 (TLS) and RFC 6587 (TCP) put around that. Pure: bytes in, bytes out.

PS3.15 A.6/A.7 and IHE ITI-20 fix the parts that matter to an audit record repository: the XML
is the MSG, PRI uses facility 10 (security/authorization) with severity 5 (notice) or 4
(warning), and MSGID is "IHE+RFC-3881" (ITI-20; PS3.15 only requires MSGID to be set and offers
"DICOM+RFC3881" as one choice).

The message is built once, when the event is spooled, and the spool keeps these exact bytes: a
resend after an outage or a crash is byte-identical, with the same timestamp and the same
``[meta sequenceId="N"]`` (RFC 5424 section 7.3.1), so a repository or a reviewer can tell a
resend from a second event.
"""

from __future__ import annotations

import datetime
import re

FACILITY_SECURITY = 10          # RFC 5424 table 1: security/authorization messages
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5             # "normal but significant": PS3.15 A.6 for most audit messages
MSGID = "IHE+RFC-3881"          # IHE ITI TF-2 3.20 (ITI-20)
APP_NAME = "modality-agent"
#: RFC 5424 section 6.4: MSG in UTF-8 starts with the byte order mark
BOM = b"\xef\xbb\xbf"
#: RFC 5424 section 7.3.1: sequenceId runs 1..2147483647, then starts again at 1
MAX_SEQUENCE_ID = 2_147_483_647

_NIL = "-"
# PRINTUSASCII (%d33-126) is all a header field may hold
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")


def _field(value: str, max_chars: int) -> str:
    cleaned = _NOT_PRINTABLE.sub("_", value)[:max_chars]
    return cleaned or _NIL


def sequence_id(number: int) -> int:
    """The RFC 5424 sequenceId for the spool's message number (1, 2, ...), wrapped into range."""
    return (number - 1) % MAX_SEQUENCE_ID + 1


def syslog_message(xml: bytes, *, number: int, when: datetime.datetime, hostname: str,
                   process_id: int, severity: int = SEVERITY_NOTICE,
                   app_name: str = APP_NAME, msgid: str = MSGID) -> bytes:
    """The RFC 5424 SYSLOG-MSG carrying one audit message.

    Parameters
    ----------
    xml
        The audit message (UTF-8 XML) for MSG.
    number
        The spool's number for this message: the sequenceId of the ``meta`` SD element.
    when
        The TIMESTAMP; it must carry a UTC offset.

    Raises
    ------
    ValueError
        If `when` has no UTC offset or `severity` is not 0-7.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"syslog TIMESTAMP needs a UTC offset, got {when.isoformat()}")
    if not 0 <= severity <= 7:
        raise ValueError(f"syslog severity: expected 0-7, got {severity}")
    pri = FACILITY_SECURITY * 8 + severity
    header = " ".join((
        f"<{pri}>1",
        when.isoformat(timespec="milliseconds"),
        _field(hostname, 255),
        _field(app_name, 48),
        _field(str(process_id), 128),
        _field(msgid, 32),
        f'[meta sequenceId="{sequence_id(number)}"]',
    ))
    return header.encode("ascii") + b" " + BOM + xml


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 section 4.3 / RFC 6587 section 3.4.1: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class FramingError(ValueError):
    """Bytes that are not a sequence of octet-counted frames."""


def split_octet_counted(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete frames at the start of `data`, and the incomplete rest.

    Raises
    ------
    FramingError
        If a frame does not start with a length of 1-9 digits and a space.
    """
    frames: list[bytes] = []
    position = 0
    while position < len(data):
        space = data.find(b" ", position, position + 11)
        if space < 0:
            if len(data) - position > 10 or not data[position:].isdigit():
                raise FramingError(f"no MSG-LEN at offset {position}")
            break
        length_text = data[position:space]
        if not length_text.isdigit() or length_text.startswith(b"0"):
            raise FramingError(f"bad MSG-LEN {length_text!r} at offset {position}")
        end = space + 1 + int(length_text)
        if end > len(data):
            break
        frames.append(data[space + 1:end])
        position = end
    return frames, data[position:]
