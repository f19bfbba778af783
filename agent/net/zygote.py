"""One pre-imported process that forks the sending processes (agent.net.store_process).

Why: a sending process started as a new interpreter imports pydicom and pynetdicom itself, and
the objects that makes are ~28 MB of private heap in every one of them. Forked from one process
that imported them once, those pages stay shared until written. Measured with `python -m bench
footprint` (3 sending processes after 3 objects, without pixel codecs: agent.pixel_codecs):
3 x 32 MB PSS as separate interpreters; 15 + 3 x 14 MB for this process and its 3 children;
the whole agent 158 -> 117-120 MB (median 119). A child is ready in ms instead of ~0.3 s.

Forking is safe here: this process has one thread and holds nothing but its control socket
(the daemon, with its threads, never forks).

Protocol, over a SOCK_SEQPACKET socketpair (one message each way per request, in turn; the
daemon's side holds a lock): {"spawn": environment} with the child's end of its own socketpair
passed along (SCM_RIGHTS); the answer is {"pid": pid} with a pidfd of the new child (opened
before this process can reap it, so it cannot name a reused pid). {"status": pid} asks for the
exit status of a child that ended ({"status": code or null}).

Lifetime: this process ends when its control socket reads EOF, i.e. when the daemon is gone,
also by kill -9; each child ends by itself when its own socket reads EOF, as before. Settings
read when an interpreter starts (PYTHON* variables, MALLOC_ARENA_MAX) are those of the
daemon's environment when this process started; the rest of the environment is the one sent
with each request.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from agent.errors import AgentError

#: how long the daemon waits for an answer (the first one includes this process's imports)
ANSWER_TIMEOUT_S = 30.0
#: the largest request (an environment as JSON)
MAX_MESSAGE_BYTES = 1 << 20

#: the name a forked sending process gives itself (/proc/PID/comm, at most 15 bytes)
CHILD_NAME = "agent-sending"
#: prctl(2) option
PR_SET_NAME = 15
#: gc.set_threshold in a sending process (_collect_own_garbage); CPython's are (700, 10, 10)
CHILD_GC_THRESHOLDS = (700, 5, 1)

#: what this process runs: no pixel codecs (before pydicom is imported), then serve()
COMMAND = ("import sys; from agent.pixel_codecs import forgo_pixel_codecs; forgo_pixel_codecs(); "
           "from agent.net.zygote import serve; serve(int(sys.argv[1]))")


class ZygoteError(AgentError, OSError):
    """The forking process cannot be started or does not answer (an OSError, as a failed
    Popen would be)."""


# -- daemon side ---------------------------------------------------------------------------------

class ForkedChild:
    """The daemon's handle on one forked sending process: what StoreProcess uses of a Popen
    (pid, poll, wait, kill). Not the daemon's child: it is watched through a pidfd."""

    def __init__(self, zygote: Zygote, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._zygote = zygote
        self._pidfd: int | None = pidfd

    def poll(self) -> int | None:
        if self.returncode is None and self._pidfd is not None \
                and select.select([self._pidfd], [], [], 0)[0]:
            self._ended()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status once the child ended (None if the forking process could not say).

        Raises
        ------
        subprocess.TimeoutExpired
            If it did not end within `timeout` seconds.
        """
        if self.returncode is None and self._pidfd is not None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"sending process {self.pid}", timeout or 0.0)
            self._ended()
        return self.returncode

    def kill(self) -> None:
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass            # ended meanwhile

    def _ended(self) -> None:
        assert self._pidfd is not None
        os.close(self._pidfd)
        self._pidfd = None
        try:
            self.returncode = self._zygote.exit_status(self.pid)
        except ZygoteError:
            self.returncode = None


class Zygote:
    """The daemon's handle on the forking process, started at the first spawn() and again
    after it died. Thread-safe: every worker thread starts its sending processes here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    def spawn(self, fd: int, env: Mapping[str, str]) -> ForkedChild:
        """Fork a sending process that runs child_main() on (its copy of) `fd`, with `env` as
        its environment.

        Raises
        ------
        ZygoteError
            If neither the running forking process nor a new one answered.
        """
        with self._lock:
            try:
                return self._spawn(fd, env)
            except OSError:
                self._stop()        # dead or hung: one new forking process, one more try
            try:
                return self._spawn(fd, env)
            except OSError as err:
                self._stop()
                raise ZygoteError(f"the process that forks sending processes failed: "
                                  f"{err}") from err

    def exit_status(self, pid: int) -> int | None:
        """The exit status of a child that ended, as the forking process reaped it."""
        with self._lock:
            try:
                answer, _fds = self._ask({"status": pid}, ())
            except OSError as err:
                raise ZygoteError(f"no exit status for {pid}: {err}") from err
        status = answer.get("status")
        return status if isinstance(status, int) else None

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._stop(timeout_s)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self, fd: int, env: Mapping[str, str]) -> ForkedChild:
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        answer, fds = self._ask({"spawn": dict(env)}, (fd,))
        if not isinstance(answer.get("pid"), int) or len(fds) != 1:
            for one in fds:
                os.close(one)
            raise ZygoteError(f"unexpected answer {answer!r}")
        os.set_inheritable(fds[0], False)      # SCM_RIGHTS does not set close-on-exec
        return ForkedChild(self, answer["pid"], fds[0])

    def _ask(self, request: dict[str, Any], fds: tuple[int, ...]) -> tuple[dict[str, Any],
                                                                           list[int]]:
        if self._control is None:
            raise ZygoteError("not running")
        socket.send_fds(self._control, [json.dumps(request).encode()], list(fds))
        data, got, _flags, _address = socket.recv_fds(self._control, MAX_MESSAGE_BYTES, 1)
        if not data:
            for one in got:
                os.close(one)
            raise ZygoteError("it ended")
        answer: dict[str, Any] = json.loads(data)
        return answer, got

    def _start(self) -> None:
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", COMMAND, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(ANSWER_TIMEOUT_S)
        self._control = ours

    def _stop(self, timeout_s: float = 5.0) -> None:
        proc, control = self._proc, self._control
        self._proc, self._control = None, None
        if control is not None:
            control.close()         # EOF: it ends; its children go on until their own EOF
        if proc is not None:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_default = Zygote()
atexit.register(_default.close)


def spawn(fd: int, env: Mapping[str, str]) -> ForkedChild:
    """Fork a sending process from this daemon's forking process (started when first needed)."""
    return _default.spawn(fd, env)


# -- the forking process -------------------------------------------------------------------------

def serve(control_fd: int) -> None:
    """The forking process's loop, until its control socket reads EOF."""
    # what every sending process needs, imported once here (child_main imports no more)
    import pynetdicom.presentation
    import pynetdicom.sop_class  # noqa: F401

    import agent.logsetup
    import agent.net.ae
    import agent.net.direct_store
    import agent.net.store_process
    import agent.net.transcode  # noqa: F401

    # objects of the imports are never collected: keep the collector off their pages, so a
    # child does not copy them by merely running a collection
    gc.freeze()
    _collect_own_garbage()
    # hand the import's freed heap back before forking (0.5 MB less per child, measured)
    _malloc_trim()
    ended: dict[int, int] = {}

    def reap(_signum: int = 0, _frame: object = None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ended[pid] = os.waitstatus_to_exitcode(status)

    signal.signal(signal.SIGCHLD, reap)
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(control, MAX_MESSAGE_BYTES, 1)
        except OSError:
            return
        if not data:
            return              # the daemon is gone
        request = json.loads(data)
        if "status" in request:
            reap()              # the child ended (its pidfd said so): reaped now at the latest
            control.send(json.dumps({"status": ended.pop(request["status"], None)}).encode())
            continue
        # no reaping between fork and pidfd_open: the pid must still be this child's
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            _run_child(control, fds[0], request["spawn"])
        os.close(fds[0])
        pidfd = os.pidfd_open(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        try:
            socket.send_fds(control, [json.dumps({"pid": pid}).encode()], [pidfd])
        except OSError:
            return
        finally:
            os.close(pidfd)


def _run_child(control: socket.socket, fd: int, env: Mapping[str, str]) -> None:
    """In the forked child: become a sending process; never returns."""
    code = 1
    try:
        control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        os.environ.clear()
        os.environ.update(env)
        random.seed()           # not the forking process's sequence, shared by every child
        _set_name(CHILD_NAME)
        from agent.net.store_process import child_main

        code = child_main(fd)
    except BaseException:  # noqa: BLE001 - whatever happens, this must not return into serve()
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _collect_own_garbage() -> None:
    """The collector of every sending process, set in this process after gc.freeze() and
    before forking (the children inherit it).

    Why: every object of the imports is frozen (serve()), so a collection of the oldest
    generation walks only what a sending process made since the fork, a few thousand objects,
    ~0.5 ms. But CPython runs one only when the objects promoted since the last one exceed a
    quarter of those that survived it, and that count is still the forking process's, of its
    imports: the first full collection came after ~1,000 associations. An association's
    pynetdicom objects (Association, DUL, their threads and queues, in reference cycles) live
    long enough to reach the oldest generation and are garbage there once it is released, so
    until then each sending process grew by ~1 MB of RSS, which then stayed (issue 18 item
    4b; measured: tests/integration/test_sending_memory.py).

    A collection right after the freeze, of generations that are empty, costs nothing and makes
    that count zero, so a child counts its own objects only; the thresholds collect the oldest
    generation at every second collection of the middle one. Done here, once, not in every
    child: a full collection also empties the interpreter's free lists, which would write to
    pages a child shares with this process (bench footprint shows no difference either way
    within its noise, ~0.6 MB per child). Measured over 3,000 objects, 3 per association, into
    storescp: RSS of the sending process 36.6 -> 35.6 MB, time in the collector 91 -> 87 ms.
    """
    gc.collect()
    gc.set_threshold(*CHILD_GC_THRESHOLDS)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)        # the symbols already loaded into this process


def _malloc_trim() -> None:
    trim = getattr(_libc(), "malloc_trim", None)       # glibc only
    if trim is not None:
        trim(0)


def _set_name(name: str) -> None:
    """The process name ps, top and /proc/PID/comm show (the command line stays the forking
    process's)."""
    prctl = getattr(_libc(), "prctl", None)
    if prctl is not None:
        prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
