"""The dose SR wired in (issue 16 items 1 and 2): each exposure's image carries its Irradiation
Event UID and the acquisition returns the event; the procedure keeps its events across a
restart; ending it queues one dose SR before the MPPS is final, which lists it; the MPPS of an
ending procedure leaves rejected images out."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from agent import acquisition as acquisition_module
from agent.acquisition import Acquisition
from agent.config import MppsSection
from agent.dose_report import device_observer_uid, queue_dose_report
from agent.errors import IODError
from agent.iod import UIDSource, build_image, new_series_context
from agent.iod.dose_sr import XRAY_RADIATION_DOSE_SR, IrradiationEvent, event_uids
from agent.mpps import MppsClient
from agent.mpps.dataset import final_n_set_dataset
from agent.mpps.journal import Journal
from agent.procedures import Procedure, ProcedureError, Procedures
from agent.queue import QueueStore
from agent.records import DeviceInfo, Order, SOPReference
from drivers.frame import Frame
from drivers.simulated import SimulatedDriver

DX = "1.2.840.10008.5.1.4.1.1.1.1"
DEVICE = DeviceInfo("DX", "Example Medical", "XR-1", "SN-42", "ROOM1", "", "test")
ORDER = Order(patient_name="Test^Patient", patient_id="T1")


class XRaySimulator(SimulatedDriver):
    """The simulated device as an X-ray source: its frames carry kvp/mas/exposure_ms."""

    emits_radiation = True


def radiation_driver(name: str, options: dict[str, object]) -> SimulatedDriver:
    return XRaySimulator(**options)


def frame(**parameters: Any) -> Frame:
    return Frame(pixels=np.zeros((8, 8), np.uint16), bits_stored=12,
                 photometric_interpretation="MONOCHROME2", t_mono=1.0, t_wall=1.7e9,
                 sequence_number=0, pixel_spacing_mm=(0.2, 0.2),
                 device_parameters={"patient_orientation": ("L", "F"), **parameters})


def event(uid: str, kvp: float = 81.0) -> IrradiationEvent:
    return IrradiationEvent(uid, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), kvp, 4.0, 12.5, 1.5)


def dx(irradiation_event_uid: str | None) -> Any:
    uids = UIDSource()
    series = new_series_context(uids, ORDER, started_at=datetime(2026, 1, 2), series_number=1)
    return build_image("dx", [frame()], order=ORDER, device=DEVICE, series=series,
                       instance_number=1, sop_instance_uid=uids.new_uid(), tz=UTC,
                       irradiation_event_uid=irradiation_event_uid, image_laterality="R")


# -- 1. the image names its exposure, the acquisition returns it ----------------------------------
def test_a_dx_image_carries_the_irradiation_event_uid_it_is_given() -> None:
    assert dx("2.25.77").IrradiationEventUID == "2.25.77"
    assert "IrradiationEventUID" not in dx(None)          # no exposure: nothing written


def test_an_invalid_irradiation_event_uid_is_refused_naming_it() -> None:
    with pytest.raises(IODError, match="General Acquisition: IrradiationEventUID"):
        dx("not.a.uid")


def test_each_exposure_gets_its_own_event_uid_in_its_image_and_the_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acquisition_module, "create_driver", radiation_driver)
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    acquisition = Acquisition(driver_name="simulated",
                              driver_options={"width": 16, "height": 16, "kvp": 81.0,
                                              "mas": 4.0, "exposure_ms": 12.5},
                              device=DEVICE, queue=queue, uids=UIDSource())
    try:
        result = acquisition.acquire(ORDER, 3)
        assert len(result.events) == 3 and len({e.uid for e in result.events}) == 3
        for obj, exposure in zip(result.objects, result.events, strict=True):
            ds = dcmread(queue.object_path(obj.queue_id))
            assert ds.IrradiationEventUID == exposure.uid == obj.irradiation_event_uid
            assert (exposure.kvp, exposure.mas, exposure.exposure_ms) == (81.0, 4.0, 12.5)
            assert exposure.started_at.tzinfo is not None
    finally:
        acquisition.close()
        queue.close()


def test_a_device_without_radiation_makes_no_event(tmp_path: Path) -> None:
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    acquisition = Acquisition(driver_name="simulated", driver_options={"width": 16,
                                                                       "height": 16},
                              device=DEVICE, queue=queue, uids=UIDSource())
    try:
        result = acquisition.acquire(ORDER, 1)
        assert result.events == ()
        assert "IrradiationEventUID" not in dcmread(
            queue.object_path(result.objects[0].queue_id))
    finally:
        acquisition.close()
        queue.close()


# -- 2. the procedure keeps its events ------------------------------------------------------------
def test_events_are_kept_with_the_procedure_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "procedures.json"
    procedures = Procedures(uids=UIDSource(), mpps=None, modality="DX", protocol_name="t",
                            state_path=path)
    procedure = procedures.start(ORDER)
    procedures.record_series(procedure, "2.25.1", [SOPReference(DX, "2.25.2")],
                             events=[event("2.25.3")])
    procedures.record_series(procedure, "2.25.1", [SOPReference(DX, "2.25.4")],
                             events=[event("2.25.5", kvp=90.0)])
    again = Procedures(uids=UIDSource(), mpps=None, modality="DX", protocol_name="t",
                       state_path=path).get(procedure.procedure_id)
    assert again.events == [event("2.25.3"), event("2.25.5", kvp=90.0)]


def test_a_procedures_file_from_before_the_dose_sr_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "procedures.json"
    procedures = Procedures(uids=UIDSource(), mpps=None, modality="DX", protocol_name="t",
                            state_path=path)
    procedure = procedures.start(ORDER)
    data = json.loads(path.read_text())
    for saved in data["procedures"]:
        del saved["events"], saved["dose_report_uids"]
    path.write_text(json.dumps(data))
    again = Procedures(uids=UIDSource(), mpps=None, modality="DX", protocol_name="t",
                       state_path=path).get(procedure.procedure_id)
    assert again.events == [] and again.dose_report_uids is None


# -- 3. one dose SR per procedure, queued before the MPPS is final --------------------------------
def mpps_client(tmp_path: Path) -> MppsClient:
    return MppsClient(MppsSection("127.0.0.1", 1, "RIS"), ae_title="MODALITY1",
                      journal_dir=tmp_path / "mpps", uids=UIDSource(), station_name="ROOM1")


def final_series(tmp_path: Path) -> list[Any]:
    [record] = Journal(tmp_path / "mpps").open()
    return list(final_n_set_dataset(record).PerformedSeriesSequence)


def with_dose_report(tmp_path: Path, queue: QueueStore,
                     **kwargs: Any) -> tuple[Procedures, MppsClient]:
    uids = UIDSource()
    mpps = mpps_client(tmp_path)

    def ending(procedure: Procedure) -> list[tuple[str, tuple[SOPReference, ...]]]:
        # the MPPS is not final yet when the report is queued
        [record] = Journal(tmp_path / "mpps").open()
        assert record.final_status is None
        return queue_dose_report(queue, uids, DEVICE, procedure, UTC)

    procedures = Procedures(uids=uids, mpps=mpps, modality="DX", protocol_name="t",
                            on_ending=ending, **kwargs)
    return procedures, mpps


@pytest.mark.parametrize("status", ["completed", "discontinued"])
def test_ending_queues_one_dose_sr_that_the_mpps_lists(tmp_path: Path, status: str) -> None:
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    try:
        procedures, _ = with_dose_report(tmp_path, queue)
        procedure = procedures.start(ORDER)
        procedures.record_series(procedure, "2.25.10",
                                 [SOPReference(DX, "2.25.11"), SOPReference(DX, "2.25.12")],
                                 events=[event("2.25.13"), event("2.25.14")])
        procedures.end(procedure.procedure_id, status)  # type: ignore[arg-type]
        assert procedure.dose_report_uids is not None
        series_uid, sop_uid = procedure.dose_report_uids
        [queued] = queue.objects_by_uid([sop_uid]).values()
        report = dcmread(queue.object_path(queued.queue_id))
        assert report.SOPClassUID == XRAY_RADIATION_DOSE_SR
        assert event_uids(report) == ["2.25.13", "2.25.14"]
        assert report.StudyInstanceUID == procedure.order.study_instance_uid
        assert report.SeriesInstanceUID == series_uid != "2.25.10"
        items = {str(i.SeriesInstanceUID): i for i in final_series(tmp_path)}
        sr_item = items[series_uid]
        assert [r.ReferencedSOPInstanceUID for r in
                sr_item.ReferencedNonImageCompositeSOPInstanceSequence] == [sop_uid]
        assert sr_item.ReferencedImageSequence == []
        # the series item carries what the report carries, no other value (issue 16 item 3)
        assert sr_item.SeriesDescription == report.SeriesDescription != ""
        assert len(items["2.25.10"].ReferencedImageSequence) == 2
    finally:
        queue.close()


def test_a_procedure_without_exposures_makes_no_dose_sr(tmp_path: Path) -> None:
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    try:
        procedures, _ = with_dose_report(tmp_path, queue)
        procedure = procedures.start(ORDER)
        procedures.record_series(procedure, "2.25.10", [SOPReference(DX, "2.25.11")])
        procedures.end(procedure.procedure_id, "completed")
        assert procedure.dose_report_uids is None
        assert [str(i.SeriesInstanceUID) for i in final_series(tmp_path)] == ["2.25.10"]
        assert len(queue.deliveries(destination="pacs")) == 0
    finally:
        queue.close()


def test_a_report_that_cannot_be_queued_refuses_the_end_and_a_retry_queues_one(
        tmp_path: Path) -> None:
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    calls: list[str] = []
    try:
        uids = UIDSource()

        def ending(procedure: Procedure) -> list[tuple[str, tuple[SOPReference, ...]]]:
            result = queue_dose_report(queue, uids, DEVICE, procedure, UTC)
            calls.append("queued")
            if len(calls) == 1:
                raise IODError("simulated failure after queueing")
            return result

        procedures = Procedures(uids=uids, mpps=mpps_client(tmp_path), modality="DX",
                                protocol_name="t", on_ending=ending)
        procedure = procedures.start(ORDER)
        procedures.record_series(procedure, "2.25.10", [SOPReference(DX, "2.25.11")],
                                 events=[event("2.25.13")])
        with pytest.raises(ProcedureError, match="dose report cannot be queued"):
            procedures.end(procedure.procedure_id, "completed")
        assert procedure.state == "in_progress" and procedure.ended_at is None
        procedures.end(procedure.procedure_id, "completed")
        assert procedure.state == "completed"
        assert len(queue.deliveries(destination="pacs")) == 1      # one report, not two
    finally:
        queue.close()


def test_the_device_observer_uid_is_stable_per_device_and_under_the_root() -> None:
    rooted = UIDSource("1.2.826.0.1.3680043.10.1234")
    assert device_observer_uid(rooted, DEVICE) == device_observer_uid(rooted, DEVICE)
    assert device_observer_uid(rooted, DEVICE).startswith("1.2.826.0.1.3680043.10.1234.")
    other = DeviceInfo("DX", "Example Medical", "XR-1", "SN-43", "ROOM1", "", "test")
    assert device_observer_uid(rooted, other) != device_observer_uid(rooted, DEVICE)
    assert device_observer_uid(UIDSource(), DEVICE).startswith("2.25.")
    with pytest.raises(IODError, match="device_serial_number"):
        device_observer_uid(rooted, DeviceInfo("DX", "M", "X", "", "R", "", "t"))


# -- 4. rejected images leave the MPPS --------------------------------------------------------
def test_rejected_images_are_left_out_of_the_mpps_series_kept(tmp_path: Path) -> None:
    rejected = {"2.25.12", "2.25.21"}
    procedures = Procedures(uids=UIDSource(), mpps=mpps_client(tmp_path), modality="DX",
                            protocol_name="t",
                            is_rejected=lambda uids: rejected & set(uids))
    procedure = procedures.start(ORDER)
    procedures.record_series(procedure, "2.25.10",
                             [SOPReference(DX, "2.25.11"), SOPReference(DX, "2.25.12")])
    procedures.record_series(procedure, "2.25.20", [SOPReference(DX, "2.25.21")])
    procedures.end(procedure.procedure_id, "completed")
    items = {str(i.SeriesInstanceUID): [str(r.ReferencedSOPInstanceUID)
                                        for r in i.ReferencedImageSequence]
             for i in final_series(tmp_path)}
    assert items == {"2.25.10": ["2.25.11"], "2.25.20": []}


def test_completing_with_every_image_rejected_is_refused(tmp_path: Path) -> None:
    procedures = Procedures(uids=UIDSource(), mpps=mpps_client(tmp_path), modality="DX",
                            protocol_name="t", is_rejected=lambda uids: set(uids))  # all
    procedure = procedures.start(ORDER)
    procedures.record_series(procedure, "2.25.10", [SOPReference(DX, "2.25.11")])
    with pytest.raises(ProcedureError, match="every image is rejected"):
        procedures.end(procedure.procedure_id, "completed")
    procedures.end(procedure.procedure_id, "discontinued")
    assert [len(i.ReferencedImageSequence) for i in final_series(tmp_path)] == [0]


def test_a_dose_sr_reaches_part10_readable(tmp_path: Path) -> None:
    """What is queued is a Part 10 file pydicom reads back as the same report."""
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    try:
        procedures, _ = with_dose_report(tmp_path, queue)
        procedure = procedures.start(ORDER)
        procedures.record_series(procedure, "2.25.10", [SOPReference(DX, "2.25.11")],
                                 events=[event("2.25.13")])
        procedures.end(procedure.procedure_id, "completed")
        assert procedure.dose_report_uids is not None
        [queued] = queue.objects_by_uid([procedure.dose_report_uids[1]]).values()
        data = queue.object_path(queued.queue_id).read_bytes()
        assert dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    finally:
        queue.close()
