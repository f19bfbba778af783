"""The forking process (agent.net.zygote): sending processes forked from it speak the sending
process's protocol, share its imported pages, can be waited for and killed by the daemon, and
neither it nor they outlive a killed daemon. (StoreProcess against an archive is
tests/integration/test_store_process.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from support.peers import stop_process, wait_until

from agent.net.messages import Exit, Ready
from agent.net.zygote import CHILD_NAME, ForkedChild, Zygote

MB = 1024 * 1024


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    one = Zygote()
    yield one
    one.close()


def spawn(zygote: Zygote) -> tuple[ForkedChild, Connection]:
    ours, theirs = socket.socketpair()
    try:
        child = zygote.spawn(theirs.fileno(), {**os.environ,
                                               "AGENT_STORE_PROCESS_LOG_LEVEL": "WARNING"})
    finally:
        theirs.close()
    return child, Connection(ours.detach())


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def smaps(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in smaps_rollup of {pid}")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_forked_child_is_a_sending_process_sharing_the_imported_pages(
        zygote: Zygote) -> None:
    child, conn = spawn(zygote)
    try:
        assert conn.poll(30)
        assert isinstance(conn.recv(), Ready)
        assert parent_of(child.pid) == zygote.pid
        assert Path(f"/proc/{child.pid}/comm").read_text().strip() == CHILD_NAME
        # pydicom and pynetdicom as imported by the forking process: ~28 MB of heap that a
        # new interpreter would have to itself
        assert smaps(child.pid, "Shared_Dirty") > 15 * MB
        assert smaps(child.pid, "Private_Dirty") < 10 * MB
        assert child.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.1)
        conn.send(Exit())
        assert child.wait(30) == 0
    finally:
        conn.close()


def test_a_killed_child_is_seen_ended_and_the_next_one_is_forked(zygote: Zygote) -> None:
    child, conn = spawn(zygote)
    try:
        assert conn.poll(30)
        conn.recv()
        child.kill()
        assert child.wait(30) == -signal.SIGKILL
        child.kill()                # ended already: nothing happens
    finally:
        conn.close()
    other, conn = spawn(zygote)
    try:
        assert other.pid != child.pid
        assert conn.poll(30)
        conn.send(Exit())
        assert other.wait(30) == 0
    finally:
        conn.close()


def test_a_dead_forking_process_is_replaced(zygote: Zygote) -> None:
    child, conn = spawn(zygote)
    conn.send(Exit())
    child.wait(30)
    conn.close()
    first = zygote.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: gone(first), 10, "the forking process to die")
    child, conn = spawn(zygote)
    try:
        assert zygote.pid not in (None, first)
        assert conn.poll(30)
        assert isinstance(conn.recv(), Ready)
        conn.send(Exit())
        assert child.wait(30) == 0
    finally:
        conn.close()


DAEMON = textwrap.dedent("""
    import os, socket, time
    from agent.net.zygote import Zygote
    zygote = Zygote()
    ours, theirs = socket.socketpair()
    child = zygote.spawn(theirs.fileno(), dict(os.environ))
    theirs.close()
    ours.recv(1)            # Ready (pickled): the child runs
    print(zygote.pid, child.pid, flush=True)
    time.sleep(600)
""")


def test_neither_outlives_a_killed_daemon() -> None:
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    try:
        assert daemon.stdout is not None
        zygote_pid, child_pid = (int(pid) for pid in daemon.stdout.readline().split())
        assert not gone(zygote_pid) and not gone(child_pid)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        wait_until(lambda: gone(zygote_pid) and gone(child_pid), 10,
                   f"forking process {zygote_pid} and child {child_pid} to end")
    finally:
        stop_process(daemon)
        if daemon.stdout is not None:
            daemon.stdout.close()
