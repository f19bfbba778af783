"""Start a local Orthanc and talk to its REST API: the archive of `modality-agent demo` and tests.

Orthanc is a separate program (Debian package `orthanc`); this module only writes its JSON
configuration into a work directory, starts it, waits until it serves, and stops the one process
it started. HTTP goes through `urllib.request` with proxies disabled: the REST port is on loopback.

Facts about the Debian bookworm package (Orthanc 1.10.1) this relies on, measured:

- The binary is `/usr/sbin/Orthanc`, often not on a user's PATH; the ModalityWorklists plugin ships
  in the same package as `/usr/share/orthanc/plugins/libModalityWorklists.so`.
- No `--verbose` is needed: the default (warning) level logs startup, ports and errors, and keeps
  associations and stored instances out of the log. `DeidentifyLogs` (default true) is set anyway.
- Start to "REST and DICOM port answer" takes well under a second. A plain SIGTERM takes ~3.5 s
  to finish: CivetWeb's listener polls with a 2 s quantum and the DICOM server with a 1 s
  timeout. Connecting to both ports once they are shutting down wakes those loops (~1 s in all).
- Until Orthanc has installed its signal handlers (just after "Orthanc has started" in its log)
  SIGTERM kills it outright; harmless for a throw-away work directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from agent.errors import AgentError

log = logging.getLogger(__name__)

DEBIAN_ORTHANC = Path("/usr/sbin/Orthanc")
WORKLIST_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
#: Debian `orthanc-dicomweb`: DICOMweb (STOW-RS, QIDO-RS, WADO-RS) under /dicom-web/
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: Debian `orthanc-postgresql`: index and storage in PostgreSQL (several nodes on one database)
POSTGRESQL_INDEX_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
POSTGRESQL_STORAGE_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLStorage.so")
LOCALHOST = "127.0.0.1"
_LOG_TAIL_LINES = 20
_POLL_S = 0.02
_REST_TIMEOUT_S = 10.0


class OrthancNotInstalled(AgentError, FileNotFoundError):
    """No Orthanc binary was found."""

    def __init__(self) -> None:
        super().__init__(
            "Orthanc is not installed (looked for /usr/sbin/Orthanc and `Orthanc` on PATH): "
            "install it with `apt-get install orthanc` (or ./install.sh --demo)"
        )


class OrthancError(AgentError, RuntimeError):
    """Orthanc did not start, or its REST API answered with an error.

    `http_status` is the HTTP status of a failed REST call, None otherwise.
    """

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class RegisteredModality:
    """A DICOM peer Orthanc knows by name (its `DicomModalities` entry).

    Orthanc sends storage commitment reports to the `host`/`port` registered for the calling
    AE title, on a new association, and answers worklist queries only from registered peers.
    """

    name: str
    ae_title: str
    host: str
    port: int
    #: Orthanc opens its associations to this peer (the commitment report) with DICOM TLS;
    #: needs `OrthancTls` on the server (Orthanc 1.9+)
    use_tls: bool = False

    def orthanc_config(self) -> dict[str, Any]:
        """The JSON object Orthanc expects for this peer (config file and PUT /modalities)."""
        config: dict[str, Any] = {
            "AET": self.ae_title,
            "Host": self.host,
            "Port": self.port,
            "AllowEcho": True,
            "AllowStore": True,
            "AllowFindWorklist": True,
            "AllowStorageCommitment": True,
        }
        if self.use_tls:
            config["UseDicomTls"] = True
        return config


@dataclass(frozen=True)
class OrthancTls:
    """Orthanc's DICOM TLS (its `DicomTls*` options): with it, Orthanc's DICOM port speaks only
    TLS, and associations it opens to a modality with `use_tls` use the same certificate.

    PEM files. Orthanc 1.10 offers TLS 1.2 and 1.3 with OpenSSL's default suites; an RSA
    certificate is the safe choice for a peer whose profile has only RSA suites in TLS 1.2
    (docs/tls.md).
    """

    certificate: Path
    private_key: Path
    trusted_certificates: Path          # the CA (or certificates) peers' certificates must chain to
    remote_certificate_required: bool = True

    def orthanc_config(self) -> dict[str, Any]:
        return {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.certificate),
            "DicomTlsPrivateKey": str(self.private_key),
            "DicomTlsTrustedCertificates": str(self.trusted_certificates),
            "DicomTlsRemoteCertificateRequired": self.remote_certificate_required,
        }


class OrthancServer:
    """A running Orthanc process started by `start_orthanc`; stop it with `stop()` or `with`."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        ae_title: str,
        dicom_port: int,
        http_port: int,
        workdir: Path,
        log_path: Path,
        log_file: IO[bytes],
    ) -> None:
        self.ae_title = ae_title
        self.host = LOCALHOST
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.workdir = workdir
        self.log_path = log_path
        self.pid = process.pid
        self._process = process
        self._log_file = log_file
        # Loopback only: a site's http_proxy must not see our REST calls.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return (
            f"OrthancServer(pid={self.pid}, ae_title={self.ae_title!r}, "
            f"dicom_port={self.dicom_port}, http_port={self.http_port})"
        )

    @property
    def rest_url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:8042``."""
        return f"http://{self.host}:{self.http_port}"

    # -- REST ---------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: bytes | None = None, timeout_s: float = _REST_TIMEOUT_S
    ) -> bytes:
        request = urllib.request.Request(self.rest_url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            with exc:  # holds the response socket: close it (ResourceWarning otherwise)
                detail = _error_detail(exc.read())
            raise OrthancError(
                f"Orthanc REST {method} {path}: HTTP {exc.code} {exc.reason}{detail}", exc.code
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise OrthancError(f"Orthanc REST {method} {path}: {exc}") from exc

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        return json.loads(self._request(method, path, body))

    def system(self) -> dict[str, Any]:
        """`GET /system`: name, AE title, ports and versions.

        Raises
        ------
        OrthancError
            Orthanc did not answer, or answered with an HTTP error.
        """
        result: dict[str, Any] = self._json("GET", "/system")
        return result

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance (`GET /instances`).

        Raises
        ------
        OrthancError
            Orthanc did not answer, or answered with an HTTP error.
        """
        result: list[str] = self._json("GET", "/instances")
        return result

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc id of the instance with this SOP Instance UID, None if Orthanc lacks it.

        Raises
        ------
        OrthancError
            Orthanc did not answer, or answered with an HTTP error.
        """
        # POST /tools/lookup takes the raw UID as body and may match a patient, study or
        # series identifier too; keep only the instance.
        raw = self._request("POST", "/tools/lookup", sop_instance_uid.encode("ascii"))
        for match in json.loads(raw):
            if match.get("Type") == "Instance":
                return str(match["ID"])
        return None

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file (Part 10 bytes) of an instance.

        Raises
        ------
        OrthancError
            Unknown id (`http_status` 404), or Orthanc did not answer.
        """
        return self._request("GET", f"/instances/{_quote(orthanc_id)}/file")

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """`GET /instances/{id}/simplified-tags`: keyword → value (sequences as lists).

        Raises
        ------
        OrthancError
            Unknown id (`http_status` 404), or Orthanc did not answer.
        """
        result: dict[str, Any] = self._json(
            "GET", f"/instances/{_quote(orthanc_id)}/simplified-tags"
        )
        return result

    def delete_instance(self, orthanc_id: str) -> None:
        """Delete an instance, e.g. to make a storage commitment fail.

        Raises
        ------
        OrthancError
            Unknown id (`http_status` 404), or Orthanc did not answer.
        """
        self._request("DELETE", f"/instances/{_quote(orthanc_id)}")

    def register_modality(self, modality: RegisteredModality) -> None:
        """Add or replace a `DicomModalities` entry at run time (`PUT /modalities/{name}`).

        For peers whose listening port is known only after Orthanc started, e.g. the agent's
        storage commitment listener in a test. Lost when Orthanc stops.

        Raises
        ------
        OrthancError
            Orthanc refused the entry or did not answer.
        """
        # Orthanc answers the PUT with an empty body.
        body = json.dumps(modality.orthanc_config()).encode()
        self._request("PUT", f"/modalities/{_quote(modality.name)}", body)

    # -- process ------------------------------------------------------------------------------

    def is_running(self) -> bool:
        """True while the Orthanc process we started has not exited."""
        return self._process.poll() is None

    def stop(self, timeout_s: float = 10) -> None:
        """Stop this Orthanc: SIGTERM to its PID, wait, SIGKILL after `timeout_s`. Idempotent.

        Only the PID we started is signalled, never a process found by name.
        """
        process = self._process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while process.poll() is None and time.monotonic() < deadline:
                # Wake Orthanc's accept loops (2 s and 1 s poll timeouts) so that a graceful
                # stop takes ~1 s instead of ~3.5 s. Connecting to a closed port is harmless.
                _poke(self.host, self.http_port)
                _poke(self.host, self.dicom_port)
                try:
                    process.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
            if process.poll() is None:
                log.warning("Orthanc pid %d ignored SIGTERM for %.1f s; killing", self.pid,
                            timeout_s)
                process.kill()
                process.wait()
            log.info("Orthanc pid %d stopped (exit status %s)", self.pid, process.returncode)
        if not self._log_file.closed:
            self._log_file.close()

    def __enter__(self) -> OrthancServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def find_orthanc_binary() -> Path | None:
    """The Orthanc executable: Debian's `/usr/sbin/Orthanc`, else `Orthanc` on PATH, else None."""
    if DEBIAN_ORTHANC.is_file() and os.access(DEBIAN_ORTHANC, os.X_OK):
        return DEBIAN_ORTHANC
    found = shutil.which("Orthanc")
    return Path(found) if found else None


def orthanc_config(
    workdir: Path,
    *,
    ae_title: str,
    dicom_port: int,
    http_port: int,
    modalities: Sequence[RegisteredModality] = (),
    worklist_dir: Path | None = None,
    tls: OrthancTls | None = None,
    plugins: Sequence[Path] = (),
    dicom_server: bool = True,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON configuration `start_orthanc` writes: local-only, no auth, data inside workdir;
    with `tls`, DICOM only over TLS; `plugins` are loaded as given (e.g. DICOMWEB_PLUGIN);
    `dicom_server=False` opens no DICOM port at all (a DICOMweb-only archive); `extra_config`
    is merged last (top-level keys replace ours, e.g. "PostgreSQL")."""
    config: dict[str, Any] = {
        "Name": f"modality-agent {ae_title}",
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "SyncStorageArea": True,  # fsync per instance: a commitment must mean "on disk"
        "DicomCheckCalledAet": False,
        "DeidentifyLogs": True,
        "DicomModalities": {m.name: m.orthanc_config() for m in modalities},
    }
    if tls is not None:
        config.update(tls.orthanc_config())
    if worklist_dir is not None:
        if WORKLIST_PLUGIN.is_file():
            config["Plugins"] = [str(WORKLIST_PLUGIN)]
        else:
            log.warning("Orthanc worklist plugin %s not found: worklists disabled",
                        WORKLIST_PLUGIN)
        config["Worklists"] = {"Enable": True, "Database": str(worklist_dir)}
        # Orthanc's default (Latin1) silently drops what Latin-1 cannot hold from UTF-8
        # worklist entries; Utf8 transcodes everything correctly (PEERS.md).
        config["DefaultEncoding"] = "Utf8"
    if plugins:
        config["Plugins"] = [*config.get("Plugins", []), *(str(p) for p in plugins)]
    if not dicom_server:
        config["DicomServerEnabled"] = False
    if extra_config:
        config.update(extra_config)
    return config


def start_orthanc(
    workdir: Path,
    *,
    ae_title: str = "ORTHANC",
    dicom_port: int,
    http_port: int,
    modalities: Sequence[RegisteredModality] = (),
    worklist_dir: Path | None = None,
    timeout_s: float = 30,
    log_path: Path | None = None,
    tls: OrthancTls | None = None,
    plugins: Sequence[Path] = (),
    dicom_server: bool = True,
    extra_config: Mapping[str, Any] | None = None,
) -> OrthancServer:
    """Write a config into `workdir`, start Orthanc on it and wait until it serves.

    Ready means: `GET /system` answers and the DICOM port accepts TCP. Orthanc's stdout and
    stderr go to `log_path` (default ``workdir/orthanc.log``). The process gets
    ``TCP_NODELAY=1``: without it, DCMTK-based peers wait ~40 ms per DIMSE exchange. With
    `tls` its DICOM port speaks only DICOM TLS (ready still means "accepts TCP").

    Raises
    ------
    OrthancNotInstalled
        No Orthanc binary (`apt-get install orthanc`).
    OrthancError
        Orthanc exited or was not ready within `timeout_s`; the message holds its log's tail.
        The process has been stopped.
    """
    binary = find_orthanc_binary()
    if binary is None:
        raise OrthancNotInstalled()
    workdir.mkdir(parents=True, exist_ok=True)
    if worklist_dir is not None:
        worklist_dir.mkdir(parents=True, exist_ok=True)
    config = orthanc_config(
        workdir,
        ae_title=ae_title,
        dicom_port=dicom_port,
        http_port=http_port,
        modalities=modalities,
        worklist_dir=worklist_dir,
        tls=tls,
        plugins=plugins,
        dicom_server=dicom_server,
        extra_config=extra_config,
    )
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    log_path = log_path if log_path is not None else workdir / "orthanc.log"

    log_file = log_path.open("ab")
    env = {**os.environ, "TCP_NODELAY": "1"}
    t_start = time.monotonic()
    try:
        process = subprocess.Popen(
            [str(binary), str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
    except OSError:
        log_file.close()
        raise
    server = OrthancServer(
        process,
        ae_title=ae_title,
        dicom_port=dicom_port,
        http_port=http_port,
        workdir=workdir,
        log_path=log_path,
        log_file=log_file,
    )
    try:
        _wait_until_ready(server, process, timeout_s, dicom_server=dicom_server)
    except BaseException:
        server.stop()
        raise
    log.info(
        "Orthanc pid %d ready in %.2f s: AE %s, DICOM port %d, REST %s",
        server.pid, time.monotonic() - t_start, ae_title, dicom_port, server.rest_url,
    )
    return server


def _wait_until_ready(
    server: OrthancServer, process: subprocess.Popen[bytes], timeout_s: float,
    *, dicom_server: bool = True,
) -> None:
    def rest_answers() -> bool:
        try:
            server._request("GET", "/system", timeout_s=1.0)
        except OrthancError:
            return False
        return True

    checks: list[Callable[[], bool]] = [
        rest_answers,
        lambda: process_listens_on(server.pid, server.http_port),
    ]
    if dicom_server:
        checks.append(lambda: process_listens_on(server.pid, server.dicom_port)
                      and accepts_tcp(server.host, server.dicom_port))
    deadline = time.monotonic() + timeout_s
    pending = list(checks)
    while pending:
        if process.poll() is not None:
            raise OrthancError(
                f"Orthanc exited with status {process.returncode} while starting "
                f"(DICOM port {server.dicom_port}, HTTP port {server.http_port}); "
                f"last lines of {server.log_path}:\n{_log_tail(server)}"
            )
        pending = [check for check in pending if not check()]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise OrthancError(
                f"Orthanc was not ready within {timeout_s:g} s (DICOM port {server.dicom_port}, "
                f"HTTP port {server.http_port}); last lines of {server.log_path}:\n"
                f"{_log_tail(server)}"
            )
        try:
            process.wait(timeout=_POLL_S)  # doubles as the poll interval
        except subprocess.TimeoutExpired:
            pass


def _log_tail(server: OrthancServer) -> str:
    server._log_file.flush()
    try:
        lines = server.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def process_listens_on(pid: int, port: int) -> bool:
    """True if process `pid` itself has a socket listening on TCP `port` (Linux /proc).

    A bare connect cannot tell our server from another process already holding the port (then
    ours fails to bind and exits moments later). Without /proc, fall back to "port accepts".
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # fields: sl, local_address (hex ip:port), rem_address, st (0A = LISTEN), ..., inode
            if len(fields) <= 9 or fields[3] != "0A":
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        return accepts_tcp(LOCALHOST, port)
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return accepts_tcp(LOCALHOST, port)
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


def _poke(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=0.05):
            pass
    except OSError:
        pass


def _error_detail(body: bytes) -> str:
    """Orthanc's own explanation (`HttpDescribeErrors`), e.g. "Unknown resource"."""
    try:
        described = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(described, dict):
        return ""
    parts = [str(described[k]) for k in ("Message", "Details") if described.get(k)]
    return f" ({'; '.join(parts)})" if parts else ""


def _quote(orthanc_id: str) -> str:
    return urllib.parse.quote(orthanc_id, safe="")
