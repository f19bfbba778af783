"""Archive groups (issue 19 item 2): routing at enqueue, reassign and pinning in the queue, and
the router's failover and return (no network: fake health, fake probe, fake clock)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.config import DestinationSection
from agent.errors import QueueError
from agent.forwarder import DestinationHealth, Forwarder
from agent.queue import QueueStore
from agent.records import CommitmentResult, DeliveryState
from agent.routing import GroupRouter, archive_groups, probe_address

S = DeliveryState
SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"
GROUPS = {"archive": ("node-a", "node-b", "node-c")}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[QueueStore]:
    q = QueueStore(tmp_path / "spool", ["node-a", "node-b", "node-c", "backup"],
                   groups=GROUPS, clock=clock)
    q.open()
    yield q
    q.close()


_counter = iter(range(10_000))


def put(q: QueueStore, n: int = 1) -> list[int]:
    ids = []
    for _ in range(n):
        i = next(_counter)
        ids.append(q.enqueue(f"object {i}".encode(), sop_instance_uid=f"2.25.{5000 + i}",
                             sop_class_uid=SC, transfer_syntax_uid=EXPLICIT).queue_id)
    return ids


def where(q: QueueStore, queue_id: int) -> dict[str, str]:
    """{destination: state} of one object's rows."""
    return {d.destination: d.state.value for d in q.deliveries(queue_ids=[queue_id])}


# -- the queue ---------------------------------------------------------------------------------
def test_an_object_gets_one_row_per_group_and_one_per_ungrouped_destination(
        store: QueueStore) -> None:
    [first] = put(store)
    assert where(store, first) == {"backup": "pending", "node-a": "pending"}
    store.set_route("archive", "node-b")
    [second] = put(store)
    assert where(store, second) == {"backup": "pending", "node-b": "pending"}
    assert where(store, first) == {"backup": "pending", "node-a": "pending"}   # stays
    counts = store.counts()
    assert counts["node-a"]["pending"] == 1 and counts["node-b"]["pending"] == 1
    assert counts["node-c"]["pending"] == 0 and counts["backup"]["pending"] == 2


def test_groups_the_config_would_refuse_are_refused(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="member 'x' is unknown"):
        QueueStore(tmp_path, ["a"], groups={"g": ("a", "x")})
    with pytest.raises(QueueError, match="already in group 'g'"):
        QueueStore(tmp_path, ["a", "b"], groups={"g": ("a",), "h": ("a", "b")})
    with pytest.raises(QueueError, match="no destination's"):
        QueueStore(tmp_path, ["a"], groups={"a": ("a",)})
    store = QueueStore(tmp_path, ["a", "b"], groups={"g": ("a",)})
    with pytest.raises(QueueError, match="not a member"):
        store.set_route("g", "b")


def test_reassign_moves_only_rows_never_sent_and_pins_unknown_outcomes(
        store: QueueStore, clock: FakeClock) -> None:
    never, refused, unknown, stored, committing, in_flight = put(store, 6)
    row = {q: store.deliveries(queue_ids=[q], destination="node-a")[0].delivery_id
           for q in (never, refused, unknown, stored, committing, in_flight)}
    # claimed in the order they were queued; all six are `sending` now
    claimed = store.claim_batch("node-a", limit=6)
    assert [d.queue_id for d in claimed] == [never, refused, unknown, stored, committing,
                                             in_flight]
    # the association was refused before anything was transferred
    store.mark_retry([row[never], row[refused]], "node-a: connection refused", clock.t + 60)
    # no answer to a C-STORE: the archive may hold it
    store.mark_outcome_unknown(row[unknown], "node-a: aborted", clock.t + 60, max_unknown=5,
                               failed_reason="x")
    store.mark_sent(row[stored])
    store.mark_sent(row[committing])
    store.begin_commitment("node-a", [row[committing]], "2.25.1", deadline=clock.t + 60)

    moved = store.reassign("node-a", "node-b", "archive")

    assert moved == 2
    for q in (never, refused):
        [d] = store.deliveries(queue_ids=[q], destination="node-b")
        assert d.state is S.PENDING and d.next_attempt_at == clock.t   # due at once
        assert d.delivery_id == row[q] and "moved from node-a" in d.last_error
    assert where(store, unknown)["node-a"] == "pending"       # pinned: resent there, same UID
    assert where(store, stored)["node-a"] == "sent"
    assert where(store, committing)["node-a"] == "commit_requested"
    assert where(store, in_flight)["node-a"] == "sending"
    assert store.pinned_count("node-a") == 4
    assert [(r["queue_id"], r["from_destination"], r["to_destination"])
            for r in store.reroutes()] == [(never, "node-a", "node-b"),
                                           (refused, "node-a", "node-b")]
    # moved rows stay where they went; a second pass moves nothing more
    assert store.reassign("node-a", "node-b", "archive") == 0
    # the in-flight row, once its association fails before transfer, is movable
    store.mark_retry([row[in_flight]], "node-a: connection refused", clock.t + 60)
    assert store.reassign("node-a", "node-c", "archive") == 1
    assert where(store, in_flight) == {"backup": "pending", "node-c": "pending"}


def test_a_resend_after_no_such_object_stays_pinned(store: QueueStore,
                                                     clock: FakeClock) -> None:
    # stored, then the archive said it lacks it (0x0112): resent to the same member
    [q] = put(store)
    [d] = store.claim_batch("node-a")
    store.mark_sent(d.delivery_id)
    store.begin_commitment("node-a", [d.delivery_id], "2.25.7", deadline=clock.t + 60)
    store.apply_commitment_report(
        CommitmentResult("2.25.7", committed=(), failed=((SC, d.sop_instance_uid, 0x0112),)),
        retry_commit_at=clock.t)
    assert where(store, q)["node-a"] == "pending"
    assert store.reassign("node-a", "node-b", "archive") == 0


def test_a_commitment_report_speaks_only_for_the_member_it_came_from(
        store: QueueStore, clock: FakeClock) -> None:
    [q] = put(store)
    [d] = store.claim_batch("node-a")
    store.mark_sent(d.delivery_id)
    store.begin_commitment("node-a", [d.delivery_id], "2.25.9", deadline=clock.t + 60)
    # the row now names another member (by hand: reassign never moves such a row)
    store.conn.execute("UPDATE deliveries SET destination='node-b' WHERE delivery_id=?",
                       (d.delivery_id,))
    outcome = store.apply_commitment_report(
        CommitmentResult("2.25.9", committed=((SC, d.sop_instance_uid),), failed=()),
        retry_commit_at=clock.t)
    assert outcome.committed == 0 and outcome.ignored == [d.sop_instance_uid]
    assert where(store, q)["node-b"] == "commit_requested"


def test_reassign_refuses_names_outside_the_group(store: QueueStore) -> None:
    with pytest.raises(QueueError, match="cannot move"):
        store.reassign("node-a", "backup", "archive")
    with pytest.raises(QueueError, match="cannot move"):
        store.reassign("node-a", "node-a", "archive")


def test_reroutes_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    store = QueueStore(tmp_path / "spool", ["a", "b"], groups={"g": ("a", "b")}, clock=clock)
    store.open()
    [q] = put(store)
    assert store.reassign("a", "b", "g") == 1
    store.close()
    reopened = QueueStore(tmp_path / "spool", ["a", "b"], groups={"g": ("a", "b")},
                          clock=clock)
    reopened.open()
    try:
        assert where(reopened, q) == {"b": "pending"}
        assert [r["from_destination"] for r in reopened.reroutes([q])] == ["a"]
    finally:
        reopened.close()
    conn = sqlite3.connect(tmp_path / "spool" / "queue.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        conn.close()


# -- the router ------------------------------------------------------------------------------
class Probe:
    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], bool] = {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, address: tuple[str, int]) -> bool:
        self.calls.append(address)
        return self.answers.get(address, False)


def fail(health: DestinationHealth, now: float, times: int = 1) -> None:
    """What a worker does when its association is refused."""
    with health.lock:
        if health.reachable is not False:
            health.unreachable_since = now
        health.reachable = False
        health.consecutive_failures += times


def succeed(health: DestinationHealth, now: float) -> None:
    with health.lock:
        health.reachable = True
        health.unreachable_since = None
        health.consecutive_failures = 0
        health.last_success_at = now


@pytest.fixture
def routed(store: QueueStore, clock: FakeClock
           ) -> tuple[GroupRouter, dict[str, DestinationHealth], Probe, list[str]]:
    health = {name: DestinationHealth(name) for name in GROUPS["archive"]}
    probe = Probe()
    woken: list[str] = []
    router = GroupRouter(
        store, GROUPS, health,
        addresses={"node-a": ("10.0.0.1", 104), "node-b": ("10.0.0.2", 104),
                   "node-c": None},
        wake=woken.append, failures=2, after_s=10, probe_interval_s=5, probe=probe,
        clock=clock)
    return router, health, probe, woken


def test_failover_moves_queued_objects_and_new_ones_go_to_the_next_member(
        store: QueueStore, clock: FakeClock, routed: tuple[GroupRouter, dict[
            str, DestinationHealth], Probe, list[str]]) -> None:
    router, health, _probe, woken = routed
    waiting = put(store, 3)
    router.check()
    assert router.current("archive") == "node-a"     # healthy until it fails
    fail(health["node-a"], clock.t)                  # one failure: not yet
    router.check()
    assert router.current("archive") == "node-a" and store.route("archive") == "node-a"
    fail(health["node-a"], clock.t)                  # two in a row: down
    router.check()
    assert router.current("archive") == "node-b" and store.route("archive") == "node-b"
    assert all(where(store, q) == {"node-b": "pending", "backup": "pending"} for q in waiting)
    assert woken == ["node-b"]
    [new] = put(store)
    assert "node-b" in where(store, new)
    assert router.member_status("node-a") == {"group": "archive", "current": False,
                                              "down": True}
    assert router.member_status("node-b") == {"group": "archive", "current": True,
                                              "down": False}
    assert router.member_status("backup") is None


def test_a_member_unreachable_long_enough_is_down_whatever_the_count(
        store: QueueStore, clock: FakeClock,
        routed: tuple[GroupRouter, dict[str, DestinationHealth], Probe, list[str]]) -> None:
    router, health, _probe, _woken = routed
    fail(health["node-a"], clock.t)
    router.check()
    assert router.current("archive") == "node-a"
    clock.t += 10
    router.check()
    assert router.current("archive") == "node-b"


def test_pinned_rows_wait_for_their_member_and_go_first_when_it_answers(
        store: QueueStore, clock: FakeClock,
        routed: tuple[GroupRouter, dict[str, DestinationHealth], Probe, list[str]]) -> None:
    router, health, probe, woken = routed
    unknown, moved = put(store, 2)
    batch = store.claim_batch("node-a")
    store.mark_outcome_unknown(batch[0].delivery_id, "node-a: aborted", clock.t + 300,
                               max_unknown=5, failed_reason="x")
    store.mark_retry([batch[1].delivery_id], "node-a: refused", clock.t + 300)
    fail(health["node-a"], clock.t, times=2)
    router.check()
    assert where(store, unknown)["node-a"] == "pending"
    assert "node-b" in where(store, moved)
    # probed only every probe_interval_s; a closed port keeps it down
    clock.t += 1
    router.check()
    assert probe.calls == []
    clock.t += 5
    router.check()
    assert probe.calls == [("10.0.0.1", 104)] and router.current("archive") == "node-b"
    # it answers again: up, its failures cleared, the pinned row due now, new objects back
    probe.answers[("10.0.0.1", 104)] = True
    clock.t += 5
    woken.clear()
    router.check()
    assert router.current("archive") == "node-a" and store.route("archive") == "node-a"
    assert health["node-a"].reachable is None and health["node-a"].consecutive_failures == 0
    [pinned] = store.deliveries(queue_ids=[unknown], destination="node-a")
    assert pinned.next_attempt_at == clock.t
    assert "node-a" in woken
    assert "node-b" in where(store, moved)               # moved rows stay where they went
    [new] = put(store)
    assert "node-a" in where(store, new)


def test_a_worker_success_brings_a_member_back_without_a_probe(
        store: QueueStore, clock: FakeClock,
        routed: tuple[GroupRouter, dict[str, DestinationHealth], Probe, list[str]]) -> None:
    router, health, probe, _woken = routed
    fail(health["node-a"], clock.t, times=2)
    router.check()
    assert router.current("archive") == "node-b"
    clock.t += 1
    succeed(health["node-a"], clock.t)     # a pinned row went through
    router.check()
    assert router.current("archive") == "node-a" and probe.calls == []


def test_the_next_member_down_too_moves_on_and_all_down_moves_nothing(
        store: QueueStore, clock: FakeClock,
        routed: tuple[GroupRouter, dict[str, DestinationHealth], Probe, list[str]]) -> None:
    router, health, _probe, _woken = routed
    fail(health["node-a"], clock.t, times=2)
    router.check()
    [q] = put(store)
    assert "node-b" in where(store, q)
    fail(health["node-b"], clock.t, times=2)
    router.check()
    assert router.current("archive") == "node-c" and "node-c" in where(store, q)
    fail(health["node-c"], clock.t, times=2)
    router.check()
    # all down: new objects wait at the first member, nothing moves between dead members
    assert router.current("archive") == "node-a"
    assert "node-c" in where(store, q)
    [later] = put(store)
    assert "node-a" in where(store, later)


def test_forwarder_status_names_the_group_and_the_current_member(store: QueueStore) -> None:
    def worker(name: str) -> SimpleNamespace:
        return SimpleNamespace(destination=DestinationSection(name, "127.0.0.1", 104, "X"),
                               health=DestinationHealth(name), wake=lambda: None)

    forwarder = Forwarder([worker(n) for n in ("node-a", "node-b", "node-c", "backup")],
                          queue=store)  # type: ignore[list-item]
    entries = {e["name"]: e for e in forwarder.health()}
    assert entries["node-a"]["group"] == "archive" and entries["node-a"]["current"] is True
    assert entries["node-b"]["current"] is False
    assert "group" not in entries["backup"]
    assert Forwarder([]).router is None


def test_groups_and_probe_addresses_from_the_config() -> None:
    destinations = [
        DestinationSection("a", "pacs-a", 104, "A", group="archive"),
        DestinationSection("x", "other", 11112, "X"),
        DestinationSection("b", kind="stow-rs", url="https://pacs-b:8443/dicom-web",
                           group="archive"),
        DestinationSection("c", kind="stow-rs", url="http://pacs-c/dicom-web"),
    ]
    assert archive_groups(destinations) == {"archive": ("a", "b")}
    assert [probe_address(d) for d in destinations] == [
        ("pacs-a", 104), ("other", 11112), ("pacs-b", 8443), ("pacs-c", 80)]


def test_a_member_back_is_asked_again_for_the_commitments_it_never_reported(
        store: QueueStore, clock: FakeClock,
        routed: tuple[GroupRouter, dict[str, DestinationHealth], Probe, list[str]]) -> None:
    router, health, probe, _woken = routed
    asked, waiting = put(store, 2)
    first, second = store.claim_batch("node-a")
    for d in (first, second):
        store.mark_sent(d.delivery_id)
    store.begin_commitment("node-a", [first.delivery_id], "2.25.11",
                           deadline=clock.t + 3600)
    # the second one's N-ACTION failed: asked again after a backoff
    store.begin_commitment("node-a", [second.delivery_id], "2.25.12", deadline=clock.t + 3600)
    store.fail_transaction_request("2.25.12", "node-a: aborted", next_attempt_at=clock.t + 300)
    fail(health["node-a"], clock.t, times=2)
    router.check()                       # down: stored rows stay pinned there
    assert where(store, asked)["node-a"] == "commit_requested"
    probe.answers[("10.0.0.1", 104)] = True
    clock.t += 5
    router.check()                       # back: the open request is repeated at once
    assert store.open_transactions("node-a") == 0
    for q in (asked, waiting):
        [d] = store.deliveries(queue_ids=[q], destination="node-a")
        assert d.state is S.SENT and d.next_attempt_at <= clock.t
    # a late report on the old Transaction UID still counts
    store.apply_commitment_report(
        CommitmentResult("2.25.11", committed=((SC, first.sop_instance_uid),), failed=()),
        retry_commit_at=clock.t)
    assert where(store, asked)["node-a"] == "committed"


def test_a_row_in_flight_when_the_agent_died_stays_with_its_member(
        tmp_path: Path, clock: FakeClock) -> None:
    groups = {"g": ("a", "b")}
    store = QueueStore(tmp_path / "spool", ["a", "b"], groups=groups, clock=clock)
    store.open()
    in_flight, waiting = put(store, 2)
    store.claim_batch("a", limit=1)             # then the power goes
    store.conn.close()
    store._conn = None
    store.spool.unlock()
    restarted = QueueStore(tmp_path / "spool", ["a", "b"], groups=groups, clock=clock)
    restarted.open()                            # recovery: back to pending, outcome unknown
    try:
        assert where(restarted, in_flight) == {"a": "pending"}
        assert restarted.reassign("a", "b", "g") == 1
        assert where(restarted, in_flight) == {"a": "pending"}
        assert where(restarted, waiting) == {"b": "pending"}
    finally:
        restarted.close()
