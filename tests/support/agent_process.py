"""Run the real agent (`python -m agent run`) in its own process, as systemd would, and its CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.peers import LOCALHOST, free_port, wait_until

AGENT_AE = "MODALITY1"


@dataclass(frozen=True)
class Destination:
    name: str
    port: int
    called_ae: str
    storage_commitment: bool = True
    commitment_timeout_s: float = 60.0
    dimse_timeout_s: float = 60.0
    commitment_report_wait_s: float = 0.0
    #: DICOM TLS to this destination (needs `tls` in write_config); None: the key is left out
    tls: bool | None = None
    verify_hostname: bool | None = None
    #: archive group (issue 19); "" leaves the key out
    group: str = ""


@dataclass(frozen=True)
class TlsFiles:
    """The `[tls]` section: this station's certificate, key and the CA file it trusts."""

    certificate: Path
    private_key: Path
    ca_file: Path
    profile: str = "bcp195-nd"

    def toml(self) -> list[str]:
        return ["[tls]", f'certificate = "{self.certificate}"',
                f'private_key = "{self.private_key}"', f'ca_file = "{self.ca_file}"',
                f'profile = "{self.profile}"']


def _bool(value: bool) -> str:
    return "true" if value else "false"


def write_config(
    path: Path,
    *,
    listener_port: int,
    api_port: int,
    destinations: Sequence[Destination],
    spool_dir: Path,
    frame_size: int = 64,
    bits_stored: int = 12,
    retry_max_s: float = 2.0,
    min_free_mb: float = 0,
    extra_toml: str = "",
    device_toml: str = "",
    import_folders: Sequence[Path] = (),
    tls: TlsFiles | None = None,
    listener_tls: bool = False,
) -> Path:
    """An agent.toml for the tests. `tls` writes a `[tls]` section; `listener_tls` sets
    `tls = true` in `[listener]`, `Destination.tls` in its `[[destinations]]`; sections given
    in `extra_toml` ([worklist], [mpps]) set their own `tls`."""
    lines = [
        "[agent]", f'ae_title = "{AGENT_AE}"', f'spool_dir = "{spool_dir}"', 'log_level = "INFO"',
        "[listener]", f'host = "{LOCALHOST}"', f"port = {listener_port}",
        *([f"tls = {_bool(listener_tls)}"] if listener_tls else []),
        "[api]", f'host = "{LOCALHOST}"', f"port = {api_port}",
        "import_folders = [" + ", ".join(f'"{folder}"' for folder in import_folders) + "]",
        *(device_toml.splitlines() or [
            "[device]", 'driver = "simulated"',
            "[device.options]", f"width = {frame_size}", f"height = {frame_size}",
            f"bits_stored = {bits_stored}"]),
        "[modality]", 'modality = "OT"', 'station_name = "TESTROOM"',
        "[queue]", "retry_initial_s = 0.2", f"retry_max_s = {retry_max_s}",
        "retention_s = 86400", f"min_free_mb = {min_free_mb}",
        *(tls.toml() if tls is not None else []),
    ]
    for d in destinations:
        lines += [
            "[[destinations]]", f'name = "{d.name}"', f'host = "{LOCALHOST}"', f"port = {d.port}",
            f'called_ae = "{d.called_ae}"',
            f"storage_commitment = {'true' if d.storage_commitment else 'false'}",
            f"commitment_timeout_s = {d.commitment_timeout_s}",
            f"dimse_timeout_s = {d.dimse_timeout_s}",
            f"commitment_report_wait_s = {d.commitment_report_wait_s}",
        ]
        if d.tls is not None:
            lines.append(f"tls = {_bool(d.tls)}")
        if d.verify_hostname is not None:
            lines.append(f"verify_hostname = {_bool(d.verify_hostname)}")
        if d.group:
            lines.append(f'group = "{d.group}"')
    path.write_text("\n".join(lines) + "\n" + extra_toml)
    return path


@dataclass
class AgentProcess:
    """The daemon in its own process; stopped (or killed) by PID."""

    config_path: Path
    api_port: int
    log_path: Path
    spool_dir: Path = field(default=Path("spool"))
    process: subprocess.Popen[bytes] | None = field(default=None)

    def start(self, timeout_s: float = 20, env: dict[str, str] | None = None) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(self.config_path), "run"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        log.close()
        process = self.process

        def api_up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"agent exited with {process.returncode}: {self.log()}")
            try:
                self.api("GET", "/api/status")
                return True
            except (urllib.error.URLError, ConnectionError, FileNotFoundError):
                # FileNotFoundError: the daemon has not written its API token yet
                return False

        wait_until(api_up, timeout_s, "agent API did not come up")

    @property
    def token_path(self) -> Path:
        """[api] token_file's default: the daemon writes it 0600 at its first start."""
        return self.spool_dir / "api-token"

    def token(self) -> str:
        return self.token_path.read_text().strip()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://{LOCALHOST}:{self.api_port}{path}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.token()}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def objects(self, queue_ids: Sequence[int]) -> list[dict[str, Any]]:
        query = "&".join(f"queue_id={q}" for q in queue_ids)
        result: list[dict[str, Any]] = self.api("GET", f"/api/objects?{query}")["objects"]
        return result

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def queue_rows(self) -> list[dict[str, Any]]:
        """Every object x destination row, read from the spool database (read-only)."""
        db = self.spool_dir / "queue.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(
                "SELECT o.queue_id, o.sop_instance_uid, d.destination, d.state, d.last_error, "
                "d.attempts, "
                "d.transaction_uid FROM deliveries d JOIN objects o USING (queue_id)")]
        finally:
            conn.close()

    def children(self) -> list[int]:
        """The daemon's child processes (its sending processes), from /proc."""
        assert self.process is not None
        return child_pids(self.process.pid)

    def kill9(self) -> None:
        """SIGKILL, as a power cut would; its sending processes must end by themselves."""
        assert self.process is not None
        children = self.children()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None
        wait_until(lambda: not any(map(is_running, children)), 10,
                   f"the killed daemon's sending processes {children} to end")

    def stop(self) -> None:
        if self.process is None:
            return
        children = self.children() if self.process.poll() is None else []
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        wait_until(lambda: not any(map(is_running, children)), 10,
                   f"the stopped daemon's sending processes {children} to end")


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children += [int(c) for c in
                         Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return children


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whatever reaps at PID 1)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state != "Z"


def make_agent(tmp_path: Path, destinations: Sequence[Destination], *,
               listener_port: int | None = None, **options: Any) -> AgentProcess:
    api_port = free_port()
    config = write_config(
        tmp_path / "agent.toml", listener_port=listener_port or free_port(exclude=[api_port]),
        api_port=api_port, destinations=destinations, spool_dir=tmp_path / "spool", **options,
    )
    return AgentProcess(config, api_port, tmp_path / "agent.log", tmp_path / "spool")
