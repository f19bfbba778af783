"""The worklist's offline cache (0600, tmp -> fsync -> rename -> fsync dir), the service's state
without a RIS (cache, age, duplicate marks, jitter, find), and the C-FIND identifier."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import stat
from datetime import date
from pathlib import Path

import pytest
from support.peers import wait_until

from agent.config import WorklistSection
from agent.errors import AgentError
from agent.worklist import (
    BroadQuery,
    CachedWorklist,
    InvalidWorklistQuery,
    PatientQuery,
    WorklistCache,
    WorklistCacheError,
    WorklistItem,
    WorklistItemAmbiguous,
    WorklistService,
    build_identifier,
)
from agent.worklist.cache import CACHE_FILE_NAME

STATION, MODALITY = "MODALITY1", "OT"
#: nothing is ever asked of this RIS in these tests (no refresh is started)
RIS = WorklistSection(host="127.0.0.1", port=9, called_ae="RIS", refresh_s=60.0)
T0 = 1_714_550_000.0


def item(index: int, **changes: object) -> WorklistItem:
    base = WorklistItem(patient_name="Doe^John", patient_id=f"P-{index}",
                        study_instance_uid=f"1.2.3.{index}", requested_procedure_id=f"RP-{index}",
                        sps_id=f"SPS-{index}", accession_number=f"ACC-{index}",
                        sps_status="SCHEDULED", modality=MODALITY, station_ae_title=STATION)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


ITEMS = (item(1), item(2), item(3, accession_number="ACC-2", sps_id="SPS-3"))


def saved(folder: Path, items: tuple[WorklistItem, ...] = ITEMS, *, station: str = STATION,
          fetched_at: float = T0) -> WorklistCache:
    cache = WorklistCache(folder)
    cache.save(CachedWorklist(items, fetched_at, station, MODALITY, truncated=True, limit=3))
    return cache


def service(folder: Path, **kwargs: object) -> WorklistService:
    arguments: dict[str, object] = {"ae_title": STATION, "modality": MODALITY,
                                    "cache_dir": folder, "wall_clock": lambda: T0 + 90.0}
    arguments.update(kwargs)
    return WorklistService(RIS, **arguments)  # type: ignore[arg-type]


# --- cache ---------------------------------------------------------------------------------

def test_cache_round_trip(tmp_path: Path) -> None:
    cache = saved(tmp_path / "cache")
    loaded = cache.load()
    assert loaded == CachedWorklist(ITEMS, T0, STATION, MODALITY, True, 3)


def test_cache_is_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)                     # the most permissive umask
    try:
        cache = saved(tmp_path / "cache")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in cache.folder.iterdir()) == [CACHE_FILE_NAME]


def test_a_stale_tmp_file_is_replaced_with_a_private_one(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    stale = folder / (CACHE_FILE_NAME + ".tmp")
    stale.write_text("half a cache")
    stale.chmod(0o644)
    cache = saved(folder)
    assert not stale.exists()
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600


def test_cache_is_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        events.append("fsync dir" if stat.S_ISDIR(mode) else f"fsync file {os.fstat(fd).st_size}")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(f"rename {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    cache = saved(tmp_path / "cache")
    size = cache.path.stat().st_size
    assert events == [f"fsync file {size}",
                      f"rename {CACHE_FILE_NAME}.tmp -> {CACHE_FILE_NAME}",
                      "fsync dir"]


def test_a_failed_write_keeps_the_old_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    cache = saved(tmp_path / "cache")

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WorklistCacheError, match="cannot write: No space left on device"):
        cache.save(CachedWorklist((), T0 + 5, STATION, MODALITY))
    monkeypatch.undo()
    assert cache.load() == CachedWorklist(ITEMS, T0, STATION, MODALITY, True, 3)


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "damaged"),
    (b"\xff\xfe", "damaged"),
    (b'{"format": 99}', "not format 1"),
    (b'{"format": 1, "fetched_at": "yesterday"}', "fetched_at is not a time"),
    (b'{"format": 1, "fetched_at": 1, "station_ae_title": "A", "modality": "OT", '
     b'"truncated": false, "limit": 1, "items": [{"patient_name": 3}]}', "is not text"),
    (b'{"format": 1, "fetched_at": 1, "station_ae_title": "A", "modality": "OT", '
     b'"truncated": false, "limit": 1, "items": [{}]}', "has no 'patient_name'"),
])
def test_a_damaged_cache_is_reported(tmp_path: Path, content: bytes, message: str) -> None:
    cache = WorklistCache(tmp_path)
    cache.path.write_bytes(content)
    with pytest.raises(WorklistCacheError, match=message):
        cache.load()


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    cache = WorklistCache(tmp_path)
    cache.path.symlink_to(target)
    with pytest.raises(WorklistCacheError, match="cannot open"):
        cache.load()
    saved(tmp_path)                          # the rename replaces the link, not its target
    assert not cache.path.is_symlink() and target.read_text() == "{}"
    tmp = cache.path.with_name(CACHE_FILE_NAME + ".tmp")
    tmp.symlink_to(target)                   # a planted tmp link is not written through
    saved(tmp_path)
    assert target.read_text() == "{}" and not tmp.exists()
    assert WorklistCache(tmp_path).load() is not None


def test_an_unwritable_cache_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(WorklistCacheError, match="cannot write"):
        saved(tmp_path / "file")


def test_no_cache_file_is_no_cache(tmp_path: Path) -> None:
    assert WorklistCache(tmp_path / "missing").load() is None


# --- service state without a RIS --------------------------------------------------------------

def test_before_any_query_the_cache_is_shown_with_its_age(tmp_path: Path) -> None:
    saved(tmp_path)
    snapshot = service(tmp_path).snapshot()
    assert snapshot.source == "cache"
    assert snapshot.age_s == 90.0
    assert snapshot.items == ITEMS
    assert snapshot.truncated and snapshot.limit == 3
    assert snapshot.error == "the RIS has not been queried yet"
    assert snapshot.as_json()["age_s"] == 90.0


def test_without_cache_the_list_is_empty_and_has_no_age(tmp_path: Path) -> None:
    snapshot = service(tmp_path).snapshot()
    assert (snapshot.source, snapshot.age_s, snapshot.items) == ("cache", None, ())


def test_a_cache_for_another_station_is_not_shown(tmp_path: Path) -> None:
    saved(tmp_path, station="OTHER")
    assert service(tmp_path).snapshot().items == ()


def test_a_damaged_cache_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE_NAME).write_text("{")
    snapshot = service(tmp_path).snapshot()
    assert snapshot.items == ()
    assert "damaged" in snapshot.problems[0]


def test_duplicates_are_marked_from_a_set_a_callable_and_mark_acquired(tmp_path: Path) -> None:
    saved(tmp_path, (item(1), item(2), item(3, sps_status="STARTED")))
    svc = service(tmp_path, acquired={("1.2.3.1", "SPS-1")})
    first, second, third = svc.snapshot().items
    assert first.acquired_here and first.status == "ACQUIRED"
    assert not second.is_duplicate
    assert third.is_duplicate and third.status == "STARTED"
    svc.mark_acquired("1.2.3.2", "SPS-2")
    assert svc.snapshot().items[1].duplicate_reason == "already acquired on this device"

    asked: list[tuple[str, str]] = []

    def acquired(study_uid: str, sps_id: str) -> bool:
        asked.append((study_uid, sps_id))
        return sps_id == "SPS-2"

    marks = [i.acquired_here for i in service(tmp_path, acquired=acquired).snapshot().items]
    assert marks == [False, True, False]
    assert asked == [("1.2.3.1", "SPS-1"), ("1.2.3.2", "SPS-2"), ("1.2.3.3", "SPS-3")]


def test_a_failing_acquired_lookup_is_a_problem(tmp_path: Path) -> None:
    saved(tmp_path)

    def broken(study_uid: str, sps_id: str) -> bool:
        raise AgentError("queue database is locked")

    snapshot = service(tmp_path, acquired=broken).snapshot()
    assert snapshot.items == ITEMS
    assert snapshot.problems == ("cannot tell which procedures were acquired here: queue "
                                 "database is locked",)


def test_find_in_the_current_list(tmp_path: Path) -> None:
    saved(tmp_path)
    svc = service(tmp_path, acquired={("1.2.3.1", "SPS-1")})
    found = svc.find(accession="ACC-1")
    assert found.sps_id == "SPS-1" and found.acquired_here
    assert svc.find(sps_id="SPS-3").accession_number == "ACC-2"
    assert svc.find(accession="ACC-2", sps_id="SPS-2").sps_id == "SPS-2"
    with pytest.raises(WorklistItemAmbiguous, match=r"2 worklist items have accession number "
                                                    r"'ACC-2': SPS ID 'SPS-2' .*, SPS ID 'SPS-3'"
                                                    r".*give --sps-id as well"):
        svc.find(accession="ACC-2")
    with pytest.raises(InvalidWorklistQuery, match="accession number or an SPS ID"):
        svc.find()


def test_refresh_interval_has_jitter_within_bounds(tmp_path: Path) -> None:
    svc = service(tmp_path, rng=random.Random(4), jitter_fraction=0.1)
    intervals = [svc.next_interval_s() for _ in range(200)]
    assert all(54.0 <= value <= 66.0 for value in intervals)
    assert len(set(intervals)) == 200                  # drawn anew each time
    assert min(intervals) < 56 and max(intervals) > 64  # and spread over the range
    assert service(tmp_path, jitter_fraction=0.0).next_interval_s() == 60.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"jitter_fraction": 1.0}, "jitter_fraction"),
    ({"days_before": -1}, "days_before"),
    ({"ae_title": ""}, "AE title and modality"),
    ({"modality": "O\\T"}, "modality: contains"),
    ({"ae_title": "A" * 17}, "station_ae_title: at most 16"),
])
def test_bad_service_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidWorklistQuery, match=message):
        service(tmp_path, **kwargs)


# --- the C-FIND identifier ----------------------------------------------------------------------

def test_broad_query_identifier_asks_for_every_key() -> None:
    ds = build_identifier(BroadQuery(STATION, MODALITY, date(2024, 5, 1)))
    assert ds.SpecificCharacterSet == ""                   # always requested (DICOM-NOTES 3.4)
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex", "AdmissionID", "AccessionNumber", "ReferringPhysicianName",
                    "RequestedProcedureID", "RequestedProcedureDescription", "StudyInstanceUID"):
        assert ds[keyword].value in ("", None), keyword
    assert list(ds.OtherPatientIDsSequence[0].keys()) != []
    assert "CodeMeaning" in ds.RequestedProcedureCodeSequence[0]
    assert "ReferencedSOPInstanceUID" in ds.ReferencedStudySequence[0]
    (sps,) = ds.ScheduledProcedureStepSequence
    assert sps.ScheduledStationAETitle == STATION
    assert sps.Modality == MODALITY
    assert sps.ScheduledProcedureStepStartDate == "20240501"
    for keyword in ("ScheduledProcedureStepStartTime", "ScheduledProcedureStepID",
                    "ScheduledProcedureStepDescription", "ScheduledPerformingPhysicianName",
                    "ScheduledProcedureStepStatus"):
        assert sps[keyword].value in ("", None), keyword
    assert "CodeValue" in sps.ScheduledProtocolCodeSequence[0]


def test_broad_query_date_range() -> None:
    ds = build_identifier(BroadQuery(STATION, MODALITY, date(2024, 4, 30), date(2024, 5, 2)))
    assert ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == \
        "20240430-20240502"
    with pytest.raises(InvalidWorklistQuery, match="ends before it starts"):
        build_identifier(BroadQuery(STATION, MODALITY, date(2024, 5, 2), date(2024, 5, 1)))


def test_patient_query_identifier() -> None:
    ds = build_identifier(PatientQuery(patient_name="Mül*", accession_number="ACC-1"))
    assert ds.SpecificCharacterSet == "ISO_IR 192"         # the query's own text needs it
    assert (ds.PatientName, ds.AccessionNumber, ds.PatientID) == ("Mül*", "ACC-1", "")
    sps = ds.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledStationAETitle == "" and sps.Modality == ""    # any station
    assert build_identifier(PatientQuery(patient_id="P-1")).SpecificCharacterSet == ""


@pytest.mark.parametrize(("query", "message"), [
    (PatientQuery(), "needs a patient name"),
    (PatientQuery(patient_id="A\\B"), "patient_id: contains"),
    (PatientQuery(accession_number="A" * 17), "accession_number: at most 16"),
    (PatientQuery(patient_name="M\udcfcller"), "patient_name: holds a character"),
])
def test_bad_patient_queries(query: PatientQuery, message: str) -> None:
    with pytest.raises(InvalidWorklistQuery, match=message):
        build_identifier(query)


def test_cache_file_is_json_a_service_engineer_can_read(tmp_path: Path) -> None:
    cache = saved(tmp_path)
    document = json.loads(cache.path.read_text(encoding="utf-8"))
    assert document["format"] == 1
    assert document["items"][0]["sps_id"] == "SPS-1"


# --- the refresh loop outlives its own errors (issue 13, finding 6) ------------------------------

def test_the_refresh_loop_survives_an_unexpected_error_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in one iteration (here the date source; in the field the procedures store behind
    the duplicate guard) used to end the thread for good, with nothing in `status`."""
    saved(tmp_path)
    calls: list[int] = []

    def today() -> date:
        calls.append(1)
        if len(calls) == 1:
            return date(2024, 5, 1)           # the constructor's check of the query
        raise RuntimeError("cannot read the clock for Doe^John")    # patient data in a message

    svc = service(tmp_path, today=today, error_backoff_s=0.01)
    assert svc.thread_health()["alive"] is False
    svc.start()
    try:
        # it keeps trying (with backoff) instead of dying on the first error
        wait_until(lambda: len(calls) >= 4, 10, "three refresh attempts")
        health = svc.thread_health()
        assert health["alive"] is True
        assert health["error"].startswith("RuntimeError at test_worklist_service.py:")
        assert health["errors_in_a_row"] >= 3 and health["error_at"] == T0 + 90.0
    finally:
        svc.stop()
    assert svc.thread_health()["alive"] is False
    assert svc.snapshot().items == ITEMS                       # the cached list stays shown
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "RuntimeError" in errors[0].getMessage()
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            assert "Doe^John" not in record.getMessage()


# --- issue 16 item 3: configurable filters, and an empty answer says which were applied ------

def test_broad_query_without_station_filter_leaves_the_key_universal() -> None:
    query = BroadQuery(STATION, MODALITY, date(2024, 5, 1), filter_station_ae=False)
    sps = build_identifier(query).ScheduledProcedureStepSequence[0]
    assert (sps.ScheduledStationAETitle, sps.Modality) == ("", MODALITY)
    assert query.matches(item(1, station_ae_title="OTHER"))
    assert not query.matches(item(1, modality="CT"))


def test_broad_query_without_modality_filter_leaves_the_key_universal() -> None:
    query = BroadQuery(STATION, MODALITY, date(2024, 5, 1), filter_modality=False)
    sps = build_identifier(query).ScheduledProcedureStepSequence[0]
    assert (sps.ScheduledStationAETitle, sps.Modality) == (STATION, "")
    assert query.matches(item(1, modality="CT"))
    assert not query.matches(item(1, station_ae_title="OTHER"))


@pytest.mark.parametrize(("station", "modality", "said"), [
    (True, True, f"no worklist items for station {STATION} and modality {MODALITY} today "
                 "(filters [worklist] filter_station_ae, filter_modality)"),
    (False, True, f"no worklist items for modality {MODALITY} today (filter [worklist] "
                  "filter_modality; filter_station_ae = false)"),
    (False, False, "no worklist items for any station and modality today (no filter: "
                   "[worklist] filter_station_ae and filter_modality are false)"),
])
def test_an_empty_answer_says_which_filters_were_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, station: bool, modality: bool,
        said: str) -> None:
    from agent.worklist import FindResult
    from agent.worklist import service as service_module

    asked: list[BroadQuery] = []

    def nothing(peer: WorklistSection, query: BroadQuery, **kwargs: object) -> FindResult:
        asked.append(query)
        return FindResult((), False, 500, (), 0, 0, 0.01)

    monkeypatch.setattr(service_module, "find_worklist", nothing)
    ris = dataclasses.replace(RIS, filter_station_ae=station, filter_modality=modality)
    worklist = WorklistService(ris, ae_title=STATION, modality=MODALITY, cache_dir=tmp_path,
                               today=lambda: date(2024, 5, 1))
    snapshot = worklist.refresh_now()
    assert (asked[0].filter_station_ae, asked[0].filter_modality) == (station, modality)
    assert snapshot.source == "ris" and snapshot.summary == said


def test_a_range_of_days_is_named_in_the_empty_answer() -> None:
    query = BroadQuery(STATION, MODALITY, date(2024, 4, 30), date(2024, 5, 2))
    assert query.describe(date(2024, 5, 1)).startswith(
        f"station {STATION} and modality {MODALITY} from 2024-04-30 to 2024-05-02 (")
