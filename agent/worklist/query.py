"""C-FIND SCU for the Modality Worklist Information Model - FIND (PS3.4 K.6; IHE RAD-5).

Two queries (IHE SWF worklist options):

- `BroadQuery`: Scheduled Station AE Title = ours, Modality = ours, SPS Start Date = a day
  or a range. What the refresh loop asks. Either station or modality matching can be turned
  off (`[worklist] filter_station_ae`, `filter_modality`): some RIS schedule by modality only
  and leave the station AE title empty or generic.
- `PatientQuery`: Patient's Name (wildcards * and ?), Patient ID, Accession Number and/or
  Requested Procedure ID, each usable alone.

Both request every return key the images or the console need, and (0008,0005) explicitly:
some SCPs return it only when asked (DICOM-NOTES 3.4). Results are capped: past
`max_results` matches the query is cancelled (C-CANCEL; abort if the SCP keeps sending) and the
result says "more than N". The association comes from the network boundary
(`agent.net.ae.associate`: TCP_NODELAY, bounded timeouts, DICOM TLS when `[worklist] tls`); only
Implicit/Explicit VR Little Endian are proposed (no Deflate: no inflate bomb from a hostile
peer, RELIABILITY.md §2.2).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association

from agent.config import WorklistSection
from agent.errors import AssociationError
from agent.logsetup import quiet_pynetdicom
from agent.net.ae import CONNECTION_TIMEOUT_S, AgentAE, associate
from agent.net.status import Category, category, find_meaning
from agent.net.tls import PeerTls
from agent.worklist.charset import DEFAULT_FALLBACK
from agent.worklist.errors import (
    InvalidWorklistQuery,
    RISUnreachable,
    WorklistItemError,
    WorklistQueryError,
)
from agent.worklist.model import WorklistItem
from agent.worklist.parse import parse_response

logger = logging.getLogger(__name__)

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.3); pynetdicom makes its
#: `sop_class.ModalityWorklistInformationFind` at run time, which type checkers cannot see
MODALITY_WORKLIST_FIND = UID("1.2.840.10008.5.1.4.31")

#: default cap on matches; a station's day rarely holds more than a few dozen steps
DEFAULT_MAX_RESULTS = 500

#: default budget of one whole worklist query (seconds): connection, association and every
#: response; the operator waits for it
DEFAULT_TIMEOUT_S = 20.0

#: after C-CANCEL the SCP may still send the pending responses it had queued before it saw
#: the cancel (a pynetdicom SCP on loopback runs ~500 ahead); they are read and dropped. Past
#: this many, or this long, the association is aborted instead (wlmscpfs and Orthanc never
#: stop at C-CANCEL on loopback: they have sent everything already)
CANCEL_DRAIN_MAX = 1000
CANCEL_DRAIN_S = 2.0

#: message ID of our C-FIND (one request per association)
_MESSAGE_ID = 1

_CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class BroadQuery:
    """This station's steps for a day or a range of days (IHE Broad Worklist Query)."""

    station_ae_title: str
    modality: str
    start_date: date
    end_date: date | None = None          # None: `start_date` only
    #: match on Scheduled Station AE Title ([worklist] filter_station_ae)
    filter_station_ae: bool = True
    #: match on Modality ([worklist] filter_modality)
    filter_modality: bool = True

    def matches(self, item: WorklistItem) -> bool:
        """Client-side check of the SCP's matching: an item for another station or modality
        never appears (for the filters in use). An empty value in the item is left to the
        SCP's judgement."""
        return ((not self.filter_station_ae
                 or item.station_ae_title in ("", self.station_ae_title))
                and (not self.filter_modality or item.modality in ("", self.modality)))

    def describe(self, today: date) -> str:
        """What was asked, for "no worklist items for ...": filters and days, and the
        `[worklist]` keys that chose the filters (no patient data)."""
        wanted = []
        if self.filter_station_ae:
            wanted.append(f"station {self.station_ae_title}")
        if self.filter_modality:
            wanted.append(f"modality {self.modality}")
        last = self.end_date or self.start_date
        if self.start_date == last:
            day = "today" if last == today else f"on {last.isoformat()}"
        else:
            day = f"from {self.start_date.isoformat()} to {last.isoformat()}"
        if not wanted:
            return (f"any station and modality {day} (no filter: [worklist] "
                    "filter_station_ae and filter_modality are false)")
        keys = [key for key, used in (("filter_station_ae", self.filter_station_ae),
                                      ("filter_modality", self.filter_modality)) if used]
        off = [f"{key} = false" for key, used in (
            ("filter_station_ae", self.filter_station_ae),
            ("filter_modality", self.filter_modality)) if not used]
        label = "filters" if len(keys) > 1 else "filter"
        text = f"{' and '.join(wanted)} {day} ({label} [worklist] {', '.join(keys)}"
        return text + (f"; {', '.join(off)})" if off else ")")


@dataclass(frozen=True)
class PatientQuery:
    """Steps of one patient or request, any station (IHE Patient Based Worklist Query).

    `patient_name` may hold the wildcards ``*`` and ``?`` (PS3.4 C.2.2.2.4); the others are
    matched exactly. At least one must be given.
    """

    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""

    def matches(self, item: WorklistItem) -> bool:
        return True


Query = BroadQuery | PatientQuery


@dataclass(frozen=True)
class FindResult:
    """What one C-FIND gave: usable items, whether the cap cut it short, and the responses
    that could not be used (`problems`, one line each, naming response and attribute)."""

    items: tuple[WorklistItem, ...]
    truncated: bool
    limit: int
    problems: tuple[str, ...]
    responses: int                  # pending responses counted (at most limit + 1)
    filtered_out: int               # items for another station/modality, dropped
    elapsed_s: float


def _check_query_text(keyword: str, value: str, max_chars: int) -> None:
    if not isinstance(value, str):
        raise InvalidWorklistQuery(f"{keyword}: expected text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise InvalidWorklistQuery(f"{keyword}: at most {max_chars} characters, got "
                                   f"{len(value)}")
    if _FORBIDDEN.search(value):
        raise InvalidWorklistQuery(f"{keyword}: contains a control character or a backslash")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidWorklistQuery(f"{keyword}: holds a character at position {err.start} "
                                   "that UTF-8 cannot encode") from err


def _code_item() -> Dataset:
    item = Dataset()
    for keyword in _CODE_KEYS:
        setattr(item, keyword, "")
    return item


def build_identifier(query: Query) -> Dataset:
    """The C-FIND identifier: matching keys of `query` plus every return key we use.

    Zero-length keys are return keys (universal match); each sequence holds one item listing
    the keys wanted inside it (PS3.4 C.2.2.2.6).

    Raises
    ------
    InvalidWorklistQuery
        If a query value is too long or holds a backslash or control character.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = ""
    ds.PatientName = ""
    ds.PatientID = ""
    ds.IssuerOfPatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    other_id = Dataset()
    other_id.PatientID = ""
    other_id.IssuerOfPatientID = ""
    other_id.TypeOfPatientID = ""
    ds.OtherPatientIDsSequence = [other_id]
    ds.AdmissionID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.RequestedProcedureID = ""
    ds.RequestedProcedureDescription = ""
    ds.RequestedProcedureCodeSequence = [_code_item()]
    ds.StudyInstanceUID = ""
    reference = Dataset()
    reference.ReferencedSOPClassUID = ""
    reference.ReferencedSOPInstanceUID = ""
    ds.ReferencedStudySequence = [reference]
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = ""
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepDescription = ""
    sps.ScheduledProtocolCodeSequence = [_code_item()]
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepStatus = ""
    ds.ScheduledProcedureStepSequence = [sps]

    if isinstance(query, BroadQuery):
        _check_query_text("station_ae_title", query.station_ae_title, 16)
        _check_query_text("modality", query.modality, 16)
        if not query.station_ae_title.strip() or not query.modality.strip():
            raise InvalidWorklistQuery("a broad query needs this station's AE title and "
                                       "modality")
        # a filter turned off stays a return key (zero length: universal match)
        if query.filter_station_ae:
            sps.ScheduledStationAETitle = query.station_ae_title
        if query.filter_modality:
            sps.Modality = query.modality
        first = query.start_date.strftime("%Y%m%d")
        last = (query.end_date or query.start_date).strftime("%Y%m%d")
        if last < first:
            raise InvalidWorklistQuery(f"date range {first}-{last} ends before it starts")
        sps.ScheduledProcedureStepStartDate = first if first == last else f"{first}-{last}"
    elif isinstance(query, PatientQuery):
        keys = (("patient_name", "PatientName", query.patient_name, 64),
                ("patient_id", "PatientID", query.patient_id, 64),
                ("accession_number", "AccessionNumber", query.accession_number, 16),
                ("requested_procedure_id", "RequestedProcedureID",
                 query.requested_procedure_id, 16))
        for name, _keyword, value, max_chars in keys:
            _check_query_text(name, value, max_chars)
        if not any(value.strip() for _name, _keyword, value, _max in keys):
            raise InvalidWorklistQuery("a patient-based query needs a patient name, patient "
                                       "ID, accession number or requested procedure ID")
        for _name, keyword, value, _max in keys:
            setattr(ds, keyword, value.strip())
        if not all(value.isascii() for _name, _keyword, value, _max in keys):
            # the query's own text (e.g. "Müller*") needs a declared character set
            ds.SpecificCharacterSet = "ISO_IR 192"
    else:
        raise InvalidWorklistQuery(f"unknown query type {type(query).__name__}")
    return ds


def find_worklist(peer: WorklistSection, query: Query, *, ae_title: str,
                  max_results: int = DEFAULT_MAX_RESULTS,
                  fallback_charsets: Sequence[str] = DEFAULT_FALLBACK,
                  timeout_s: float = DEFAULT_TIMEOUT_S,
                  tls: PeerTls | None = None) -> FindResult:
    """Ask the RIS for worklist items.

    Parameters
    ----------
    peer
        The RIS: host, port, called AE title.
    query
        A `BroadQuery` or `PatientQuery`.
    ae_title
        Our (calling) AE title.
    max_results
        Cap on matches: past it the query is cancelled and `truncated` is set.
    fallback_charsets
        Character sets tried for responses without (0008,0005) (see `agent.worklist.charset`).
    timeout_s
        Budget of the whole query: TCP connection, association and all responses. Applied per
        message, a RIS that drips one match every timeout_s - epsilon would hold the query
        for minutes (issue 13, finding 11); past it the association is aborted.
    tls
        DICOM TLS to the RIS (None: plaintext). A failed handshake is a RISUnreachable whose
        cause is the TlsHandshakeError; never retried in plaintext.

    Returns
    -------
    FindResult

    Raises
    ------
    InvalidWorklistQuery
        If a query value cannot be sent.
    RISUnreachable
        If no association could be made (nothing listening, TLS handshake failed, rejected,
        timed out); its __cause__ is the network boundary's AssociationError.
    WorklistQueryError
        If the C-FIND ended without success: a failure status, `timeout_s` used up or an
        abort. Part of a result is never returned as if it were the whole.
    """
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
        raise InvalidWorklistQuery(f"max_results: expected a positive integer, got "
                                   f"{max_results!r}")
    identifier = build_identifier(query)
    # worklist identifiers are patient data: pynetdicom must not log them (STYLE.md), and
    # its logging would also decode every element before we can check the bytes
    quiet_pynetdicom()
    ae = AgentAE(ae_title)
    ae.add_requested_context(MODALITY_WORKLIST_FIND,
                             [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, CONNECTION_TIMEOUT_S)
    where = f"RIS {peer.called_ae} at {peer.host}:{peer.port}"
    started = time.monotonic()
    budget = _Budget(started + timeout_s, timeout_s, where)
    try:
        assoc = associate(ae, peer.host, peer.port, peer.called_ae, tls=tls,
                          evt_handlers=[(evt.EVT_CONN_OPEN, budget.on_connected)])
    except AssociationError as err:
        if budget.used_up():
            raise RISUnreachable(f"worklist: {where}: {budget.message('association')}") \
                from err
        raise RISUnreachable(f"worklist: {where}: {err}") from err
    try:
        result = _collect(assoc, identifier, query, where, max_results, tuple(fallback_charsets),
                          started, budget)
    finally:
        if assoc.is_established:
            if budget.used_up():
                assoc.abort()           # every answer is in; waiting for A-RELEASE-RP is not
            else:
                assoc.acse_timeout = budget.remaining_s()
                assoc.release()
    logger.info("worklist: %d item(s)%s from %s in %.2f s (%d response(s) left out, %d for "
                "another station)", len(result.items),
                " (truncated)" if result.truncated else "", where, result.elapsed_s,
                len(result.problems), result.filtered_out)
    return result


@dataclass(frozen=True)
class _Budget:
    """The deadline of one query. pynetdicom's timeouts apply to each wait; before each wait
    the time left is set as that wait's timeout, so the waits add up to at most `timeout_s`."""

    deadline: float                 # time.monotonic()
    timeout_s: float
    where: str

    def remaining_s(self) -> float:
        # pynetdicom treats 0 as "do not wait at all" in some places and None as "forever":
        # a small positive value is the honest "nothing left"
        return max(0.001, self.deadline - time.monotonic())

    def used_up(self) -> bool:
        return time.monotonic() >= self.deadline

    def on_connected(self, event: evt.Event) -> None:
        """EVT_CONN_OPEN: the wait for A-ASSOCIATE-AC gets only what is left."""
        event.assoc.acse_timeout = self.remaining_s()

    def message(self, phase: str) -> str:
        return (f"no complete answer within [worklist] timeout_s = {self.timeout_s:g} s "
                f"({phase}): association aborted")


def _set_dimse_timeout(assoc: Association, seconds: float) -> None:
    """The timeout of pynetdicom's next wait for a DIMSE message (read without a lock)."""
    # not the public setter: it takes assoc.lock, which pynetdicom 3.0.4's send_c_find holds
    # while it yields an undecodable identifier (Association._wrap_find_responses), so setting
    # it from the loop over the responses would deadlock there
    assoc._dimse_timeout = seconds


def _collect(assoc: Association, identifier: Dataset, query: Query, where: str, max_results: int,
             fallback: tuple[str, ...], started: float, budget: _Budget) -> FindResult:
    items: list[WorklistItem] = []
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    responses = undecodable = filtered = drained = 0
    cancelled = False
    cancelled_at = 0.0
    previous_status: Dataset | None = None
    final: int | None = None
    _set_dimse_timeout(assoc, budget.remaining_s())
    for status, response in assoc.send_c_find(
            identifier, MODALITY_WORKLIST_FIND, msg_id=_MESSAGE_ID):
        # read by pynetdicom before its next wait for a response: only what is left
        _set_dimse_timeout(assoc, budget.remaining_s())
        if "Status" not in status and budget.used_up():
            # pynetdicom aborted the association when the (shortened) DIMSE wait ran out
            raise WorklistQueryError(
                f"worklist: {where}: {budget.message(f'{responses} response(s) received')}; "
                "the query is incomplete and was not used")
        if "Status" not in status:
            # pynetdicom's empty status: DIMSE timeout, abort, or an invalid message
            raise WorklistQueryError(
                f"worklist: {where} stopped answering after {responses} response(s) (timeout "
                "or abort); the query is incomplete and was not used")
        code = int(status.Status)
        if category(code) is not Category.PENDING:
            final = code
            break
        if response is None and status is previous_status:
            continue   # pynetdicom yields an undecodable identifier twice (DICOM-NOTES 4)
        previous_status = status
        if cancelled:
            drained += 1
            if drained > CANCEL_DRAIN_MAX or time.monotonic() - cancelled_at > CANCEL_DRAIN_S:
                logger.warning("worklist: %s kept sending after C-CANCEL; aborting", where)
                assoc.abort()
                break
            continue
        responses += 1
        if responses > max_results:
            cancelled = True
            cancelled_at = time.monotonic()
            assoc.send_c_cancel(_MESSAGE_ID, query_model=MODALITY_WORKLIST_FIND)
            continue
        if response is None:
            undecodable += 1
            problems.append(f"worklist response {responses}: the identifier could not be "
                            "decoded (malformed DICOM data set); left out")
            continue
        try:
            parsed = parse_response(response, response=responses, fallback=fallback)
        except WorklistItemError as err:
            problems.append(f"{err}; left out")
            continue
        for item in parsed:
            if not query.matches(item):
                filtered += 1
                continue
            if item.key in seen:
                problems.append(f"worklist response {responses}: {item.describe()} was already "
                                "listed; the repeat is left out")
                continue
            seen.add(item.key)
            items.append(item)
            problems.extend(f"worklist response {responses} ({item.describe()}): {note}"
                            for note in item.notes)
    if final is None and not cancelled:
        raise WorklistQueryError(f"worklist: {where} ended the query without a final status "
                                 f"after {responses} response(s); not used")
    if final is not None and not cancelled:
        kind = category(final)
        if kind in (Category.FAILURE, Category.CANCEL):
            name = find_meaning(final)
            raise WorklistQueryError(
                f"worklist: {where} answered C-FIND with 0x{final:04X} ({kind}) after "
                f"{responses} response(s){': ' + name if name else ''}; the query is "
                "incomplete and was not used")
        if kind is Category.WARNING:
            problems.append(f"worklist: the RIS ended the query with warning 0x{final:04X}")
    return FindResult(
        items=tuple(items),
        truncated=cancelled,
        limit=max_results,
        problems=tuple(problems),
        responses=min(responses, max_results + 1),
        filtered_out=filtered,
        elapsed_s=time.monotonic() - started,
    )


__all__ = [
    "DEFAULT_MAX_RESULTS",
    "DEFAULT_TIMEOUT_S",
    "BroadQuery",
    "FindResult",
    "PatientQuery",
    "Query",
    "build_identifier",
    "find_worklist",
]
