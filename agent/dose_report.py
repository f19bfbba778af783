"""The dose report of a procedure as it ends: its X-Ray Radiation Dose SR built from the
exposures the procedure kept, checked, and durably queued before the MPPS is final (which then
lists it). The `Procedures` ending hook (`agent.procedures.EndingHook`); the daemon binds it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, tzinfo

from agent.errors import IODError
from agent.iod import KNOWN_TRANSFER_SYNTAXES, UIDSource, encode_part10
from agent.iod.dose_sr import (
    SERIES_DESCRIPTION,
    XRAY_RADIATION_DOSE_SR,
    build_dose_sr,
    validate_dose_sr,
)
from agent.iod.uids import MAX_UID_LENGTH, is_valid_uid
from agent.iod.valuerep import format_dt
from agent.procedures import EndingSeries, Procedure
from agent.queue import QueueStore
from agent.records import DeviceInfo, SeriesContext, SOPReference

logger = logging.getLogger(__name__)

#: the report is text: never compressed, whatever the images use
TRANSFER_SYNTAX = "explicit-little"
#: uuid5 namespace of the device observer UID: fixed, so a device keeps its UID for life
_OBSERVER_NAMESPACE = uuid.UUID("0f4e9d3c-5a57-4c1e-9b4e-6d2a7c1f8e21")


def device_observer_uid(uids: UIDSource, device: DeviceInfo) -> str:
    """The Device Observer UID (TID 1004) of our equipment: the same in every report of this
    device, across restarts and reinstalls, with nothing to store. Derived from the
    manufacturer, model and serial number: `<uid_root>.<digits>` under the configured
    `[agent] uid_root`, or `2.25.<uuid5>` (PS3.5 B.2) without one.

    Raises
    ------
    IODError
        If the device has no serial number (two devices would share one observer UID).
    """
    if not device.device_serial_number.strip():
        raise IODError("X-Ray Radiation Dose SR: Device Observer UID: [modality] "
                       "device_serial_number is empty; the device's UID is derived from it")
    name = "\x1f".join((device.manufacturer, device.model_name, device.device_serial_number))
    number = uuid.uuid5(_OBSERVER_NAMESPACE, name).int
    if not uids.root:
        uid = f"2.25.{number}"
    else:
        digits = MAX_UID_LENGTH - 1 - len(uids.root)
        uid = f"{uids.root}.{number % 10**digits}"
    if not is_valid_uid(uid):
        raise IODError(f"X-Ray Radiation Dose SR: Device Observer UID {uid!r} is not valid")
    return uid


def _series(procedure: Procedure, series_instance_uid: str, tz: tzinfo) -> SeriesContext:
    """The report's own series in the procedure's study, dated when the procedure ended."""
    order = procedure.order
    if not order.study_instance_uid:
        raise IODError("X-Ray Radiation Dose SR: the procedure has no Study Instance UID")
    started = datetime.fromtimestamp(procedure.started_at, tz)
    ended = datetime.fromtimestamp(procedure.ended_at or procedure.started_at, tz)
    return SeriesContext(
        study_instance_uid=order.study_instance_uid,
        series_instance_uid=series_instance_uid,
        study_id=order.requested_procedure_id[:16],
        series_number=len(procedure.series) + 1,    # after the image series
        study_datetime=format_dt(started.replace(tzinfo=None)),
        series_datetime=format_dt(ended.replace(tzinfo=None)),
    )


def queue_dose_report(queue: QueueStore, uids: UIDSource, device: DeviceInfo,
                      procedure: Procedure, tz: tzinfo | None = None) -> list[EndingSeries]:
    """Build, check and queue the dose SR of `procedure` (one per procedure, listing every
    exposure it kept); return its series for the MPPS. Nothing to do without exposures.

    Its Series and SOP Instance UIDs are the procedure's `dose_report_uids` (fixed and saved
    before this is called): a report already queued under them (an end retried after a
    failure) is not queued again.

    Raises
    ------
    IODError
        The report cannot be built (the message names the module and attribute).
    QueueError
        It cannot be queued (disk full, I/O error).
    """
    if not procedure.events:
        return []
    if procedure.dose_report_uids is None:
        raise IODError("X-Ray Radiation Dose SR: the procedure has no report UIDs fixed")
    series_uid, sop_uid = procedure.dose_report_uids
    reference = SOPReference(XRAY_RADIATION_DOSE_SR, sop_uid)
    if queue.objects_by_uid([sop_uid]):
        logger.info("procedure %s: dose report already queued", procedure.procedure_id)
        return [EndingSeries(series_uid, (reference,), SERIES_DESCRIPTION)]
    zone = tz or datetime.now().astimezone().tzinfo
    if zone is None:    # astimezone() always sets one; this tells mypy
        raise IODError("X-Ray Radiation Dose SR: no local time zone")
    ended = datetime.fromtimestamp(procedure.ended_at or datetime.now().timestamp(), zone)
    ds = build_dose_sr(
        procedure.events, order=procedure.order, device=device,
        series=_series(procedure, series_uid, zone), sop_instance_uid=sop_uid,
        device_observer_uid=device_observer_uid(uids, device),
        procedure_started=datetime.fromtimestamp(procedure.started_at, zone),
        procedure_ended=ended, tz=zone)
    validate_dose_sr(ds)
    payload = encode_part10(ds, TRANSFER_SYNTAX)
    queued = queue.enqueue(payload, sop_instance_uid=sop_uid,
                           sop_class_uid=XRAY_RADIATION_DOSE_SR,
                           transfer_syntax_uid=KNOWN_TRANSFER_SYNTAXES[TRANSFER_SYNTAX])
    logger.info("procedure %s: dose report of %d exposure(s) queued as item %d",
                procedure.procedure_id, len(procedure.events), queued.queue_id)
    return [EndingSeries(series_uid, (reference,), SERIES_DESCRIPTION)]
