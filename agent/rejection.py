"""Withdrawing images (IHE IOCM): `reject SOP_INSTANCE_UID… --reason …`.

An object rejected before it reached a destination is never sent there: its row is
cancelled (kept, counted as rejected, removed with the object at retention). One a destination
already holds gets a rejection note (agent.iod.kos) queued to that destination, sent only
once the rejected objects are final there (committed, or stored where no commitment is used):
an archive refuses a note that names an instance it does not hold.

Two steps, so the console can show what will happen before it happens:

- `plan_rejection(queue, uids, reason)` checks everything and reads the spooled headers;
  nothing changes;
- `apply(queue, plan, ...)` builds the notes and records the whole rejection in one queue
  transaction; if the queue moved in between (an object was just sent), it refuses and
  `reject()` plans again.

Every refusal is a `RejectionError` naming the SOP Instance UID, never patient data, and
leaves the queue as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from agent.errors import AgentError, IODError
from agent.iod.kos import (
    KOS_SOP_CLASS,
    RejectedInstance,
    RejectionReason,
    build_rejection_note,
)
from agent.iod.part10 import encode_part10
from agent.iod.transfer_syntax import KNOWN_TRANSFER_SYNTAXES
from agent.iod.uids import UIDSource, is_valid_uid
from agent.queue import QueueStore
from agent.queue.store import (
    NoteToQueue,
    ObjectInFlightError,
    RejectionConflict,
    StaleRejectionError,
)
from agent.records import DELIVERED_STATES, DeliveryState, DeviceInfo

logger = logging.getLogger(__name__)

#: Series Number of a rejection note's own series (Type 1; no procedure numbers it)
NOTE_SERIES_NUMBER = 9900
#: how often `reject` plans again when the queue moved under it
PLAN_ATTEMPTS = 3
_NOTE_SYNTAX = "explicit-little"


class RejectionError(AgentError, ValueError):
    """A rejection was refused; nothing changed. The message names the SOP Instance UID."""


@dataclass(frozen=True)
class RejectedObject:
    """One object to reject, as the queue and its spooled header know it."""

    queue_id: int
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    states: Mapping[str, DeliveryState]          #: destination -> state at planning


@dataclass(frozen=True)
class PlannedNote:
    """One note: the destinations that hold exactly these objects (each destination gets a
    note naming only what it holds)."""

    destinations: tuple[str, ...]
    queue_ids: tuple[int, ...]


@dataclass(frozen=True)
class RejectionPlan:
    """What `apply` will do; made by `plan_rejection` (nothing changed yet)."""

    reason: RejectionReason
    objects: tuple[RejectedObject, ...]
    source_path: Path                          #: the spooled file the note's patient/study
    cancel: tuple[tuple[int, str], ...]        #: (queue id, destination) never to be sent
    notes: tuple[PlannedNote, ...]

    def as_dict(self) -> dict[str, Any]:
        """For the console's confirmation and `--json` (UIDs and queue ids only)."""
        return {
            "reason": self.reason.value,
            "rejected": [o.sop_instance_uid for o in self.objects],
            "cancelled": [{"queue_id": q, "destination": d} for q, d in self.cancel],
            "notes": [{"destinations": list(n.destinations), "queue_ids": list(n.queue_ids)}
                      for n in self.notes],
        }


@dataclass(frozen=True)
class QueuedNoteReport:
    queue_id: int
    sop_instance_uid: str
    destinations: tuple[str, ...]
    rejects: tuple[str, ...]                   #: SOP Instance UIDs it names


@dataclass(frozen=True)
class RejectionResult:
    """What the station reports after `apply` (no patient data)."""

    reason: RejectionReason
    rejected: tuple[str, ...]                  #: SOP Instance UIDs
    cancelled: tuple[tuple[int, str], ...]     #: (queue id, destination)
    notes: tuple[QueuedNoteReport, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "rejected": list(self.rejected),
            "cancelled": [{"queue_id": q, "destination": d} for q, d in self.cancelled],
            "notes": [{"queue_id": n.queue_id, "sop_instance_uid": n.sop_instance_uid,
                       "destinations": list(n.destinations), "rejects": list(n.rejects)}
                      for n in self.notes],
        }


def _reason(reason: object) -> RejectionReason:
    try:
        return RejectionReason(str(reason))
    except ValueError as err:
        raise RejectionError(f"rejection reason {reason!r} is not one of "
                             f"{', '.join(r.value for r in RejectionReason)}; nothing was "
                             "rejected") from err


def _read_header(queue: QueueStore, queue_id: int, uid: str) -> Dataset:
    path = queue.object_path(queue_id)
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError as err:
        raise RejectionError(
            f"SOP Instance UID {uid}: its spooled file was removed after the retention time, "
            "so no rejection note can name its series; nothing was rejected") from err
    except (InvalidDicomError, OSError, ValueError) as err:
        logger.debug("queue item %d: header of %s unreadable: %s", queue_id, path, err)
        raise RejectionError(f"SOP Instance UID {uid}: its spooled file cannot be read as "
                             "DICOM; nothing was rejected") from err


def _identity(ds: Dataset) -> tuple[str, str, str]:
    """Patient ID, its issuer and the study: what must be the same for every rejected
    object (values compared, never shown)."""
    return (str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", "")),
            str(ds.get("StudyInstanceUID", "")))


def _check_same_patient_and_study(headers: Sequence[tuple[str, Dataset]]) -> None:
    first_uid, first = headers[0]
    patient, issuer, study = _identity(first)
    for uid, ds in headers[1:]:
        other_patient, other_issuer, other_study = _identity(ds)
        if (other_patient, other_issuer) != (patient, issuer):
            raise RejectionError(
                f"SOP Instance UID {uid} belongs to another patient than {first_uid}; a note "
                "rejects one patient's images: reject them separately (nothing was rejected)")
        if other_study != study:
            raise RejectionError(
                f"SOP Instance UID {uid} belongs to another study than {first_uid}; a note "
                "rejects images of one study: reject them separately (nothing was rejected)")


def _unique(sop_instance_uids: Sequence[str]) -> list[str]:
    if isinstance(sop_instance_uids, str):
        sop_instance_uids = [sop_instance_uids]
    uids = list(dict.fromkeys(sop_instance_uids))
    if not uids:
        raise RejectionError("no SOP Instance UID given; nothing was rejected")
    for uid in uids:
        if not is_valid_uid(uid):
            raise RejectionError(f"{uid!r} is not a SOP Instance UID (digits and dots, at most "
                                 "64 characters); nothing was rejected")
    return uids


def _plan_notes(objects: Sequence[RejectedObject]
                ) -> tuple[tuple[tuple[int, str], ...], tuple[PlannedNote, ...]]:
    cancel: list[tuple[int, str]] = []
    held_by: dict[str, list[int]] = {}
    for obj in objects:
        for destination, state in obj.states.items():
            if state is DeliveryState.SENDING:
                raise RejectionError(
                    f"SOP Instance UID {obj.sop_instance_uid} is being sent to {destination} "
                    "right now; reject it again once that send has ended (nothing was "
                    "rejected)")
            if state in DELIVERED_STATES:
                held_by.setdefault(destination, []).append(obj.queue_id)
            else:
                cancel.append((obj.queue_id, destination))
    by_content: dict[tuple[int, ...], list[str]] = {}
    for destination, queue_ids in held_by.items():
        by_content.setdefault(tuple(queue_ids), []).append(destination)
    notes = tuple(PlannedNote(tuple(dests), ids) for ids, dests in by_content.items())
    return tuple(cancel), notes


def plan_rejection(queue: QueueStore, sop_instance_uids: Sequence[str],
                   reason: RejectionReason | str) -> RejectionPlan:
    """Check a rejection and say what it would do; nothing changes.

    Raises
    ------
    RejectionError
        Naming the UID: a reason not known, no UID, a malformed or unknown UID, one already
        rejected, a rejection note itself, an object being sent right now, objects of more
        than one patient or study, or a spooled file that is gone or unreadable.
    """
    why = _reason(reason)
    uids = _unique(sop_instance_uids)
    found = queue.objects_by_uid(uids)
    for uid in uids:
        if uid not in found:
            raise RejectionError(f"SOP Instance UID {uid} is not in this agent's queue; "
                                 "nothing was rejected")
    by_queue_id = {found[uid].queue_id: uid for uid in uids}
    rejected = queue.rejections(by_queue_id)
    for queue_id, uid in by_queue_id.items():
        if queue_id in rejected:
            raise RejectionError(f"SOP Instance UID {uid} is already rejected "
                                 f"({rejected[queue_id].reason}); nothing was rejected")
    notes_among = queue.note_queue_ids(by_queue_id)
    if notes_among:
        raise RejectionError(f"SOP Instance UID {by_queue_id[min(notes_among)]} is a rejection "
                             "note; a note cannot be rejected (nothing was rejected)")
    headers = [(uid, _read_header(queue, found[uid].queue_id, uid)) for uid in uids]
    _check_same_patient_and_study(headers)
    states: dict[int, dict[str, DeliveryState]] = {q: {} for q in by_queue_id}
    for d in queue.deliveries(queue_ids=list(by_queue_id), limit=1_000_000):
        states[d.queue_id][d.destination] = d.state
    objects = tuple(
        RejectedObject(found[uid].queue_id, uid, found[uid].sop_class_uid,
                       str(ds.get("SeriesInstanceUID", "")), states[found[uid].queue_id])
        for uid, ds in headers)
    for obj in objects:
        if not is_valid_uid(obj.series_instance_uid):
            raise RejectionError(f"SOP Instance UID {obj.sop_instance_uid}: its spooled file "
                                 "has no valid Series Instance UID; nothing was rejected")
    cancel, notes = _plan_notes(objects)
    return RejectionPlan(why, objects, queue.object_path(objects[0].queue_id), cancel, notes)


def _build_notes(plan: RejectionPlan, *, device: DeviceInfo, uids: UIDSource,
                 final_states: Mapping[str, DeliveryState], now: datetime
                 ) -> list[tuple[NoteToQueue, tuple[str, ...]]]:
    if not plan.notes:
        return []
    try:
        source = pydicom.dcmread(plan.source_path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as err:
        raise RejectionError(f"SOP Instance UID {plan.objects[0].sop_instance_uid}: its "
                             "spooled file cannot be read; nothing was rejected") from err
    by_id = {o.queue_id: o for o in plan.objects}
    series_uid = uids.new_uid()            # one series for this rejection's notes
    built = []
    for number, planned in enumerate(plan.notes, start=1):
        instances = [RejectedInstance(by_id[q].sop_class_uid, by_id[q].sop_instance_uid,
                                      by_id[q].series_instance_uid) for q in planned.queue_ids]
        note_uid = uids.new_uid()
        try:
            ds = build_rejection_note(source, instances, plan.reason, device=device,
                                      series_instance_uid=series_uid,
                                      sop_instance_uid=note_uid, now=now,
                                      series_number=NOTE_SERIES_NUMBER, instance_number=number)
            payload = encode_part10(ds, _NOTE_SYNTAX)
        except IODError as err:
            raise RejectionError(f"rejection note for {instances[0].sop_instance_uid}: {err}; "
                                 "nothing was rejected") from err
        waits = {dest: tuple((q, final_states.get(dest, DeliveryState.COMMITTED))
                             for q in planned.queue_ids)
                 for dest in planned.destinations}
        built.append((NoteToQueue(payload, note_uid, KOS_SOP_CLASS,
                                  KNOWN_TRANSFER_SYNTAXES[_NOTE_SYNTAX], waits),
                      tuple(i.sop_instance_uid for i in instances)))
    return built


def apply(queue: QueueStore, plan: RejectionPlan, *, device: DeviceInfo, uids: UIDSource,
          final_states: Mapping[str, DeliveryState], now: datetime) -> RejectionResult:
    """Carry out `plan` in one queue transaction.

    Parameters
    ----------
    final_states
        Per destination, the state after which it holds an object for good: `committed`
        with storage commitment, `sent` without (the station's `final_state_by_destination`).
        A note waits for that state of every rejected object at its destination.
    now
        When the notes are made (an aware datetime; its zone unless the image names one).

    Raises
    ------
    RejectionError
        A note cannot be built, an object is being sent right now, or it was rejected in
        the meantime.
    StaleRejectionError
        The queue moved since `plan` was made (an object was sent): plan again.
    QueueError
        The notes cannot be made durable (spool full, I/O error). In every case nothing
        changed.
    """
    notes = _build_notes(plan, device=device, uids=uids, final_states=final_states, now=now)
    try:
        queued = queue.reject([o.queue_id for o in plan.objects], plan.reason.value,
                              cancel=plan.cancel, notes=[n for n, _ in notes],
                              cancel_text=f"rejected ({plan.reason.value}) before it was "
                                          "sent: never to be sent")
    except StaleRejectionError:
        raise
    except (ObjectInFlightError, RejectionConflict) as err:
        raise RejectionError(str(err)) from err
    result = RejectionResult(
        plan.reason, tuple(o.sop_instance_uid for o in plan.objects), plan.cancel,
        tuple(QueuedNoteReport(q.queue_id, q.sop_instance_uid, q.destinations, names)
              for q, (_, names) in zip(queued, notes, strict=True)))
    logger.info("rejected (%s) %s: %d row(s) cancelled, note(s) %s queued",
                plan.reason.value, ", ".join(result.rejected), len(result.cancelled),
                ", ".join(f"{n.sop_instance_uid} to {'/'.join(n.destinations)}"
                          for n in result.notes) or "none")
    return result


def reject(queue: QueueStore, sop_instance_uids: Sequence[str], reason: RejectionReason | str,
           *, device: DeviceInfo, uids: UIDSource, final_states: Mapping[str, DeliveryState],
           now: datetime) -> RejectionResult:
    """Plan and apply, planning again (up to PLAN_ATTEMPTS times) when the queue moved in
    between; what the station calls.

    Raises
    ------
    RejectionError
        As `plan_rejection` and `apply`, or the queue kept moving.
    QueueError
        The spool cannot take the notes.
    """
    for _ in range(PLAN_ATTEMPTS):
        plan = plan_rejection(queue, sop_instance_uids, reason)
        try:
            return apply(queue, plan, device=device, uids=uids, final_states=final_states,
                         now=now)
        except StaleRejectionError:
            logger.debug("rejection of %s: the queue moved; planning again",
                         ", ".join(o.sop_instance_uid for o in plan.objects))
    raise RejectionError("the queue kept changing while the rejection was recorded (objects "
                         "being sent); nothing was rejected: try again")
