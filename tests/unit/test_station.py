"""The station's rules, each in one place: frames per request, the X-ray confirmation, text
that may reach an object, the duplicate guard for a scheduled step, import only when
configured. Real queue and procedures; the device and the worklist are small fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.acquisition import AcquisitionResult, CapturedObject
from agent.config import load_config
from agent.errors import AcquisitionError
from agent.iod import UIDSource
from agent.iod.anatomy import Anatomy, AnatomyChoice, decide
from agent.procedures import Procedures
from agent.queue import QueueStore
from agent.records import Order
from agent.station import (
    AcquireRequest,
    ExposureNotConfirmed,
    ImportRequest,
    OrderChoice,
    Parts,
    RequestRefused,
    Station,
    StationLimits,
    check_text,
)

SC = "1.2.840.10008.5.1.4.1.1.7"
SCHEDULED = Order(patient_name="Sched^Uled", patient_id="P2", study_instance_uid="1.2.3",
                  accession_number="A1", sps_id="S1", scheduled=True)


@dataclass
class FakeAcquisition:
    """Counts what reached the device: the only effect that matters for exposures."""

    emits_radiation: bool = False
    exposures: int = 0
    queue: QueueStore | None = None
    last_frame: Any = None
    #: the real rule, as `[modality] iod` would set it: DX writes Image Laterality
    writes_laterality: bool = False
    #: what each acquisition was asked to write: (anatomy, protocol name)
    labels: list[tuple[Anatomy | None, str]] = field(default_factory=list)

    def anatomy_for(self, order: Order, choice: AnatomyChoice | None = None) -> Anatomy:
        return decide(order, choice or AnatomyChoice(), default_region=None,
                      writes_laterality=self.writes_laterality,
                      iod="dx" if self.writes_laterality else "secondary-capture")

    def acquire(self, order: Order, frames: int, *, anatomy: Anatomy | None = None,
                protocol_name: str = "") -> AcquisitionResult:
        assert self.queue is not None
        self.labels.append((anatomy, protocol_name))
        self.exposures += frames
        objects = []
        for i in range(frames):
            uid = f"2.25.{self.exposures}{i}"
            queued = self.queue.enqueue(b"DICM" * 8, sop_instance_uid=uid, sop_class_uid=SC,
                                        transfer_syntax_uid="1.2.840.10008.1.2.1")
            objects.append(CapturedObject(queued.queue_id, uid, i, SC))
        return AcquisitionResult(order.study_instance_uid or "", "2.25.9", tuple(objects))


@dataclass
class FakeItem:
    order: Order
    duplicate_reason: str = ""

    @property
    def is_duplicate(self) -> bool:
        return bool(self.duplicate_reason)

    def describe(self) -> str:
        return "SPS 'S1'"

    def to_order(self) -> Order:
        return self.order


@dataclass
class FakeWorklist:
    marked: list[tuple[str, str]] = field(default_factory=list)

    def find(self, accession: str | None = None, sps_id: str | None = None) -> FakeItem:
        return FakeItem(SCHEDULED)

    def mark_acquired(self, study: str, sps: str) -> None:
        self.marked.append((study, sps))


class FakeForwarder:
    def wake(self) -> None:
        pass


@pytest.fixture
def parts(tmp_path: Path) -> Any:
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'[agent]\nae_title = "MOD"\nspool_dir = "{tmp_path / "spool"}"\n'
        '[device]\ndriver = "simulated"\n'
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
        'called_ae = "PACS"\n')
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    procedures = Procedures(uids=UIDSource(), mpps=None, modality="OT", protocol_name="t",
                            state_path=tmp_path / "spool" / "procedures.json")
    yield Parts(config=load_config(config_path), queue=queue,
                acquisition=FakeAcquisition(queue=queue),  # type: ignore[arg-type]
                forwarder=FakeForwarder(), listener=None,  # type: ignore[arg-type]
                procedures=procedures, worklist=FakeWorklist())  # type: ignore[arg-type]
    queue.close()


def unscheduled(frames: int = 1, **kwargs: Any) -> AcquireRequest:
    return AcquireRequest(frames, OrderChoice(Order(patient_name="A^B", patient_id="P1")),
                          **kwargs)


def test_frames_per_request_are_bounded_by_the_config(parts: Parts) -> None:
    station = Station(parts, StationLimits(max_frames=5))
    with pytest.raises(RequestRefused, match=r"frames: expected 1\.\.5 \(\[api\] max_frames\)"):
        station.acquire(unscheduled(6))
    assert parts.acquisition.exposures == 0  # type: ignore[attr-defined]
    assert len(station.acquire(unscheduled(5)).objects) == 5


def test_an_xray_device_acquires_only_when_confirmed(parts: Parts) -> None:
    parts.acquisition.emits_radiation = True  # type: ignore[misc]
    station = Station(parts, StationLimits())
    with pytest.raises(ExposureNotConfirmed, match="X-ray"):
        station.acquire(unscheduled())
    assert parts.acquisition.exposures == 0  # type: ignore[attr-defined]
    assert sum(parts.queue.counts()["pacs"].values()) == 0
    station.acquire(unscheduled(exposure_confirmed=True))
    assert parts.acquisition.exposures == 1  # type: ignore[attr-defined]


def test_a_device_without_radiation_needs_no_confirmation(parts: Parts) -> None:
    assert len(Station(parts, StationLimits()).acquire(unscheduled()).objects) == 1


def test_acquiring_a_scheduled_step_marks_it_acquired_durably(parts: Parts) -> None:
    station = Station(parts, StationLimits())
    station.acquire(AcquireRequest(1, OrderChoice(accession="A1")))
    assert parts.worklist.marked == [("1.2.3", "S1")]  # type: ignore[union-attr]
    assert parts.procedures.was_acquired("1.2.3", "S1")
    # into the procedure in progress: the same rule, the same place
    procedure_id = station.procedures()[0]["procedure_id"]
    station.acquire(AcquireRequest(1, OrderChoice(procedure_id=procedure_id)))
    assert parts.worklist.marked == [("1.2.3", "S1")] * 2  # type: ignore[union-attr]
    restarted = Procedures(uids=UIDSource(), mpps=None, modality="OT", protocol_name="t",
                           state_path=parts.config.agent.spool_dir / "procedures.json")
    assert restarted.was_acquired("1.2.3", "S1")


def test_an_unscheduled_acquisition_marks_nothing(parts: Parts) -> None:
    Station(parts, StationLimits()).acquire(unscheduled())
    assert parts.worklist.marked == []  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["Smith\u202eJohn", "A\u0085B", "A^B\u2066", "A\\B",
                                  "A\x00B", "\ufeffA", "A\u200fB"])
def test_control_and_bidi_characters_never_reach_an_object(parts: Parts, name: str) -> None:
    station = Station(parts, StationLimits())
    request = AcquireRequest(1, OrderChoice(Order(patient_name=name, patient_id="P1")))
    with pytest.raises(RequestRefused, match=r"patient_name: character U\+"):
        station.acquire(request)
    assert parts.acquisition.exposures == 0  # type: ignore[attr-defined]
    with pytest.raises(RequestRefused):
        check_text("patient_name", name, 64)


def test_text_people_type_is_kept(parts: Parts) -> None:
    assert check_text("patient_name", " Müller^Zoë ", 64) == "Müller^Zoë"
    assert check_text("patient_name", "山田^太郎", 64) == "山田^太郎"


def test_import_is_refused_unless_folders_are_configured(parts: Parts, tmp_path: Path) -> None:
    with pytest.raises(RequestRefused, match=r"\[api\] import_folders"):
        Station(parts, StationLimits()).import_files(ImportRequest((tmp_path,)))


def test_an_ended_procedure_takes_no_more_images(parts: Parts) -> None:
    station = Station(parts, StationLimits())
    result = station.acquire(unscheduled(end="completed"))
    procedure_id = result.procedure["procedure_id"]
    with pytest.raises(AcquisitionError, match="is completed"):
        station.acquire(AcquireRequest(1, OrderChoice(procedure_id=procedure_id)))


@pytest.mark.parametrize(("days", "expired", "warning"), [
    (365, False, ""), (10, False, "expires in 10 day(s)"), (365, True, "expired")])
def test_status_shows_our_certificate_and_warns_30_days_ahead(
        tmp_path: Path, days: int, expired: bool, warning: str) -> None:
    from support.certs import TestCA

    from agent.station import Station as StationClass

    ca = TestCA.create(tmp_path / "ca")
    pair = ca.issue("modality1", days=days, expired=expired)
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'[agent]\nae_title = "MOD"\nspool_dir = "{tmp_path / "spool"}"\n'
        '[device]\ndriver = "simulated"\n'
        f'[tls]\ncertificate = "{pair.certificate}"\nprivate_key = "{pair.private_key}"\n'
        f'ca_file = "{pair.ca_file}"\n'
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
        'called_ae = "PACS"\n')
    parts = Parts(config=load_config(config_path), queue=None,  # type: ignore[arg-type]
                  acquisition=None, forwarder=None, listener=None,  # type: ignore[arg-type]
                  procedures=None)  # type: ignore[arg-type]
    shown = StationClass(parts, StationLimits())._tls_status()
    assert shown is not None and "CN=modality1" in shown["subject"]
    assert warning in shown["warning"] and bool(shown["warning"]) == bool(warning)
