"""What every scenario needs: a workspace that stops what it started, ports, receivers (Orthanc,
DCMTK storescp on tmpfs), the agent daemon as a process, test objects, statistics.

DCMTK is called by full path: pynetdicom's console scripts in the venv shadow `storescp` and
`storescu` (shared/design/PEERS.md, "Name clash"). Every process started here is stopped by its
PID when the workspace closes, also on error; children also get SIGTERM if the bench dies
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.errors import AgentError

LOCALHOST = "127.0.0.1"
DCMTK = Path("/usr/bin")
STORESCP = DCMTK / "storescp"
STORESCU = DCMTK / "storescu"
AGENT_AE = "MODALITY1"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
MB = 1_000_000          # throughput figures are in 10^6 bytes per second
REPO = Path(__file__).resolve().parent.parent

_PR_SET_PDEATHSIG = 1
PY_SPY = Path(sys.executable).parent / "py-spy"

#: set by `--profile DIR`: agent processes and Python senders are sampled by py-spy into DIR
PROFILE: dict[str, Path | None] = {"dir": None}
#: set by `--tracemalloc`: the daemon of `soak` and its children trace their allocations and
#: dump snapshots on request (bench/tracemalloc_hook), compared by the soak
TRACEMALLOC: dict[str, bool] = {"on": False}
TRACEMALLOC_HOOK = Path(__file__).resolve().parent / "tracemalloc_hook"
#: --tiny: every scenario at a size that only proves the bench code still works (the test suite
#: runs it); its figures mean nothing
SCALE: dict[str, bool] = {"tiny": False}


def tiny() -> bool:
    return SCALE["tiny"]


def profile_prefix(name: str) -> list[str]:
    """`py-spy record ... --` to put before a Python command line when profiling, else []."""
    folder = PROFILE["dir"]
    if folder is None:
        return []
    # --subprocesses: the agent's sending processes are sampled too
    return [str(PY_SPY), "record", "--idle", "--threads", "--subprocesses", "--format", "raw",
            "-r", "100", "-o", str(_profile_path(folder, name)), "--"]


def _profile_path(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.txt"
    index = 1
    while path.exists():
        index += 1
        path = folder / f"{name}-{index}.txt"
    return path


def say(message: str) -> None:
    """Progress, on stderr (stdout is the table, or the JSON with --json)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the bench process dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def nodelay_env(**extra: str) -> dict[str, str]:
    """DCMTK tools and Orthanc turn Nagle off only with TCP_NODELAY=1 (PEERS.md)."""
    return {**os.environ, "TCP_NODELAY": "1", **extra}


def python_env() -> dict[str, str]:
    """Environment for Python children: the repository importable (agent, drivers, bench)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def free_port(exclude: Iterable[int] = ()) -> int:
    """A TCP port free on all interfaces now (DCMTK and Orthanc bind to all of them)."""
    excluded = set(exclude)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port: int = sock.getsockname()[1]
        if port not in excluded:
            return port
    raise RuntimeError("no free TCP port")


def accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
               poll_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 15) -> None:
    """SIGTERM to this one PID, SIGKILL after `timeout_s`; never by name."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (the daemon's sending processes), from /proc."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            children += [int(c) for c in text.split()]
    except OSError:
        pass
    return sorted(set(children))


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children...), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in child_pids(todo.pop()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages divided among the processes mapping them), from
    /proc/PID/smaps_rollup: summed over processes it does not count shared pages twice."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def process_label(pid: int) -> str:
    """A short name for a process of the agent: "daemon", "sending process"... from its
    command line."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in args if a)
    if "store_process" in text:
        return "sending process"
    if "agent.net.zygote" in text:
        # a forked sending process keeps the forking process's command line, not its name
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return "?"
        return "sending process" if name == "agent-sending" else "forking process"
    if "-m agent" in text or " agent " in text:
        return "daemon"
    return Path(args[0].decode(errors="replace")).name if args and args[0] else "?"


def children_rss_bytes(pid: int) -> int:
    """RSS of every process below `pid` (the daemon's sending processes), summed."""
    total = 0
    for child in descendants(pid):
        try:
            total += rss_bytes(child)
        except OSError:
            pass            # ended between listing and reading
    return total


# -- statistics and formatting -------------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]],
          notes: Sequence[str] = (), left: int = 1) -> str:
    """A plain-text table; the first `left` columns are left-aligned, the rest right-aligned;
    a last column named "note" is left-aligned too."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    lefts = set(range(left)) | ({len(header) - 1} if header[-1] == "note" else set())

    def join(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i in lefts else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    out = [title, "=" * len(title), join(header), join(["-" * w for w in widths])]
    out.extend(join(row) for row in cells)
    out.extend(f"  {n}" for n in notes)
    return "\n".join(out)


# -- the workspace -------------------------------------------------------------------------

@dataclass
class Workspace:
    """A temp folder plus everything started in it; `close()` undoes it all, last first."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="modagent-bench-")))
    _undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def path(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def on_close(self, what: str, action: Callable[[], None]) -> None:
        self._undo.append((what, action))

    def popen(self, args: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a process whose output goes to `log`; it is stopped by PID at close."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, preexec_fn=_die_with_parent,
            )
        self.on_close(f"pid {process.pid} ({Path(args[0]).name})",
                      lambda: stop_process(process))
        return process

    def close(self) -> None:
        while self._undo:
            what, action = self._undo.pop()
            try:
                action()
            except Exception as err:  # noqa: BLE001 - cleanup goes on whatever failed
                say(f"cleanup of {what} failed: {err}")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tmpfs -------------------------------------------------------------------------
    def tmpfs(self, name: str, size_mb: int) -> tuple[Path, str]:
        """A tmpfs mounted under the workspace (we are root), else a folder in /dev/shm.
        Returns the folder and a word saying which it is."""
        target = self.path(name)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(target)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode == 0:
            self.on_close(f"tmpfs {target}", lambda: _umount(target))
            return target, "tmpfs"
        fallback = Path(tempfile.mkdtemp(prefix="modagent-bench-", dir="/dev/shm"))
        self.on_close(f"{fallback}", lambda: shutil.rmtree(fallback, ignore_errors=True))
        say(f"mount tmpfs failed ({result.stderr.strip()}); using {fallback}")
        return fallback, "/dev/shm"

    # -- receivers ---------------------------------------------------------------------
    def storescp(self, out_dir: Path, ae_title: str = "STORESCP",
                 tls: BenchTls | None = None) -> tuple[int, int]:
        """DCMTK storescp writing into `out_dir`, TCP_NODELAY=1, a process per association
        (`--fork`: without it storescp serves one association at a time, and a second one
        waits for the first to be released — the receiver, not the sender, would be what is
        measured); with `tls`, `+tls` only (BCP 195 non-downgrading, the client's certificate
        required); returns (pid, port)."""
        port = free_port()
        process = self.popen(
            [str(STORESCP), "--aetitle", ae_title, "--output-directory", str(out_dir),
             "--prefer-little", "--fork", *(tls.dcmtk_args("server") if tls else []),
             str(port)],
            log=self.root / f"storescp-{port}.log", env=nodelay_env(),
        )
        wait_until(lambda: process.poll() is not None or accepts_tcp(LOCALHOST, port), 10,
                   "storescp to listen")
        if process.poll() is not None:
            raise RuntimeError(f"storescp exited with {process.returncode}")
        return process.pid, port

    def orthanc(self, name: str, *, agent_listener_port: int | None = None) -> Orthanc:
        """Orthanc (fsync per instance, TCP_NODELAY=1, agent.demo.orthanc's config), with the
        agent registered for Storage Commitment when its listener port is given."""
        from agent.demo.orthanc import RegisteredModality, start_orthanc

        http_port = free_port()
        dicom_port = free_port(exclude=[http_port])
        modalities = []
        if agent_listener_port is not None:
            modalities.append(RegisteredModality("agent", AGENT_AE, LOCALHOST,
                                                 agent_listener_port))
        server = start_orthanc(self.path(name), ae_title="ORTHANC", dicom_port=dicom_port,
                               http_port=http_port, modalities=modalities)
        self.on_close(f"Orthanc pid {server.pid}", server.stop)
        return Orthanc(server.pid, dicom_port, http_port)


@dataclass(frozen=True)
class BenchTls:
    """A CA and the two certificates (RSA) the TLS comparison uses: "server" for storescp +tls,
    "client" for the agent and storescu +tls; both name 127.0.0.1."""

    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    def certificate(self, name: str) -> Path:
        return self.folder / f"{name}.crt"

    def private_key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def dcmtk_args(self, name: str) -> list[str]:
        """storescp/storescu options: TLS with `name`'s pair, the peer verified against the
        CA (DCMTK's default profile, BCP 195 non-downgrading)."""
        return ["+tls", str(self.private_key(name)), str(self.certificate(name)),
                "+cf", str(self.ca_file), "--require-peer-cert"]


def make_bench_tls(folder: Path) -> BenchTls:
    """Make the CA, server and client certificates with the openssl command line. RSA: over
    TLS 1.2 the default profile has only RSA suites, and DCMTK and the agent both speak
    TLS 1.3 anyway (docs/tls.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    tls = BenchTls(folder)

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    def key(name: str) -> str:
        path = tls.private_key(name)
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                "-out", str(path))
        os.chmod(path, 0o600)       # the agent refuses a key others may read
        return str(path)

    openssl("req", "-x509", "-new", "-key", key("ca"), "-subj", "/CN=Bench CA", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", "-out", str(tls.ca_file))
    extensions = folder / "leaf.ext"
    extensions.write_text("basicConstraints = critical, CA:FALSE\n"
                          "extendedKeyUsage = serverAuth, clientAuth\n"
                          "subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    for name in ("server", "client"):
        request = folder / f"{name}.csr"
        openssl("req", "-new", "-key", key(name), "-subj", f"/CN=bench-{name}",
                "-out", str(request))
        openssl("x509", "-req", "-in", str(request), "-CA", str(tls.ca_file),
                "-CAkey", str(tls.private_key("ca")), "-CAcreateserial", "-days", "2",
                "-extfile", str(extensions), "-out", str(tls.certificate(name)))
    return tls


def _umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=False, capture_output=True)


@dataclass
class Orthanc:
    pid: int
    dicom_port: int
    http_port: int
    ae_title: str = "ORTHANC"

    def rest(self, method: str, path: str, timeout_s: float = 60) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(f"http://{LOCALHOST}:{self.http_port}{path}",
                                         method=method)
        with opener.open(request, timeout=timeout_s) as response:
            body = response.read()
        return json.loads(body) if body else None

    def count(self) -> int:
        return int(self.rest("GET", "/statistics")["CountInstances"])

    def clear(self) -> None:
        """Delete everything: the next run stores every object again (Orthanc keeps the first
        copy of a UID it already holds, which would make a repeat cheaper)."""
        for patient in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient}")


def clear_folder(folder: Path) -> None:
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def count_files(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.is_file())


# -- test objects --------------------------------------------------------------------------

@dataclass(frozen=True)
class TestObject:
    sop_instance_uid: str
    payload: bytes


def make_objects(size: int, count: int, *, bits_stored: int = 16) -> list[TestObject]:
    """`count` single-frame Secondary Capture objects of size x size 16-bit pixels, built by
    the agent's own IOD code (same path as a captured frame), one new UID each."""
    from agent.iod import UIDSource, build_secondary_capture, encode_part10, new_series_context
    from agent.records import DeviceInfo, Order
    from drivers.frame import Frame
    from drivers.simulated import phantom

    uids = UIDSource()
    order = Order(patient_name="BENCH^Objects", patient_id="BENCH-0001")
    device = DeviceInfo("OT", "Example Medical", "Bench", "0001", "BENCH", "", "bench")
    series = new_series_context(uids, order, started_at=datetime.now(), series_number=1)
    pixels = phantom(size, size, bits_stored, 0)
    frame = Frame(pixels=pixels, bits_stored=bits_stored,
                  photometric_interpretation="MONOCHROME2", t_mono=time.monotonic(),
                  t_wall=time.time(), sequence_number=0)
    objects = []
    for index in range(count):
        uid = uids.new_uid()
        ds = build_secondary_capture(frame, order=order, device=device, series=series,
                                     instance_number=index + 1, sop_instance_uid=uid)
        objects.append(TestObject(uid, encode_part10(ds)))
    return objects


def fill_spool(spool_dir: Path, destinations: Sequence[str],
               objects: Iterable[TestObject]) -> list[Path]:
    """Queue the objects with the agent's own QueueStore (durable writes, one pending row per
    destination); returns the spool files in queue order."""
    from agent.queue import QueueStore

    store = QueueStore(spool_dir, list(destinations), min_free_bytes=0)
    store.open()
    try:
        paths = []
        for obj in objects:
            queued = store.enqueue(obj.payload, sop_instance_uid=obj.sop_instance_uid,
                                   sop_class_uid=SC_IMAGE_STORAGE,
                                   transfer_syntax_uid=EXPLICIT_VR_LE)
            paths.append(store.object_path(queued.queue_id))
        return paths
    finally:
        store.close()


def spool_rows(spool_dir: Path) -> list[dict[str, Any]]:
    """Every object x destination row, read-only (the daemon may be running)."""
    conn = sqlite3.connect(f"file:{spool_dir / 'queue.db'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT o.queue_id, o.sop_instance_uid, o.size_bytes, o.created_at, d.destination,"
            " d.state, d.stored_at, d.committed_at, d.last_error "
            "FROM deliveries d JOIN objects o USING (queue_id) ORDER BY o.queue_id")]
    finally:
        conn.close()


# -- the agent daemon as a process -----------------------------------------------------------

@dataclass(frozen=True)
class DestinationSpec:
    name: str
    port: int
    called_ae: str
    storage_commitment: bool = True
    max_associations: int | None = None       # None: the agent's default


def write_agent_config(path: Path, *, spool_dir: Path, listener_port: int, api_port: int,
                       destinations: Sequence[DestinationSpec],
                       device_options: dict[str, Any], log_level: str = "INFO") -> Path:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return str(v)

    lines = [
        "[agent]", f'ae_title = "{AGENT_AE}"', f"spool_dir = {value(str(spool_dir))}",
        f"log_level = {value(log_level)}",
        "[listener]", f'host = "{LOCALHOST}"', f"port = {listener_port}",
        # the bench captures up to ~1800 frames in one acquisition (capture scenario)
        "[api]", f'host = "{LOCALHOST}"', f"port = {api_port}", "max_frames = 10000",
        "[device]", 'driver = "simulated"', "[device.options]",
        *(f"{k} = {value(v)}" for k, v in device_options.items()),
        "[modality]", 'modality = "OT"', 'station_name = "BENCH"',
        "[queue]", "retry_initial_s = 0.5", "retry_max_s = 5", "retention_s = 86400",
        "min_free_mb = 0",
    ]
    for d in destinations:
        lines += ["[[destinations]]", f'name = "{d.name}"', f'host = "{LOCALHOST}"',
                  f"port = {d.port}", f'called_ae = "{d.called_ae}"',
                  f"storage_commitment = {value(d.storage_commitment)}"]
        if d.max_associations is not None:
            lines.append(f"max_associations = {d.max_associations}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class AgentDaemon:
    """`python -m agent run` in its own process, as systemd runs it."""

    ws: Workspace
    config_path: Path
    api_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0      # time.time() just before the process was created
    profiler: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, ws: Workspace, name: str, *, destinations: Sequence[DestinationSpec],
               device_options: dict[str, Any], listener_port: int | None = None,
               spool_dir: Path | None = None, log_level: str = "INFO") -> AgentDaemon:
        folder = ws.path(name)
        api_port = free_port()
        listener_port = listener_port or free_port(exclude=[api_port])
        config = write_agent_config(
            folder / "agent.toml", spool_dir=spool_dir or folder / "spool",
            listener_port=listener_port, api_port=api_port, destinations=destinations,
            device_options=device_options, log_level=log_level)
        return cls(ws, config, api_port, folder / "agent.log")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, wait_api: bool = True, timeout_s: float = 60,
              tracemalloc_dir: Path | None = None) -> None:
        """`tracemalloc_dir`: the daemon and its children trace allocations and dump
        snapshots there on request (bench/tracemalloc_hook; slows them down)."""
        self.started_at = time.time()
        env = python_env()
        if tracemalloc_dir is not None:
            env["PYTHONPATH"] = f"{TRACEMALLOC_HOOK}{os.pathsep}{env['PYTHONPATH']}"
            env["BENCH_TRACEMALLOC_DIR"] = str(tracemalloc_dir)
        self.process = self.ws.popen(
            [sys.executable, "-m", "agent", "--config", str(self.config_path), "run"],
            log=self.log_path, env=env, cwd=REPO,
        )
        folder = PROFILE["dir"]
        if folder is not None:
            # attached, so that the PID stays the agent's own (RSS, fds, CPU are read from it)
            name = self.config_path.parent.name
            self.profiler = self.ws.popen(
                [str(PY_SPY), "record", "--pid", str(self.process.pid), "--idle", "--threads",
                 "--subprocesses", "--format", "raw", "-r", "100",
                 "-o", str(_profile_path(folder, name))],
                log=self.ws.root / f"py-spy-{name}.log")
        if wait_api:
            self.wait_api(timeout_s)

    def wait_api(self, timeout_s: float = 60) -> None:
        process = self.process
        assert process is not None

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"agent exited with {process.returncode}: "
                                   f"{self.log_tail()}")
            try:
                self.api("GET", "/api/status", timeout_s=5)
                return True
            except (urllib.error.URLError, ConnectionError, TimeoutError, AgentError):
                # AgentError: the API token is not written yet
                return False

        wait_until(up, timeout_s, "the agent's API", poll_s=0.02)

    def token(self) -> str:
        """The daemon's API token (its [api] token_file), as the CLI reads it."""
        from agent.api.security import read_token
        from agent.config import load_config

        return read_token(load_config(self.config_path).api.token_file)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            timeout_s: float = 60) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(f"http://{LOCALHOST}:{self.api_port}{path}",
                                         data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.token()}"})
        with opener.open(request, timeout=timeout_s) as response:
            return json.loads(response.read())

    def acquire(self, frames: int, timeout_s: float, *, end: str | None = None,
                patient_id: str = "BENCH-0001") -> dict[str, Any]:
        """POST /api/acquire, unscheduled; `end` ("completed") ends the procedure after it."""
        body: dict[str, Any] = {"unscheduled": True, "patient_id": patient_id,
                                "patient_name": "BENCH^Capture", "frames": frames}
        if end is not None:
            body["end"] = end
        result: dict[str, Any] = self.api("POST", "/api/acquire", body, timeout_s=timeout_s)
        return result

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
            env=python_env(), cwd=REPO, check=False,
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self.profiler is not None:
            # py-spy writes its profile when the process it samples has exited
            try:
                self.profiler.wait(timeout=20)
            except subprocess.TimeoutExpired:
                stop_process(self.profiler)
            self.profiler = None


def simulated_options(size: int, frame_rate: float, *, bits_stored: int = 16,
                      cheap_pattern: bool = True) -> dict[str, Any]:
    """Device options for the simulated driver. The phantom costs ~16 ms per 1024² frame in
    the agent's own process (a real device costs nothing there): with `cheap_pattern`, use
    the scrolling bars when this driver version has them."""
    from drivers.simulated import SimulatedDriver

    options: dict[str, Any] = {"width": size, "height": size, "bits_stored": bits_stored,
                               "frame_rate": float(frame_rate)}
    if cheap_pattern and "pattern" in SimulatedDriver.option_types:
        options["pattern"] = "bars"
    return options


def frame_time(path: Path) -> float:
    """When the object's frame was read out: its Content Date/Time (the frame's t_wall)."""
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True, specific_tags=["ContentDate", "ContentTime"])
    return dicom_datetime_to_epoch(str(ds.ContentDate), str(ds.ContentTime))


def dicom_datetime_to_epoch(date: str, time_value: str) -> float:
    """DICOM DA + TM (local time, optional fraction) to seconds since the epoch."""
    whole, _, fraction = time_value.partition(".")
    moment = datetime.strptime(date + whole.ljust(6, "0"), "%Y%m%d%H%M%S")
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


# -- a timestamping Storage SCP --------------------------------------------------------------

class StampingSCP:
    """A pynetdicom Storage SCP in this process that notes when the first connection and the
    first C-STORE arrive (time.time()) and counts stores; it keeps nothing. TCP_NODELAY on its
    accepted sockets, like every peer in the bench."""

    def __init__(self, ae_title: str = "STAMPSCP") -> None:
        self.ae_title = ae_title
        self.port = 0
        self.first_connection_at: float | None = None
        self.first_store_at: float | None = None
        self.stores = 0
        self._server: Any = None

    def start(self, ws: Workspace) -> int:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

        def on_open(event: Any) -> None:
            sock = event.assoc.dul.socket.socket
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.first_connection_at is None:
                self.first_connection_at = time.time()

        def on_store(event: Any) -> int:
            if self.first_store_at is None:
                self.first_store_at = time.time()
            self.stores += 1
            return 0x0000

        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(SecondaryCaptureImageStorage,
                                 ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context(Verification)
        ae.maximum_associations = 16
        self.port = free_port()
        self._server = ae.start_server(
            (LOCALHOST, self.port), block=False,
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store)])
        ws.on_close(f"Storage SCP on port {self.port}", self.stop)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
