"""C-STORE and Storage Commitment requests over an association held by a child process.

Why a process: pynetdicom is CPU-bound when the archive is fast (~180 MB/s per core here), and
threads share one GIL — with the capture thread too, which then drops frames. Measured on the
2-core reference machine (shared/design/PEERS.md): two associations in two processes reach
90-136 % of DCMTK storescu into Orthanc, in two threads of one process 73-84 %.

The parent keeps everything durable (the queue, the transactions, the crash points); the child
only talks DICOM. One child holds at most one association, opened by the one factory
(agent.net.ae.associate), with TLS when the request carries it. The messages are the typed
classes of agent.net.messages, pickled over a socketpair (both ends are ours); a failed
association comes back as the factory's exception type.

A Storage Commitment report that the archive sends on this association is passed to the parent,
which records it and returns the status the child answers with: recorded before answered.

The child ends as soon as its end of the socket reads EOF, i.e. when the parent exits, also by
kill -9 or a crash point: an orphan must not go on sending after a new daemon took the spool.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import AgentError, AssociationError
from agent.net import status as dimse_status
from agent.net import zygote
from agent.net.commitment import CommitmentReport
from agent.net.messages import (
    Associate,
    Associated,
    AssociationFailed,
    AssociationRequest,
    ChildMessage,
    Exit,
    NAction,
    NActionDone,
    Outcome,
    ParentMessage,
    Ready,
    Release,
    Released,
    Report,
    ReportStatus,
    SendError,
    Store,
    Stored,
    StoreOutcome,
)
from agent.net.zygote import ForkedChild

logger = logging.getLogger(__name__)

#: how long the parent waits for the child to import pynetdicom and say it is ready
START_TIMEOUT_S = 30.0
#: slack on top of the association's own timeouts before the parent gives a child up as hung
HANG_SLACK_S = 30.0
#: how long the child holds an archive's report unanswered while the parent records it
REPORT_ANSWER_TIMEOUT_S = 30.0

__all__ = ["AssociationRequest", "ReportHandler", "SendError", "StoreOutcome", "StoreProcess",
           "StoreProcessError", "child_main"]

_M = TypeVar("_M")


class StoreProcessError(AgentError):
    """The sending process died, hung or could not be started. The objects it was sending
    are in the queue still; the caller sends them again."""


#: records a report received on our association; returns the status to answer with
ReportHandler = Callable[[CommitmentReport], int]


# -- parent side ---------------------------------------------------------------------------------

class StoreProcess:
    """The parent's handle on one sending child. Not thread-safe: one worker thread uses it."""

    def __init__(self, name: str, *, report_handler: ReportHandler,
                 log_level: str | int | None = None,
                 hang_slack_s: float = HANG_SLACK_S) -> None:
        self.name = name
        self._hang_slack_s = hang_slack_s
        self._report_handler = report_handler
        self._log_level = log_level
        self._proc: ForkedChild | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._timeout_s = 60.0
        self.is_established = False
        self.max_pdu: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def launch(self) -> None:
        """Start the child without waiting for it (it imports pynetdicom meanwhile)."""
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair()
        level = self._log_level
        if level is None:
            level = logging.getLogger().getEffectiveLevel()
        env = dict(os.environ)
        env["AGENT_STORE_PROCESS_LOG_LEVEL"] = logging.getLevelName(level) \
            if isinstance(level, int) else str(level)
        try:
            # forked from one process that imported pydicom and pynetdicom once, without
            # pixel codecs: their pages are shared (agent.net.zygote)
            self._proc = zygote.spawn(theirs.fileno(), env)
        except OSError as err:
            ours.close()
            raise StoreProcessError(f"{self.name}: cannot start the sending process: "
                                    f"{err}") from err
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._ready = False
        self.is_established = False

    def close(self, timeout_s: float = 10.0) -> None:
        """Release the association if one is open and end the child."""
        proc, conn = self._proc, self._conn
        self._proc, self._conn, self._ready = None, None, False
        self.is_established = False
        if proc is None:
            return
        try:
            if conn is not None:
                conn.send(Exit())
        except OSError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            if conn is not None:
                conn.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _kill(self, reason: str) -> StoreProcessError:
        proc, conn = self._proc, self._conn
        self._proc, self._conn, self._ready = None, None, False
        self.is_established = False
        if proc is not None:
            proc.kill()
            proc.wait()
        if conn is not None:
            conn.close()
        return StoreProcessError(f"{self.name}: sending process {reason}")

    def _send(self, message: ParentMessage) -> None:
        self._ensure_ready()
        assert self._conn is not None
        try:
            self._conn.send_bytes(_dumps(message))
        except OSError as err:
            raise self._kill(f"is gone ({err})") from err

    def _recv(self, timeout_s: float) -> ChildMessage:
        """The next message from the child that is not a commitment report (reports are
        recorded and answered here, whenever they come)."""
        conn = self._conn
        if conn is None:
            raise StoreProcessError(f"{self.name}: sending process not running")
        while True:
            try:
                if not conn.poll(timeout_s):
                    raise self._kill(f"gave no answer for {timeout_s:.0f} s: stopped")
                message: ChildMessage = conn.recv()
            except (EOFError, OSError) as err:
                code = self._proc.poll() if self._proc is not None else None
                raise self._kill(f"ended unexpectedly (exit status {code})") from err
            if not isinstance(message, Report):
                return message
            try:
                status = self._report_handler(message.report)
            except Exception:
                logger.exception("%s: recording a commitment report failed", self.name)
                # not recorded: the archive should send it again
                status = dimse_status.PROCESSING_FAILURE
            conn.send_bytes(_dumps(ReportStatus(status)))

    def _expect(self, kind: type[_M], timeout_s: float) -> _M:
        """The next message, which must be a `kind`; anything else means the child is broken."""
        message = self._recv(timeout_s)
        if not isinstance(message, kind):
            raise self._kill(f"said {type(message).__name__} instead of {kind.__name__}")
        return message

    def wait_ready(self) -> None:
        """Start the child if need be and wait until it can take work."""
        self._ensure_ready()

    def _ensure_ready(self) -> None:
        if self._proc is None:
            self.launch()
        if not self._ready:
            self._expect(Ready, START_TIMEOUT_S)
            self._ready = True

    # -- operations ------------------------------------------------------------------------------
    def associate(self, request: AssociationRequest) -> None:
        """Open the association in the child.

        Raises
        ------
        AssociationError
            PeerUnreachable, AssociationRejected, AssociationAborted or TlsHandshakeError, as
            the factory raised it in the child, with its words for a service engineer.
        StoreProcessError
            If the child died or hung (the next call starts another).
        """
        self._timeout_s = request.timeout_s
        self.is_established = False
        self.max_pdu = None
        self._send(Associate(request))
        # connection, TLS handshake, ACSE: each bounded by the request's timeout
        answer = self._recv(4 * request.timeout_s + self._hang_slack_s)
        if isinstance(answer, AssociationFailed):
            raise answer.error()
        if not isinstance(answer, Associated):
            raise self._kill(f"said {type(answer).__name__} instead of Associated")
        self.is_established = True
        self.max_pdu = answer.max_pdu

    def store(self, items: Sequence[tuple[int, Path]]) -> Iterator[StoreOutcome]:
        """Send the files in order; yields each outcome as soon as the archive answered, so
        the caller records one while the next is on the wire. Every item gets an outcome."""
        self._send(Store(tuple((key, str(path)) for key, path in items)))
        while True:
            message = self._recv(self._timeout_s + self._hang_slack_s)
            if isinstance(message, Stored):
                self.is_established = message.established
                return
            if not isinstance(message, Outcome):
                raise self._kill(f"said {type(message).__name__} during a store")
            yield message.outcome

    def n_action(self, transaction_uid: str, references: Sequence[tuple[str, str]],
                 wait_s: float) -> int | None:
        """Request Storage Commitment; the status (None: no answer), after waiting up to
        `wait_s` for a report on this association."""
        self._send(NAction(transaction_uid, tuple((c, i) for c, i in references), wait_s))
        done = self._expect(NActionDone, self._timeout_s + wait_s + self._hang_slack_s)
        self.is_established = done.established
        return done.status

    def release(self) -> None:
        if self._proc is None or not self.is_established:
            return
        self._send(Release())
        self._expect(Released, self._timeout_s + self._hang_slack_s)
        self.is_established = False


# -- child side ----------------------------------------------------------------------------------

class _Child:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.send_lock = threading.Lock()
        self.ops: queue.Queue[ParentMessage] = queue.Queue()
        self.report_answers: queue.Queue[int] = queue.Queue()
        self.report_seen = threading.Event()
        self.assoc: Any = None
        #: write C-STORE data sets from the file (agent.net.direct_store) where the socket allows
        self.direct = os.environ.get("AGENT_DIRECT_STORE", "1") != "0"
        self.message_id = 0

    def send(self, message: ChildMessage) -> None:
        data = _dumps(message)
        with self.send_lock:
            self.conn.send_bytes(data)

    def read_forever(self) -> None:
        """The only reader of the socket: ops to the main thread, answers to reports to the
        handler waiting for them; EOF (the parent is gone) ends the process at once."""
        try:
            while True:
                message = self.conn.recv()
                if isinstance(message, ReportStatus):
                    self.report_answers.put(message.status)
                else:
                    self.ops.put(message)
        except (EOFError, OSError):
            os._exit(0)

    def on_report(self, event: Any) -> tuple[int, None]:
        try:
            report = CommitmentReport.from_event(event)
        except (AttributeError, TypeError, ValueError) as err:
            # undecodable event information: the parent never sees it
            logger.warning("unreadable N-EVENT-REPORT on our association: %s", err)
            return dimse_status.PROCESSING_FAILURE, None
        try:
            self.send(Report(report))
            try:
                return self.report_answers.get(timeout=REPORT_ANSWER_TIMEOUT_S), None
            except queue.Empty:
                return dimse_status.PROCESSING_FAILURE, None
        finally:
            self.report_seen.set()

    def run(self) -> None:
        self.send(Ready())
        while True:
            op = self.ops.get()
            if isinstance(op, Associate):
                self.associate(op.request)
            elif isinstance(op, Store):
                self.store(op.items)
            elif isinstance(op, NAction):
                self.n_action(op)
            elif isinstance(op, Release):
                self.release()
                self.send(Released())
            elif isinstance(op, Exit):
                self.release()
                return

    def established(self) -> bool:
        # an abort already received counts, also before the association's reactor has looked
        # at it (it waits up to agent.net.quiet_reactor.IDLE_WAIT_S): pynetdicom's own
        # send_c_store and send_n_action leave is_established to the reactor
        return (self.assoc is not None and bool(self.assoc.is_established)
                and not self.assoc.acse.is_aborted())

    def release(self) -> None:
        if self.established():
            self.assoc.release()
        self.assoc = None

    def associate(self, request: AssociationRequest) -> None:
        from pynetdicom import evt
        from pynetdicom.presentation import build_context

        from agent.net.ae import AgentAE, associate

        self.release()
        ae = AgentAE(request.ae_title)
        # the site's "no answer for this long" applies to every wait on this archive
        ae.acse_timeout = request.timeout_s
        ae.dimse_timeout = request.timeout_s
        ae.network_timeout = request.timeout_s
        contexts = [build_context(sop_class, list(syntaxes))
                    for sop_class, syntaxes in request.contexts]
        try:
            assoc = associate(
                ae, request.host, request.port, request.called_ae, contexts=contexts,
                evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.on_report)], tls=request.tls,
            )
        except AssociationError as err:
            self.send(AssociationFailed.from_error(err))
            return
        self.assoc = assoc
        self.send(Associated(assoc.acceptor.maximum_length))

    def store(self, items: Sequence[tuple[int, str]]) -> None:
        from agent.net.direct_response import end_reading

        try:
            last = len(items) - 1
            for index, (key, path) in enumerate(items):
                if not self.established():
                    self.send(Outcome(StoreOutcome(key, not_sent=True)))
                    continue
                # within a batch this thread reads the answers itself (the DUL sleeps): one
                # wake-up of another thread less per object (agent.net.direct_response)
                self.send(Outcome(self.store_one(key, path, more_follow=index < last)))
        finally:
            if self.assoc is not None:
                end_reading(self.assoc)
        self.send(Stored(self.established()))

    def store_one(self, key: int, path: str, *, more_follow: bool = False) -> StoreOutcome:
        return self._store_one(key, path, time.perf_counter(), more_follow)

    def _store_one(self, key: int, path: str, t0: float,
                   more_follow: bool = False) -> StoreOutcome:
        from agent.net.direct_response import StoreResponse
        from agent.net.direct_store import WireError, send_c_store_direct, supports
        from agent.net.transcode import uncompressed_copy

        try:
            try:
                if self.direct and supports(self.assoc):
                    self.message_id = self.message_id % 0xFFFF + 1
                    try:
                        response = send_c_store_direct(self.assoc, path, self.message_id,
                                                       more_follow=more_follow)
                    except WireError as err:
                        # part of the request may be at the archive: outcome unknown
                        logger.warning("C-STORE of queue item %d: %s", key, err)
                        return StoreOutcome(key, seconds=time.perf_counter() - t0)
                else:
                    response = StoreResponse.from_dataset(self.assoc.send_c_store(path))
            except ValueError:
                # no accepted context in the file's own syntax: send a decoded copy that
                # pynetdicom can convert to what was accepted (Implicit VR LE)
                copy = uncompressed_copy(Path(path))
                response = StoreResponse.from_dataset(self.assoc.send_c_store(copy))
        except OSError as err:
            return StoreOutcome(key, error=SendError.UNREADABLE, detail=str(err))
        except ValueError as err:
            return StoreOutcome(key, error=SendError.NO_CONTEXT, detail=str(err))
        except Exception as err:  # noqa: BLE001 - a spooled file that cannot be decoded
            # (pixel codecs raise what they like) must fail this object, not the process
            return StoreOutcome(key, error=SendError.NO_CONTEXT,
                                detail=f"cannot decompress for the accepted syntax: "
                                       f"{type(err).__name__}: {err}")
        seconds = time.perf_counter() - t0
        if response.status is None:
            return StoreOutcome(key, seconds=seconds)
        return StoreOutcome(key, status=response.status, comment=response.error_comment or "",
                            seconds=seconds)

    def n_action(self, request: NAction) -> None:
        from pynetdicom.sop_class import (
            StorageCommitmentPushModel,
            StorageCommitmentPushModelInstance,
        )

        from agent.net.commitment import build_commitment_request

        if not self.established():
            self.send(NActionDone(None, established=False))
            return
        self.report_seen.clear()
        status, _reply = self.assoc.send_n_action(
            build_commitment_request(request.transaction_uid, request.references), 1,
            StorageCommitmentPushModel, StorageCommitmentPushModelInstance,
        )
        code = dimse_status.status_code(status)
        if code == dimse_status.SUCCESS and request.wait_s > 0:
            # once release() has begun pynetdicom drops an incoming N-EVENT-REPORT
            # (DICOM-NOTES.md §4): give an archive that answers here the time to do so
            self.report_seen.wait(request.wait_s)
        self.send(NActionDone(code, self.established()))


def _dumps(message: ParentMessage | ChildMessage) -> bytes:
    """A message as `Connection.send` would pickle it, without multiprocessing's
    ForkingPickler: its reducers (sockets, connections) are never needed here, and it copies
    copyreg's whole dispatch table for every message (issue 18: ~4 % of a sending process's
    Python time at one message per object). `Connection.recv` unpickles either."""
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def child_main(fd: int) -> int:
    from pynetdicom import _config as pynetdicom_config

    from agent.logsetup import setup_logging

    setup_logging(os.environ.get("AGENT_STORE_PROCESS_LOG_LEVEL", "INFO"))
    # stream spooled files as they are instead of decoding them (pynetdicom #629)
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    child = _Child(Connection(fd))
    threading.Thread(target=child.read_forever, name="parent-reader", daemon=True).start()
    try:
        child.run()
    except (OSError, EOFError):
        pass           # the parent is gone
    return 0
