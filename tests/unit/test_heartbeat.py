"""A stage is stalled only when it misses its beat: a declared wait (an archive in backoff) or
an idle stage (no acquisition running) never counts."""

from __future__ import annotations

from agent.heartbeat import Heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_missed_beat_is_a_stall_a_declared_wait_is_not() -> None:
    clock = Clock()
    beat = Heartbeat("forwarder pacs #0", limit_s=10, clock=clock)
    clock.now += 9
    assert beat.stalled() == ""
    clock.now += 2
    assert beat.stalled() == "forwarder pacs #0: no progress for 11 s"
    beat.beat()
    assert beat.stalled() == ""
    beat.waiting(300)                 # the archive is down: a 300 s backoff
    clock.now += 305
    assert beat.stalled() == ""
    clock.now += 10
    assert "no progress" in beat.stalled()


def test_an_idle_stage_never_stalls() -> None:
    clock = Clock()
    beat = Heartbeat("acquisition", limit_s=5, clock=clock)
    beat.idle()
    clock.now += 10_000
    assert beat.stalled() == ""
    beat.beat()
    clock.now += 6
    assert beat.stalled()
