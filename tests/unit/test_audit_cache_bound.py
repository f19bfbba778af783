"""The audit trail remembers an object's patient and study from its store until its commitment
report, and no longer: before, entries were only ever added, so the cache grew by ~0.5 MB per
1,000 objects until its 50,000-entry cap (~26 MB of the daemon's memory; helper-33's soak).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_audit_wiring import PACS, SC, FakeQueue, FakeTrail, delivery, part10

from agent.audit import AuditUnavailable
from agent.forwarder import TransferAudit
from agent.records import Delivery

OBJECTS = 40


def spool(tmp_path: Path) -> list[Delivery]:
    batch = []
    for n in range(1, OBJECTS + 1):
        part10(tmp_path / f"{n}.dcm", f"PID-{n % 3}", f"1.2.{n % 3}", f"1.2.{n % 3}.{n}")
        batch.append(delivery(n, f"1.2.{n % 3}.{n}"))
    return batch


def test_committed_objects_are_forgotten(tmp_path: Path) -> None:
    batch = spool(tmp_path)
    assert PACS.storage_commitment
    trail = FakeTrail()
    audit = TransferAudit(trail, FakeQueue(tmp_path), [PACS])  # type: ignore[arg-type]
    audit.begin(PACS, batch)
    audit.transferred(PACS, stored=batch[:30], failed=batch[30:])
    # refused ones will not be in a commitment request; stored ones wait for the report
    assert audit.remembered == 30
    audit.committed("pacs", [(SC, d.sop_instance_uid) for d in batch[:25]],
                    [(SC, d.sop_instance_uid) for d in batch[25:30]])
    assert audit.remembered == 0
    committed = [c for c in trail.named("instances_transferred") if c["committed"]]
    assert {c["study_uid"] for c in committed} == {"1.2.0", "1.2.1", "1.2.2"}


def test_without_storage_commitment_nothing_is_remembered(tmp_path: Path) -> None:
    batch = spool(tmp_path)
    plain = dataclasses.replace(PACS, storage_commitment=False)
    audit = TransferAudit(FakeTrail(), FakeQueue(tmp_path), [plain])  # type: ignore[arg-type]
    audit.begin(plain, batch)
    audit.transferred(plain, stored=batch, failed=[])
    assert audit.remembered == 0


def test_a_report_that_cannot_be_audited_keeps_what_it_needs(tmp_path: Path) -> None:
    batch = spool(tmp_path)
    trail = FakeTrail()
    audit = TransferAudit(trail, FakeQueue(tmp_path), [PACS])  # type: ignore[arg-type]
    audit.begin(PACS, batch)
    audit.transferred(PACS, stored=batch, failed=[])
    trail.broken = True
    with pytest.raises(AuditUnavailable):       # the report is refused, sent again later
        audit.committed("pacs", [(SC, d.sop_instance_uid) for d in batch], [])
    assert audit.remembered == OBJECTS
