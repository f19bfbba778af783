"""A spool file the sending process has put on the wire leaves the page cache (issue 18):
the object's pages are of no use there any more, and the next frame's write reuses them
(see tests/unit/test_page_cache.py for why that matters). Against DCMTK storescp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import build_context
from support.pagecache import page_cache_kept, resident_pages
from support.peers import LOCALHOST, free_port, start_storescp, stop_process
from test_direct_store import SC, write_sc

from agent.net.ae import AgentAE, associate
from agent.net.direct_store import send_c_store_direct


def test_a_sent_file_leaves_the_page_cache(tmp_path: Path) -> None:
    if not page_cache_kept(tmp_path):
        pytest.skip(f"{tmp_path} is on tmpfs: its pages are the file and cannot be dropped")
    paths = []
    for n in range(3):
        path = tmp_path / f"sc{n}.dcm"
        write_sc(path, 600_000 - 1000 * n)
        with path.open("rb+") as file:      # durable, as a spool file is: its pages clean
            os.fsync(file.fileno())
        path.read_bytes()                   # in the cache, as a just-written file would be
        assert resident_pages(path) > 100
        paths.append(path)
    port = free_port()
    scp = start_storescp(tmp_path / "received", port)
    try:
        assoc = associate(AgentAE("MODALITY1"), LOCALHOST, port, "STORESCP",
                          contexts=[build_context(SC, [ExplicitVRLittleEndian])])
        try:
            statuses = [send_c_store_direct(assoc, path, n + 1,
                                            more_follow=n < len(paths) - 1).status
                        for n, path in enumerate(paths)]
            assoc.release()
        finally:
            if assoc.is_established:
                assoc.abort()
    finally:
        stop_process(scp)
    assert statuses == [0, 0, 0]
    assert [resident_pages(p) for p in paths] == [0, 0, 0]
    received = sorted((tmp_path / "received").iterdir())
    assert len(received) == 3
