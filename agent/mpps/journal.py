"""The MPPS journal: one small JSON file per open MPPS, written durably (tmp → fsync → rename →
fsync dir), so that every MPPS begun is sent until the RIS has acknowledged it, across crashes
and power cuts.

Files are named by a hash of our own MPPS SOP Instance UID, never by a received string; the
folder is 0700 and files 0600 (they hold patient names). A file that cannot be read back is
renamed `*.corrupt`, kept for a service engineer, and left out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from agent.mpps.errors import MppsJournalError
from agent.mpps.model import MppsRecord, PerformedSeries, PPSStatus, ProcedureStep
from agent.queue.spool import fsync_dir, write_durably
from agent.records import Code, Order, OtherPatientID, SOPReference

logger = logging.getLogger(__name__)

#: bump when the layout changes; a reader refuses formats it does not know
JOURNAL_FORMAT = 1

_DIR_MODE = 0o700
_SUFFIX = ".json"


def journal_file_name(sop_instance_uid: str) -> str:
    """`<32 hex digits>.json`: a hash of our own UID, so no received text names a file."""
    digest = hashlib.sha256(sop_instance_uid.encode("ascii")).hexdigest()[:32]
    return digest + _SUFFIX


class Journal:
    """The folder of MPPS journal files. Not thread-safe: the client serialises calls."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def open(self) -> list[MppsRecord]:
        """Create the folder if needed and read every record in it.

        Returns
        -------
        list[MppsRecord]
            The open MPPS, oldest PPS start first.

        Raises
        ------
        MppsJournalError
            If the folder cannot be created or listed.
        """
        try:
            old_umask = os.umask(0o077)
            try:
                self.folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            finally:
                os.umask(old_umask)
            os.chmod(self.folder, _DIR_MODE)
            entries = sorted(self.folder.iterdir())
        except OSError as err:
            raise MppsJournalError(f"MPPS journal {self.folder}: cannot create or list the "
                                   f"folder: {err.strerror or err}") from err
        records: list[MppsRecord] = []
        for path in entries:
            if path.name.endswith(".tmp"):
                # a write that never reached its rename: the previous version is still whole
                self._unlink(path)
            elif path.name.endswith(_SUFFIX):
                record = self._read(path)
                if record is not None:
                    records.append(record)
        records.sort(key=lambda r: (r.step.start_date, r.step.start_time,
                                    r.step.sop_instance_uid))
        return records

    def write(self, record: MppsRecord) -> None:
        """Write `record` durably, replacing its previous version.

        Raises
        ------
        MppsJournalError
            If the file cannot be written; the previous version is then still in place.
        """
        uid = record.step.sop_instance_uid
        path = self.folder / journal_file_name(uid)
        tmp = path.with_name(path.name + ".tmp")
        payload = json.dumps(record_to_json(record), ensure_ascii=False,
                             separators=(",", ":")).encode("utf-8")
        try:
            # write_synced opens the tmp file O_EXCL: a leftover of a failed write goes first
            tmp.unlink(missing_ok=True)
            write_durably(tmp, path, payload)
        except OSError as err:
            raise MppsJournalError(f"MPPS {uid}: journal {path.name} not written: "
                                   f"{err.strerror or err}") from err

    def remove(self, sop_instance_uid: str) -> None:
        """Delete the record durably (after the RIS acknowledged the final state).

        Raises
        ------
        MppsJournalError
            If the file cannot be deleted.
        """
        path = self.folder / journal_file_name(sop_instance_uid)
        try:
            path.unlink(missing_ok=True)
            fsync_dir(self.folder)
        except OSError as err:
            raise MppsJournalError(f"MPPS {sop_instance_uid}: journal {path.name} not "
                                   f"deleted: {err.strerror or err}") from err

    def _read(self, path: Path) -> MppsRecord | None:
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
            record = record_from_json(data)
            if journal_file_name(record.step.sop_instance_uid) != path.name:
                raise ValueError("file name does not match the MPPS SOP Instance UID")
            return record
        except OSError as err:
            logger.error("MPPS journal %s: cannot be read (%s); left out", path.name,
                         err.strerror or err)
            return None
        except (ValueError, KeyError, TypeError) as err:
            # the error text may quote a value of the file: leave it out of the log
            quarantined = path.with_name(path.name + ".corrupt")
            logger.error("MPPS journal %s: not a valid journal record (%s); renamed to %s, "
                         "that MPPS will not be sent", path.name, type(err).__name__,
                         quarantined.name)
            try:
                os.replace(path, quarantined)
                fsync_dir(self.folder)
            except OSError as rename_err:
                logger.error("MPPS journal %s: cannot be renamed: %s", path.name,
                             rename_err.strerror or rename_err)
            return None

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            logger.warning("MPPS journal: leftover %s not deleted: %s", path.name,
                           err.strerror or err)


# --- (de)serialisation -----------------------------------------------------------------------

def _code_to_json(code: Code) -> dict[str, str]:
    return {"value": code.value, "scheme": code.scheme, "meaning": code.meaning,
            "scheme_version": code.scheme_version}


def _code_from_json(data: Any) -> Code:
    return Code(value=_str(data["value"]), scheme=_str(data["scheme"]),
                meaning=_str(data["meaning"]), scheme_version=_str(data["scheme_version"]))


def _reference_from_json(data: Any) -> SOPReference:
    return SOPReference(_str(data[0]), _str(data[1]))


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def order_to_json(order: Order) -> dict[str, Any]:
    return {
        "patient_name": order.patient_name,
        "patient_id": order.patient_id,
        "patient_birth_date": order.patient_birth_date,
        "patient_sex": order.patient_sex,
        "issuer_of_patient_id": order.issuer_of_patient_id,
        "study_instance_uid": order.study_instance_uid,
        "accession_number": order.accession_number,
        "requested_procedure_id": order.requested_procedure_id,
        "requested_procedure_description": order.requested_procedure_description,
        "referring_physician_name": order.referring_physician_name,
        "sps_id": order.sps_id,
        "sps_description": order.sps_description,
        "scheduled": order.scheduled,
        "other_patient_ids": [[o.patient_id, o.issuer_of_patient_id, o.type_of_patient_id]
                              for o in order.other_patient_ids],
        "referenced_studies": [[r.sop_class_uid, r.sop_instance_uid]
                               for r in order.referenced_studies],
        "requested_procedure_codes": [_code_to_json(c) for c in order.requested_procedure_codes],
        "scheduled_protocol_codes": [_code_to_json(c) for c in order.scheduled_protocol_codes],
        "admission_id": order.admission_id,
    }


def order_from_json(data: Any) -> Order:
    study_uid = data["study_instance_uid"]
    return Order(
        patient_name=_str(data["patient_name"]),
        patient_id=_str(data["patient_id"]),
        patient_birth_date=_str(data["patient_birth_date"]),
        patient_sex=_str(data["patient_sex"]),
        issuer_of_patient_id=_str(data["issuer_of_patient_id"]),
        study_instance_uid=None if study_uid is None else _str(study_uid),
        accession_number=_str(data["accession_number"]),
        requested_procedure_id=_str(data["requested_procedure_id"]),
        requested_procedure_description=_str(data["requested_procedure_description"]),
        referring_physician_name=_str(data["referring_physician_name"]),
        sps_id=_str(data["sps_id"]),
        sps_description=_str(data["sps_description"]),
        scheduled=_bool(data["scheduled"]),
        other_patient_ids=tuple(OtherPatientID(_str(o[0]), _str(o[1]), _str(o[2]))
                                for o in data["other_patient_ids"]),
        referenced_studies=tuple(_reference_from_json(r) for r in data["referenced_studies"]),
        requested_procedure_codes=tuple(_code_from_json(c)
                                        for c in data["requested_procedure_codes"]),
        scheduled_protocol_codes=tuple(_code_from_json(c)
                                       for c in data["scheduled_protocol_codes"]),
        admission_id=_str(data["admission_id"]),
    )


def record_to_json(record: MppsRecord) -> dict[str, Any]:
    step = record.step
    return {
        "format": JOURNAL_FORMAT,
        "sop_instance_uid": step.sop_instance_uid,
        "pps_id": step.pps_id,
        "order": order_to_json(step.order),
        "modality": step.modality,
        "start_date": step.start_date,
        "start_time": step.start_time,
        "description": step.description,
        "protocol_name": step.protocol_name,
        "station_ae_title": record.station_ae_title,
        "station_name": record.station_name,
        "location": record.location,
        "study_id": record.study_id,
        "procedure_codes": [_code_to_json(c) for c in record.procedure_codes],
        "performed_protocol_codes": [_code_to_json(c) for c in record.performed_protocol_codes],
        "series": [{
            "series_instance_uid": s.series_instance_uid,
            "protocol_name": s.protocol_name,
            "series_description": s.series_description,
            "performing_physician_name": s.performing_physician_name,
            "operator_name": s.operator_name,
            "retrieve_ae_title": s.retrieve_ae_title,
            "images": [[i.sop_class_uid, i.sop_instance_uid] for i in s.images],
        } for s in record.series],
        "final_status": None if record.final_status is None else record.final_status.value,
        "end_date": record.end_date,
        "end_time": record.end_time,
        "discontinuation_reason": (None if record.discontinuation_reason is None
                                   else _code_to_json(record.discontinuation_reason)),
        "create_sent": record.create_sent,
        "create_acked": record.create_acked,
        "final_sent": record.final_sent,
        "final_acked": record.final_acked,
        "failed": record.failed,
    }


def record_from_json(data: Any) -> MppsRecord:
    """Raises ValueError, KeyError or TypeError for anything but a record we wrote."""
    if not isinstance(data, dict) or data.get("format") != JOURNAL_FORMAT:
        raise ValueError(f"not an MPPS journal record of format {JOURNAL_FORMAT}")
    step = ProcedureStep(
        sop_instance_uid=_str(data["sop_instance_uid"]),
        pps_id=_str(data["pps_id"]),
        order=order_from_json(data["order"]),
        modality=_str(data["modality"]),
        start_date=_str(data["start_date"]),
        start_time=_str(data["start_time"]),
        description=_str(data["description"]),
        protocol_name=_str(data["protocol_name"]),
    )
    final_status = data["final_status"]
    if final_status not in (None, PPSStatus.COMPLETED.value, PPSStatus.DISCONTINUED.value):
        raise ValueError("final_status is neither COMPLETED nor DISCONTINUED")
    reason = data["discontinuation_reason"]
    return MppsRecord(
        step=step,
        station_ae_title=_str(data["station_ae_title"]),
        station_name=_str(data["station_name"]),
        location=_str(data["location"]),
        study_id=_str(data["study_id"]),
        procedure_codes=tuple(_code_from_json(c) for c in data["procedure_codes"]),
        performed_protocol_codes=tuple(_code_from_json(c)
                                       for c in data["performed_protocol_codes"]),
        series=[PerformedSeries(
            series_instance_uid=_str(s["series_instance_uid"]),
            protocol_name=_str(s["protocol_name"]),
            series_description=_str(s["series_description"]),
            performing_physician_name=_str(s["performing_physician_name"]),
            operator_name=_str(s["operator_name"]),
            retrieve_ae_title=_str(s["retrieve_ae_title"]),
            images=tuple(_reference_from_json(i) for i in s["images"]),
        ) for s in data["series"]],
        final_status=None if final_status is None else PPSStatus(_str(final_status)),
        end_date=_str(data["end_date"]),
        end_time=_str(data["end_time"]),
        discontinuation_reason=None if reason is None else _code_from_json(reason),
        create_sent=_bool(data["create_sent"]),
        create_acked=_bool(data["create_acked"]),
        final_sent=_bool(data["final_sent"]),
        final_acked=_bool(data["final_acked"]),
        failed=_str(data["failed"]),
    )
