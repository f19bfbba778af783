"""X-Ray Radiation Dose SR builder (issue 16 item 1): TID 10001 root, one TID 10003 container per
exposure with the technique the device reported (UCUM units of the templates), unknown values
qualified instead of invented, codes as in pydicom's PS3.16 dictionary, and bad input refused
before anything is built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sr._concepts_dict import concepts
from test_iod_golden import DEVICE, SCHEDULED, UNSCHEDULED

from agent.errors import IODError
from agent.iod import dose_sr, encode_part10
from agent.iod.dose_sr import ClockSync, IrradiationEvent, build_dose_sr, event_uids
from agent.records import Code, SeriesContext

TZ = timezone(timedelta(hours=1))
T0 = datetime(2023, 11, 14, 23, 10, tzinfo=TZ)
SERIES = SeriesContext(study_instance_uid="1.2.3.4.100", series_instance_uid="1.2.3.4.900",
                       study_id="S1", series_number=99, study_datetime="20231114231000.000000",
                       series_datetime="20231114232000.000000")
UNSCHEDULED_SERIES = replace(SERIES, study_instance_uid="1.2.3.4.101",
                             series_instance_uid="1.2.3.4.901")


def events(count: int, *, dap: bool = True) -> list[IrradiationEvent]:
    return [IrradiationEvent(uid=f"1.2.3.4.5.{index + 1}",
                             started_at=T0 + timedelta(seconds=15 * index),
                             kvp=70.0 + index, mas=10.0, exposure_ms=20.0,
                             dap_dgycm2=2.5 + index if dap else None)
            for index in range(count)]


def build(items: Sequence[IrradiationEvent], **overrides: object) -> Dataset:
    arguments: dict[str, object] = {
        "order": SCHEDULED, "device": DEVICE, "series": SERIES,
        "sop_instance_uid": "1.2.3.4.77", "device_observer_uid": "1.2.3.4.88",
        "procedure_started": T0, "procedure_ended": T0 + timedelta(minutes=5), "tz": TZ}
    arguments.update(overrides)
    return build_dose_sr(items, **arguments)  # type: ignore[arg-type]


def concept(item: Dataset) -> tuple[str, str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning


def children(item: Dataset, value: str) -> list[Dataset]:
    return [child for child in item.ContentSequence if concept(child)[0] == value]


def only(item: Dataset, value: str) -> Dataset:
    found = children(item, value)
    assert len(found) == 1, f"{value}: {len(found)} items"
    return found[0]


def number(item: Dataset) -> tuple[float, str]:
    measured = item.MeasuredValueSequence[0]
    return float(measured.NumericValue), measured.MeasurementUnitsCodeSequence[0].CodeValue


def event_containers(ds: Dataset) -> list[Dataset]:
    return children(ds, "113706")


def round_trip(ds: Dataset) -> Dataset:
    return pydicom.dcmread(DicomBytesIO(encode_part10(ds)))


def test_root_is_tid_10001_in_its_own_sr_series_of_the_study() -> None:
    ds = round_trip(build(events(1)))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.67"
    assert ds.SOPClassUID == pydicom.uid.XRayRadiationDoseSRStorage
    assert (ds.ValueType, concept(ds)) == (
        "CONTAINER", ("113701", "DCM", "X-Ray Radiation Dose Report"))
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "10001"
    assert ds.ContentTemplateSequence[0].MappingResource == "DCMR"
    assert ds.StudyInstanceUID == SCHEDULED.study_instance_uid
    assert (ds.Modality, ds.SeriesInstanceUID) == ("SR", SERIES.series_instance_uid)
    assert ds.TimezoneOffsetFromUTC == "+0100"
    assert (ds.ContentDate, ds.ContentTime) == ("20231114", "231500.000000")
    reported = only(ds, "121058")
    assert reported.ConceptCodeSequence[0].CodeValue == "113704"
    assert only(reported, "363703001").ConceptCodeSequence[0].CodeValue == "261004008"
    assert only(ds, "113854").ConceptCodeSequence[0].CodeValue == "113856"


def test_device_observer_is_our_equipment() -> None:
    ds = build(events(1))
    assert only(ds, "121005").ConceptCodeSequence[0].CodeValue == "121007"
    assert only(ds, "121012").UID == "1.2.3.4.88"
    texts = {concept(item)[0]: item.TextValue for item in ds.ContentSequence
             if item.ValueType == "TEXT"}
    assert texts == {"121013": DEVICE.station_name, "121014": DEVICE.manufacturer,
                     "121015": DEVICE.model_name, "121016": DEVICE.device_serial_number}


@pytest.mark.parametrize("count", [1, 3])
def test_one_tid_10003_container_per_event_with_the_event_uids(count: int) -> None:
    given = events(count)
    ds = round_trip(build(given))
    containers = event_containers(ds)
    assert len(containers) == count
    assert event_uids(ds) == [event.uid for event in given]
    for container, event in zip(containers, given, strict=True):
        assert container.ContentTemplateSequence[0].TemplateIdentifier == "10003"
        assert only(container, "113764").ConceptCodeSequence[0].CodeValue == "113622"
        assert only(container, "113721").ConceptCodeSequence[0].CodeValue == "113611"
        assert only(container, "111526").DateTime == \
            event.started_at.strftime("%Y%m%d%H%M%S.%f")


def test_technique_values_and_ucum_units() -> None:
    ds = round_trip(build(events(2)))
    second = event_containers(ds)[1]
    assert number(only(second, "113733")) == (71.0, "kV")
    assert number(only(second, "113824")) == (20.0, "ms")
    assert number(only(second, "113736")) == (10000.0, "uA.s")      # 10 mAs
    assert number(only(second, "113734")) == (500.0, "mA")         # 10 mAs in 20 ms
    value, unit = number(only(second, "122130"))
    assert unit == "Gy.m2" and value == pytest.approx(3.5e-5)      # 3.5 dGy·cm²


def test_accumulated_dose_sums_the_events() -> None:
    ds = round_trip(build(events(3)))
    accumulated = only(ds, "113702")
    assert accumulated.ContentTemplateSequence[0].TemplateIdentifier == "10002"
    assert only(accumulated, "113764").ConceptCodeSequence[0].CodeValue == "113622"
    value, unit = number(only(accumulated, "113722"))
    assert unit == "Gy.m2" and value == pytest.approx((2.5 + 3.5 + 4.5) * 1e-5)
    assert number(only(accumulated, "113731")) == (3.0, "1")


def test_without_dap_the_values_are_qualified_unknown_not_invented() -> None:
    ds = round_trip(build(events(2, dap=False)))
    for item in (only(event_containers(ds)[0], "122130"),
                 only(only(ds, "113702"), "113722"),
                 only(only(ds, "113702"), "113725")):
        assert len(item.MeasuredValueSequence) == 0
        assert item.NumericValueQualifierCodeSequence[0].CodeValue == "114010"


def test_one_event_without_dap_leaves_the_total_unknown() -> None:
    mixed = events(2)
    mixed[1] = replace(mixed[1], dap_dgycm2=None)
    ds = build(mixed)
    assert len(only(only(ds, "113702"), "113722").MeasuredValueSequence) == 0
    assert number(only(event_containers(ds)[0], "122130"))[1] == "Gy.m2"


def test_scope_is_the_mpps_when_there_is_one_else_the_study() -> None:
    scheduled = only(build(events(1)), "113705")
    assert scheduled.ConceptCodeSequence[0].CodeValue == "113016"
    assert only(scheduled, "121126").UID == \
        SCHEDULED.performed_procedure_step.referenced_sop_instance_uid  # type: ignore[union-attr]
    ds = build(events(1), order=UNSCHEDULED, series=UNSCHEDULED_SERIES)
    unscheduled = only(ds, "113705")
    assert unscheduled.ConceptCodeSequence[0].CodeValue == "113014"
    assert only(unscheduled, "110180").UID == UNSCHEDULED_SERIES.study_instance_uid
    assert len(ds.ReferencedPerformedProcedureStepSequence) == 0
    assert "ReferencedRequestSequence" not in ds


def test_request_and_performed_codes_only_what_is_known() -> None:
    ds = build(events(1))
    request = ds.ReferencedRequestSequence[0]
    assert request.RequestedProcedureID == SCHEDULED.requested_procedure_id
    assert request.AccessionNumber == SCHEDULED.accession_number
    assert len(ds.PerformedProcedureCodeSequence) == 0
    performed = Code("RPX1", "99LOCAL", "Chest two views")
    ds = build(events(1), performed_procedure_codes=(performed,))
    assert ds.PerformedProcedureCodeSequence[0].CodeValue == "RPX1"


def test_synchronization_only_when_the_clock_is_said_to_be_synchronised() -> None:
    assert "SynchronizationFrameOfReferenceUID" not in build(events(1))
    ds = build(events(1), clock_sync=ClockSync("NTP", "ntp1"))
    assert ds.SynchronizationFrameOfReferenceUID == "1.2.840.10008.15.1.1"
    assert (ds.AcquisitionTimeSynchronized, ds.TimeDistributionProtocol, ds.TimeSource) == (
        "Y", "NTP", "ntp1")


def test_codes_and_meanings_are_pydicom_s() -> None:
    """Every concept we write exists in PS3.16 (pydicom's dictionary) with that value."""
    known = {(scheme, code) for scheme, table in concepts.items()
             for entry in table.values() for code in entry}
    for name, value in vars(dose_sr).items():
        if isinstance(value, Code) and value.scheme in ("DCM", "SCT"):
            assert (value.scheme, value.value) in known, f"{name}: {value}"


def test_event_from_device_parameters() -> None:
    event = IrradiationEvent.from_device_parameters(
        "1.2.3.9", T0, {"kvp": 80.0, "mas": 5.0, "exposure_ms": 10.0, "dap_dgycm2": 1.25})
    assert (event.kvp, event.mas, event.exposure_ms, event.dap_dgycm2) == (80.0, 5.0, 10.0, 1.25)
    old = IrradiationEvent.from_device_parameters(
        "1.2.3.9", T0, {"kvp": 80.0, "mas": 5.0, "exposure_ms": 10.0})
    assert old.dap_dgycm2 is None
    with pytest.raises(IODError, match="reported no mas"):
        IrradiationEvent.from_device_parameters("1.2.3.9", T0, {"kvp": 80.0,
                                                                "exposure_ms": 10.0})


@pytest.mark.parametrize(("change", "message"), [
    ({"items": []}, "no irradiation event"),
    ({"uid": "1.02.3"}, "IrradiationEventUID"),
    ({"kvp": 0.0}, "kvp 0.0 is not a positive number of kV"),
    ({"mas": float("nan")}, "mas"),
    ({"dap_dgycm2": -1.0}, "dap_dgycm2"),
    ({"started_at": datetime(2023, 11, 14, 23, 10)}, "timezone-aware"),
    ({"duplicate": True}, "given twice"),
])
def test_bad_events_are_refused_before_building(change: dict[str, object],
                                                message: str) -> None:
    items = events(2)
    if "items" in change:
        items = []
    elif "duplicate" in change:
        items[1] = replace(items[1], uid=items[0].uid)
    else:
        items[0] = replace(items[0], **change)  # type: ignore[arg-type]
    with pytest.raises(IODError, match=message):
        build(items)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(IODError, match="Device Observer UID"):
        build(events(1), device_observer_uid="not-a-uid")
    with pytest.raises(IODError, match="before procedure_started"):
        build(events(1), procedure_ended=T0 - timedelta(seconds=1))
    with pytest.raises(IODError, match="StudyInstanceUID of the series differs"):
        build(events(1), series=replace(SERIES, study_instance_uid="1.2.3.4.999"))
    with pytest.raises(IODError, match="TimeDistributionProtocol"):
        build(events(1), clock_sync=ClockSync("CARRIER-PIGEON"))


def test_validation_names_what_is_wrong() -> None:
    ds = build(events(1))
    del ds.ContentSequence[-2].ContentSequence[1]      # the event's UID
    with pytest.raises(IODError, match="0 Irradiation Event UIDs"):
        dose_sr.validate_dose_sr(ds)
    ds = build(events(1))
    ds.ContentDate = ""
    with pytest.raises(IODError, match="ContentDate is empty"):
        dose_sr.validate_dose_sr(ds)


def test_doc_lists_the_modules_of_the_table() -> None:
    """docs/iods.md's dose SR table is `dose_sr.modules_markdown()` (no drift)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "iods.md").read_text(encoding="utf-8")
    begin, end = "<!-- dose-sr-module-table: begin -->\n", "<!-- dose-sr-module-table: end -->"
    assert begin in doc and end in doc, "docs/iods.md: the dose SR markers are missing"
    assert doc[doc.index(begin) + len(begin):doc.index(end)] == dose_sr.modules_markdown()
