"""The spool folder: durable file writes, one file per queue id, and the single-instance lock."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from agent.errors import QueueError, SpoolLockedError

logger = logging.getLogger(__name__)

_DIR_MODE = 0o700
_FILE_MODE = 0o600
#: a file in the spool's top folder that says "this folder is a modality-agent spool": the agent
#: refuses to take over (chmod, clean tmp/, create a database in) an existing non-empty folder
#: without it, so `spool_dir = "/etc"` cannot make it touch files it does not own (issue 13)
SPOOL_MARKER = ".modality-agent-spool"
#: what other parts of the agent put in the spool folder, possibly before the queue is first
#: opened (the API token is made when the daemon is built): a folder holding only these is a
#: new spool, not somebody else's folder
_AGENT_NAMES = frozenset({SPOOL_MARKER + ".tmp", "api-token", "mpps", "worklist",
                          "procedures.json"})


def _agent_name(name: str) -> bool:
    # a crash may leave a temporary file of the token's or the procedures' durable write
    return name in _AGENT_NAMES or (
        name.startswith((".api-token.", ".procedures.json.")) and name.endswith(".tmp"))


class FsyncTimer(Protocol):
    """Anything that times a block (agent.metrics.LatencyHistogram): the queue does not
    import the metrics, the daemon hands it one."""

    def time(self) -> AbstractContextManager[object]: ...


_fsync_timer: FsyncTimer | None = None


def observe_fsync(timer: FsyncTimer | None) -> None:
    """Time every fsync of the spool with `timer` (the daemon's metrics); None: stop."""
    global _fsync_timer
    _fsync_timer = timer


def _fsync(fd: int) -> None:
    timer = _fsync_timer
    if timer is None:
        os.fsync(fd)
        return
    with timer.time():
        os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync(dir_fd)
    finally:
        os.close(dir_fd)


def drop_cached(fd: int) -> None:
    """Let the kernel drop the file's pages from its page cache (clean ones go at once).

    A spool file is written once and read once, by the sending process, which drops it again
    once it is on the wire: kept, the cache grows by every frame, and every page of the next
    frame is one the kernel has not touched for a while. On the project's machine (a VM that
    hands free memory back to its host) such a page cost ~40 us of system CPU: 22-32 ms per
    2 MB frame, against 2-3 ms with the frame before's pages dropped and reused (issue 18,
    tests/unit/test_page_cache.py). On a device it keeps the cache for what is read again.
    Advice only: where it cannot be given (tmpfs keeps its pages), nothing changes."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as err:
        logger.debug("page cache advice refused: %s", err)


def write_synced(path: Path, payload: bytes) -> None:
    """Write `payload` to a new file and fsync it (without the fsync ext4 may leave an empty
    file after a power cut), then drop it from the page cache (`drop_cached`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(path, flags, _FILE_MODE)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        _fsync(fd)
        # after the fsync: the pages are clean then, and dropped, not written out again
        drop_cached(fd)
    finally:
        os.close(fd)


def install_synced(tmp_path: Path, final_path: Path) -> None:
    """Rename into place and fsync the folder: the rename is durable only from then on."""
    os.replace(tmp_path, final_path)
    fsync_dir(final_path.parent)


def write_durably(tmp_path: Path, final_path: Path, payload: bytes) -> None:
    """tmp → fsync → rename → fsync dir: after return `final_path` survives a power cut."""
    write_synced(tmp_path, payload)
    install_synced(tmp_path, final_path)


class Spool:
    """Layout: `queue.db`, `objects/<queue id>.dcm`, `tmp/` (never acknowledged),
    `quarantine/` (files found without a record), `agent.lock`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects_dir = root / "objects"
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.db_path = root / "queue.db"
        self._lock_fd: int | None = None

    def create(self) -> None:
        """Create the folders with owner-only permissions and mark the top folder as a spool.

        An existing non-empty folder is taken over only if it carries `SPOOL_MARKER` or a
        `queue.db` (a spool of a version from before the marker: adopted, the marker
        written); anything else is refused before a single chmod or file is made there.

        Raises
        ------
        QueueError
            If the spool cannot be created or written, or the folder is not a spool.
        """
        self._check_is_ours()
        old_umask = os.umask(0o077)
        try:
            for folder in (self.root, self.objects_dir, self.tmp_dir, self.quarantine_dir):
                folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                os.chmod(folder, _DIR_MODE)
        except OSError as err:
            raise QueueError(f"spool {self.root}: cannot create ({err.strerror})") from err
        finally:
            os.umask(old_umask)
        if not os.access(self.root, os.W_OK):
            raise QueueError(f"spool {self.root}: not writable by this user")
        self._write_marker()

    def _check_is_ours(self) -> None:
        """Refuse an existing non-empty folder that is not a spool (`spool_dir = "/etc"`):
        chmod 0700, cleaning tmp/ and quarantining files would touch what others own."""
        try:
            with os.scandir(self.root) as entries:
                names = {entry.name for entry in entries}
        except FileNotFoundError:
            return                       # a new spool
        except NotADirectoryError as err:
            raise QueueError(f"spool {self.root}: not a folder") from err
        except OSError as err:
            raise QueueError(f"spool {self.root}: cannot list ({err.strerror})") from err
        if SPOOL_MARKER in names or self.db_path.name in names:
            return
        if not all(_agent_name(name) for name in names):
            raise QueueError(
                f"spool {self.root}: an existing folder that is not a modality-agent spool "
                f"(no {SPOOL_MARKER} file, no {self.db_path.name}); refusing to take it "
                f"over: set [agent] spool_dir to a new or empty folder")

    def _write_marker(self) -> None:
        marker = self.root / SPOOL_MARKER
        if marker.exists():
            return
        tmp = self.root / (SPOOL_MARKER + ".tmp")
        try:
            tmp.unlink(missing_ok=True)          # left by a crash
            write_durably(tmp, marker, b"modality-agent spool: do not put other files here\n")
        except OSError as err:
            raise QueueError(f"spool {self.root}: cannot write {SPOOL_MARKER} "
                             f"({err.strerror})") from err

    def lock(self) -> None:
        """Take the single-instance lock: two senders on one spool would double-send.

        Raises
        ------
        SpoolLockedError
            If another process holds it.
        """
        fd = os.open(self.root / "agent.lock", os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolLockedError(
                    f"spool {self.root} is in use by another modality-agent process"
                ) from err
            raise
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def object_path(self, queue_id: int) -> Path:
        # named by our own id only: never by a received UID or AE title
        return self.objects_dir / f"{queue_id:010d}.dcm"

    def tmp_path(self, token: str) -> Path:
        return self.tmp_dir / f"{token}.tmp"

    @staticmethod
    def queue_id_of(path: Path) -> int | None:
        stem = path.name.removesuffix(".dcm")
        return int(stem) if path.name.endswith(".dcm") and stem.isdigit() else None
