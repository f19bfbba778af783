"""A batch of direct C-STOREs whose answers the sending thread reads itself, against DCMTK
storescp, plain and over TLS (agent.net.direct_response.take_reading / read_answer / end_reading).

Before, the DUL thread read every answer and handed it over through the DIMSE message queue:
one wake-up of that thread per object (~0.25 ms of CPU per 0.5 MB object into Orthanc, issue
18). Now, within a batch (`more_follow`), the DUL leaves the socket alone; after the batch it
has the socket back, so pynetdicom's release works as always.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import build_context
from support.certs import make_tls_world
from support.peers import (
    LOCALHOST,
    free_port,
    start_storescp,
    start_storescp_tls,
    stop_process,
)
from test_direct_store import SC, write_sc

from agent.net import direct_response
from agent.net.ae import AgentAE, associate
from agent.net.direct_store import send_c_store_direct, supports
from agent.net.tls import PeerTls, TlsIdentity

OBJECTS = 10


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for n in range(OBJECTS):
        path = tmp_path / f"sc{n}.dcm"
        write_sc(path, 1000 + 300_000 * (n % 2))
        paths.append(path)
    return paths


@pytest.fixture(params=["plain", "tls"])
def archive(request: pytest.FixtureRequest, tmp_path: Path
            ) -> Iterator[tuple[int, PeerTls | None]]:
    """storescp, plain or over TLS: its port and the TLS the agent's side needs."""
    port = free_port()
    tls = None
    if request.param == "tls":
        world = make_tls_world(tmp_path / "tls", key_type="rsa")
        tls = PeerTls(TlsIdentity(world.client.certificate, world.client.private_key,
                                  world.ca.certificate))
        scp = start_storescp_tls(tmp_path / "received", port,
                                 private_key=world.server.private_key,
                                 certificate=world.server.certificate,
                                 ca_file=world.ca.certificate)
    else:
        scp = start_storescp(tmp_path / "received", port)
    try:
        yield port, tls
    finally:
        stop_process(scp)


def count_dul_reads(assoc: Any) -> list[int]:
    """Every PDU the association's DUL thread reads from now on (one entry each)."""
    direct_response.install(assoc)
    reads: list[int] = []
    dul = assoc.dul
    original = dul._read_pdu_data

    def counting() -> None:
        if not dul.socket.direct_reader:
            reads.append(1)
        original()

    dul._read_pdu_data = counting
    return reads


def test_within_a_batch_the_dul_reads_no_answer_and_gets_the_socket_back(
        archive: tuple[int, PeerTls | None], files: list[Path]) -> None:
    port, tls = archive
    assoc = associate(AgentAE("MODALITY1"), LOCALHOST, port, "STORESCP",
                      contexts=[build_context(SC, [ExplicitVRLittleEndian])], tls=tls)
    try:
        assert supports(assoc)
        reads = count_dul_reads(assoc)
        statuses = [send_c_store_direct(assoc, path, n + 1,
                                        more_follow=n < len(files) - 1).status
                    for n, path in enumerate(files)]
        assert statuses == [0] * OBJECTS
        assert direct_response.fast_responses(assoc) == OBJECTS
        assert reads == []
        # the last send gave the socket back: pynetdicom's release reads A-RELEASE-RP
        assert not assoc.dul.socket.direct_reader
        assoc.release()
        assert assoc.is_released
        assert reads == [1]
    finally:
        if assoc.is_established:
            assoc.abort()


def test_an_answer_it_declines_is_pynetdicoms_and_the_batch_goes_on(
        archive: tuple[int, PeerTls | None], files: list[Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every other answer declined after the sending thread read it: given back to the DUL,
    # which reads it again through pynetdicom; the next object takes the socket again
    original = direct_response.parse_store_response
    seen: list[int] = []

    def every_other(body: Any, expected: direct_response.Expected) -> Any:
        seen.append(expected.message_id)
        return original(body, expected) if expected.message_id % 2 else None

    monkeypatch.setattr(direct_response, "parse_store_response", every_other)
    port, tls = archive
    assoc = associate(AgentAE("MODALITY1"), LOCALHOST, port, "STORESCP",
                      contexts=[build_context(SC, [ExplicitVRLittleEndian])], tls=tls)
    try:
        reads = count_dul_reads(assoc)
        statuses = [send_c_store_direct(assoc, path, n + 1,
                                        more_follow=n < len(files) - 1).status
                    for n, path in enumerate(files)]
        assert statuses == [0] * OBJECTS
        assert direct_response.fast_responses(assoc) == OBJECTS // 2
        # the declined ones only: read by the DUL from the given-back bytes
        assert len(reads) == OBJECTS // 2
        assoc.release()
        assert assoc.is_released
    finally:
        if assoc.is_established:
            assoc.abort()


def test_answers_read_here_keep_the_network_timeout_from_running_out(tmp_path: Path) -> None:
    # storescp takes 1 s per object; the network timeout is 1.5 s. The DUL restarts its idle
    # timer on every PDU it reads; the answers read by the sending thread must do the same,
    # or the association reactor aborts the association between two objects of the batch
    paths = []
    for n in range(3):
        path = tmp_path / f"slow{n}.dcm"
        write_sc(path, 1000)
        paths.append(path)
    port = free_port()
    scp = start_storescp(tmp_path / "received", port, extra_args=["--sleep-during", "1"])
    try:
        ae = AgentAE("MODALITY1")
        ae.network_timeout = 1.5
        ae.dimse_timeout = 10
        assoc = associate(ae, LOCALHOST, port, "STORESCP",
                          contexts=[build_context(SC, [ExplicitVRLittleEndian])])
        try:
            statuses = [send_c_store_direct(assoc, path, n + 1,
                                            more_follow=n < len(paths) - 1).status
                        for n, path in enumerate(paths)]
            assert statuses == [0, 0, 0]
            assert assoc.is_established and not assoc.is_aborted
            assoc.release()
        finally:
            if assoc.is_established:
                assoc.abort()
    finally:
        stop_process(scp)


def test_a_dul_that_saw_the_answer_arrive_does_not_wait_for_more(
        archive: tuple[int, PeerTls | None], files: list[Path]) -> None:
    # the race the sending-memory test met 1 round in ~5: the DUL saw the socket readable
    # (the answer arriving), the sending thread read the answer and gave the socket back, then
    # the DUL took the read lock and read: it blocked in recv with nothing to read, and the
    # release it should have sent next never went out. Played here in order: the DUL's read
    # after the answer was taken must come back at once
    import threading

    ae = AgentAE("MODALITY1")
    ae.acse_timeout = 5
    port, tls = archive
    assoc = associate(ae, LOCALHOST, port, "STORESCP",
                      contexts=[build_context(SC, [ExplicitVRLittleEndian])], tls=tls)
    try:
        assert send_c_store_direct(assoc, files[0], 1).status == 0
        assert direct_response.fast_responses(assoc) == 1
        late_read = threading.Thread(target=assoc.dul._read_pdu_data, daemon=True)
        late_read.start()
        late_read.join(2)
        assert not late_read.is_alive(), "the DUL's read waits for a PDU that is not coming"
        assoc.release()
        assert assoc.is_released
    finally:
        if assoc.is_established:
            assoc.abort()


def test_an_a_abort_instead_of_the_answer_ends_the_send_at_once(tmp_path: Path,
                                                               files: list[Path]) -> None:
    # storescp --abort-after sends A-ABORT (10 bytes) where the answer belongs: the sending
    # thread reads it whole and gives it back; the DUL must get all 10 bytes again (it once got
    # 6, and the send waited for the whole DIMSE timeout)
    import time

    port = free_port()
    scp = start_storescp(tmp_path / "received", port, extra_args=["--abort-after"])
    try:
        ae = AgentAE("MODALITY1")
        ae.dimse_timeout = 20
        assoc = associate(ae, LOCALHOST, port, "STORESCP",
                          contexts=[build_context(SC, [ExplicitVRLittleEndian])])
        try:
            started = time.monotonic()
            response = send_c_store_direct(assoc, files[0], 1)
            took = time.monotonic() - started
            assert response.status is None
            assert took < 5, f"the abort was seen only after {took:.1f} s"
            assert not assoc.is_established
            assert assoc.is_aborted or assoc.acse.is_aborted()
        finally:
            if assoc.is_established:
                assoc.abort()
    finally:
        stop_process(scp)
