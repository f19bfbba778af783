"""The C-STORE-RSP to a direct C-STORE taken by the DUL thread without pynetdicom's DIMSE
decoding (agent.net.direct_response), against real archives: DCMTK storescp plain and over
TLS, and Orthanc. Whatever that path declines goes through pynetdicom unchanged, re-read from
the bytes given back to the socket, which is shown by declining every response.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.presentation import build_context
from support.certs import make_tls_world
from support.peers import LOCALHOST, free_port, start_storescp, start_storescp_tls, stop_process
from test_direct_store import SC, write_sc

from agent.demo.orthanc import start_orthanc
from agent.net import direct_response
from agent.net.ae import AgentAE, associate
from agent.net.direct_store import send_c_store_direct, supports
from agent.net.tls import PeerTls, TlsIdentity

OBJECTS = 12


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for n in range(OBJECTS):
        path = tmp_path / f"sc{n}.dcm"
        write_sc(path, 1000 + 40_000 * (n % 3))
        paths.append(path)
    return paths


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many DIMSE messages pynetdicom decoded (from any thread)."""
    calls: list[int] = []
    original = DIMSEMessage.decode_msg

    def counting(self: DIMSEMessage, *args: Any, **kwargs: Any) -> bool:
        done = original(self, *args, **kwargs)
        if done:
            calls.append(1)
        return bool(done)

    monkeypatch.setattr(DIMSEMessage, "decode_msg", counting)
    yield calls


def store_all(port: int, called: str, paths: list[Path], tls: PeerTls | None = None
              ) -> tuple[list[int | None], int]:
    """Statuses of a direct C-STORE of each file on one association, and how many answers
    the fast path took."""
    assoc = associate(AgentAE("MODALITY1"), LOCALHOST, port, called,
                      contexts=[build_context(SC, [ExplicitVRLittleEndian])], tls=tls)
    try:
        assert supports(assoc)
        statuses = [send_c_store_direct(assoc, path, n + 1).status
                    for n, path in enumerate(paths)]
        return statuses, direct_response.fast_responses(assoc)
    finally:
        assoc.release()


def test_storescp_answers_are_taken_without_pynetdicoms_decoding(
        tmp_path: Path, files: list[Path], decodes: list[int]) -> None:
    port = free_port()
    scp = start_storescp(tmp_path / "received", port)
    try:
        statuses, fast = store_all(port, "STORESCP", files)
    finally:
        stop_process(scp)
    assert statuses == [0] * OBJECTS
    assert fast == OBJECTS
    assert decodes == []
    assert len(list((tmp_path / "received").iterdir())) == OBJECTS


def test_declined_answers_go_through_pynetdicom_from_the_given_back_bytes(
        tmp_path: Path, files: list[Path], decodes: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every response declined after its bytes were read: pynetdicom must read them again
    monkeypatch.setattr(direct_response, "parse_store_response", lambda body, expected: None)
    port = free_port()
    scp = start_storescp(tmp_path / "received", port)
    try:
        statuses, fast = store_all(port, "STORESCP", files)
    finally:
        stop_process(scp)
    assert statuses == [0] * OBJECTS
    assert fast == 0
    assert len(decodes) == OBJECTS


def test_over_tls_too(tmp_path: Path, files: list[Path], decodes: list[int]) -> None:
    world = make_tls_world(tmp_path / "tls", key_type="rsa")
    tls = PeerTls(TlsIdentity(world.client.certificate, world.client.private_key,
                              world.ca.certificate))
    port = free_port()
    scp = start_storescp_tls(tmp_path / "received", port, private_key=world.server.private_key,
                             certificate=world.server.certificate, ca_file=world.ca.certificate)
    try:
        statuses, fast = store_all(port, "STORESCP", files, tls=tls)
    finally:
        stop_process(scp)
    assert statuses == [0] * OBJECTS
    assert fast == OBJECTS
    assert decodes == []


def test_orthanc_answers_are_taken_and_it_keeps_every_object(
        tmp_path: Path, files: list[Path], decodes: list[int]) -> None:
    dicom_port, http_port = free_port(), free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", dicom_port=dicom_port, http_port=http_port)
    try:
        statuses, fast = store_all(dicom_port, "ORTHANC", files)
        assert len(orthanc.instances()) == OBJECTS
    finally:
        orthanc.stop()
    assert statuses == [0] * OBJECTS
    assert fast == OBJECTS
    assert decodes == []
