"""An MPPS SCP for tests (pynetdicom): Debian packages no independent one (PEERS.md), and
pynetdicom's example SCP accepts anything, so this one enforces PS3.4 F.7.2 itself:

- N-CREATE: status must be IN PROGRESS (else 0106H, F.7.2.1.3); an existing instance UID is
  0111H; a missing Type 1/2 attribute of Table F.7.2-1 is 0120H, an empty Type 1 one 0121H.
- N-SET: unknown instance 0112H; nothing after COMPLETED/DISCONTINUED: 0110H with Error ID
  A710 (F.7.2.2.3, Table F.7.2-2); an attribute the table marks "Not allowed" at N-SET is
  0106H; one not created at N-CREATE is 0105H "no such attribute" (F.7.2.2.2: "The SCU shall
  only set Attribute Values that are already created"; the standard names no status for it,
  0105H is PS3.7's for an attribute the instance does not have); at COMPLETED/DISCONTINUED the
  Final State column must hold: end date/time set, Performed Series Sequence not empty, each
  item's Type 1/2 attributes (0121H otherwise). A refused N-SET changes nothing.

It records every exchange and every state an instance went through, and can be told to fail:
abort before or after processing, process and never answer (the SCU times out), answer a given
status, or reject associations.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"

#: Table F.7.2-1, N-CREATE requirement 1/1 (value needed) or 2/2 (present, may be empty)
CREATE_TYPE1 = (
    "ScheduledStepAttributesSequence", "PerformedProcedureStepID", "PerformedStationAETitle",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus", "Modality",
)
CREATE_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferencedPatientSequence",
    "PerformedStationName", "PerformedLocation", "PerformedProcedureStepDescription",
    "PerformedProcedureTypeDescription", "ProcedureCodeSequence",
    "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", "StudyID",
    "PerformedProtocolCodeSequence", "PerformedSeriesSequence",
)
SCHEDULED_STEP_TYPE1 = ("StudyInstanceUID",)
SCHEDULED_STEP_TYPE2 = (
    "ReferencedStudySequence", "AccessionNumber", "RequestedProcedureID",
    "RequestedProcedureDescription", "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
)
#: "Not allowed" in the N-SET column of Table F.7.2-1
NOT_SETTABLE = frozenset({
    "ScheduledStepAttributesSequence", "PatientName", "PatientID", "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "PatientBirthDate",
    "PatientSex", "ReferencedPatientSequence", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID", "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription",
    "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedStationName",
    "PerformedLocation", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "Modality", "StudyID",
})
#: final state: Type 1 (value needed) and Type 2 (present) inside a Performed Series item
SERIES_TYPE1 = ("ProtocolName", "SeriesInstanceUID")
SERIES_TYPE2 = ("PerformingPhysicianName", "OperatorsName", "SeriesDescription",
                "RetrieveAETitle", "ReferencedImageSequence",
                "ReferencedNonImageCompositeSOPInstanceSequence")

ERROR_ID_NO_LONGER_UPDATABLE = 0xA710
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"


@dataclass(frozen=True)
class Fault:
    """What to do instead of answering normally, for the next matching request.

    kind: "abort" (abort, nothing processed), "abort_after" (processed, then abort: the
    response is lost), "hang_after" (processed, then no answer until the peer stops: the SCU
    times out), "status" (answer `status`, nothing processed).
    """

    kind: str
    operation: str | None = None      # "N-CREATE", "N-SET" or None for either
    status: int = 0x0110


@dataclass(frozen=True)
class Exchange:
    operation: str
    sop_instance_uid: str
    status: int | None               # None: no response sent (fault)
    error_id: int | None = None
    requested_status: str = ""       # Performed Procedure Step Status in the request
    calling_ae: str = ""
    fault: str = ""


@dataclass
class MppsPeer:
    ae_title: str = "RIS"
    instances: dict[str, Dataset] = field(default_factory=dict)
    states: dict[str, list[str]] = field(default_factory=dict)   # every accepted status
    exchanges: list[Exchange] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)
    _server: ThreadedAssociationServer | None = None
    _ae: AE | None = None

    # --- control ---------------------------------------------------------------------------

    def start(self, port: int, host: str = "127.0.0.1") -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(MPPS_SOP_CLASS, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        handlers: list[Any] = [(evt.EVT_N_CREATE, self._on_create),
                               (evt.EVT_N_SET, self._on_set)]
        self._release.clear()
        self._ae = ae
        self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        self._release.set()                   # let hung handlers return
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def refuse_associations(self, refuse: bool = True) -> None:
        """Reject every association (as for an unknown calling AE title) while on."""
        assert self._ae is not None
        self._ae.require_calling_aet = ["NOT-A-MODALITY"] if refuse else []

    def snapshot(self) -> tuple[dict[str, Dataset], dict[str, list[str]], list[Exchange]]:
        with self._lock:
            return (copy.deepcopy(self.instances), {k: list(v) for k, v in self.states.items()},
                    list(self.exchanges))

    def state_of(self, uid: str) -> str:
        with self._lock:
            ds = self.instances.get(uid)
            return "" if ds is None else str(ds.PerformedProcedureStepStatus)

    # --- handlers --------------------------------------------------------------------------

    def _take_fault(self, operation: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.operation in (None, operation):
                    return self._faults.pop(index)
        return None

    def _apply_fault(self, event: evt.Event, fault: Fault, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)
        if fault.kind == "hang_after":
            self._release.wait(timeout=30)    # bounded: a broken test must not hang the run
        event.assoc.abort()

    def _on_create(self, event: evt.Event) -> tuple[Any, Dataset | None]:
        request: Any = event.request
        uid = str(request.AffectedSOPInstanceUID or "")
        calling = event.assoc.requestor.ae_title
        fault = self._take_fault("N-CREATE")
        ds = event.attribute_list
        requested = str(ds.get("PerformedProcedureStepStatus", ""))
        if fault is not None and fault.kind == "status":
            return self._answer("N-CREATE", uid, fault.status, requested, calling,
                                fault="status")
        if fault is not None and fault.kind == "abort":
            self._apply_fault(event, fault, Exchange("N-CREATE", uid, None, None, requested,
                                                     calling, "abort"))
            return 0x0110, None
        status = self._check_create(uid, ds)
        if status == 0x0000:
            with self._lock:
                self.instances[uid] = ds
                self.states.setdefault(uid, []).append(requested)
        if fault is not None:
            self._apply_fault(event, fault, Exchange("N-CREATE", uid, None, None, requested,
                                                     calling, fault.kind))
            return 0x0110, None
        return self._answer("N-CREATE", uid, status, requested, calling)

    def _check_create(self, uid: str, ds: Dataset) -> int:
        if not uid:
            return 0x0120                     # our SCU always names the instance
        with self._lock:
            if uid in self.instances:
                return 0x0111
        for keyword in CREATE_TYPE1 + CREATE_TYPE2:
            if keyword not in ds:
                return 0x0120
        for keyword in CREATE_TYPE1:
            if ds[keyword].is_empty:
                return 0x0121
        if str(ds.PerformedProcedureStepStatus) != IN_PROGRESS:
            return 0x0106
        for item in ds.ScheduledStepAttributesSequence:
            for keyword in SCHEDULED_STEP_TYPE1 + SCHEDULED_STEP_TYPE2:
                if keyword not in item:
                    return 0x0120
            if item["StudyInstanceUID"].is_empty:
                return 0x0121
        return 0x0000

    def _on_set(self, event: evt.Event) -> tuple[Any, Dataset | None]:
        request: Any = event.request
        uid = str(request.RequestedSOPInstanceUID or "")
        calling = event.assoc.requestor.ae_title
        fault = self._take_fault("N-SET")
        mods = event.modification_list
        requested = str(mods.get("PerformedProcedureStepStatus", ""))
        if fault is not None and fault.kind == "status":
            return self._answer("N-SET", uid, fault.status, requested, calling, fault="status")
        if fault is not None and fault.kind == "abort":
            self._apply_fault(event, fault, Exchange("N-SET", uid, None, None, requested,
                                                     calling, "abort"))
            return 0x0110, None
        with self._lock:
            status, error_id = self._apply_set(uid, mods, requested)
        if fault is not None:
            self._apply_fault(event, fault, Exchange("N-SET", uid, None, None, requested,
                                                     calling, fault.kind))
            return 0x0110, None
        return self._answer("N-SET", uid, status, requested, calling, error_id=error_id)

    def _apply_set(self, uid: str, mods: Dataset, requested: str) -> tuple[int, int | None]:
        """Under the lock: check and apply one N-SET atomically."""
        current = self.instances.get(uid)
        if current is None:
            return 0x0112, None
        if str(current.PerformedProcedureStepStatus) != IN_PROGRESS:
            return 0x0110, ERROR_ID_NO_LONGER_UPDATABLE
        for elem in mods:
            if elem.keyword == "SpecificCharacterSet":
                continue
            if elem.keyword in NOT_SETTABLE:
                return 0x0106, None
            if elem.tag not in current:
                return 0x0105, None
        if requested and requested not in (IN_PROGRESS, COMPLETED, DISCONTINUED):
            return 0x0106, None
        updated = copy.deepcopy(current)
        for elem in mods:
            if elem.keyword != "SpecificCharacterSet":
                updated[elem.tag] = copy.deepcopy(elem)
        if str(updated.PerformedProcedureStepStatus) in (COMPLETED, DISCONTINUED):
            status = self._check_final(updated)
            if status:
                return status, None
        self.instances[uid] = updated
        if requested:
            self.states.setdefault(uid, []).append(requested)
        return 0x0000, None

    @staticmethod
    def _check_final(ds: Dataset) -> int:
        for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"):
            if ds[keyword].is_empty:
                return 0x0121
        if not ds.PerformedSeriesSequence:
            return 0x0121
        for item in ds.PerformedSeriesSequence:
            for keyword in SERIES_TYPE1 + SERIES_TYPE2:
                if keyword not in item:
                    return 0x0121
            for keyword in SERIES_TYPE1:
                if item[keyword].is_empty:
                    return 0x0121
            for ref in item.ReferencedImageSequence:
                if not ref.get("ReferencedSOPClassUID") or not ref.get("ReferencedSOPInstanceUID"):
                    return 0x0121
        return 0x0000

    def _answer(self, operation: str, uid: str, status: int, requested: str, calling: str, *,
                error_id: int | None = None, fault: str = "") -> tuple[Any, Dataset | None]:
        with self._lock:
            self.exchanges.append(Exchange(operation, uid, status, error_id, requested, calling,
                                           fault))
        if error_id is None:
            return status, None
        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorID = error_id
        rsp.ErrorComment = NO_LONGER_UPDATABLE
        return rsp, None
