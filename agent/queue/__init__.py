"""The durable queue: Part 10 bytes in spool files plus a small record in SQLite.

It knows nothing of pixels or pydicom: it stores opaque bytes and the few UIDs the network
needs (huey's "opaque chunk of data").
"""

from agent.queue.maintenance import BackupReport, VerifyReport, backup_spool, verify_spool
from agent.queue.schema import SCHEMA_VERSION
from agent.queue.spool import Spool, write_durably
from agent.queue.store import NewObject, QueueStore, ReportOutcome

__all__ = ["SCHEMA_VERSION", "BackupReport", "NewObject", "QueueStore", "ReportOutcome", "Spool",
           "VerifyReport", "backup_spool", "verify_spool", "write_durably"]
