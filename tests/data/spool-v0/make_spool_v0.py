"""Write the spool-v0 fixture with the RELEASED queue code of commit 4ba70cc (schema version 0).

Run from a worktree of that commit, never with today's code (see README.md here):

    git worktree add /tmp/v0 4ba70cc
    PYTHONPATH=/tmp/v0 .venv/bin/python tests/data/spool-v0/make_spool_v0.py /tmp/spool-v0
    git worktree remove /tmp/v0

Only that version's own API is used, so the rows are exactly what a device running it holds.
Payloads are small opaque bytes (the queue never looks inside): no patient data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.queue import QueueStore
from agent.records import CommitmentResult, DeliveryState

S = DeliveryState
SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"
T0 = 1_790_000_000.0


class Clock:
    """A fixed clock that moves one second per step, so the fixture is reproducible."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def put(store: QueueStore, n: int) -> int:
    payload = f"spool-v0 fixture object {n}: opaque bytes, not DICOM\n".encode() * 4
    return store.enqueue(payload, sop_instance_uid=f"2.25.179000000000{n:04d}",
                         sop_class_uid=SC, transfer_syntax_uid=EXPLICIT).queue_id


def claim_one(store: QueueStore, destination: str) -> int:
    [delivery] = store.claim_batch(destination, limit=1)
    return delivery.delivery_id


def commit(store: QueueStore, destination: str, delivery_ids: list[int], txn: str,
           deadline: float) -> None:
    store.begin_commitment(destination, delivery_ids, txn, deadline)


def main(root: Path) -> None:
    clock = Clock()
    store = QueueStore(root, ["pacs", "backup"], clock=clock)
    store.open()
    try:
        # 1: committed at both destinations, then purged (row kept, file removed)
        q1 = put(store, 1)
        for dest, txn in (("pacs", "2.25.1790000000000901"), ("backup", "2.25.1790000000000902")):
            d = claim_one(store, dest)
            store.mark_sent(d)
            commit(store, dest, [d], txn, T0 + 3600)
            store.apply_commitment_report(
                CommitmentResult(txn, committed=((SC, "2.25.1790000000000001"),), failed=()),
                retry_commit_at=T0)
        assert store.purge(retention_s=0, final_states={"pacs": S.COMMITTED,
                                                        "backup": S.COMMITTED}) == 1
        # 2: pending again after a refused association, due later
        put(store, 2)
        store.mark_retry([claim_one(store, "pacs")], "association rejected", T0 + 600)
        # 3: sending when the agent stopped (a crash mid-send)
        put(store, 3)
        claim_one(store, "pacs")
        # 4: sent; its commitment request (N-ACTION) failed, so that transaction is superseded
        put(store, 4)
        d4 = claim_one(store, "pacs")
        store.mark_sent(d4)
        commit(store, "pacs", [d4], "2.25.1790000000000904", T0 + 3600)
        store.fail_transaction_request("2.25.1790000000000904", "N-ACTION aborted")
        # 5, 6: commit_requested, their transaction still open
        put(store, 5)
        put(store, 6)
        open_ids = [claim_one(store, "pacs"), claim_one(store, "pacs")]
        for d in open_ids:
            store.mark_sent(d)
        commit(store, "pacs", open_ids, "2.25.1790000000000905", T0 + 3600)
        # 7: committed at pacs
        put(store, 7)
        d7 = claim_one(store, "pacs")
        store.mark_sent(d7)
        commit(store, "pacs", [d7], "2.25.1790000000000907", T0 + 3600)
        store.apply_commitment_report(
            CommitmentResult("2.25.1790000000000907",
                             committed=((SC, "2.25.1790000000000007"),), failed=()),
            retry_commit_at=T0)
        # 8: failed for good (kept, retried only by hand)
        put(store, 8)
        store.mark_failed(claim_one(store, "pacs"), "archive refused C-STORE (0xA900)")
        # 9: pending, never tried
        put(store, 9)
        # backup: the oldest pending row (object 2) was being sent when the agent stopped
        claim_one(store, "backup")
        for dest in ("pacs", "backup"):
            for row in store.deliveries(destination=dest):
                sys.stdout.write(f"{dest} {row.queue_id} {row.state.value} "
                                 f"{row.transaction_uid or ''}\n")
    finally:
        store.close()
    assert q1 == 1


if __name__ == "__main__":
    main(Path(sys.argv[1]))
