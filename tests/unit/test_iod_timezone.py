"""Timezone Offset From UTC (0008,0201) in every object (issue 16, item 3): the offset of the
zone the object's dates and times are written in, at the first frame, from the `tz` argument
(never a clock read); daylight saving counts; a contradicting explicit offset is refused."""

from __future__ import annotations

import dataclasses
from datetime import UTC, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support.peers import run_dciodvfy
from test_iod_golden import CASES, DEVICE, SERIES, mono

from agent.errors import IODError
from agent.iod import build_image, build_secondary_capture, encode_part10, validate_image
from agent.records import Order

ORDER = Order(patient_name="Doe^Jane", patient_id="P-0001")
WINTER = 1_700_000_000.25          # 2023-11-14 22:13 UTC
SUMMER = 1_690_000_000.25          # 2023-07-22 04:26 UTC


def _build(t_wall: float = WINTER, **overrides: object) -> object:
    frame = dataclasses.replace(mono(12, 0), t_wall=t_wall)
    arguments: dict[str, object] = {"order": ORDER, "device": DEVICE, "series": SERIES,
                                    "instance_number": 1, "sop_instance_uid": "1.2.3.4.501"}
    arguments.update(overrides)
    return build_secondary_capture(frame, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(("tz", "t_wall", "offset"), [
    (UTC, WINTER, "+0000"),
    (timezone(timedelta(hours=-5)), WINTER, "-0500"),
    (timezone(timedelta(hours=5, minutes=45)), WINTER, "+0545"),
    (ZoneInfo("Europe/Berlin"), WINTER, "+0100"),
    (ZoneInfo("Europe/Berlin"), SUMMER, "+0200"),
])
def test_offset_is_the_zone_s_at_the_frame(tz: object, t_wall: float, offset: str) -> None:
    ds = _build(t_wall, tz=tz)
    assert ds.TimezoneOffsetFromUTC == offset  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", CASES)
def test_every_iod_writes_it(case: str, tmp_path: Path) -> None:
    iod, frames, order, extra = CASES[case]
    ds = build_image(iod, frames(), order=order, device=DEVICE, series=SERIES,
                     instance_number=4, sop_instance_uid="1.2.3.4.500",
                     tz=timezone(timedelta(hours=-3)), **extra)  # type: ignore[arg-type]
    assert ds.TimezoneOffsetFromUTC == "-0300"
    validate_image(ds)
    path = tmp_path / "tz.dcm"
    path.write_bytes(encode_part10(ds))
    assert run_dciodvfy(path) == [], f"{case}: dciodvfy reports errors"


def test_a_matching_explicit_offset_is_accepted() -> None:
    ds = _build(tz=ZoneInfo("Europe/Berlin"), timezone_offset="+0100")
    assert ds.TimezoneOffsetFromUTC == "+0100"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("offset", "message"), [
    ("+0200", r"^SOP Common: TimezoneOffsetFromUTC '\+0200' disagrees with the zone"),
    ("0100", r"^SOP Common: TimezoneOffsetFromUTC '0100' is not \+HHMM"),
    ("+0160", r"^SOP Common: TimezoneOffsetFromUTC '\+0160' is not"),
    ("+1500", r"^SOP Common: TimezoneOffsetFromUTC '\+1500' is not"),
    (100, r"^SOP Common: TimezoneOffsetFromUTC 100 is not"),
])
def test_bad_offsets_are_refused(offset: object, message: str) -> None:
    with pytest.raises(IODError, match=message):
        _build(tz=ZoneInfo("Europe/Berlin"), timezone_offset=offset)
