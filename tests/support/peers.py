"""Test helpers for real DICOM peers on loopback: ports, polling, DCMTK storescp, dciodvfy.

DCMTK tools are called by full path: pynetdicom installs its own `storescp`/`storescu` console
scripts into the venv, which shadow DCMTK's on PATH (PEERS.md, "Name clash").
"""

from __future__ import annotations

import os
import socket
import subprocess
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
