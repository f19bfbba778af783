"""Issue 18 item 4b: an ended procedure does not keep its images. Its SOP references and
exposures are needed only until its end is durably handled (the MPPS final with the rejected
images left out, the dose SR queued); afterwards the daemon keeps counts for the console, so it
no longer grows with every image acquired (bench soak), neither in memory nor in
procedures.json. Rejecting an image of an ended procedure needs none of it: it comes from the
queue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_rejection import queue_image

from agent.acquisition import AcquisitionResult, CapturedObject
from agent.config import load_config
from agent.iod import UIDSource
from agent.iod.dose_sr import IrradiationEvent
from agent.procedures import KEEP_ENDED, Procedures
from agent.queue import QueueStore
from agent.records import Order, SOPReference
from agent.station import AcquireRequest, OrderChoice, Parts, RejectRequest, Station, StationLimits

SC = "1.2.840.10008.5.1.4.1.1.7"
IMAGES = 20


def saved(path: Path) -> Procedures:
    return Procedures(uids=UIDSource(), mpps=None, modality="DX", protocol_name="t",
                      state_path=path)


def event(uid: str) -> IrradiationEvent:
    return IrradiationEvent(uid=uid, started_at=datetime(2026, 1, 1, tzinfo=UTC), kvp=70.0,
                            mas=2.0, exposure_ms=10.0)


def image_uid(patient: int, image: int) -> str:
    return f"2.25.{1000 + patient}{image:04d}"


def acquire_and_end(procedures: Procedures, patient: int, status: str) -> str:
    procedure = procedures.start(Order(patient_name="A^B", patient_id=f"P{patient}"))
    for series in (1, 2):
        uids = [image_uid(patient, series * 100 + i) for i in range(IMAGES // 2)]
        procedures.record_series(procedure, f"2.25.9{patient}{series}",
                                 [SOPReference(SC, u) for u in uids],
                                 events=[event(f"2.25.8{patient}{series}")])
    procedures.end(procedure.procedure_id, status)  # type: ignore[arg-type]
    return procedure.procedure_id


def test_ended_procedures_keep_counts_not_image_references(tmp_path: Path) -> None:
    state = tmp_path / "procedures.json"
    procedures = saved(state)
    ended = [acquire_and_end(procedures, patient, status)
             for patient, status in enumerate(["completed", "discontinued"] * 5)]
    still_open = procedures.start(Order(patient_name="Open^One", patient_id="OPEN"))
    procedures.record_series(still_open, "2.25.77", [SOPReference(SC, "2.25.7701")],
                             events=[event("2.25.7702")])

    for procedure_id in ended:
        procedure = procedures.get(procedure_id)
        assert procedure.series == {} and procedure.events == []
        shown = procedure.as_json()["series"]
        assert [s["images"] for s in shown] == [IMAGES // 2, IMAGES // 2]
    # the open one keeps everything its MPPS and dose SR will need at its end
    assert procedures.get(still_open.procedure_id).series == {
        "2.25.77": [SOPReference(SC, "2.25.7701")]}

    text = state.read_text()
    ended_uids = [image_uid(p, s * 100 + i)
                  for p in range(10) for s in (1, 2) for i in range(IMAGES // 2)]
    assert [u for u in ended_uids if u in text] == []
    assert "2.25.7701" in text and "2.25.7702" in text

    again = saved(state)                                    # the daemon restarted
    for procedure_id in ended:
        procedure = again.get(procedure_id)
        assert procedure.series == {} and procedure.events == []
        assert [s["images"] for s in procedure.as_json()["series"]] == [IMAGES // 2] * 2
    resumed = again.get(still_open.procedure_id)
    assert resumed.series == {"2.25.77": [SOPReference(SC, "2.25.7701")]}
    assert [e.uid for e in resumed.events] == ["2.25.7702"]


def test_the_state_file_stays_bounded_however_many_procedures_end(tmp_path: Path) -> None:
    state = tmp_path / "procedures.json"
    procedures = saved(state)
    sizes = []
    for patient in range(KEEP_ENDED + 20):
        acquire_and_end(procedures, patient, "completed")
        sizes.append(state.stat().st_size)
    # once KEEP_ENDED are kept, each new one replaces the oldest: the file no longer grows
    # (a few bytes of jitter from the lengths of ids and times)
    assert max(sizes[KEEP_ENDED:]) - min(sizes[KEEP_ENDED:]) < 200
    assert len(procedures.all()) == KEEP_ENDED


def test_a_file_from_before_keeps_no_references_of_ended_procedures(tmp_path: Path) -> None:
    """procedures.json written by the version before this one held every image of its ended
    procedures; they are dropped as it loads (the end was handled then) and counts kept."""
    state = tmp_path / "procedures.json"
    procedure_id = acquire_and_end(saved(state), 1, "completed")
    data = json.loads(state.read_text())
    [record] = data["procedures"]
    del record["image_counts"]
    record["series"] = {f"2.25.91{s}": [[SC, image_uid(1, s * 100 + i)]
                                       for i in range(IMAGES // 2)] for s in (1, 2)}
    record["events"] = [{"uid": "2.25.811", "started_at": "2026-01-01T00:00:00+00:00",
                         "kvp": 70.0, "mas": 2.0, "exposure_ms": 10.0, "dap_dgycm2": None}]
    state.write_text(json.dumps(data))

    procedures = saved(state)
    procedure = procedures.get(procedure_id)
    assert procedure.series == {} and procedure.events == []
    assert [s["images"] for s in procedure.as_json()["series"]] == [IMAGES // 2] * 2
    procedures.start(Order(patient_name="C^D", patient_id="P2"))          # saves
    assert image_uid(1, 100) not in state.read_text()


def test_images_recorded_into_a_procedure_that_just_ended_are_counted(tmp_path: Path) -> None:
    """An acquisition that was running while another request ended its procedure: its images
    are queued, only counted (the MPPS is final already)."""
    procedures = saved(tmp_path / "procedures.json")
    procedure = procedures.start(Order(patient_name="A^B", patient_id="P1"))
    procedures.record_series(procedure, "2.25.1", [SOPReference(SC, "2.25.11")])
    procedures.end(procedure.procedure_id, "completed")
    procedures.record_series(procedure, "2.25.2", [SOPReference(SC, "2.25.21"),
                                                  SOPReference(SC, "2.25.22")])
    assert procedure.series == {}
    assert procedure.as_json()["series"] == [
        {"series_instance_uid": "2.25.1", "images": 1},
        {"series_instance_uid": "2.25.2", "images": 2}]


# -- rejection of an image whose procedure has ended, through the station ---------------------
@dataclass
class DicomAcquisition:
    """Queues real (DX) images, so that rejection can read their headers."""

    queue: QueueStore
    emits_radiation: bool = False
    last_frame: Any = None
    count: int = 0

    def anatomy_for(self, order: Order, choice: Any = None) -> None:
        return None

    def acquire(self, order: Order, frames: int, *, anatomy: Any = None,
                protocol_name: str = "") -> AcquisitionResult:
        objects = []
        for index in range(frames):
            self.count += 1
            uid = f"2.25.555{self.count}"
            queue_id = queue_image(self.queue, uid)
            objects.append(CapturedObject(queue_id, uid, index,
                                          self.queue.get_object(queue_id).sop_class_uid))
        return AcquisitionResult(order.study_instance_uid or "", "2.25.9", tuple(objects))


class FakeForwarder:
    def wake(self) -> None:
        pass


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'[agent]\nae_title = "MOD"\nspool_dir = "{tmp_path / "spool"}"\n'
        '[device]\ndriver = "simulated"\n'
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
        'called_ae = "PACS"\n')
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    try:
        yield Station(Parts(
            config=load_config(config_path), queue=queue,
            acquisition=DicomAcquisition(queue),  # type: ignore[arg-type]
            forwarder=FakeForwarder(), listener=None,  # type: ignore[arg-type]
            procedures=saved(tmp_path / "spool" / "procedures.json"),
            worklist=None), StationLimits())
    finally:
        queue.close()


def test_an_image_of_an_ended_procedure_can_still_be_rejected(station: Station) -> None:
    result = station.acquire(AcquireRequest(
        2, OrderChoice(Order(patient_name="A^B", patient_id="P1")), end="completed"))
    assert result.procedure["state"] == "completed"
    assert [s["images"] for s in result.procedure["series"]] == [2]
    blurred = result.objects[0].sop_instance_uid
    rejected = station.reject(RejectRequest((blurred,), "quality"))
    assert rejected["rejected"] == [blurred]
    assert [c["queue_id"] for c in rejected["cancelled"]] == [result.objects[0].queue_id]
