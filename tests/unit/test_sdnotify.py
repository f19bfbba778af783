"""sd_notify over a real AF_UNIX datagram socket the test binds, as systemd does, and the
service watchdog that pings it only while the agent's stages are healthy (issue 17, item 1)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.peers import wait_until

from agent.errors import AgentError, ConfigError
from agent.sdnotify import NotifyError, notify, watchdog_interval_s
from agent.service_watchdog import ServiceWatchdog


class NotifySocket:
    """The receiving end systemd would hold: a bound datagram socket; `address` is what goes
    into $NOTIFY_SOCKET."""

    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)

    def receive(self, timeout_s: float = 5) -> str:
        self.sock.settimeout(timeout_s)
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    # a short directory: sun_path holds 108 bytes, pytest's tmp_path can be longer
    with tempfile.TemporaryDirectory(prefix="sdn") as folder:
        path = str(Path(folder) / "notify")
        receiver = NotifySocket(path, path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield receiver
        receiver.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    name = f"modality-agent-test-{uuid.uuid4().hex}"
    receiver = NotifySocket("@" + name, "\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield receiver
    receiver.close()


# -- notify ----------------------------------------------------------------------------------
def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


def test_states_go_in_one_datagram_to_a_path_socket(path_socket: NotifySocket) -> None:
    assert notify("READY=1", "STATUS=running") is True
    assert path_socket.receive() == "READY=1\nSTATUS=running"


def test_abstract_namespace_socket(abstract_socket: NotifySocket) -> None:
    assert notify("WATCHDOG=1") is True
    assert abstract_socket.receive() == "WATCHDOG=1"


def test_a_newline_in_a_value_cannot_add_an_assignment(path_socket: NotifySocket) -> None:
    notify("STATUS=stalled: pacs\nREADY=1")
    assert path_socket.receive() == "STATUS=stalled: pacs READY=1"


def test_a_socket_that_is_not_there_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    with pytest.raises(NotifyError, match="absent") as caught:
        notify("READY=1")
    assert isinstance(caught.value, AgentError) and isinstance(caught.value, OSError)
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with pytest.raises(NotifyError, match="vsock"):
        notify("READY=1")


# -- watchdog_interval_s ---------------------------------------------------------------------
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    assert watchdog_interval_s() == 2.0               # WATCHDOG_PID unset: this process
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None              # inherited, meant for another process


@pytest.mark.parametrize(("usec", "pid", "field"), [
    ("2s", "", "WATCHDOG_USEC"), ("0", "", "WATCHDOG_USEC"), ("-5", "", "WATCHDOG_USEC"),
    ("2000000", "main", "WATCHDOG_PID"),
])
def test_watchdog_interval_garbage_is_named(monkeypatch: pytest.MonkeyPatch, usec: str,
                                             pid: str, field: str) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.setenv("WATCHDOG_PID", pid)
    with pytest.raises(ConfigError, match=field):
        watchdog_interval_s()


# -- ServiceWatchdog -------------------------------------------------------------------------
class Stages:
    """A check() the test controls, counting its calls."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()

    def check(self) -> list[str]:
        with self._lock:
            self.calls += 1
            return list(self.problems)


def test_pings_stop_while_a_stage_is_stalled_and_resume_after(path_socket: NotifySocket) -> None:
    stages = Stages()
    watchdog = ServiceWatchdog(stages.check, interval_s=30)
    watchdog.beat()
    assert path_socket.pending() == ["WATCHDOG=1"]

    stages.problems = ["forwarder pacs: no progress for 120 s"]
    watchdog.beat()
    watchdog.beat()
    # the status once, no ping while the problem lasts
    assert path_socket.pending() == ["STATUS=stalled: forwarder pacs: no progress for 120 s"]

    stages.problems = []
    watchdog.beat()
    assert path_socket.pending() == ["STATUS=running\nWATCHDOG=1"]
    watchdog.beat()
    assert path_socket.pending() == ["WATCHDOG=1"]


def test_a_failing_check_stops_the_pings(path_socket: NotifySocket) -> None:
    def broken() -> list[str]:
        raise KeyError("listener")

    ServiceWatchdog(broken, interval_s=30).beat()
    assert path_socket.pending() == ["STATUS=stalled: watchdog check failed: KeyError: 'listener'"]


def test_the_thread_pings_at_half_the_interval_and_stops(path_socket: NotifySocket) -> None:
    stages = Stages()
    watchdog = ServiceWatchdog(stages.check, interval_s=0.1)
    assert watchdog.period_s == pytest.approx(0.05)
    watchdog.start()
    try:
        received: list[str] = []
        wait_until(lambda: len(received) >= 3 or bool(received.extend(path_socket.pending())),
                   5, "three watchdog pings")
        assert set(received) == {"WATCHDOG=1"}

        stages.problems = ["acquisition: no frame loop for 30 s"]
        wait_until(lambda: "STATUS=stalled: acquisition: no frame loop for 30 s"
                   in path_socket.pending(), 5, "the stalled status")
        calls = stages.calls
        wait_until(lambda: stages.calls >= calls + 3, 5, "three more checks")
        assert "WATCHDOG=1" not in path_socket.pending()

        stages.problems = []
        wait_until(lambda: "WATCHDOG=1" in path_socket.pending(), 5, "pings to resume")
    finally:
        watchdog.stop()
    assert not any(t.name == "service-watchdog" for t in threading.enumerate())


def test_without_systemd_the_watchdog_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    watchdog = ServiceWatchdog(lambda: ["anything"], interval_s=30)
    watchdog.beat()
    assert watchdog.problems == ["anything"]
    with pytest.raises(ConfigError, match="interval_s"):
        ServiceWatchdog(lambda: [], interval_s=0)
