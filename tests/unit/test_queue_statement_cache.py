"""The queue's `IN (?, ...)` lists come in a few lengths only (issue 18 item 4b): Python's
sqlite3 caches up to 128 prepared statements per connection, keyed by their SQL text, so a
list built to the length of every call made a new statement per length, each holding memory
and evicting the statements the forwarder uses all the time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.queue import QueueStore
from agent.queue.store import IN_LIST_SIZES

SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"
COUNT = 300


class RecordingConnection:
    """The store's connection, remembering the text of every statement it is given."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.texts: set[str] = set()

    def execute(self, sql: str, *args: Any) -> Any:
        self.texts.add(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self.texts.add(sql)
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueStore]:
    with QueueStore(tmp_path_factory.mktemp("spool"), ["pacs", "backup"]) as store:
        for index in range(COUNT):
            store.enqueue(b"x" * 16, sop_instance_uid=f"1.2.3.{index + 1}", sop_class_uid=SC,
                          transfer_syntax_uid=EXPLICIT)
        yield store


def texts_of(store: QueueStore, call: Any) -> set[str]:
    real = store._conn
    recording = RecordingConnection(real)
    store._conn = recording  # type: ignore[assignment]
    try:
        for n in range(1, COUNT + 1):
            call(n)
    finally:
        store._conn = real
    return recording.texts


@pytest.mark.parametrize("method", ["deliveries", "reroutes", "rejections", "note_queue_ids"])
def test_lists_of_queue_ids_of_any_length_make_few_statements(store: QueueStore,
                                                              method: str) -> None:
    ids = list(range(1, COUNT + 1))
    texts = texts_of(store, lambda n: getattr(store, method)(ids[:n]) if method != "deliveries"
                     else store.deliveries(queue_ids=ids[:n]))
    assert len(texts) <= len(IN_LIST_SIZES), len(texts)


@pytest.mark.parametrize("method", ["objects_by_uid", "rejected_uids"])
def test_lists_of_uids_of_any_length_make_few_statements(store: QueueStore, method: str) -> None:
    uids = [f"1.2.3.{n}" for n in range(1, COUNT + 1)]
    texts = texts_of(store, lambda n: getattr(store, method)(uids[:n]))
    assert len(texts) <= len(IN_LIST_SIZES), len(texts)


def test_the_rows_found_are_the_same(store: QueueStore) -> None:
    every = store.deliveries(limit=10 * COUNT)
    assert len(every) == 2 * COUNT
    for ids in ([7], [3, 1, 2], list(range(COUNT, 0, -1)), list(range(5, 280, 3)),
                [9, 9, 9, 4], []):
        wanted = set(ids)
        assert store.deliveries(queue_ids=ids, limit=10 * COUNT) == \
            [d for d in every if d.queue_id in wanted]
        # a limit keeps the lowest delivery ids, also across several lists
        assert store.deliveries(queue_ids=ids, destination="pacs", limit=40) == \
            [d for d in every if d.queue_id in wanted and d.destination == "pacs"][:40]
        found = store.objects_by_uid(f"1.2.3.{n}" for n in ids)
        assert sorted(o.queue_id for o in found.values()) == sorted(wanted)
    assert store.objects_by_uid(["1.2.3.1", "no such uid"]).keys() == {"1.2.3.1"}
