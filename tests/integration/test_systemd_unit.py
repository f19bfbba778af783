"""The systemd service (issue 17, item 1): the shipped unit passes `systemd-analyze verify`,
`install.sh --system` installs and uninstalls it, the daemon runs under the unit's seccomp
filters, and, started as the unit starts it, says READY=1 only once its API answers and pings
the watchdog.

systemd is not PID 1 in the test container and there is no `systemd-run`: the daemon is
started with the environment systemd gives a `Type=notify` service (a datagram socket in
$NOTIFY_SOCKET, $WATCHDOG_USEC, a minimal PATH), as root."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support.agent_process import AgentProcess, Destination, write_config
from support.peers import Peer, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "modality-agent.service"
INSTALLED_BINARY = "/opt/modality-agent/.venv/bin/modality-agent"
VENV_BINARY = Path(sys.executable).parent / "modality-agent"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
# the environment systemd gives a system service (systemd.exec(5), "Environment variables in
# spawned processes"), without the variables a test shell would leak into the daemon
UNIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file, each key's values in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def verify(unit_text: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on `unit_text` saved as modality-agent.service in `folder`."""
    path = folder / "modality-agent.service"
    path.write_text(unit_text)
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=folder, check=False)


def about_our_unit(result: subprocess.CompletedProcess[str]) -> list[str]:
    # verify also loads the units ours refers to (network-online.target...): their
    # complaints, if this host has any, are not ours
    return [line for line in (result.stdout + result.stderr).splitlines()
            if "modality-agent" in line]


# -- the unit file ---------------------------------------------------------------------------
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    shipped = UNIT.read_text()
    assert INSTALLED_BINARY in shipped
    # verify checks that ExecStart's program exists: here it is the venv's, the same entry point
    result = verify(shipped.replace(INSTALLED_BINARY, str(VENV_BINARY)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert about_our_unit(result) == []

    # the check can fail: a misspelt hardening option is reported, not silently ignored
    broken = verify(shipped.replace(INSTALLED_BINARY, str(VENV_BINARY))
                    .replace("ProtectHome=yes", "ProtectHomes=yes"), tmp_path)
    assert any("ProtectHomes" in line for line in about_our_unit(broken)), broken.stderr


def test_the_unit_has_the_service_contract_and_hardening() -> None:
    settings = unit_settings(UNIT.read_text())
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"],
        "ExecStart": [f"{INSTALLED_BINARY} --config /etc/modality-agent/agent.toml run"],
        "User": ["modality-agent"], "Group": ["modality-agent"],
        "SupplementaryGroups": ["dialout"], "WatchdogSec": ["30"], "Restart": ["on-failure"],
        "RestartSec": ["5"], "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"],
        "ReadWritePaths": ["/var/lib/modality-agent"], "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"], "PrivateDevices": ["no"], "CapabilityBoundingSet": [""],
        "LimitCORE": ["0"], "UMask": ["0077"], "ProtectKernelTunables": ["yes"],
        "ProtectKernelModules": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"], "LockPersonality": ["yes"],
        "MemoryDenyWriteExecute": ["yes"], "SystemCallArchitectures": ["native"],
        "StandardOutput": ["journal"],
        # issue 18: most of the daemon's RSS creep was malloc arenas, not Python objects
        "Environment": ["MALLOC_ARENA_MAX=2"],
    }
    assert {key: settings.get(key) for key in expected} == expected


def test_the_unit_exposure_is_low(tmp_path: Path) -> None:
    unit = tmp_path / "modality-agent.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(VENV_BINARY)))
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(unit)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            check=False)
    found = re.search(r"Overall exposure level for modality-agent\.service: ([\d.]+)",
                      result.stdout)
    assert found, result.stdout + result.stderr
    # 0 = fully locked down, 10 = unprotected; "OK" ends at 4.9 in systemd's own scale
    assert float(found.group(1)) <= 4.5, result.stdout


# -- install.sh --system ---------------------------------------------------------------------
@pytest.fixture
def service_user() -> Iterator[str]:
    name = f"ma-test-{uuid.uuid4().hex[:8]}"
    yield name
    if subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0:
        subprocess.run(["userdel", name], check=False)   # the test failed half way


def run_install(*args: str, root: Path, user: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "install.sh"), *args], capture_output=True, text=True, timeout=600,
        check=False, env={**os.environ, "MODALITY_AGENT_SYSTEM_ROOT": str(root),
                          "MODALITY_AGENT_USER": user})


def test_install_system_then_uninstall_keeps_the_spool(tmp_path: Path, service_user: str) -> None:
    root = tmp_path / "root"
    spool, etc = root / "var/lib/modality-agent", root / "etc/modality-agent"
    unit = root / "etc/systemd/system/modality-agent.service"

    result = run_install("--system", root=root, user=service_user)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "systemd is not running here" in result.stdout   # PID 1 is not systemd here
    user = subprocess.run(["getent", "passwd", service_user], capture_output=True, text=True,
                          check=True).stdout.strip().split(":")
    assert user[5:] == [str(spool), "/usr/sbin/nologin"]
    assert (spool.stat().st_mode & 0o777, spool.owner()) == (0o700, service_user)
    config = etc / "agent.toml"
    assert (config.stat().st_mode & 0o777, config.owner(), config.group()) == (
        0o640, "root", service_user)
    assert f'spool_dir = "{spool}"' in config.read_text()
    assert f"User={service_user}" in unit.read_text()
    venv_agent = root / "opt/modality-agent/.venv/bin/modality-agent"
    check = subprocess.run([str(venv_agent), "--config", str(config), "check-config"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    # again, over an edited config and a spool with data: both kept
    config.write_text(config.read_text() + "# edited by the service engineer\n")
    (spool / "queue.db").write_bytes(b"queued images")
    result = run_install("--system", root=root, user=service_user)
    assert result.returncode == 0, result.stdout + result.stderr
    assert config.read_text().endswith("# edited by the service engineer\n")

    result = run_install("--system", "--uninstall", root=root, user=service_user)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not unit.exists() and not (root / "opt/modality-agent").exists()
    assert subprocess.run(["id", "-u", service_user], capture_output=True,
                          check=False).returncode != 0
    assert (spool / "queue.db").read_bytes() == b"queued images" and config.exists()

    result = run_install("--system", "--uninstall", "--purge", root=root, user=service_user)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not spool.exists() and not etc.exists()


def test_install_system_names_the_failing_step(tmp_path: Path, service_user: str) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = run_install("--system", root=not_a_folder, user=service_user)
    assert result.returncode != 0
    assert "FAILED at step: create the spool" in result.stderr, result.stderr


# -- the daemon as the unit starts it --------------------------------------------------------
class NotifySocket:
    """The end systemd holds: a bound datagram socket for $NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="sdn")   # sun_path: at most 108 bytes
        self.path = str(Path(self._folder) / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def pending(self) -> list[str]:
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self._folder, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    receiver = NotifySocket()
    yield receiver
    receiver.close()


def start_as_unit(tmp_path: Path, storescp: Peer, *, env: dict[str, str],
                  wrapper: Sequence[str] = (), modality_toml: str = "") -> AgentProcess:
    """`ExecStart`'s command (the venv's console script) with a service's environment."""
    spool = tmp_path / "spool"
    api_port = free_port()
    config = write_config(
        tmp_path / "agent.toml", listener_port=free_port(exclude={api_port}), api_port=api_port,
        destinations=[Destination("scp", storescp.port, storescp.ae_title,
                                  storage_commitment=False)],
        spool_dir=spool)
    if modality_toml:
        config.write_text(config.read_text().replace("[modality]\n",
                                                     f"[modality]\n{modality_toml}\n"))
    agent = AgentProcess(config, api_port, tmp_path / "agent.log", spool)
    with agent.log_path.open("ab") as log:
        agent.process = subprocess.Popen(
            [*wrapper, str(VENV_BINARY), "--config", str(config), "run"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": UNIT_PATH, "LANG": "C.UTF-8", "HOME": str(spool), **env})
    return agent


def api_answers(agent: AgentProcess) -> bool:
    assert agent.process is not None
    if agent.process.poll() is not None:
        raise AssertionError(f"agent exited with {agent.process.returncode}: {agent.log()}")
    try:
        agent.api("GET", "/api/status")
        return True
    except (OSError, ValueError):   # not listening yet, or no token file yet
        return False


def test_started_as_the_unit_it_is_ready_only_when_the_api_answers(
        tmp_path: Path, storescp: Peer, notify_socket: NotifySocket) -> None:
    agent = start_as_unit(tmp_path, storescp, env={
        "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "2000000"})
    try:
        received: list[str] = []
        api_at_ready: list[bool] = []
        api_up_at: list[float] = []

        def ready() -> bool:
            for message in notify_socket.pending():
                received.append(message)
                if "READY=1" in message.splitlines():
                    # probed the moment READY is read: the API must already answer
                    api_at_ready.append(api_answers(agent))
            return bool(api_at_ready)

        def ready_or_late() -> bool:
            if ready():
                return True
            if not api_up_at and api_answers(agent):
                api_up_at.append(time.monotonic())
            return bool(api_up_at) and time.monotonic() - api_up_at[0] > 10

        wait_until(ready_or_late, 40, f"the daemon's API (log: {agent.log()})")
        assert api_at_ready == [True], (
            f"READY=1 must come once, after the API answers: at READY {api_at_ready}, "
            f"received {received}")

        # WatchdogSec=2 s: a ping at least every second, from the daemon's own PID
        pings_before = sum(m == "WATCHDOG=1" for m in received)
        wait_until(lambda: ready() or sum(m == "WATCHDOG=1" for m in received) >= pings_before + 3,
                   10, f"three watchdog pings (received {received})")

        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        wait_until(lambda: ready() or any("STOPPING=1" in m.splitlines() for m in received), 30,
                   f"STOPPING=1 at SIGTERM (received {received})")
        assert agent.process.wait(timeout=30) == 0, agent.log()
    finally:
        agent.stop()


def test_the_watchdog_stops_when_a_stage_is_stalled_on_purpose(
        tmp_path: Path, storescp: Peer, notify_socket: NotifySocket) -> None:
    """AGENT_STALLPOINT=forwarder blocks the forwarder's loop for good (AGENT_STALL_AFTER_S=2
    makes that count after 2 s): the daemon still lives and answers, but the pings stop and
    STATUS says which stage, so systemd restarts it."""
    agent = start_as_unit(tmp_path, storescp, env={
        "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000",
        "AGENT_STALLPOINT": "forwarder", "AGENT_STALL_AFTER_S": "2"})
    try:
        received: list[str] = []

        def stalled_status() -> bool:
            received.extend(notify_socket.pending())
            return any(m.startswith("STATUS=stalled") for m in received)

        wait_until(stalled_status, 40, f"STATUS=stalled (received {received}; "
                                       f"log: {agent.log()[-2000:]})")
        assert any("READY=1" in m.splitlines() for m in received)
        status = next(m for m in received if m.startswith("STATUS=stalled"))
        assert "forwarder scp #0: no progress" in status
        # from here on: no more pings, while the daemon itself still answers
        notify_socket.pending()
        deadline = time.monotonic() + 3
        late: list[str] = []
        while time.monotonic() < deadline:
            late.extend(notify_socket.pending())
            time.sleep(0.1)
        assert "WATCHDOG=1" not in late, late
        assert api_answers(agent)
    finally:
        agent.stop()


# -- MemoryDenyWriteExecute and RestrictAddressFamilies, as systemd 252 applies them ---------
SECCOMP_WRAPPER = textwrap.dedent('''
    """Load the seccomp filters systemd installs for MemoryDenyWriteExecute=yes and
    RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 (src/shared/seccomp-util.c), then exec."""
    import ctypes, errno, mmap, os, socket, sys

    class ArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000
    MASKED_EQ, EQ, GT = 7, 4, 6
    ctx = lib.seccomp_init(ALLOW)

    def rule(action, name, arg, op, a, b=0):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        cmp = ArgCmp(arg, op, a, b)
        if lib.seccomp_rule_add_array(ctx, action, number, 1, ctypes.byref(cmp)) != 0:
            sys.exit(f"seccomp rule for {name} failed")

    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    rule(ERRNO | errno.EPERM, "mmap", 2, MASKED_EQ, wx, wx)
    rule(ERRNO | errno.EPERM, "mprotect", 2, MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC)
    rule(ERRNO | errno.EPERM, "pkey_mprotect", 2, MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC)
    rule(ERRNO | errno.EPERM, "shmat", 2, MASKED_EQ, 0o100000, 0o100000)   # SHM_EXEC
    allowed = {socket.AF_UNIX, socket.AF_INET, socket.AF_INET6}
    for family in range(0, 11):
        if family not in allowed:
            rule(ERRNO | errno.EAFNOSUPPORT, "socket", 0, EQ, family)
    rule(ERRNO | errno.EAFNOSUPPORT, "socket", 0, GT, 10)
    if lib.seccomp_load(ctx) != 0:   # also sets no_new_privs, as NoNewPrivileges=yes
        sys.exit("seccomp_load failed")

    try:    # the filter is on: a writable and executable mapping is refused
        mmap.mmap(-1, 4096, prot=wx)
        sys.exit("W+X mapping allowed: the filter is not active")
    except PermissionError:
        pass
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sys.exit("AF_PACKET allowed: the filter is not active")
    except OSError as err:
        assert err.errno in (errno.EAFNOSUPPORT, errno.EPERM), err
    os.execv(sys.argv[1], sys.argv[1:])
''')


@pytest.mark.parametrize("transfer_syntax", ["jpeg2000-lossless", "jpeg-ls-lossless", "rle"])
def test_the_daemon_works_under_the_units_seccomp_filters(
        tmp_path: Path, storescp: Peer, transfer_syntax: str) -> None:
    wrapper = tmp_path / "seccomp_exec.py"
    wrapper.write_text(SECCOMP_WRAPPER)
    agent = start_as_unit(tmp_path, storescp, env={}, wrapper=[sys.executable, str(wrapper)],
                          modality_toml=f'transfer_syntax = "{transfer_syntax}"')
    try:
        wait_until(lambda: api_answers(agent), 30, "the API under the seccomp filters")
        # numpy, pydicom, the codec and a sending process (a child: it inherits the filter)
        result = agent.cli("acquire", "--unscheduled", "--patient-id", "SECCOMP1",
                           "--patient-name", "Test^Seccomp", "--frames", "2", "--wait", "60")
        assert result.returncode == 0, result.stdout + result.stderr + agent.log()
        assert len(list(storescp.out_dir.rglob("*"))) >= 2, agent.log()
    finally:
        agent.stop()
