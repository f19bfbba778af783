"""A throw-away PostgreSQL cluster for tests and the fleet bench: two Orthanc nodes on one
database (Debian `postgresql-15` binaries, no system service involved).

The cluster lives in a folder of its own made here (`initdb`, trust authentication, listening
on 127.0.0.1 on a free port and on a unix socket in the same folder), runs as one `postgres`
process started by us and is stopped by its PID. PostgreSQL refuses to run as root: when we
are root (tests and CI run so), the folder is given to the unprivileged `nobody` and the
programs run as that user (`subprocess` switches user itself, so the PID we hold is the
postmaster's, not a wrapper's). The folder is made under the system temp dir, not pytest's
tmp_path: pytest's folders are 0700 root, which `nobody` cannot traverse.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from agent.errors import AgentError

log = logging.getLogger(__name__)

#: Debian's PostgreSQL 15 server binaries (package postgresql-15)
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
#: the unprivileged user a root caller runs the cluster as
UNPRIVILEGED_USER = "nobody"
DATABASE = "orthanc"
USER = "postgres"


class PostgresError(AgentError, RuntimeError):
    """The cluster could not be made, started or stopped; the message holds its log's tail."""


@dataclass
class PostgresCluster:
    """A running cluster made by `start_postgres`: connect to `host`:`port`, database
    `database`, user `user`, no password (trust on loopback only)."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    host: str = "127.0.0.1"
    database: str = DATABASE
    user: str = USER
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def orthanc_config(self, *, index_connections: int = 1) -> dict[str, Any]:
        """The `PostgreSQL` section for an Orthanc node on this database (plugin 4.0 keys).
        `Lock: false`: by default the index plugin locks the database for one Orthanc;
        several nodes on one database need it off (the plugin supports several writers
        since 4.0)."""
        return {
            "EnableIndex": True,
            "EnableStorage": True,
            "Host": self.host,
            "Port": self.port,
            "Database": self.database,
            "Username": self.user,
            "Password": "",
            "Lock": False,
            "IndexConnectionsCount": index_connections,
            "MaximumConnectionRetries": 20,
            "ConnectionRetryInterval": 1,
        }

    def stop(self, timeout_s: float = 20) -> None:
        """SIGINT (PostgreSQL's fast shutdown) to the postmaster's PID, SIGKILL after
        `timeout_s`, then remove the folder. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("postgres pid %d ignored SIGINT for %.0f s; killing", self.pid,
                            timeout_s)
                self.process.kill()
                self.process.wait()
        if not self.log_file.closed:
            self.log_file.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as err:
            return f"(log unreadable: {err})"

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """Popen keyword arguments that run a program as the unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def start_postgres(*, port: int | None = None, timeout_s: float = 30,
                   fsync: bool = True) -> PostgresCluster:
    """Make a cluster in a new temp folder, start it and create the database.

    `fsync=False` only for throw-away measurements that say so: a commitment from an archive
    on such a database means less than it claims.

    Raises
    ------
    PostgresError
        The binaries are missing, initdb failed, or the server did not accept connections
        within `timeout_s` (it has been stopped and its folder removed then).
    """
    for program in ("initdb", "postgres", "pg_isready", "createdb"):
        if not (POSTGRES_BIN / program).is_file():
            raise PostgresError(f"{POSTGRES_BIN / program} not found: install postgresql-15 "
                                "(./install.sh --dev)")
    as_user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="agent-pg-"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data = root / "data"
    try:
        subprocess.run(
            [str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=root, timeout=120, **as_user)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        detail = getattr(err, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresError(f"initdb in {data} failed: {err} "
                            f"{detail.decode(errors='replace')[-500:]}") from err
    port = port if port is not None else _free_port()
    log_path = root / "postgres.log"
    log_file = log_path.open("ab")
    if as_user:
        os.chown(log_path, as_user["user"], as_user["group"])
    try:
        process = subprocess.Popen(
            [str(POSTGRES_BIN / "postgres"), "-D", str(data), "-p", str(port),
             "-h", "127.0.0.1", "-k", str(root), "-c", f"fsync={'on' if fsync else 'off'}",
             "-c", "max_connections=200"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=root,
            **as_user)
    except OSError as err:
        log_file.close()
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresError(f"cannot start postgres: {err}") from err
    cluster = PostgresCluster(root=root, port=port, process=process, log_file=log_file)
    try:
        _wait_ready(cluster, timeout_s)
        subprocess.run([str(POSTGRES_BIN / "createdb"), "-h", str(root), "-p", str(port),
                        "-U", USER, DATABASE], check=True, capture_output=True, timeout=30,
                       cwd=root, **as_user)
    except subprocess.CalledProcessError as err:
        cluster.stop()
        raise PostgresError(f"createdb failed: {err.stderr.decode(errors='replace')}") \
            from err
    except BaseException:
        cluster.stop()
        raise
    log.info("PostgreSQL pid %d ready on 127.0.0.1:%d (%s)", cluster.pid, port, root)
    return cluster


def _wait_ready(cluster: PostgresCluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if cluster.process.poll() is not None:
            raise PostgresError(f"postgres exited with {cluster.process.returncode} while "
                                f"starting:\n{cluster.log_tail()}")
        ready = subprocess.run(
            [str(POSTGRES_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
             str(cluster.port)], capture_output=True, timeout=10)
        if ready.returncode == 0:
            return
        if time.monotonic() >= deadline:
            raise PostgresError(f"postgres not ready within {timeout_s:g} s:\n"
                                f"{cluster.log_tail()}")
        try:
            cluster.process.wait(timeout=0.1)     # doubles as the poll interval
        except subprocess.TimeoutExpired:
            pass


@dataclass
class SharedArchive:
    """Orthanc nodes on one PostgreSQL database (index and storage): one archive, several
    DICOM entry points, as a hospital runs it behind many agents. Stop with `stop()`."""

    database: PostgresCluster
    nodes: list[Any]                 # agent.demo.orthanc.OrthancServer, one per node
    workdir: Path

    def start_node(self, index: int, **options: Any) -> Any:
        """(Re)start node `index` on its former ports and database (after `stop_node`)."""
        from agent.demo.orthanc import start_orthanc

        old = self.nodes[index]
        self.nodes[index] = start_orthanc(
            old.workdir, ae_title=old.ae_title, dicom_port=old.dicom_port,
            http_port=old.http_port, **{**self._options, **options})
        return self.nodes[index]

    def stop(self) -> None:
        try:
            for node in self.nodes:
                node.stop()
        finally:
            self.database.stop()

    _options: dict[str, Any] = field(default_factory=dict, repr=False)


def start_shared_archive(workdir: Path, ports: Sequence[tuple[int, int]], *,
                         modalities: Sequence[Any] = (), fsync: bool = True,
                         ae_prefix: str = "ORTHANC") -> SharedArchive:
    """A PostgreSQL cluster and one Orthanc node per (DICOM port, HTTP port) on it, AE titles
    ORTHANC1, ORTHANC2, ... Each node knows `modalities` (the agents, for Storage Commitment
    reports). On failure everything started is stopped.

    Raises
    ------
    PostgresError, OrthancError, OrthancNotInstalled
    """
    from agent.demo.orthanc import (
        POSTGRESQL_INDEX_PLUGIN,
        POSTGRESQL_STORAGE_PLUGIN,
        start_orthanc,
    )

    database = start_postgres(fsync=fsync)
    options: dict[str, Any] = {
        "modalities": tuple(modalities),
        "plugins": (POSTGRESQL_INDEX_PLUGIN, POSTGRESQL_STORAGE_PLUGIN),
        "extra_config": {"PostgreSQL": database.orthanc_config()},
    }
    archive = SharedArchive(database, [], workdir, options)
    try:
        for number, (dicom_port, http_port) in enumerate(ports, start=1):
            archive.nodes.append(start_orthanc(
                workdir / f"node{number}", ae_title=f"{ae_prefix}{number}",
                dicom_port=dicom_port, http_port=http_port, **options))
    except BaseException:
        archive.stop()
        raise
    return archive
