"""A spooled object in a form an archive that refused its transfer syntax can take.

A sending process has no pixel codecs (agent.pixel_codecs: 8 MB per process): there the copy is
made by a helper process, `python -m agent.net.transcode`, started at the first copy needed
and kept while copies are asked for: a site that spools JPEG-LS for an archive that takes no
JPEG-LS needs one per object, and a new helper each time costs ~0.4 s (its imports) where a
running one takes milliseconds. It ends by itself after HELPER_IDLE_S without a request, so a
sending process that needed one copy does not keep numpy and the codecs, and when its sending
process ends (EOF on its stdin).

Protocol: the sending process writes the file's path and a newline; the helper answers with a
status byte and a length (struct ">BQ") and then the copy as a DICOM file (status 0) or its
"Type: message" in UTF-8 (UNREADABLE, UNDECODABLE).
"""

from __future__ import annotations

import io
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydicom import Dataset, dcmread

from agent.errors import AgentError
from agent.pixel_codecs import pixel_codecs_forgone

#: the answer's status: the copy follows
OK = 0
#: the pixel data cannot be decompressed; the message follows
UNDECODABLE = 1
#: the file cannot be read (an OSError: the object is unreadable); the message follows
UNREADABLE = 2
#: how long the helper may take for one object (a long multi-frame one takes seconds)
HELPER_TIMEOUT_S = 300.0
#: the helper ends after this long without a request
HELPER_IDLE_S = 60.0

_ANSWER = struct.Struct(">BQ")


class TranscodeError(AgentError):
    """The spooled object cannot be decompressed; the message is the decoder's ("Type: what").
    Not a ValueError: to the sending process a ValueError means "no accepted context"."""


class _HelperGone(Exception):
    """The helper ended (idle, or killed): start another."""


def uncompressed_copy(path: Path) -> Dataset:
    """The spooled object, decompressed if need be, under the SAME SOP Instance UID (pydicom's
    decompress() makes a new one by default: DICOM-NOTES.md §6). Lossless only, so the pixels
    the archive gets are the same.

    Raises
    ------
    OSError
        The file cannot be read.
    TranscodeError
        (helper process only) the pixel data cannot be decompressed; in this process the
        decoder's own exception is raised, whatever its type.
    """
    if pixel_codecs_forgone():
        return dcmread(io.BytesIO(_helper.copy(path)))
    return _decompressed(path)


def _decompressed(path: Path) -> Dataset:
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    return ds


# -- the sending process's side ------------------------------------------------------------------

class _Helper:
    """The running helper of this process, started when needed. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def copy(self, path: Path) -> bytes:
        """The decompressed copy of `path` as a DICOM file."""
        text = str(path)
        if "\n" in text:
            raise OSError(f"{text!r}: a path with a newline cannot be sent to the helper")
        with self._lock:
            try:
                try:
                    status, payload = self._ask(text)
                except _HelperGone:
                    self._stop()    # ended while idle, or killed: one new helper, one more try
                    status, payload = self._ask(text)
            except _HelperGone as err:
                self._stop()
                raise TranscodeError(f"the decompressing process failed: {err}") from err
            except TranscodeError:
                self._stop()        # hung: the next copy gets a new one
                raise
        if status == OK:
            return payload
        said = payload.decode("utf-8", "replace")
        if status == UNREADABLE:
            raise OSError(said)
        raise TranscodeError(said)

    def _ask(self, path: str) -> tuple[int, bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "agent.net.transcode", str(HELPER_IDLE_S)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(path.encode() + b"\n")
            self._proc.stdin.flush()
        except OSError as err:
            raise _HelperGone(f"cannot ask it: {err}") from err
        deadline = time.monotonic() + HELPER_TIMEOUT_S
        fd = self._proc.stdout.fileno()
        status, length = _ANSWER.unpack(_read_exactly(fd, _ANSWER.size, deadline))
        return status, _read_exactly(fd, length, deadline)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()        # EOF: it ends
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    chunks = []
    while size:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TranscodeError(f"no copy within {HELPER_TIMEOUT_S:.0f} s")
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise _HelperGone("it ended")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


_helper = _Helper()


# -- the helper ----------------------------------------------------------------------------------

def serve(idle_s: float) -> int:
    """The helper's loop: one copy per path read from stdin, until EOF or `idle_s` of
    quiet."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # select() on the pipe and not on stdin's buffer is right because the sending process
    # writes the next path only after it read this answer: nothing waits in the buffer
    while select.select([stdin], [], [], idle_s)[0]:
        line = stdin.readline()
        if not line:
            return 0                # the sending process is gone
        buffer = io.BytesIO()
        try:
            _decompressed(Path(line.rstrip(b"\n").decode())).save_as(
                buffer, enforce_file_format=True)
            status, payload = OK, buffer.getbuffer()
        except OSError as err:
            status, payload = UNREADABLE, memoryview(f"{type(err).__name__}: {err}".encode())
        except Exception as err:  # noqa: BLE001 - pixel codecs raise what they like
            status, payload = UNDECODABLE, memoryview(f"{type(err).__name__}: {err}".encode())
        stdout.write(_ANSWER.pack(status, len(payload)))
        stdout.write(payload)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve(float(sys.argv[1])))
