"""Region and side end to end before the exposure (issue 16 item 3): the order names them when
it can, the technologist gives them otherwise (console, CLI, POST /api/acquire), and a DX of a
paired body part whose side nobody gave is refused with HTTP 400 before the device fires.
Real station, procedures, queue and routes; the device is test_station's counting fake."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from test_station import SCHEDULED, FakeAcquisition, FakeForwarder, FakeItem

from agent.api.routes import create_app, parse_acquire_request
from agent.api.security import SecurityPolicy
from agent.config import load_config
from agent.errors import IODError
from agent.iod import UIDSource
from agent.iod.anatomy import BY_BODY_PART, AnatomyChoice, decide, from_order
from agent.procedures import Procedures
from agent.queue import QueueStore
from agent.records import Code, Order
from agent.station import AcquireRequest, OrderChoice, Parts, RequestRefused, Station, StationLimits

TOKEN = "anatomy-token"
POLICY = SecurityPolicy(token=TOKEN, api_host="127.0.0.1", api_port=8471,
                        allowed_hosts=frozenset())
UNSCHEDULED = Order(patient_name="A^B", patient_id="P1")
HAND = BY_BODY_PART["HAND"].code
CHEST = BY_BODY_PART["CHEST"].code


def ordered(meaning: str, description: str = "") -> Order:
    return replace(SCHEDULED, sps_description=description,
                   scheduled_protocol_codes=(Code("P1", "99LOCAL", meaning),))


class OneItemWorklist:
    def __init__(self, order: Order) -> None:
        self.order = order

    def find(self, accession: str | None = None, sps_id: str | None = None) -> FakeItem:
        return FakeItem(self.order)

    def mark_acquired(self, study: str, sps: str) -> None:
        pass


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'[agent]\nae_title = "MOD"\nspool_dir = "{tmp_path / "spool"}"\n'
        '[device]\ndriver = "simulated"\n'
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
        'called_ae = "PACS"\n')
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    procedures = Procedures(uids=UIDSource(), mpps=None, modality="DX",
                            protocol_name="Site DX protocol")
    try:
        yield Parts(config=load_config(config_path), queue=queue,
                    acquisition=FakeAcquisition(  # type: ignore[arg-type]
                        queue=queue, emits_radiation=True, writes_laterality=True),
                    forwarder=FakeForwarder(), listener=None,  # type: ignore[arg-type]
                    procedures=procedures,
                    worklist=OneItemWorklist(ordered("XR Knee Right")))  # type: ignore[arg-type]
    finally:
        queue.close()


def expose(frames: int = 1, choice: OrderChoice | None = None, **anatomy: Any) -> AcquireRequest:
    return AcquireRequest(frames, choice or OrderChoice(UNSCHEDULED), exposure_confirmed=True,
                          anatomy=AnatomyChoice(**anatomy))


# -- what an order says -------------------------------------------------------------------------
@pytest.mark.parametrize(("meaning", "body_part", "side"), [
    ("XR Hand Left 3 views", "HAND", "L"),
    ("XR KNEE RIGHT", "KNEE", "R"),
    ("Chest PA protocol", "CHEST", None),
    ("Lumbar spine lateral", "LSPINE", None),          # not also "spine"
    ("Feet bilateral", None, "B"),                     # "feet" is not a term: asked
    ("Hand and wrist left", None, "L"),                # two regions: asked, never guessed
    ("Knee left and right", "KNEE", None),             # two sides: asked
    ("Handheld unit", None, None),                     # whole words only
])
def test_the_order_names_region_and_side_only_when_unambiguous(
        meaning: str, body_part: str | None, side: str | None) -> None:
    found = from_order(ordered(meaning))
    assert found.region == (BY_BODY_PART[body_part].code if body_part else None)
    assert found.laterality == side


def test_an_anatomic_code_in_the_order_is_its_region() -> None:
    order = replace(SCHEDULED, requested_procedure_codes=(Code("85562004", "SCT", "Hand"),))
    assert from_order(order).region == HAND


# -- the station refuses before the exposure ---------------------------------------------------
def test_a_dx_without_region_or_side_is_refused_before_any_exposure(parts: Parts) -> None:
    station = Station(parts, StationLimits())
    with pytest.raises(RequestRefused, match=r"ImageLaterality.*--laterality R\|L\|B\|U"):
        station.acquire(expose())
    assert parts.acquisition.exposures == 0  # type: ignore[attr-defined]
    assert station.procedures() == []             # no procedure, no MPPS was started


def test_a_paired_region_without_a_side_is_refused_before_any_exposure(parts: Parts) -> None:
    station = Station(parts, StationLimits())
    with pytest.raises(RequestRefused, match=r"'Hand' \(85562004\) is a paired body part"):
        station.acquire(expose(body_part="HAND"))
    assert parts.acquisition.exposures == 0  # type: ignore[attr-defined]


def test_the_side_given_reaches_the_images(parts: Parts) -> None:
    station = Station(parts, StationLimits())
    station.acquire(expose(body_part="hand", laterality="L"))
    [(anatomy, _)] = parts.acquisition.labels  # type: ignore[attr-defined]
    assert (anatomy.region, anatomy.laterality) == (HAND, "L")


def test_an_unpaired_region_is_u_without_asking(parts: Parts) -> None:
    Station(parts, StationLimits()).acquire(expose(body_part="CHEST"))
    [(anatomy, _)] = parts.acquisition.labels  # type: ignore[attr-defined]
    assert (anatomy.region, anatomy.laterality) == (CHEST, "U")


def test_u_for_a_paired_region_is_refused(parts: Parts) -> None:
    with pytest.raises(RequestRefused, match="'U' means unpaired"):
        Station(parts, StationLimits()).acquire(expose(body_part="KNEE", laterality="U"))
    assert parts.acquisition.exposures == 0  # type: ignore[attr-defined]


def test_the_order_gives_region_and_side(parts: Parts) -> None:
    Station(parts, StationLimits()).acquire(expose(choice=OrderChoice(accession="A1")))
    [(anatomy, protocol)] = parts.acquisition.labels  # type: ignore[attr-defined]
    assert (anatomy.region, anatomy.laterality) == (BY_BODY_PART["KNEE"].code, "R")
    assert (anatomy.region_source, anatomy.laterality_source) == ("order", "order")
    assert protocol == "Site DX protocol"       # the order has no SPS description


def test_a_side_that_contradicts_the_order_is_refused(parts: Parts) -> None:
    station = Station(parts, StationLimits())
    with pytest.raises(RequestRefused, match="the order says R, not L"):
        station.acquire(expose(choice=OrderChoice(accession="A1"), laterality="L"))
    with pytest.raises(RequestRefused, match="the order names Knee, not Hand"):
        station.acquire(expose(choice=OrderChoice(accession="A1"), body_part="HAND"))
    assert parts.acquisition.exposures == 0  # type: ignore[attr-defined]


def test_an_unknown_body_part_is_refused_naming_the_known_ones(parts: Parts) -> None:
    with pytest.raises(RequestRefused, match=r"body_part: 'NOSE' is not one of .*HAND"):
        Station(parts, StationLimits()).acquire(expose(body_part="NOSE", laterality="B"))


def test_a_side_for_an_iod_without_image_laterality_is_refused() -> None:
    with pytest.raises(IODError, match="secondary-capture objects carry no Image Laterality"):
        decide(UNSCHEDULED, AnatomyChoice(laterality="L"), default_region=None,
               writes_laterality=False, iod="secondary-capture")
    kept = decide(UNSCHEDULED, AnatomyChoice(body_part="HAND"), default_region=None,
                  writes_laterality=False, iod="secondary-capture")
    assert (kept.region, kept.laterality) == (HAND, None)


def test_the_config_region_is_the_last_resort() -> None:
    used = decide(UNSCHEDULED, AnatomyChoice(), default_region=CHEST, writes_laterality=True,
                  iod="dx")
    assert (used.region, used.laterality, used.region_source) == (CHEST, "U", "config")


def test_start_tells_the_console_what_to_ask(parts: Parts) -> None:
    started = Station(parts, StationLimits()).start_procedure(OrderChoice(UNSCHEDULED))
    assert started.procedure["anatomy"] == {"needs_side": True, "missing": True,
                                            "body_part": None, "laterality": None}
    scheduled = Station(parts, StationLimits()).start_procedure(OrderChoice(accession="A1"))
    assert scheduled.procedure["anatomy"] == {"needs_side": True, "missing": False,
                                              "body_part": "Knee", "laterality": "R"}


# -- the API ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "message"), [
    ({"laterality": "X"}, "laterality: expected one of"),
    ({"laterality": "l"}, "laterality: expected one of"),
    ({"body_part": "HAND; DROP"}, "body_part: expected a Body Part Examined term"),
    ({"body_part": 3}, "body_part: expected"),
    ({"performed_as_scheduled": "yes"}, "performed_as_scheduled: expected true or false"),
])
def test_the_request_fields_are_checked(body: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestRefused, match=message):
        parse_acquire_request({"unscheduled": True, "patient_id": "P", "patient_name": "A^B",
                               **body})


def test_the_request_fields_are_parsed() -> None:
    parsed = parse_acquire_request({"unscheduled": True, "patient_id": "P",
                                    "patient_name": "A^B", "body_part": "hand",
                                    "laterality": "L", "performed_as_scheduled": True})
    assert parsed.anatomy == AnatomyChoice("HAND", "L")
    assert parsed.performed_as_scheduled


def test_post_acquire_of_a_paired_region_without_a_side_is_400(parts: Parts) -> None:
    app = create_app(Station(parts, StationLimits()), POLICY)
    with TestClient(app, base_url="http://127.0.0.1:8471") as client:
        response = client.post(
            "/api/acquire", headers={"Authorization": f"Bearer {TOKEN}"},
            json={"unscheduled": True, "patient_id": "P1", "patient_name": "A^B",
                  "confirm_exposure": True, "body_part": "KNEE"})
        assert response.status_code == 400, response.text
        assert "is a paired body part" in response.json()["error"]
        assert parts.acquisition.exposures == 0  # type: ignore[attr-defined]
        response = client.post(
            "/api/acquire", headers={"Authorization": f"Bearer {TOKEN}"},
            json={"unscheduled": True, "patient_id": "P1", "patient_name": "A^B",
                  "confirm_exposure": True, "body_part": "KNEE", "laterality": "L"})
        assert response.status_code == 200, response.text
        assert parts.acquisition.exposures == 1  # type: ignore[attr-defined]


def test_the_console_gets_the_body_parts_and_an_open_procedure_what_to_ask(parts: Parts) -> None:
    station = Station(parts, StationLimits())
    app = create_app(station, POLICY)
    with TestClient(app, base_url="http://127.0.0.1:8471") as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        parts_list = client.get("/api/body-parts", headers=auth).json()["body_parts"]
        assert {"body_part": "KNEE", "meaning": "Knee", "paired": True} in parts_list
        assert {"body_part": "CHEST", "meaning": "Chest", "paired": False} in parts_list
        started = client.post("/api/procedures", headers=auth,
                              json={"accession": "A1"}).json()["procedure"]
        resumed = client.get(f"/api/procedures/{started['procedure_id']}",
                             headers=auth).json()["procedure"]
        assert resumed["anatomy"] == {"needs_side": True, "missing": False,
                                      "body_part": "Knee", "laterality": "R"}
