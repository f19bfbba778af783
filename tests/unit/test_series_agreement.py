"""An image and its MPPS series item say the same about the series (issue 16 item 3): Protocol
Name, Series Description, Operators' Name and Performing Physician's Name are equal, or both
leave them out (the MPPS sends a Type 2 attribute empty); the Performed Protocol Code Sequence
lists the scheduled protocol only when the technologist confirmed it. Real station,
acquisition (simulated device), procedures, MPPS client (its journal) and queue."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from test_anatomy_request import OneItemWorklist
from test_station import SCHEDULED, FakeForwarder

from agent.acquisition import Acquisition
from agent.config import MppsSection, load_config
from agent.iod import UIDSource
from agent.mpps import MppsClient, series_values
from agent.mpps.dataset import final_n_set_dataset, n_create_dataset
from agent.mpps.journal import Journal
from agent.procedures import Procedures
from agent.queue import QueueStore
from agent.records import Code, DeviceInfo, Order
from agent.station import AcquireRequest, OrderChoice, Parts, Station, StationLimits

DEVICE = DeviceInfo("OT", "Example Medical", "XR-1", "SN-42", "ROOM1", "", "test")
PROTOCOL = Code("PROT-7", "99LOCAL", "Chest PA protocol")
ORDER = replace(SCHEDULED, sps_description="Chest PA standing", requested_procedure_id="RP1",
                scheduled_protocol_codes=(PROTOCOL,))
KEYWORDS = ("ProtocolName", "SeriesDescription", "OperatorsName", "PerformingPhysicianName")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Station, QueueStore, Path]]:
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'[agent]\nae_title = "MOD"\nspool_dir = "{tmp_path / "spool"}"\n'
        '[device]\ndriver = "simulated"\n'
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
        'called_ae = "PACS"\n')
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    mpps = MppsClient(MppsSection("127.0.0.1", 1, "RIS"), ae_title="MOD",
                      journal_dir=tmp_path / "mpps", uids=UIDSource(), station_name="ROOM1")
    acquisition = Acquisition(driver_name="simulated", driver_options={"width": 16,
                                                                       "height": 16},
                              device=DEVICE, queue=queue, uids=UIDSource())
    procedures = Procedures(uids=UIDSource(), mpps=mpps, modality="OT",
                            protocol_name="Site protocol")
    parts = Parts(config=load_config(config_path), queue=queue, acquisition=acquisition,
                  forwarder=FakeForwarder(), listener=None,  # type: ignore[arg-type]
                  procedures=procedures, mpps=mpps,
                  worklist=OneItemWorklist(ORDER))  # type: ignore[arg-type]
    try:
        yield Station(parts, StationLimits()), queue, tmp_path / "mpps"
    finally:
        acquisition.close()
        queue.close()


def record_of(journal_dir: Path) -> Any:
    [record] = Journal(journal_dir).open()
    return record


def acquire_and_end(world: tuple[Station, QueueStore, Path], choice: OrderChoice,
                    **request: Any) -> list[Any]:
    station, queue, _ = world
    result = station.acquire(AcquireRequest(2, choice, end="completed", **request))
    return [dcmread(queue.object_path(o.queue_id)) for o in result.objects]


@pytest.mark.parametrize(("choice", "protocol_name"), [
    (OrderChoice(accession="A1"), "Chest PA standing"),        # the scheduled step's
    (OrderChoice(Order(patient_name="A^B", patient_id="P1")), "Site protocol"),
])
def test_an_image_and_its_mpps_series_item_agree(
        world: tuple[Station, QueueStore, Path], choice: OrderChoice,
        protocol_name: str) -> None:
    journal_dir = world[2]
    images = acquire_and_end(world, choice)
    [item] = final_n_set_dataset(record_of(journal_dir)).PerformedSeriesSequence
    assert item.SeriesInstanceUID == images[0].SeriesInstanceUID
    for image in images:
        assert image.ProtocolName == protocol_name
        for keyword in KEYWORDS:
            in_image = str(image.get(keyword, "") or "")
            assert str(item.get(keyword, "") or "") == in_image, keyword
        values = series_values(image)
        assert values["protocol_name"] == str(item.ProtocolName)


def test_the_performed_protocol_is_the_scheduled_one_only_when_confirmed(
        world: tuple[Station, QueueStore, Path]) -> None:
    journal_dir = world[2]
    acquire_and_end(world, OrderChoice(accession="A1"))
    assert n_create_dataset(record_of(journal_dir)).PerformedProtocolCodeSequence == []


def test_a_confirmed_protocol_is_listed_as_performed(
        world: tuple[Station, QueueStore, Path]) -> None:
    journal_dir = world[2]
    acquire_and_end(world, OrderChoice(accession="A1"), performed_as_scheduled=True)
    [code] = n_create_dataset(record_of(journal_dir)).PerformedProtocolCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        PROTOCOL.value, PROTOCOL.scheme, PROTOCOL.meaning)
