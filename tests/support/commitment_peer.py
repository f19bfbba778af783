"""A Storage SCP that reports Storage Commitment on the *same* association, right after its
N-ACTION-RSP. No independent peer packaged in Debian does this (Orthanc always opens a new
association), so this one is pynetdicom, and it follows PS3.4 J.3.3: every referenced instance
appears in the report, held ones as committed, others as failed with 0x0112."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.sop_class import (
    SecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)
from pynetdicom.transport import ThreadedAssociationServer


@dataclass
class SameAssociationArchive:
    ae_title: str = "SAMEASSOC"
    held: dict[str, str] = field(default_factory=dict)       # instance -> class
    reports_sent: list[int] = field(default_factory=list)     # status of each report
    _pending: dict[int, Dataset] = field(default_factory=dict)
    _server: ThreadedAssociationServer | None = None

    def start(self, port: int) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(SecondaryCaptureImageStorage,
                                 ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context(StorageCommitmentPushModel)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_ACTION, self._on_n_action),
            (evt.EVT_DIMSE_SENT, self._on_sent),
        ]
        self._server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _on_store(self, event: evt.Event) -> int:
        self.held[event.request.AffectedSOPInstanceUID] = event.request.AffectedSOPClassUID
        return 0x0000

    def _on_n_action(self, event: evt.Event) -> tuple[int, None]:
        info = event.action_information
        committed, failed = [], []
        for ref in info.ReferencedSOPSequence:
            item = Dataset()
            item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
            item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
            if self.held.get(ref.ReferencedSOPInstanceUID) == ref.ReferencedSOPClassUID:
                committed.append(item)
            else:
                item.FailureReason = 0x0112
                failed.append(item)
        report = Dataset()
        report.TransactionUID = info.TransactionUID
        report.ReferencedSOPSequence = Sequence(committed)
        if failed:
            report.FailedSOPSequence = Sequence(failed)
        # sent once the N-ACTION-RSP has gone out (see _on_sent)
        self._pending[id(event.assoc)] = report
        return 0x0000, None

    def _on_sent(self, event: evt.Event) -> None:
        if isinstance(event.message, N_ACTION_RSP):
            report = self._pending.pop(id(event.assoc), None)
            if report is not None:
                threading.Thread(target=self._send_report, args=(event.assoc, report),
                                 daemon=True).start()

    def _send_report(self, assoc: Any, report: Dataset) -> None:
        event_type = 2 if "FailedSOPSequence" in report else 1
        status, _ = assoc.send_n_event_report(report, event_type, StorageCommitmentPushModel,
                                              StorageCommitmentPushModelInstance)
        self.reports_sent.append(int(status.Status) if "Status" in status else -1)
