"""StowWorker on a real queue with a scripted archive (httpx.MockTransport): the byte cap per
request, a request refused as a whole split into single instances, credentials problems kept
pending, and verify = true through the commitment path."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import DestinationSection, QueueSection
from agent.iod import UIDSource
from agent.net.stow import DicomWebClient
from agent.queue import QueueStore
from agent.records import DeliveryState
from agent.stow_forwarder import StowWorker

S = DeliveryState
CLASS = "1.2.840.10008.5.1.4.1.1.7"
Handler = Callable[[httpx.Request, list[str]], httpx.Response]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    queue = QueueStore(tmp_path / "spool", ["web"])
    queue.open()
    try:
        yield queue
    finally:
        queue.close()


def enqueue(store: QueueStore, count: int, size: int = 1000) -> list[str]:
    uids = [f"2.25.{1000 + i}" for i in range(count)]
    for uid in uids:
        # the bytes are opaque to the queue and the client: the UID goes in for the archive
        store.enqueue(uid.encode().ljust(size, b"\0"), sop_instance_uid=uid,
                      sop_class_uid=CLASS, transfer_syntax_uid="1.2.840.10008.1.2.1")
    return uids


def part_uids(request: httpx.Request) -> list[str]:
    boundary = request.headers["content-type"].split("boundary=")[1]
    body = request.read()
    parts = body.split(f"--{boundary}".encode())[1:-1]
    return [part.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n").rstrip(b"\0").decode()
            for part in parts]


def stored_answer(uids: list[str], status: int = 200) -> httpx.Response:
    return httpx.Response(status, json={"00081199": {"vr": "SQ", "Value": [
        {"00081150": {"vr": "UI", "Value": [CLASS]}, "00081155": {"vr": "UI", "Value": [u]}}
        for u in uids]}}, headers={"Content-Type": "application/dicom+json"})


class Archive:
    """Records each STOW request's instances; `stow` and `qido` script the answers."""

    def __init__(self, stow: Handler, qido: Callable[[str], httpx.Response] | None = None
                 ) -> None:
        self.requests: list[list[str]] = []
        self.lookups: list[str] = []
        self._stow = stow
        self._qido = qido

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            uid = request.url.params["SOPInstanceUID"]
            self.lookups.append(uid)
            assert self._qido is not None
            return self._qido(uid)
        uids = part_uids(request)
        self.requests.append(uids)
        return self._stow(request, uids)


def make_worker(store: QueueStore, archive: Archive, **options: Any) -> StowWorker:
    dest = DestinationSection(name="web", kind="stow-rs", url="http://archive.test/dicom-web",
                              storage_commitment=False, **options)
    client = DicomWebClient(dest, transport=httpx.MockTransport(archive))
    return StowWorker(dest, queue=store, uids=UIDSource(), client=client,
                      queue_config=QueueSection(retry_initial_s=0.1, retry_max_s=0.2))


def rows(store: QueueStore) -> dict[str, tuple[S, str]]:
    return {d.sop_instance_uid: (d.state, d.last_error) for d in store.deliveries()}


def test_requests_stay_within_max_request_mb(store: QueueStore) -> None:
    uids = enqueue(store, 5, size=400_000)          # 2 fit in 1 MiB, not 3
    archive = Archive(lambda _r, sent: stored_answer(sent))
    worker = make_worker(store, archive, max_request_mb=1)
    while worker.run_once():
        pass
    worker.stop()
    assert archive.requests == [uids[0:2], uids[2:4], uids[4:5]]
    assert {state for state, _ in rows(store).values()} == {S.SENT}


def test_a_413_splits_the_request_into_single_instances(store: QueueStore) -> None:
    uids = enqueue(store, 3)
    archive = Archive(lambda _r, sent: httpx.Response(413) if len(sent) > 1
                      else stored_answer(sent))
    worker = make_worker(store, archive)
    worker.run_once()
    worker.stop()
    assert archive.requests == [uids, [uids[0]], [uids[1]], [uids[2]]]
    assert {state for state, _ in rows(store).values()} == {S.SENT}


def test_a_single_instance_too_large_fails_with_the_reason(store: QueueStore) -> None:
    [uid] = enqueue(store, 1)
    worker = make_worker(store, Archive(lambda _r, _s: httpx.Response(413)))
    worker.run_once()
    worker.stop()
    state, error = rows(store)[uid]
    assert state is S.FAILED and "413" in error
    assert worker.health.failed_total == 1


def test_a_wrong_token_keeps_objects_pending_with_a_clear_error(
        store: QueueStore, tmp_path: Path) -> None:
    [uid] = enqueue(store, 1)
    token = tmp_path / "token"
    token.write_text("Zk9-not-right\n")
    token.chmod(0o600)
    worker = make_worker(store, Archive(lambda _r, _s: httpx.Response(401)), token_file=token)
    for _ in range(3):
        worker.run_once()
        store.postpone([d.delivery_id for d in store.deliveries()], 0)   # due again now
    worker.stop()
    state, error = rows(store)[uid]
    assert state is S.PENDING
    assert "401 Unauthorized" in error and f"check token_file {token}" in error
    assert "Zk9" not in error
    assert worker.health.reachable is False
    assert f"check token_file {token}" in worker.health.last_error
    assert worker.health.failed_total == 0


def test_an_unsafe_token_file_keeps_objects_pending_and_sends_nothing(
        store: QueueStore, tmp_path: Path) -> None:
    [uid] = enqueue(store, 1)
    token = tmp_path / "token"
    token.write_text("abc\n")
    token.chmod(0o644)
    archive = Archive(lambda _r, sent: stored_answer(sent))
    worker = make_worker(store, archive, token_file=token)
    worker.run_once()
    worker.stop()
    assert archive.requests == []
    state, error = rows(store)[uid]
    assert state is S.PENDING and "chmod 600" in error


def test_server_error_is_outcome_unknown_and_fails_after_repeated_unknowns(
        store: QueueStore) -> None:
    [uid] = enqueue(store, 1)
    archive = Archive(lambda _r, _s: httpx.Response(500))
    worker = make_worker(store, archive)
    worker.run_once()
    state, error = rows(store)[uid]
    assert state is S.PENDING and "500" in error
    for _ in range(10):
        store.postpone([d.delivery_id for d in store.deliveries()], 0)
        worker.run_once()
    worker.stop()
    # five answers of "unknown" in a row: failed, kept for `queue retry` (as with DIMSE)
    assert rows(store)[uid][0] is S.FAILED
    assert len(archive.requests) == 5


def qido_answer(found: dict[str, str], *, lists: bool = True
                ) -> Callable[[str], httpx.Response]:
    """QIDO-RS by SOPInstanceUID, with UID list matching (a,b,c) or, `lists` False, a 400
    for a list."""
    def answer(value: str) -> httpx.Response:
        if "," in value and not lists:
            return httpx.Response(400)
        listed = [uid for uid in value.split(",") if uid in found]
        return httpx.Response(200, content=json.dumps([{
            "00080016": {"vr": "UI", "Value": [found[uid]]},
            "00080018": {"vr": "UI", "Value": [uid]}} for uid in listed]).encode(),
            headers={"Content-Type": "application/dicom+json"})
    return answer


def test_verify_commits_what_qido_finds_and_resends_what_it_misses(store: QueueStore) -> None:
    uids = enqueue(store, 3)
    archive = Archive(lambda _r, sent: stored_answer(sent),
                      qido_answer({uids[0]: CLASS, uids[2]: "1.2.840.10008.5.1.4.1.1.2"}))
    worker = make_worker(store, archive, verify=True)
    worker.run_once()
    worker.stop()
    result = rows(store)
    # one list query; the one it did not return is looked up alone before it counts missing
    assert archive.lookups == [",".join(uids), uids[1]]
    assert result[uids[0]][0] is S.COMMITTED
    # not found: sent again (Failure Reason 0x0112), as a commitment failure would be
    assert result[uids[1]][0] is S.PENDING and "0x0112" in result[uids[1]][1]
    # listed under another SOP class: failed (0x0119)
    assert result[uids[2]][0] is S.FAILED and "0x0119" in result[uids[2]][1]
    assert [d.transaction_uid is not None for d in store.deliveries()] == [True] * 3


def test_a_failed_lookup_leaves_the_object_stored_and_looks_again(store: QueueStore) -> None:
    [uid] = enqueue(store, 1)
    answers = [httpx.Response(503)]
    archive = Archive(lambda _r, sent: stored_answer(sent),
                      lambda u: answers.pop() if answers else qido_answer({uid: CLASS})(u))
    worker = make_worker(store, archive, verify=True)
    worker.run_once()
    state, error = rows(store)[uid]
    assert state is S.SENT and "QIDO-RS" in error and "503" in error
    store.postpone([d.delivery_id for d in store.deliveries()], 0)
    worker.run_once()
    worker.stop()
    assert rows(store)[uid][0] is S.COMMITTED
    assert len(archive.requests) == 1            # looked up again, not sent again


def test_stored_but_never_found_is_resent_with_backoff_then_failed(store: QueueStore) -> None:
    # Orthanc 1.10 + DICOMweb 1.7 answers "stored" for an instance its Lua filter dropped
    [uid] = enqueue(store, 1)
    archive = Archive(lambda _r, sent: stored_answer(sent), qido_answer({}))
    worker = make_worker(store, archive, verify=True)
    worker.run_once()
    [row] = store.deliveries()
    assert row.state is S.PENDING and "0x0112" in row.last_error
    assert row.next_attempt_at > time.time()          # not resent at once, in a hot loop
    for _ in range(10):
        store.postpone([d.delivery_id for d in store.deliveries()], 0)
        worker.run_once()
    worker.stop()
    state, error = rows(store)[uid]
    assert state is S.FAILED
    assert "stored" in error and "QIDO-RS" in error and "5 times" in error
    assert len(archive.requests) == 5


def test_an_archive_without_uid_list_matching_is_asked_one_at_a_time(store: QueueStore) -> None:
    uids = enqueue(store, 3)
    archive = Archive(lambda _r, sent: stored_answer(sent),
                      qido_answer(dict.fromkeys(uids, CLASS), lists=False))
    worker = make_worker(store, archive, verify=True)
    worker.run_once()
    worker.stop()
    assert archive.lookups == [",".join(uids), *uids]
    assert {state for state, _ in rows(store).values()} == {S.COMMITTED}


def test_all_found_costs_one_lookup(store: QueueStore) -> None:
    uids = enqueue(store, 20)
    archive = Archive(lambda _r, sent: stored_answer(sent),
                      qido_answer(dict.fromkeys(uids, CLASS)))
    worker = make_worker(store, archive, verify=True)
    worker.run_once()
    worker.stop()
    assert archive.lookups == [",".join(uids)]
    assert {state for state, _ in rows(store).values()} == {S.COMMITTED}
