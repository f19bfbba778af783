"""Archive groups (issue 19 item 2): which member of each group gets new objects, and failover.

`[[destinations]] group = "archive"` makes destinations members of one group, in config order.
Each new object gets one row per group (agent.queue: `QueueStore(groups=...)`), named after
the group's *current* member; this router chooses that member — the first one not down — and
tells the queue. It watches each member's `DestinationHealth`, which every worker of any kind
(DIMSE or STOW-RS) updates the same way, so it works for both.

A member is *down* when its health says unreachable and either `FAILOVER_FAILURES` attempts in
a row have failed or it has been unreachable for `FAILOVER_AFTER_S`. Then, in one queue
transaction each time, its movable rows (pending, never stored, never sent without an answer)
go to the current member (`QueueStore.reassign`); rows whose outcome at the down member is
unknown stay pinned there and are resent there, same UID, once it answers: the archive never
holds one object under two routes.

A down member is probed every `PROBE_INTERVAL_S` by a plain TCP connect to its address (the
one check common to every kind; its workers may have nothing left to send there). When it
answers, or when its workers succeed with a pinned row, it is up again: its failure record is
cleared, its pinned rows become due at once, the commitment requests it left unanswered are
asked again, and new objects go to it again if it comes first in the group. Rows moved away
stay where they went.

What this does not do: spread one agent's objects over several members (the order of the
group does that across agents, docs/scale.md), or move a row whose outcome is unknown to
another member when the first never comes back (a person decides that; `queue retry`).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import DestinationSection
from agent.errors import AgentError

logger = logging.getLogger(__name__)

#: failed attempts in a row (association refused, connection failed) that make a member down;
#: with several workers per member they come within the first backoff
FAILOVER_FAILURES = 2
#: ...or this long unreachable, whatever the count (a slow timeout may fail rarely)
FAILOVER_AFTER_S = 10.0
#: how often a down member's address is tried
PROBE_INTERVAL_S = 5.0
#: TCP connect timeout of a probe
PROBE_TIMEOUT_S = 2.0
#: how often the router looks at the members' health
CHECK_INTERVAL_S = 0.5


class Health(Protocol):
    """What the router reads of a DestinationHealth (agent.forwarder)."""

    reachable: bool | None
    unreachable_since: float | None
    consecutive_failures: int
    last_success_at: float | None
    last_error: str
    lock: Any


class RoutingQueue(Protocol):
    """What the router needs of the queue (agent.queue.QueueStore)."""

    def set_route(self, group: str, member: str) -> None: ...

    def reassign(self, from_member: str, to_member: str, group: str) -> int: ...

    def make_due(self, destination: str) -> int: ...

    def expire_transactions(self, destination: str, *, now: float | None = None
                            ) -> list[int]: ...


def archive_groups(destinations: Sequence[DestinationSection]) -> dict[str, tuple[str, ...]]:
    """{group: member names in config order} of the destinations that have a group."""
    groups: dict[str, list[str]] = {}
    for d in destinations:
        if d.group:
            groups.setdefault(d.group, []).append(d.name)
    return {name: tuple(members) for name, members in groups.items()}


def probe_address(destination: DestinationSection) -> tuple[str, int] | None:
    """(host, port) a probe connects to: the DIMSE port, or the STOW-RS URL's host and port."""
    if destination.kind == "stow-rs" or destination.url:
        parts = urllib.parse.urlsplit(destination.url)
        if not parts.hostname:
            return None
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if destination.host and destination.port:
        return destination.host, destination.port
    return None


def tcp_probe(address: tuple[str, int]) -> bool:
    """True if something accepts a TCP connection there (closed again at once)."""
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@dataclass
class _Member:
    name: str
    group: str
    health: Health
    address: tuple[str, int] | None
    down_since: float | None = None
    probed_at: float = 0.0


class GroupRouter:
    """Chooses each group's current member and moves a down member's movable rows.

    `check()` is one pass (tests call it with their own clock and probe); `start()` runs it
    every `check_interval_s` on a thread of its own. `wake(name)` wakes that destination's
    workers after rows were moved to it or made due.
    """

    def __init__(
        self,
        queue: RoutingQueue,
        groups: Mapping[str, Sequence[str]],
        health: Mapping[str, Health],
        *,
        addresses: Mapping[str, tuple[str, int] | None] | None = None,
        wake: Callable[[str], None] = lambda _name: None,
        failures: int = FAILOVER_FAILURES,
        after_s: float = FAILOVER_AFTER_S,
        probe_interval_s: float = PROBE_INTERVAL_S,
        check_interval_s: float = CHECK_INTERVAL_S,
        probe: Callable[[tuple[str, int]], bool] = tcp_probe,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._groups = {name: tuple(members) for name, members in groups.items()}
        self._members = {
            m: _Member(m, group, health[m], (addresses or {}).get(m))
            for group, members in self._groups.items() for m in members}
        self._current = {group: members[0] for group, members in self._groups.items()}
        self._wake = wake
        self._failures = failures
        self._after_s = after_s
        self._probe_interval_s = probe_interval_s
        self._check_interval_s = check_interval_s
        self._probe = probe
        self._now = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- status --------------------------------------------------------------------------------
    def member_status(self, name: str) -> dict[str, Any] | None:
        """{"group", "current", "down"} of a member; None for a destination in no group."""
        member = self._members.get(name)
        if member is None:
            return None
        with self._lock:
            return {"group": member.group, "current": self._current[member.group] == name,
                    "down": member.down_since is not None}

    def current(self, group: str) -> str:
        with self._lock:
            return self._current[group]

    # -- one pass ------------------------------------------------------------------------------
    def check(self) -> None:
        """Update who is down, choose each group's member, move rows off down members."""
        now = self._now()
        for member in self._members.values():
            if member.down_since is None:
                if self._failing(member.health, now):
                    member.down_since = now
                    member.probed_at = now
                    logger.warning("archive group %s: %s is not answering (%s)", member.group,
                                   member.name, member.health.last_error or "no detail")
            elif self._back(member, now):
                self._clear(member)
        for group, members in self._groups.items():
            up = [m for m in members if self._members[m].down_since is None]
            # all down: new objects wait at the first member; nothing is moved between dead ones
            chosen = up[0] if up else members[0]
            with self._lock:
                changed = self._current[group] != chosen
                self._current[group] = chosen
            if changed:
                self._queue.set_route(group, chosen)
                logger.warning("archive group %s: new objects go to %s", group, chosen)
            if not up:
                continue
            for name in members:
                if self._members[name].down_since is not None:
                    if self._queue.reassign(name, chosen, group):
                        self._wake(chosen)

    def _failing(self, health: Health, now: float) -> bool:
        with health.lock:
            if health.reachable is not False:
                return False
            if health.consecutive_failures >= self._failures:
                return True
            since = health.unreachable_since
        return since is not None and now - since >= self._after_s

    def _back(self, member: _Member, now: float) -> bool:
        """A down member answers again: a worker stored something there since it went down,
        or its address accepts a connection."""
        assert member.down_since is not None
        with member.health.lock:
            success = member.health.last_success_at
            reachable = member.health.reachable
        if reachable is True and success is not None and success >= member.down_since:
            return True
        if member.address is None or now - member.probed_at < self._probe_interval_s:
            return False
        member.probed_at = now
        return self._probe(member.address)

    def _clear(self, member: _Member) -> None:
        # the failures that made it down are history now: without clearing them the next
        # pass would find it down again before any worker tried; its pinned rows go first
        health = member.health
        with health.lock:
            if health.reachable is False:
                health.reachable = None
                health.unreachable_since = None
                health.consecutive_failures = 0
        member.down_since = None
        # a node that went down lost the commitment requests it had not answered (Orthanc
        # sends each report once, from memory): ask again under new Transaction UIDs now,
        # not after commitment_timeout_s; a late report on an old UID is still honoured
        asked_again = len(self._queue.expire_transactions(member.name, now=math.inf))
        due = self._queue.make_due(member.name)
        logger.warning("archive group %s: %s answers again (%d queued object(s) there due "
                       "now, %d commitment request(s) to repeat)", member.group, member.name,
                       due, asked_again)
        self._wake(member.name)

    # -- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None or not self._groups:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="archive-groups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._check_interval_s):
            try:
                self.check()
            except AgentError as err:
                # e.g. the queue database is busy or the disk full: the rows wait, next pass
                logger.error("archive groups: %s", err)
            except Exception:
                logger.exception("archive groups: unexpected error; going on")
