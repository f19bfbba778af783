"""CommitmentWindow (agent.forwarder): when a destination's stored rows are asked for
Storage Commitment, one request per window for all of them (issue 18 item 5)."""

from __future__ import annotations

import threading

from agent.forwarder import CommitmentWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_at_most_one_request_per_window() -> None:
    clock = Clock()
    window = CommitmentWindow(window_s=0.1, max_instances=50, clock=clock)
    assert not window.pending() and not window.due()
    window.stored()
    assert window.due()              # after a quiet window: at once, no added delay
    assert window.take(lambda: ["a"], lambda rows: None) == ["a"]   # type: ignore[list-item]
    clock.now += 0.06
    window.stored(3)                 # within the window of that request: they wait
    assert window.pending() and not window.due()
    assert abs(window.remaining_s() - 0.04) < 1e-9
    clock.now += 0.04
    assert window.due() and window.remaining_s() == 0.0


def test_a_take_that_found_nothing_is_no_request() -> None:
    clock = Clock()
    window = CommitmentWindow(window_s=0.1, clock=clock)
    window.stored()
    assert window.take(list, lambda rows: None) == []    # another worker was first
    window.stored()
    assert window.due()              # no request was made: nothing to wait for


def test_due_at_once_when_enough_rows_wait() -> None:
    window = CommitmentWindow(window_s=10.0, max_instances=5, clock=Clock())
    window.stored()
    window.take(lambda: ["a"], lambda rows: None)      # type: ignore[arg-type,return-value]
    window.stored(4)
    assert not window.due()
    window.stored()
    assert window.due()


def test_take_closes_the_window_and_begins_only_what_it_selected() -> None:
    window = CommitmentWindow(window_s=0.1, clock=Clock())
    window.stored(2)
    begun: list[list[str]] = []
    assert window.take(lambda: ["a", "b"], begun.append) == ["a", "b"]   # type: ignore[list-item]
    assert begun == [["a", "b"]] and not window.pending()
    # another worker, a moment later: nothing left to ask for, no transaction begun
    assert window.take(list, begun.append) == []
    assert begun == [["a", "b"]]


def test_concurrent_takes_never_select_one_row_twice() -> None:
    """select+begin are atomic across workers: a row moved out of `sent` by one worker's
    begin is not selected by another's (the queue does the same with its rows)."""
    window = CommitmentWindow(window_s=0.0)
    sent = set(range(1000))
    taken: list[int] = []
    lock = threading.Lock()
    switch = threading.Event()

    def select() -> list[int]:
        rows = sorted(sent)
        switch.wait(0.001)            # never set: lets another thread run between the two
        return rows

    def begin(rows: list[int]) -> None:
        with lock:
            taken.extend(rows)
        sent.difference_update(rows)

    def worker() -> None:
        for _ in range(50):
            window.stored()
            window.take(select, begin)    # type: ignore[arg-type]

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == list(range(1000))       # each exactly once
