"""Test helpers for real DICOM peers on loopback: ports, polling, DCMTK storescp, dciodvfy.

DCMTK tools are called by full path: pynetdicom installs its own `storescp`/`storescu` console
scripts into the venv, which shadow DCMTK's on PATH (PEERS.md, "Name clash").
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

# one implementation, shared with the demo's Orthanc launcher
from agent.demo.orthanc import accepts_tcp, process_listens_on

DCMTK = Path("/usr/bin")
DCIODVFY = Path("/usr/bin/dciodvfy")
LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Peer:
    """A DICOM peer a test talks to; `out_dir` is where it writes what it receives."""

    ae_title: str
    host: str
    port: int
    out_dir: Path
    pid: int | None = None


def nodelay_env() -> dict[str, str]:
    """Environment for DCMTK tools and Orthanc: without TCP_NODELAY=1 they leave Nagle on and
    every DIMSE exchange with pynetdicom stalls ~40 ms on delayed ACKs (PEERS.md)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port(exclude: Collection[int] = ()) -> int:
    """A TCP port free on all interfaces right now (DCMTK and Orthanc bind to all of them).

    `exclude` lists ports already handed out for the same peer: the kernel may offer a just
    released port again.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port: int = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise RuntimeError(f"no free TCP port outside {sorted(exclude)}")


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, message: str, poll_s: float = 0.01
) -> None:
    """Poll `predicate` until it is true; fail the test with `message` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s: {message}")
        time.sleep(poll_s)  # the poll interval, not a synchronisation


def run_dciodvfy(path: Path) -> list[str]:
    """The `Error` lines dciodvfy reports for a DICOM file; [] means the IOD is valid.

    dciodvfy's exit status is no verdict (PEERS.md); warnings are left out.
    """
    result = subprocess.run(
        [str(DCIODVFY), str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """Terminate this one process (by its PID, never by name); kill it after `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_storescp(
    out_dir: Path, port: int, ae_title: str = "STORESCP", timeout_s: float = 10,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start DCMTK storescp writing every received object into `out_dir`; wait until it listens.

    Files are named after the SOP Instance UID (`-uf`, e.g. ``SC.1.2.3...``). It accepts
    explicit and implicit VR little endian (`+xe`: explicit preferred). Its output goes to
    ``storescp-<port>.log`` next to `out_dir`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.parent / f"storescp-{port}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [
                str(DCMTK / "storescp"),
                "--aetitle", ae_title,
                "--output-directory", str(out_dir),
                "--default-filenames",
                "--prefer-little",
                *extra_args,      # faults: --refuse, --abort-after, --sleep-during S ...
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=nodelay_env(),
        )
    try:
        wait_until(
            lambda: process.poll() is not None
            or (process_listens_on(process.pid, port) and accepts_tcp(LOCALHOST, port)),
            timeout_s,
            f"storescp pid {process.pid} to listen on port {port}",
        )
        if process.poll() is not None:
            raise AssertionError(
                f"storescp exited with status {process.returncode}: "
                f"{log_path.read_text(errors='replace')[-2000:]}"
            )
    except BaseException:
        stop_process(process)
        raise
    return process


def storescp_tls_args(private_key: Path, certificate: Path, ca_file: Path,
                      profile: str = "") -> list[str]:
    """storescp/storescu options for DICOM TLS with mutual authentication: our key and
    certificate (PEM), the CA the other side's certificate must chain to, the peer's
    certificate required (`--require-peer-cert`, DCMTK's default, spelt out). `profile` is a
    DCMTK profile option (`+px`, `+pz`); the default is BCP 195 non-downgrading (`+py`)."""
    return ["+tls", str(private_key), str(certificate), "+cf", str(ca_file),
            "--require-peer-cert", *([profile] if profile else [])]


def start_storescp_tls(
    out_dir: Path, port: int, *, private_key: Path, certificate: Path, ca_file: Path,
    ae_title: str = "STORESCP", profile: str = "", extra_args: Sequence[str] = (),
    timeout_s: float = 10,
) -> subprocess.Popen[bytes]:
    """DCMTK `storescp +tls` (TLS only, the client's certificate required and verified against
    `ca_file`), writing every received object into `out_dir`; as `start_storescp`.

    Ready means it accepts TCP (a TLS peer too: the handshake comes after the connection).
    """
    return start_storescp(
        out_dir, port, ae_title=ae_title, timeout_s=timeout_s,
        extra_args=[*storescp_tls_args(private_key, certificate, ca_file, profile),
                    *extra_args])


@dataclass
class RelayedConnection:
    """What crossed one connection through a `RecordingRelay`, each direction whole."""

    upstream: bytearray         # client → server (what the agent sent)
    downstream: bytearray       # server → client


class RecordingRelay:
    """A TCP relay on loopback that keeps every byte of every connection, both ways: a test
    reads from it what the agent really put on the wire. `upstream_port` may be changed at any
    time (new connections go there), so a test can swap the peer behind a fixed address.
    Threads, closed with `close()`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._server = socket.create_server((LOCALHOST, 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: list[RelayedConnection] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._spawn(self._accept_loop)

    def connections(self) -> list[RelayedConnection]:
        """Every connection so far, oldest first (copies)."""
        with self._lock:
            return [RelayedConnection(bytearray(c.upstream), bytearray(c.downstream))
                    for c in self._connections]

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return                              # closed
            try:
                upstream = socket.create_connection((LOCALHOST, self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            record = RelayedConnection(bytearray(), bytearray())
            with self._lock:
                self._connections.append(record)
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, record.upstream)
            self._spawn(self._pump, upstream, client, record.downstream)

    def _pump(self, source: socket.socket, sink: socket.socket, kept: bytearray) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self._lock:
                kept.extend(data)
            try:
                sink.sendall(data)
            except OSError:
                break
        # one side closed: close the other way too, as a plain connection would
        for sock in (sink, source):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> RecordingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: TLS record content types (RFC 8446 5.1): change_cipher_spec, alert, handshake, application
_TLS_RECORD_TYPES = frozenset({20, 21, 22, 23})


def tls_stream_problem(data: bytes) -> str:
    """Why `data` (one direction of a connection) is not a sequence of TLS records from its
    first byte, or "" if it is: each record a known type, version 3.x and a length that lands
    on the next header. A DICOM PDU (an A-ASSOCIATE-RQ starts 01 00) fails at byte 0. A last
    record cut short by a closed connection is allowed."""
    offset = 0
    while offset < len(data):
        header = data[offset:offset + 5]
        if header[0] not in _TLS_RECORD_TYPES:
            return f"byte {offset}: 0x{header[0]:02x} is no TLS record type"
        if len(header) >= 2 and header[1] != 3:
            return f"byte {offset + 1}: version 0x{header[1]:02x}.. is no TLS version"
        if len(header) < 5:
            return ""
        offset += 5 + int.from_bytes(header[3:5], "big")
    return ""
