"""Modality Worklist C-FIND against real peers on loopback: DCMTK wlmscpfs (with its three
character-set modes) and Orthanc's ModalityWorklists plugin. Names in every character set the
RIS may send, responses without (0008,0005), mislabelled and invalid bytes, another station's
steps, the result cap, .wl files from pydicom and from dump2dcm, and an item all the way into
an image that dciodvfy accepts."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
from support.peers import free_port, run_dciodvfy
from support.worklist_data import (
    MODALITY,
    PHI_ID,
    PHI_NAME,
    STATION,
    Entry,
    Wlmscpfs,
    numbered,
    running_wlmscpfs,
    write_wl,
    write_wl_with_dump2dcm,
)

from agent.config import WorklistSection
from agent.demo.orthanc import OrthancNotInstalled, OrthancServer, RegisteredModality, start_orthanc
from agent.iod import UIDSource, build_secondary_capture, encode_part10, new_series_context
from agent.logsetup import quiet_pynetdicom
from agent.records import DeviceInfo
from agent.worklist import (
    BroadQuery,
    FindResult,
    PatientQuery,
    WorklistItem,
    WorklistService,
    find_worklist,
)
from drivers.simulated import phantom

pytestmark = pytest.mark.integration

DAY = date(2024, 5, 1)
QUERY = BroadQuery(STATION, MODALITY, DAY)

JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"
KATAKANA = "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"

#: sps_id -> (entry, the name the agent must show)
NAMES: dict[str, tuple[Entry, str]] = {
    "ASCII": (numbered(1, patient_name="Doe^John", charset=None), "Doe^John"),
    "LATIN1": (numbered(2, patient_name="Müller^Jürgen", charset="ISO_IR 100"),
               "Müller^Jürgen"),
    "GREEK-UTF8": (numbered(3, patient_name="Γιάννης^Παπαδόπουλος", charset="ISO_IR 192"),
                   "Γιάννης^Παπαδόπουλος"),
    "GREEK-126": (numbered(4, patient_name="Γιάννης^Παπαδόπουλος", charset="ISO_IR 126"),
                  "Γιάννης^Παπαδόπουλος"),
    "JIS": (numbered(5, patient_name=JAPANESE, charset="\\ISO 2022 IR 87"), JAPANESE),
    "JIS-KANA": (numbered(6, patient_name=KATAKANA, charset="ISO 2022 IR 13\\ISO 2022 IR 87"),
                 KATAKANA),
    "JAPANESE-UTF8": (numbered(7, patient_name=JAPANESE, charset="ISO_IR 192"), JAPANESE),
    "EMPTY-NAME": (numbered(8, patient_name="", charset="ISO_IR 192"), ""),
}
#: steps of other stations / modalities: never shown
FOREIGN = {
    "OTHER-STATION": numbered(20, station_ae_title="OTHER"),
    "OTHER-MODALITY": numbered(21, modality="CT"),
    "OTHER-DAY": numbered(22, start_date="20240502"),
}


@pytest.fixture(autouse=True)
def _quiet() -> None:
    quiet_pynetdicom()      # what the daemon does at start (STYLE.md, Logging)


def _start(tmp_path_factory: pytest.TempPathFactory, *options: str) -> Iterator[Wlmscpfs]:
    with running_wlmscpfs(tmp_path_factory.mktemp("wlmscpfs") / "db", *options) as server:
        yield server


@pytest.fixture(scope="module")
def wlm_keep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wlmscpfs]:
    """wlmscpfs -csk: returns the file's own (0008,0005); -dfr: serves incomplete files too
    (an empty Patient's Name, a missing key): the agent must judge them itself."""
    yield from _start(tmp_path_factory, "-csk", "-dfr")


@pytest.fixture(scope="module")
def wlm_none(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wlmscpfs]:
    """wlmscpfs -cs0 (its default): never returns (0008,0005), bytes as in the file."""
    yield from _start(tmp_path_factory, "-cs0")


@pytest.fixture(scope="module")
def wlm_latin1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wlmscpfs]:
    """wlmscpfs -cs1: stamps ISO_IR 100 on every response, whatever the bytes."""
    yield from _start(tmp_path_factory, "-cs1")


@pytest.fixture(scope="module")
def orthanc_wl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("orthanc")
    dicom_port = free_port()
    try:
        server = start_orthanc(
            workdir, dicom_port=dicom_port, http_port=free_port(exclude={dicom_port}),
            worklist_dir=workdir / "worklists",
            # Orthanc answers worklist queries only from registered AEs
            modalities=[RegisteredModality("agent", STATION, "127.0.0.1", free_port())])
    except OrthancNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc_dir(orthanc_wl: OrthancServer) -> Path:
    """Orthanc's worklist folder, emptied for this test."""
    folder = orthanc_wl.workdir / "worklists"
    for path in folder.glob("*.wl"):
        path.unlink()
    return folder


def ris(server: Wlmscpfs | OrthancServer, called_ae: str = "") -> WorklistSection:
    if isinstance(server, OrthancServer):
        return WorklistSection(server.host, server.dicom_port, server.ae_title)
    return WorklistSection("127.0.0.1", server.port, called_ae)


def query(peer: WorklistSection, q: BroadQuery | PatientQuery = QUERY,
          **kwargs: object) -> FindResult:
    return find_worklist(peer, q, ae_title=STATION, **kwargs)  # type: ignore[arg-type]


def by_sps(result: FindResult) -> dict[str, WorklistItem]:
    return {item.sps_id: item for item in result.items}


def write_all(folder: Path, entries: dict[str, Entry]) -> None:
    for sps_id, entry in entries.items():
        write_wl(folder, entry.replace(sps_id=sps_id), sps_id)


def assert_names(result: FindResult, *, rejected: tuple[str, ...] = ()) -> None:
    items = by_sps(result)
    assert sorted(items) == sorted(set(NAMES) - set(rejected)), result.problems
    for sps_id, item in items.items():
        assert item.patient_name == NAMES[sps_id][1], sps_id
        assert "\ufffd" not in item.patient_name


# --- character sets -------------------------------------------------------------------------

def test_wlmscpfs_keeping_the_files_character_sets(wlm_keep: Wlmscpfs) -> None:
    called_ae, folder = wlm_keep.new_called_ae()
    write_all(folder, {sps: entry for sps, (entry, _name) in NAMES.items()} | FOREIGN)
    result = query(ris(wlm_keep, called_ae))
    assert_names(result)
    items = by_sps(result)
    assert items["JIS"].character_set == "\\ISO 2022 IR 87"
    assert items["GREEK-126"].character_set == "ISO_IR 126"
    assert items["ASCII"].character_set == ""
    assert result.problems == (f"worklist response {_response_of(result, 'EMPTY-NAME')} "
                               f"({items['EMPTY-NAME'].describe()}): PatientName: empty",)
    assert not result.truncated


def _response_of(result: FindResult, sps_id: str) -> int:
    (problem,) = [p for p in result.problems if f"SPS {sps_id!r}" in p]
    return int(problem.split()[2])


def test_orthanc_transcodes_every_set_to_utf8(orthanc_wl: OrthancServer,
                                             orthanc_dir: Path) -> None:
    write_all(orthanc_dir, {sps: entry for sps, (entry, _name) in NAMES.items()} | FOREIGN)
    result = query(ris(orthanc_wl))
    # Orthanc 1.10.1 transcodes the JIS X 0201 half of ISO 2022 IR 13\ISO 2022 IR 87 to
    # UTF-8 but passes the JIS X 0208 escape sequences through, under ISO_IR 192: refused
    assert_names(result, rejected=("JIS-KANA",))
    (kana,) = [p for p in result.problems if "SPS 'JIS-KANA'" in p]
    assert kana.endswith("PatientName: escape sequence in a value of ISO_IR 192, which allows "
                         "no code extensions; left out")
    assert {item.character_set for item in result.items} == {"ISO_IR 192"}


def test_no_character_set_uses_the_fallback_and_flags_it(wlm_none: Wlmscpfs) -> None:
    called_ae, folder = wlm_none.new_called_ae()
    write_all(folder, {sps: NAMES[sps][0] for sps in ("ASCII", "LATIN1", "GREEK-UTF8", "JIS")})
    result = query(ris(wlm_none, called_ae))
    items = by_sps(result)
    assert items["ASCII"].patient_name == "Doe^John" and items["ASCII"].notes == ()
    assert items["LATIN1"].patient_name == "Müller^Jürgen"          # Latin-1 bytes
    assert items["LATIN1"].notes == ("PatientName: decoded as ISO_IR 100: the response has "
                                     "no Specific Character Set (0008,0005)",)
    assert items["GREEK-UTF8"].patient_name == "Γιάννης^Παπαδόπουλος"   # UTF-8 bytes
    assert "decoded as ISO_IR 192" in items["GREEK-UTF8"].notes[0]
    assert "JIS" not in items
    rejected = [p for p in result.problems if "SPS 'JIS'" in p and "left out" in p]
    assert len(rejected) == 1 and "PatientName: ISO 2022 escape sequences" in rejected[0]
    # every fallback decoding is listed for the operator too
    assert sum("decoded as" in p for p in result.problems) == 2


def test_no_character_set_and_no_fallback_rejects_with_a_clear_message(
        wlm_none: Wlmscpfs) -> None:
    called_ae, folder = wlm_none.new_called_ae()
    write_all(folder, {sps: NAMES[sps][0] for sps in ("ASCII", "LATIN1")})
    result = query(ris(wlm_none, called_ae), fallback_charsets=())
    assert [item.sps_id for item in result.items] == ["ASCII"]
    (problem,) = result.problems
    assert problem.startswith("worklist response ")
    assert "SPS 'LATIN1'" in problem and "PatientName: bytes above 0x7F without a Specific " \
        "Character Set (0008,0005) and no fallback character set is configured" in problem


def test_utf8_bytes_labelled_latin1_are_refused(wlm_latin1: Wlmscpfs) -> None:
    called_ae, folder = wlm_latin1.new_called_ae()
    write_all(folder, {sps: NAMES[sps][0] for sps in ("ASCII", "LATIN1", "GREEK-UTF8")})
    result = query(ris(wlm_latin1, called_ae))
    items = by_sps(result)
    assert items["LATIN1"].patient_name == "Müller^Jürgen"
    assert items["ASCII"].character_set == "ISO_IR 100"
    assert "GREEK-UTF8" not in items
    (problem,) = result.problems
    assert "SPS 'GREEK-UTF8'" in problem and "bytes are UTF-8 but Specific Character Set " \
        "says ISO_IR 100" in problem and "-csk" in problem


def test_invalid_bytes_are_an_error_never_a_question_mark(wlm_keep: Wlmscpfs) -> None:
    called_ae, folder = wlm_keep.new_called_ae()
    write_wl(folder, numbered(1, sps_id="GOOD"), "good")
    write_wl(folder, numbered(2, sps_id="BAD", raw={"PatientName": b"M\xfcller^J\xfcrgen"}),
             "bad")
    write_wl(folder, numbered(3, sps_id="BAD-DESC",
                              raw={"RequestedProcedureDescription": b"\xc3\x28"}), "bad-desc")
    result = query(ris(wlm_keep, called_ae))
    assert [item.sps_id for item in result.items] == ["GOOD"]
    messages = "\n".join(result.problems)
    assert "SPS 'BAD'" in messages and "PatientName: byte 0xFC at offset 1 is not valid in " \
        "ISO_IR 192; left out" in messages
    assert "SPS 'BAD-DESC'" in messages and "RequestedProcedureDescription: byte 0xC3" in messages
    assert "ller" not in messages


def test_pydicom_and_dump2dcm_files_give_the_same_item(wlm_keep: Wlmscpfs) -> None:
    called_ae, folder = wlm_keep.new_called_ae()
    entry = numbered(1, patient_name="Müller^Jürgen", requested_procedure_code=None,
                     protocol_code=None, other_patient_ids=())
    write_wl(folder, entry.replace(sps_id="PYDICOM"), "pydicom")
    write_wl_with_dump2dcm(folder, entry.replace(sps_id="DUMP2DCM"), "dump2dcm")
    items = by_sps(query(ris(wlm_keep, called_ae)))
    assert sorted(items) == ["DUMP2DCM", "PYDICOM"]
    assert items["PYDICOM"].patient_name == "Müller^Jürgen"
    first, second = (items[key].as_json() for key in ("PYDICOM", "DUMP2DCM"))
    first.pop("sps_id"), second.pop("sps_id")
    assert first == second


# --- other stations, the cap, required keys -----------------------------------------------------

def test_other_stations_modalities_and_days_never_appear(wlm_keep: Wlmscpfs,
                                                         orthanc_wl: OrthancServer,
                                                         orthanc_dir: Path) -> None:
    called_ae, folder = wlm_keep.new_called_ae()
    for target in (folder, orthanc_dir):
        write_all(target, {"MINE": numbered(9)} | FOREIGN)
    for peer in (ris(wlm_keep, called_ae), ris(orthanc_wl)):
        result = query(peer)
        assert [item.sps_id for item in result.items] == ["MINE"], peer
        assert result.problems == ()
    # a patient-based query is for any station: the operator searched on purpose
    patient = query(ris(wlm_keep, called_ae), PatientQuery(patient_id=FOREIGN["OTHER-STATION"]
                                                           .patient_id))
    assert [item.station_ae_title for item in patient.items] == ["OTHER"]


def test_a_step_scheduled_for_another_station_is_found_only_without_the_station_filter(
        wlm_keep: Wlmscpfs, tmp_path: Path) -> None:
    # a RIS that schedules by modality only: the step names another (or a generic) station
    called_ae, folder = wlm_keep.new_called_ae()
    write_all(folder, {"BY-MODALITY": numbered(30, station_ae_title="ANY-XR"),
                       "OTHER-MODALITY": numbered(31, station_ae_title="ANY-XR", modality="CT")})
    peer = ris(wlm_keep, called_ae)
    filtered = WorklistService(peer, ae_title=STATION, modality=MODALITY,
                               cache_dir=tmp_path / "on", today=lambda: DAY).refresh_now()
    assert filtered.source == "ris" and filtered.items == ()
    assert filtered.summary == (
        f"no worklist items for station {STATION} and modality {MODALITY} today "
        "(filters [worklist] filter_station_ae, filter_modality)")
    by_modality = dataclasses.replace(peer, filter_station_ae=False)
    found = WorklistService(by_modality, ae_title=STATION, modality=MODALITY,
                            cache_dir=tmp_path / "off", today=lambda: DAY).refresh_now()
    assert found.source == "ris"
    assert [(item.sps_id, item.station_ae_title) for item in found.items] == [
        ("BY-MODALITY", "ANY-XR")]


@pytest.mark.parametrize("peer_kind", ["wlmscpfs", "orthanc"])
def test_more_matches_than_the_cap_are_cancelled_and_reported(
        peer_kind: str, wlm_keep: Wlmscpfs, orthanc_wl: OrthancServer,
        orthanc_dir: Path) -> None:
    if peer_kind == "wlmscpfs":
        called_ae, folder = wlm_keep.new_called_ae()
        peer = ris(wlm_keep, called_ae)
    else:
        folder, peer = orthanc_dir, ris(orthanc_wl)
    for index in range(60):
        write_wl(folder, numbered(index), f"n{index}")
    result = query(peer, max_results=25)
    assert len(result.items) == 25
    assert result.truncated and result.limit == 25 and result.responses == 26
    assert len({item.key for item in result.items}) == 25
    assert result.problems == ()


def test_missing_required_keys_name_response_and_attribute(orthanc_wl: OrthancServer,
                                                           orthanc_dir: Path) -> None:
    # Orthanc serves incomplete files (wlmscpfs rejects them itself unless -dfr)
    write_wl(orthanc_dir, numbered(1, sps_id="GOOD"), "good")
    write_wl(orthanc_dir, numbered(2, patient_name=PHI_NAME, patient_id=PHI_ID, sps_id="NO-RP",
                                   omit=("RequestedProcedureID",)), "no-rp")
    write_wl(orthanc_dir, numbered(3, patient_name=PHI_NAME, patient_id=PHI_ID,
                                   omit=("SPS.ScheduledProcedureStepID",)), "no-sps-id")
    write_wl(orthanc_dir, numbered(4, patient_name=PHI_NAME, omit=("PatientID",),
                                   sps_id="NO-PID"), "no-pid")
    result = query(ris(orthanc_wl))
    assert [item.sps_id for item in result.items] == ["GOOD"]
    messages = sorted(result.problems)
    assert len(messages) == 3
    assert any("SPS 'NO-RP'" in m and ": RequestedProcedureID: missing or empty" in m
               for m in messages)
    assert any("ScheduledProcedureStepSequence[0].ScheduledProcedureStepID: missing" in m
               for m in messages)
    assert any("SPS 'NO-PID'" in m and ": PatientID: missing" in m for m in messages)
    assert not any(PHI_NAME in m or PHI_ID in m for m in messages)


def test_patient_based_query_with_wildcards(wlm_keep: Wlmscpfs, orthanc_wl: OrthancServer,
                                            orthanc_dir: Path) -> None:
    called_ae, folder = wlm_keep.new_called_ae()
    for target in (folder, orthanc_dir):
        write_wl(target, numbered(1, patient_name="Müller^Jürgen", sps_id="M1"), "m1")
        write_wl(target, numbered(2, patient_name="Mueller^Hans", sps_id="M2",
                                  station_ae_title="OTHER"), "m2")
        write_wl(target, numbered(3, patient_name="Schmidt^Anna", sps_id="S3"), "s3")
    for peer in (ris(wlm_keep, called_ae), ris(orthanc_wl)):
        assert sorted(i.sps_id for i in query(peer, PatientQuery(patient_name="M*")).items) \
            == ["M1", "M2"], peer
        assert [i.sps_id for i in query(peer, PatientQuery(patient_name="Mü*")).items] == ["M1"]
        assert [i.sps_id for i in query(peer, PatientQuery(accession_number="ACC-0003")).items] \
            == ["S3"]
        assert [i.sps_id for i in query(peer, PatientQuery(
            requested_procedure_id="RP-0002")).items] == ["M2"]


# --- all the way into an image -----------------------------------------------------------------

DEVICE = DeviceInfo(modality=MODALITY, manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1", institution_name="",
                    software_versions="1.0")


@pytest.mark.parametrize("sps_id", ["JIS", "GREEK-126", "LATIN1", "EMPTY-NAME"])
def test_worklist_item_into_an_image_that_dciodvfy_accepts(
        sps_id: str, orthanc_wl: OrthancServer, orthanc_dir: Path, tmp_path: Path) -> None:
    from drivers.frame import Frame
    entry, name = NAMES[sps_id]
    write_wl(orthanc_dir, entry.replace(sps_id=sps_id, referenced_study_uid="1.2.3.4"), "one")
    (item,) = query(ris(orthanc_wl)).items
    order = item.to_order()
    uids = UIDSource()
    series = new_series_context(uids, order, started_at=pydicom.valuerep.DT(
        "20240501093102").replace(tzinfo=None), series_number=1)
    frame = Frame(pixels=phantom(16, 16, 8, 1), bits_stored=8,
                  photometric_interpretation="MONOCHROME2", t_mono=0.0,
                  t_wall=1_714_548_662.0, sequence_number=0)
    ds = build_secondary_capture(frame, order=order, device=DEVICE, series=series,
                                 instance_number=1, sop_instance_uid=uids.new_uid())
    path = tmp_path / "image.dcm"
    path.write_bytes(encode_part10(ds))
    back = pydicom.dcmread(path)
    assert str(back.PatientName) == name
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.StudyInstanceUID == entry.study_instance_uid
    assert back.AccessionNumber == entry.accession_number
    assert back.ReferencedStudySequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert back.OtherPatientIDsSequence[0].PatientID == "OLD-1"
    assert back.AdmissionID == "ADM-1"
    assert back.ProcedureCodeSequence[0].CodeValue == "RPID-17"
    (request,) = back.RequestAttributesSequence
    assert (request.RequestedProcedureID, request.ScheduledProcedureStepID) == \
        (entry.requested_procedure_id, sps_id)
    assert request.ScheduledProtocolCodeSequence[0].CodeValue == "PROT-1"
    assert run_dciodvfy(path) == []


# --- no patient data in the log ---------------------------------------------------------------

def test_no_patient_data_in_the_log(wlm_keep: Wlmscpfs, orthanc_wl: OrthancServer,
                                    orthanc_dir: Path, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    from pynetdicom import _config as pynetdicom_config
    # as if someone had turned pynetdicom's identifier logging back on, at INFO: the query
    # itself must turn it off again
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = True
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = True
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="pynetdicom")
    called_ae, folder = wlm_keep.new_called_ae()
    canary = {"patient_name": PHI_NAME, "patient_id": PHI_ID, "birth_date": "19010203"}
    for target in (folder, orthanc_dir):
        write_wl(target, numbered(1, **canary), "good")
        write_wl(target, numbered(2, **canary, raw={"PatientSex": b"X "}), "bad-sex")
        write_wl(target, numbered(3, **canary, raw={"AccessionNumber": b"\xff\xfe"}), "bad")
    for peer in (ris(wlm_keep, called_ae), ris(orthanc_wl)):
        assert [item.patient_name for item in query(peer).items] == [PHI_NAME]
        assert [item.patient_id for item in query(
            peer, PatientQuery(patient_name=PHI_NAME)).items] == [PHI_ID]
        service = WorklistService(peer, ae_title=STATION, modality=MODALITY,
                                  cache_dir=tmp_path / peer.called_ae, today=lambda: DAY)
        assert service.refresh_now().source == "ris"
        assert service.find(accession="ACC-0001").patient_id == PHI_ID
    shown = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert shown, "the test must see the agent's own INFO records"
    for record in shown:
        text = record.getMessage()
        for secret in (PHI_NAME, PHI_ID, "19010203", "SENTINEL"):
            assert secret not in text, f"{record.name}: {text}"
