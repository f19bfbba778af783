"""A real audit record repository for tests: Debian's rsyslogd in the foreground with its own
config on a free port (never the system's rsyslog), writing every received message raw, one a
line, to a file the test parses. Stopped by its PID.

TLS uses rsyslog-gnutls (``StreamDriver.Name="gtls"``) with certificates the test makes
(support.certs); the client must present a certificate the same CA issued (x509/certvalid),
as an audit repository doing node authentication would.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.certs import CertPair
from support.peers import LOCALHOST, stop_process, wait_until

RSYSLOGD = Path("/usr/sbin/rsyslogd")

#: what the audit messages' APP-NAME is: only these go to the messages file
APP_NAME = "modality-agent"
_PROBE_APP = "rsyslog-probe"

_LINE = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) (?P<sd>-|(?:\[[^\]]*\])+) ?(?P<msg>.*)$")
_SEQUENCE = re.compile(rb'\[meta sequenceId="(\d+)"\]')
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ReceivedMessage:
    """One RFC 5424 message as rsyslog received it."""

    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sequence_id: int | None
    msg: bytes                          # MSG, the byte order mark included
    raw: bytes

    @property
    def xml(self) -> bytes:
        return self.msg[len(BOM):] if self.msg.startswith(BOM) else self.msg


def parse_line(line: bytes) -> ReceivedMessage:
    match = _LINE.match(line)
    if match is None:
        raise AssertionError(f"not an RFC 5424 message: {line[:200]!r}")
    sequence = _SEQUENCE.search(match["sd"])
    return ReceivedMessage(
        pri=int(match["pri"]), timestamp=match["timestamp"].decode(),
        hostname=match["hostname"].decode(), app_name=match["app"].decode(),
        procid=match["procid"].decode(), msgid=match["msgid"].decode(),
        sequence_id=int(sequence[1]) if sequence else None, msg=match["msg"], raw=line)


@dataclass
class Rsyslog:
    """A running rsyslogd; `messages()` reads what it has written so far."""

    process: subprocess.Popen[bytes]
    port: int
    transport: str
    folder: Path
    output: Path

    def messages(self) -> list[ReceivedMessage]:
        if not self.output.exists():
            return []
        lines = self.output.read_bytes().split(b"\n")
        # the last piece is "" after a complete line, or a line still being written
        return [parse_line(line) for line in lines[:-1] if line]

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        path = self.folder / "rsyslogd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _config(folder: Path, port: int, transport: str, server: CertPair | None,
            probe_port: int) -> str:
    output = folder / "messages.log"
    lines = [f'global(workDirectory="{folder}" maxMessageSize="64k")']
    if transport == "tls":
        assert server is not None
        lines.append(f'global(DefaultNetstreamDriverCAFile="{server.ca_file}" '
                     f'DefaultNetstreamDriverCertFile="{server.certificate}" '
                     f'DefaultNetstreamDriverKeyFile="{server.private_key}")')
        lines.append('module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                     'StreamDriver.AuthMode="x509/certvalid")')
    else:
        lines.append('module(load="imtcp")')
    lines.append('module(load="imudp")')
    if transport == "udp":
        lines.append(f'input(type="imudp" address="{LOCALHOST}" port="{port}")')
    else:
        lines.append(f'input(type="imtcp" address="{LOCALHOST}" port="{port}")')
    # the readiness probe: a datagram rsyslog writes to probe.log once its inputs run
    lines.append(f'input(type="imudp" address="{LOCALHOST}" port="{probe_port}")')
    lines += [
        'template(name="raw" type="string" string="%rawmsg%\\n")',
        f'if $app-name == "{APP_NAME}" then {{',
        f'  action(type="omfile" file="{output}" template="raw")',
        "  stop",
        "}",
        f'if $app-name == "{_PROBE_APP}" then {{',
        f'  action(type="omfile" file="{folder / "probe.log"}" template="raw")',
        "  stop",
        "}",
        f'action(type="omfile" file="{folder / "rsyslogd.log"}")',
    ]
    return "\n".join(lines) + "\n"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
    return port


def start_rsyslog(folder: Path, port: int, transport: str, *,
                  server: CertPair | None = None, timeout_s: float = 15) -> Rsyslog:
    """rsyslogd listening on 127.0.0.1:`port` (imtcp, imtcp+gtls or imudp), ready when this
    returns. The messages file survives a restart in the same folder (appended to)."""
    if not RSYSLOGD.exists():
        raise AssertionError("rsyslogd is not installed (install.sh --dev: rsyslog, "
                             "rsyslog-gnutls)")
    folder.mkdir(parents=True, exist_ok=True)
    probe_port = _free_udp_port()
    conf = folder / "rsyslog.conf"
    conf.write_text(_config(folder, port, transport, server, probe_port))
    pidfile = folder / "rsyslogd.pid"
    pidfile.unlink(missing_ok=True)
    (folder / "probe.log").unlink(missing_ok=True)
    with open(folder / "stderr.log", "ab") as stderr:     # the child keeps its own copy
        process = subprocess.Popen(
            [str(RSYSLOGD), "-n", "-f", str(conf), "-i", str(pidfile)],
            stdout=subprocess.DEVNULL, stderr=stderr)
    server_ = Rsyslog(process, port, transport, folder, folder / "messages.log")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            def ready() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"rsyslogd exited with {process.returncode}: "
                                         f"{(folder / 'stderr.log').read_text()}")
                probe.sendto(f"<13>1 - - {_PROBE_APP} - - - ready".encode(),
                             (LOCALHOST, probe_port))
                path = folder / "probe.log"
                return path.exists() and path.stat().st_size > 0 and _listening(transport, port)

            wait_until(ready, timeout_s, f"rsyslogd ready on port {port}", poll_s=0.05)
    except BaseException:
        server_.stop()
        raise
    return server_


def _listening(transport: str, port: int) -> bool:
    if transport == "udp":
        return True         # the probe input started with the UDP input of the same module
    try:
        with socket.create_connection((LOCALHOST, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def rsyslog(folder: Path, port: int, transport: str, *,
            server: CertPair | None = None) -> Iterator[Rsyslog]:
    running = start_rsyslog(folder, port, transport, server=server)
    try:
        yield running
    finally:
        running.stop()
