"""Shared fixtures: real peers on free loopback ports (Orthanc, DCMTK storescp), thread watchdog."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.peers import LOCALHOST, Peer, free_port, start_storescp, stop_process, wait_until

from agent.demo.orthanc import OrthancNotInstalled, OrthancServer, start_orthanc

# Grace period for threads a test started to finish after it returns, e.g. pynetdicom's
# DUL thread (non-daemon) after a release. Polled, not slept.
THREAD_GRACE_S = 5.0


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running: they keep the interpreter alive."""
    before = set(threading.enumerate())
    yield

    def leaked() -> list[threading.Thread]:
        return [
            t for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.daemon
        ]

    try:
        wait_until(lambda: not leaked(), THREAD_GRACE_S, "threads of the test to finish")
    except AssertionError:
        names = ", ".join(sorted(t.name for t in leaked()))
        pytest.fail(f"test left non-daemon threads running: {names}", pytrace=False)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh Orthanc (AE ORTHANC) in ``tmp_path/orthanc`` on free ports, stopped afterwards.

    Its worklist plugin reads ``tmp_path/orthanc/worklists`` (``.wl`` files). Register peers
    it must call back (storage commitment) with `OrthancServer.register_modality`.
    """
    workdir = tmp_path / "orthanc"
    dicom_port = free_port()
    http_port = free_port(exclude={dicom_port})
    try:
        server = start_orthanc(
            workdir,
            dicom_port=dicom_port,
            http_port=http_port,
            worklist_dir=workdir / "worklists",
        )
    except OrthancNotInstalled as exc:
        # Fail, not skip: a skipped peer test looks green (STYLE.md: a test must be able to fail).
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Peer]:
    """DCMTK storescp (AE STORESCP) writing to ``tmp_path/storescp`` on a free port."""
    out_dir = tmp_path / "storescp"
    port = free_port()
    process = start_storescp(out_dir, port, ae_title="STORESCP")
    try:
        yield Peer("STORESCP", LOCALHOST, port, out_dir, process.pid)
    finally:
        stop_process(process)  # this PID only, never by name
