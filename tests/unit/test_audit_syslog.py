"""RFC 5424 messages around the audit XML, and RFC 5425 / RFC 6587 octet-counted frames."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.audit.syslog import (
    BOM,
    FramingError,
    octet_counted,
    sequence_id,
    split_octet_counted,
    syslog_message,
)

WHEN = datetime.datetime(2024, 5, 1, 12, 0, 0, 123_000,
                         tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))


def test_header_fields_and_bom() -> None:
    message = syslog_message(b"<AuditMessage/>", number=7, when=WHEN, hostname="acq1.example",
                             process_id=321)
    assert message == (b'<85>1 2024-05-01T12:00:00.123-05:00 acq1.example modality-agent 321 '
                       b'IHE+RFC-3881 [meta sequenceId="7"] ' + BOM + b"<AuditMessage/>")


def test_a_failure_is_a_warning_and_odd_host_names_stay_one_field() -> None:
    message = syslog_message(b"x", number=1, when=WHEN, hostname="a host\n", process_id=1,
                             severity=4)
    assert message.startswith(b"<84>1 ")
    assert b" a_host_ modality-agent " in message


def test_time_without_offset_is_refused() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        syslog_message(b"x", number=1, when=WHEN.replace(tzinfo=None), hostname="h",
                       process_id=1)


def test_sequence_id_wraps_into_rfc_5424_range() -> None:
    assert [sequence_id(n) for n in (1, 2, 2_147_483_647, 2_147_483_648)] == [1, 2,
                                                                             2_147_483_647, 1]


def test_octet_counting() -> None:
    assert octet_counted(b"<85>1 abc") == b"9 <85>1 abc"


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(0, 20))
def test_split_reverses_octet_counting(messages: list[bytes], cut: int) -> None:
    stream = b"".join(octet_counted(m) for m in messages)
    frames, rest = split_octet_counted(stream)
    assert frames == messages and rest == b""
    # a stream cut short keeps the incomplete frame for later
    frames, rest = split_octet_counted(stream[:max(0, len(stream) - cut)])
    assert b"".join(octet_counted(f) for f in frames) + rest == stream[:max(0, len(stream) - cut)]


@pytest.mark.parametrize("garbage", [b"x 12", b"012 abc", b"12345678901 "])
def test_garbage_is_a_framing_error(garbage: bytes) -> None:
    with pytest.raises(FramingError):
        split_octet_counted(garbage)
