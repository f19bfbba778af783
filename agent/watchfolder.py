"""The watch folder: DICOM files and PNG/JPEG images dropped into a folder enter the queue once.

A file is taken only once it has settled (same size, mtime and inode for `settle_s`, or closed
after writing and unchanged since), is queued durably, and only then moved to `done/` (or
deleted). What cannot be imported goes to `rejected/` with `<name>.reason.txt`. Exactly once
across crashes rests on a small durable marker in `.state/` written before the enqueue; see
docs/watchfolder.md. Log lines at INFO and above carry queue ids, UIDs and reasons, never a
file name (names are chosen by whoever drops the file, and often hold the patient's name);
names appear at DEBUG only, escaped (issue 13, finding 10). `done/` and `rejected/` are
owner-only and pruned after `retention_s` (finding 12).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit
from watchdog.events import (
    FileClosedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer

from agent.errors import AlreadyQueuedError, IODError, QueueError, SpoolFullError
from agent.importer import (
    ImportIncomplete,
    ImportRefused,
    parse_dicom_bytes,
    printable_name,
)
from agent.iod import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    SC_IMAGE_STORAGE,
    ConversionType,
    UIDSource,
    build_secondary_capture,
    encode_part10,
    new_series_context,
    validate_image,
)
from agent.queue import QueueStore, write_durably
from agent.queue.spool import fsync_dir
from agent.records import DeviceInfo, Order, QueuedObject, SeriesContext, SOPReference
from drivers.frame import Frame, PhotometricInterpretation
from drivers.png import PngError, read_png

logger = logging.getLogger(__name__)

DONE_DIR = "done"
REJECTED_DIR = "rejected"
STATE_DIR = ".state"
#: writers' temporary names: never taken, whatever their age
TEMP_SUFFIXES = (".tmp", ".part")
NO_PROCEDURE = "no procedure selected: images need a patient"
#: images are screen captures or exports from another application, not the device's own
#: digital interface (PS3.3 C.8.6.1.1): "WSD", and DERIVED (made from another image)
IMAGE_CONVERSION_TYPE = ConversionType.WORKSTATION
#: default for `max_file_bytes`: larger files are refused by their size, never read
MAX_FILE_BYTES = 2 * 1024**3
#: default for `retention_s`: what was imported or rejected is deleted after a week (it holds
#: patient data, and the queue and the archive have the imported copies)
RETENTION_S = 7 * 86400.0
#: default for `incomplete_wait_s`: a DICOM file that ends before its last element is left in
#: place this long, unchanged, before it is rejected (a writer may only have paused)
INCOMPLETE_WAIT_S = 60.0
#: the longest time between two prunings of done/ and rejected/
PRUNE_EVERY_MAX_S = 600.0
#: bytes read to tell DICOM (DICM at 128), PNG and JPEG apart
_SNIFF_BYTES = 132
_PRIVATE_DIR_MODE = 0o700
_REASON_MAX_CHARS = 300

AfterImport = Literal["move", "delete"]


class Outcome(StrEnum):
    """What one pass did with one file."""

    QUEUED = "queued"            # queued now (and moved aside / deleted)
    ALREADY_QUEUED = "already"   # queued by an earlier attempt (crash before the move)
    REJECTED = "rejected"
    RETRY = "retry"              # left in place: spool full or queue unusable, tried again later


@dataclass(frozen=True)
class Result:
    """One file handled by `WatchFolder.poll` (names and ids only: fit for a log)."""

    name: str
    outcome: Outcome
    queue_id: int | None = None
    reason: str = ""


@dataclass
class _Settling:
    signature: tuple[int, int, int]      # size, mtime_ns, inode
    since: float                         # clock() when this signature was first seen
    closed: bool = False                 # a close-after-write event since then
    retry_at: float = 0.0                # after a spool-full or queue error


class _Refused(Exception):
    """Internal: the file goes to rejected/ with this one-line reason."""


class _Wait(Exception):
    """Internal: the file stays in place and is tried again later; the message says why."""


class _Changed(Exception):
    """Internal: the file changed while it was read; it settles again."""


class WatchFolder:
    """Imports files dropped into `folder` into the queue, exactly once.

    Parameters
    ----------
    folder
        The watched folder (created if missing). `done/`, `rejected/` and `.state/` are made
        inside it; sub-folders are not watched.
    queue
        The open queue.
    image_order
        Returns the current procedure's Order, or None when none is active (images are then
        rejected: never attached to a guessed patient). Called from the worker thread.
    device
        Equipment identity for Secondary Capture objects made from images.
    uids
        Where new UIDs come from.
    settle_s
        A file must keep its size, mtime and inode this long before it is taken (unless it
        was closed after writing and has not changed since).
    after_import
        "move" (to `done/`, default) or "delete".
    use_close_events
        Take a file as soon as it is closed after writing (inotify's IN_CLOSE_WRITE) instead
        of waiting `settle_s`. Turn it off for writers that close and reopen a file to append.
    rescan_s
        Full re-scan interval when no event arrives: catches lost events and retries files
        left in place because the spool was full.
    on_queued
        Called with the queue id after each object is queued (e.g. to wake the forwarder).
    on_image_queued
        Called after an object made here from an image is queued, with the order it was made
        for, its Series Instance UID and its reference: for the procedure's MPPS.
    clock
        Monotonic seconds; tests pass their own.
    tz
        Zone of "local time" in the objects made from images; None means this machine's.
    max_file_bytes
        Larger files are rejected by their size (stat), never read.
    retention_s
        Files in `done/` and `rejected/` (reason files too) are deleted this long after they
        were moved there; None keeps them for ever.
    incomplete_wait_s
        A DICOM file that ends before its last element does waits, unchanged, this long
        before it is rejected as incomplete.
    wall_clock
        Seconds since the epoch, to age the files in `done/` and `rejected/`; tests pass
        their own.
    """

    def __init__(
        self,
        folder: Path,
        *,
        queue: QueueStore,
        image_order: Callable[[], Order | None],
        device: DeviceInfo,
        uids: UIDSource,
        settle_s: float = 1.0,
        after_import: AfterImport = "move",
        rescan_s: float = 5.0,
        use_close_events: bool = True,
        on_queued: Callable[[int], None] | None = None,
        on_image_queued: Callable[[Order, str, SOPReference], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        tz: tzinfo | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        retention_s: float | None = RETENTION_S,
        incomplete_wait_s: float = INCOMPLETE_WAIT_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if after_import not in ("move", "delete"):
            raise ValueError(f"after_import: expected 'move' or 'delete', got {after_import!r}")
        if settle_s < 0 or rescan_s <= 0:
            raise ValueError("settle_s must be >= 0 and rescan_s > 0")
        if max_file_bytes <= 0 or incomplete_wait_s < 0:
            raise ValueError("max_file_bytes must be > 0 and incomplete_wait_s >= 0")
        if retention_s is not None and retention_s < 0:
            raise ValueError("retention_s must be >= 0 or None")
        self.folder = folder
        self.done_dir = folder / DONE_DIR
        self.rejected_dir = folder / REJECTED_DIR
        self.state_dir = folder / STATE_DIR
        self.queue = queue
        self.image_order = image_order
        self.device = device
        self.uids = uids
        self.settle_s = settle_s
        self.after_import = after_import
        self.rescan_s = rescan_s
        self.use_close_events = use_close_events
        self.on_queued = on_queued
        self.on_image_queued = on_image_queued
        self._now = clock
        self._tz = tz
        self.max_file_bytes = max_file_bytes
        self.retention_s = retention_s
        self.incomplete_wait_s = incomplete_wait_s
        self._wall = wall_clock
        self._next_prune_at: float | None = None
        self._settling: dict[str, _Settling] = {}
        self._lock = threading.Lock()          # _settling is touched by the event thread too
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._observer: Any = None             # watchdog's Observer (a platform-chosen class)
        self._worker: threading.Thread | None = None
        #: the last scan's failure ("" after a good scan), for `status`
        self.last_error = ""
        self._series: tuple[Order, SeriesContext] | None = None
        self._instance_number = 0

    @property
    def running(self) -> bool:
        """Whether the scanning thread is alive (for `status`)."""
        return self._worker is not None and self._worker.is_alive()

    # -- life cycle ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder and its sub-folders.

        Raises
        ------
        OSError
            If they cannot be created, or `done/`, `rejected/` or `.state/` is a symbolic
            link (files would be moved out of the folder).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.done_dir, self.rejected_dir, self.state_dir):
            if folder.is_symlink():
                raise NotADirectoryError(f"watch folder {folder}: a symbolic link; a real "
                                         "folder is needed (never followed out of the folder)")
            folder.mkdir(mode=_PRIVATE_DIR_MODE, exist_ok=True)
            # they keep patient files: owner only, also where an older version made them 0755
            os.chmod(folder, _PRIVATE_DIR_MODE)

    def start(self) -> None:
        """Prepare the folder, start watching, and take what was dropped while we were down.

        Raises
        ------
        OSError
            If the folder cannot be created or watched.
        """
        self.prepare()
        self._stopping.clear()
        observer = Observer()
        observer.schedule(_Events(self, self.folder.resolve()), str(self.folder.resolve()),
                          recursive=False)
        observer.start()
        self._observer = observer
        # the first poll of the worker is the start-up scan: every file present is a candidate
        self._worker = threading.Thread(target=self._run, name="watchfolder", daemon=False)
        self._worker.start()
        logger.info("watch folder %s: watching (settle %.1f s, then %s)", self.folder,
                    self.settle_s, self.after_import)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop watching and join every thread started here; a file being imported finishes."""
        self._stopping.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
            self._observer = None
        if self._worker is not None:
            self._worker.join(timeout_s)
            if self._worker.is_alive():
                logger.error("watch folder %s: worker did not stop within %.0f s",
                             self.folder, timeout_s)
            self._worker = None

    def __enter__(self) -> WatchFolder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def notify(self, name: str, *, closed: bool = False) -> None:
        """An event about `name` (a file directly in the folder): look at it soon.

        `closed`: the file was closed after writing. It is then taken without waiting for
        `settle_s`, provided it does not change after this moment (its signature is taken
        here, on the event's thread).
        """
        if closed and self.use_close_events:
            try:
                info = os.lstat(self.folder / name)
            except OSError:
                info = None
            if info is not None and stat.S_ISREG(info.st_mode):
                signature = (info.st_size, info.st_mtime_ns, info.st_ino)
                with self._lock:
                    entry = self._settling.get(name)
                    if entry is None or entry.signature != signature:
                        self._settling[name] = _Settling(signature, self._now(), closed=True)
                    else:
                        entry.closed = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll()
                self.last_error = ""
            except Exception as err:   # logged, not swallowed: a dead worker stops all imports
                # reported in status; the message only (a traceback may quote a file name)
                self.last_error = f"scan failed: {type(err).__name__}: {err}"
                logger.error("watch folder: scan failed (%s); trying again", type(err).__name__)
                logger.debug("watch folder scan failure", exc_info=True)
            with self._lock:
                busy = bool(self._settling)
            tick = min(0.25, max(self.settle_s / 4, 0.02)) if busy else self.rescan_s
            self._wake.wait(tick)          # the poll interval; an event cuts it short
            self._wake.clear()

    # -- one pass -----------------------------------------------------------------------------
    def poll(self) -> list[Result]:
        """Scan the folder once; import every file that has settled.

        Returns
        -------
        list[Result]
            What was done with each file taken in this pass.
        """
        now = self._now()
        results: list[Result] = []
        self._prune_if_due(now)
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except FileNotFoundError:
            logger.error("watch folder %s: missing", self.folder)
            return results
        present: set[str] = set()
        for entry in entries:
            name = entry.name
            if _ignored(name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                continue             # done/, rejected/, or someone's sub-folder: not watched
            present.add(name)
            if stat.S_ISLNK(info.st_mode):
                # never followed: it could point anywhere on the machine
                results.append(self._reject(name, "symbolic link: not followed"))
                continue
            if not stat.S_ISREG(info.st_mode):
                results.append(self._reject(name, "not a regular file"))
                continue
            signature = (info.st_size, info.st_mtime_ns, info.st_ino)
            with self._lock:
                entry_state = self._settling.get(name)
                if entry_state is None or entry_state.signature != signature:
                    self._settling[name] = _Settling(signature, now)
                    if self.settle_s > 0:
                        continue
                    entry_state = self._settling[name]
                ready = entry_state.closed or now - entry_state.since >= self.settle_s
                if not ready or now < entry_state.retry_at:
                    continue
            result = self._take(name, signature, waited_s=now - entry_state.since)
            results.append(result)
            with self._lock:
                current = self._settling.get(name)   # gone if the file changed while read
                if result.outcome is not Outcome.RETRY:
                    self._settling.pop(name, None)
                elif current is not None:
                    current.retry_at = now + self.rescan_s
        with self._lock:
            for gone in set(self._settling) - present:
                del self._settling[gone]
        return results

    def _take(self, name: str, signature: tuple[int, int, int], *,
              waited_s: float = 0.0) -> Result:
        """Import one settled file; `waited_s`: how long it has kept this signature."""
        path = self.folder / name
        try:
            kind, payload = _read_candidate(path, signature, self.max_file_bytes)
        except _Changed:
            with self._lock:
                self._settling.pop(name, None)
            return Result(name, Outcome.RETRY, reason="changed while read")
        except _Refused as err:
            return self._reject(name, str(err))
        sha256 = hashlib.sha256(payload).hexdigest()
        marker = self._read_marker(name, signature, sha256)
        try:
            if marker is not None and marker.get("queue_id") is not None:
                # queued, and known to be, before a crash stopped the move
                logger.info("watch folder: queue item %d was queued before a restart; moving "
                            "its file aside", marker["queue_id"])
                logger.debug("watch folder: %s is queue item %d", printable_name(name),
                             marker["queue_id"])
                result = Result(name, Outcome.ALREADY_QUEUED, int(marker["queue_id"]))
            elif kind == "dicom":
                result = self._take_dicom(name, payload, signature, sha256, marker,
                                          waited_s=waited_s)
            else:
                result = self._take_image(name, payload, signature, sha256, marker)
        except _Refused as err:
            self._drop_marker(name)
            return self._reject(name, str(err))
        except SpoolFullError as err:
            logger.warning("watch folder: a file is left in place, spool full: %s", err)
            logger.debug("watch folder: %s left in place (spool full)", printable_name(name))
            return Result(name, Outcome.RETRY, reason="spool full")
        except QueueError as err:
            logger.error("watch folder: a file is left in place, queue error: %s", err)
            logger.debug("watch folder: %s left in place (queue error)", printable_name(name))
            return Result(name, Outcome.RETRY, reason=str(err))
        except _Wait as err:
            logger.info("watch folder: a file is left in place: %s", err)
            logger.debug("watch folder: %s left in place: %s", printable_name(name), err)
            return Result(name, Outcome.RETRY, reason=str(err))
        try:
            self._set_aside(name)
        except OSError as err:
            # queued, and the marker says so: the next pass moves it without queueing again
            logger.error("watch folder: queue item %s queued but its file not moved aside: %s",
                         result.queue_id, err.strerror)
            return Result(name, Outcome.RETRY, result.queue_id, reason="not moved aside")
        self._drop_marker(name)
        return result

    def _take_dicom(self, name: str, payload: bytes, signature: tuple[int, int, int],
                    sha256: str, marker: dict[str, Any] | None, *,
                    waited_s: float) -> Result:
        try:
            item = parse_dicom_bytes(payload)
        except ImportIncomplete as err:
            # a writer that paused longer than the settle time, or a file cut short: wait
            # for it to change; reject it only once it has kept still for a long while
            if waited_s < self.incomplete_wait_s:
                raise _Wait(_one_line(err.reason)) from err
            raise _Refused(_one_line(f"{err.reason} (unchanged for {waited_s:.0f} s)")) from err
        except ImportRefused as err:
            raise _Refused(_one_line(err.reason)) from err
        if marker is None:
            self._write_marker(name, signature, sha256, item.sop_instance_uid)
        try:
            queued = self.queue.enqueue(
                item.payload, sop_instance_uid=item.sop_instance_uid,
                sop_class_uid=item.sop_class_uid, transfer_syntax_uid=item.transfer_syntax_uid)
        except QueueError as err:
            if not _already_queued(err):
                raise
            if marker is None:
                # queued before, by another route or an earlier drop: not ours to queue again
                raise _Refused("SOP Instance UID already queued (a copy of an object that "
                               "is already in the queue)") from err
            logger.info("watch folder: %s was queued before a restart; moving its file aside",
                        item.sop_instance_uid)
            return Result(name, Outcome.ALREADY_QUEUED)
        return self._queued(name, signature, sha256, queued)

    def _take_image(self, name: str, payload: bytes, signature: tuple[int, int, int],
                    sha256: str, marker: dict[str, Any] | None) -> Result:
        order = self.image_order()
        if order is None:
            if marker is not None:
                # an attempt was cut short by a crash, perhaps after its enqueue: rejecting
                # the file now could make someone drop it again and queue it twice
                raise _Wait("an interrupted import resumes when a procedure is selected")
            raise _Refused(NO_PROCEDURE)
        # the UID is fixed before the enqueue and kept in the marker: a retry after a crash
        # rebuilds the object under the same UID, and the queue refuses a second copy
        sop_instance_uid = marker["sop_instance_uid"] if marker else self.uids.new_uid()
        payload_dcm, transfer_syntax, series_uid = self._image_object(
            payload, order, sop_instance_uid, mtime_ns=signature[1])
        if marker is None:
            self._write_marker(name, signature, sha256, sop_instance_uid)
        try:
            queued = self.queue.enqueue(payload_dcm, sop_instance_uid=sop_instance_uid,
                                        sop_class_uid=SC_IMAGE_STORAGE,
                                        transfer_syntax_uid=transfer_syntax)
        except QueueError as err:
            if marker is None or not _already_queued(err):
                raise
            logger.info("watch folder: %s was queued before a restart; moving its file aside",
                        sop_instance_uid)
            return Result(name, Outcome.ALREADY_QUEUED)
        result = self._queued(name, signature, sha256, queued)
        if self.on_image_queued is not None:
            self.on_image_queued(order, series_uid,
                                 SOPReference(SC_IMAGE_STORAGE, sop_instance_uid))
        return result

    def _queued(self, name: str, signature: tuple[int, int, int], sha256: str,
                queued: QueuedObject) -> Result:
        """Record the queue id durably before the file is moved: a crash before the move
        then finds the file known as queued, with no need to rebuild or re-read it."""
        self._write_marker(name, signature, sha256, queued.sop_instance_uid,
                           queue_id=queued.queue_id)
        logger.info("watch folder: queue item %d queued (%s)", queued.queue_id,
                    queued.sop_instance_uid)
        logger.debug("watch folder: %s queued as queue item %d", printable_name(name),
                     queued.queue_id)
        if self.on_queued is not None:
            self.on_queued(queued.queue_id)
        return Result(name, Outcome.QUEUED, queued.queue_id)

    def _image_object(self, payload: bytes, order: Order, sop_instance_uid: str, *,
                      mtime_ns: int) -> tuple[bytes, str, str]:
        """Part 10 bytes, transfer syntax and Series Instance UID of a Secondary Capture made
        from an image file."""
        jpeg: JpegInfo | None = None
        photometric: PhotometricInterpretation
        try:
            if payload.startswith(b"\x89PNG"):
                image = read_png(payload)
                pixels, bits_stored = image.pixels, image.bits_stored
                photometric = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
            else:
                jpeg = parse_jpeg_baseline(payload)
                shape = (jpeg.rows, jpeg.columns) + ((3,) if jpeg.components == 3 else ())
                # placeholder pixels of the right shape for the builder's checks; the
                # JPEG bitstream replaces them below, unchanged
                pixels = np.zeros(shape, dtype=np.uint8)
                bits_stored = 8
                photometric = "RGB" if jpeg.components == 3 else "MONOCHROME2"
            frame = Frame(pixels=pixels, bits_stored=bits_stored,
                          photometric_interpretation=photometric,
                          t_mono=self._now(), t_wall=mtime_ns / 1e9, sequence_number=0)
        except (PngError, JpegError, ValueError) as err:
            raise _Refused(_one_line(str(err))) from err
        try:
            series = self._series_for(order)
            self._instance_number += 1
            ds = build_secondary_capture(
                frame, order=order, device=self.device, series=series,
                instance_number=self._instance_number, sop_instance_uid=sop_instance_uid,
                conversion_type=IMAGE_CONVERSION_TYPE, derived=True, tz=self._tz)
            validate_image(ds)
            if jpeg is None:
                return encode_part10(ds), str(ExplicitVRLittleEndian), series.series_instance_uid
            return (encode_jpeg_baseline(ds, payload, jpeg), str(JPEGBaseline8Bit),
                    series.series_instance_uid)
        except IODError as err:
            raise _Refused(_one_line(str(err))) from err

    def _series_for(self, order: Order) -> SeriesContext:
        """One series per procedure for the images dropped while it is selected."""
        if self._series is None or self._series[0] != order:
            series = new_series_context(self.uids, order, started_at=datetime.now(),
                                        series_number=900)
            self._series = (order, series)
            self._instance_number = 0
        return self._series[1]

    # -- markers: "this file, with these bytes, is (being) queued under this UID" -------------
    def _marker_path(self, name: str) -> Path:
        # hashed: a file name of 255 bytes plus a suffix would not fit
        return self.state_dir / (hashlib.sha256(name.encode("utf-8", "surrogateescape"))
                                 .hexdigest()[:32] + ".json")

    def _read_marker(self, name: str, signature: tuple[int, int, int],
                     sha256: str) -> dict[str, Any] | None:
        """The marker of an earlier attempt on this very file (same name, size, mtime and
        SHA-256), or None."""
        try:
            marker: dict[str, Any] = json.loads(self._marker_path(name).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            logger.warning("watch folder: an unreadable marker in %s/ ignored", STATE_DIR)
            logger.debug("watch folder: the marker of %s is unreadable", printable_name(name))
            return None
        size, mtime_ns, _ = signature
        if (marker.get("name"), marker.get("size"), marker.get("mtime_ns"),
                marker.get("sha256")) != (name, size, mtime_ns, sha256):
            return None      # a stale marker of another file that had this name
        return marker

    def _write_marker(self, name: str, signature: tuple[int, int, int], sha256: str,
                      sop_instance_uid: str, *, queue_id: int | None = None) -> None:
        """Written durably before the enqueue, and again with the queue id after it
        (docs/watchfolder.md, exactly once)."""
        final = self._marker_path(name)
        tmp = final.with_name(final.name + ".tmp")
        tmp.unlink(missing_ok=True)          # left by a crash: write_durably creates it anew
        body = {"name": name, "size": signature[0], "mtime_ns": signature[1],
                "sha256": sha256, "sop_instance_uid": sop_instance_uid, "queue_id": queue_id}
        try:
            write_durably(tmp, final, json.dumps(body).encode())
        except OSError as err:
            # the marker's own name, not the file's: this message may reach an INFO+ line
            raise QueueError(f"watch folder marker {final.name}: {err.strerror}") from err

    def _drop_marker(self, name: str) -> None:
        self._marker_path(name).unlink(missing_ok=True)

    # -- moving aside -------------------------------------------------------------------------
    def _set_aside(self, name: str) -> None:
        """After a durable enqueue: to done/ (or deleted), durably, before the marker goes."""
        source = self.folder / name
        if self.after_import == "delete":
            source.unlink()
        else:
            target = _free_name(self.done_dir, name)
            os.rename(source, target)
            fsync_dir(self.done_dir)
        fsync_dir(self.folder)

    def _reject(self, name: str, reason: str) -> Result:
        reason = _one_line(reason)
        target = _free_name(self.rejected_dir, name)
        reason_path = target.with_name(target.name + ".reason.txt")
        try:
            # plain write: the operator must be able to read it (the spool's write_durably
            # makes owner-only files), and a reason lost to a power cut costs no data
            reason_path.write_text(reason + "\n", encoding="utf-8")
            os.rename(self.folder / name, target)   # a symlink is moved as a link
            fsync_dir(self.rejected_dir)
            fsync_dir(self.folder)
        except OSError as err:
            logger.error("watch folder: cannot move a rejected file to %s/: %s", REJECTED_DIR,
                         err.strerror)
            logger.debug("watch folder: %s not moved to %s/", printable_name(name),
                         REJECTED_DIR)
            return Result(name, Outcome.RETRY, reason=reason)
        self._drop_marker(name)
        logger.warning("watch folder: a file was rejected (reason beside it in %s/): %s",
                       REJECTED_DIR, reason)
        logger.debug("watch folder: %s rejected as %s", printable_name(name),
                     printable_name(target.name))
        return Result(name, Outcome.REJECTED, reason=reason)

    # -- retention of done/ and rejected/ -----------------------------------------------------
    def _prune_if_due(self, now: float) -> None:
        if self.retention_s is None:
            return
        if self._next_prune_at is not None and now < self._next_prune_at:
            return
        self._next_prune_at = now + min(PRUNE_EVERY_MAX_S, max(self.retention_s / 4, 1.0))
        self.prune()

    def prune(self) -> int:
        """Delete the files of `done/` and `rejected/` older than `retention_s` (the age is
        counted from the move there: the later of mtime and ctime, as a rename sets ctime).

        Returns
        -------
        int
            How many files were deleted.
        """
        if self.retention_s is None:
            return 0
        cutoff = self._wall() - self.retention_s
        removed = 0
        for folder in (self.done_dir, self.rejected_dir):
            try:
                entries = list(os.scandir(folder))
            except OSError as err:
                logger.error("watch folder: cannot list %s/ to prune it: %s", folder.name,
                             err.strerror)
                continue
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode) or max(info.st_mtime, info.st_ctime) > cutoff:
                        continue
                    os.unlink(entry.path)          # a symlink goes as a link
                    removed += 1
                except FileNotFoundError:
                    continue
                except OSError as err:
                    logger.error("watch folder: cannot prune a file in %s/: %s", folder.name,
                                 err.strerror)
        if removed:
            logger.info("watch folder: %d file(s) older than %.0f s removed from %s/ and %s/",
                        removed, self.retention_s, DONE_DIR, REJECTED_DIR)
        return removed


class _Events(FileSystemEventHandler):
    """Watchdog's thread: only wakes the worker; the worker looks at the file itself."""

    def __init__(self, owner: WatchFolder, watched: Path) -> None:
        self._owner = owner
        self._watched = watched

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        paths = [event.src_path]
        if isinstance(event, FileSystemMovedEvent):
            paths.append(event.dest_path)      # a writer renaming x.tmp to x
        for raw in paths:
            path = Path(os.fsdecode(raw))
            if path.parent == self._watched and not _ignored(path.name):
                self._owner.notify(path.name, closed=isinstance(event, FileClosedEvent))


# -- helpers ----------------------------------------------------------------------------------
def _ignored(name: str) -> bool:
    """Hidden files (and .state/) and writers' temporary names are never taken."""
    return name.startswith(".") or name.endswith(TEMP_SUFFIXES)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_size, info.st_mtime_ns, info.st_ino)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _REASON_MAX_CHARS else line[:_REASON_MAX_CHARS - 1] + "…"


def _already_queued(err: QueueError) -> bool:
    return isinstance(err, AlreadyQueuedError)


def _sniff(head: bytes) -> str | None:
    """"dicom", "image" (PNG or JPEG) or None, from a file's first bytes."""
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "image"
    return None


def _read_candidate(path: Path, signature: tuple[int, int, int],
                    max_file_bytes: int) -> tuple[str, bytes]:
    """The kind and bytes of a file that may be imported, read without following a symlink
    and only if it still has `signature`. The size is checked from stat and the kind from
    the first bytes before anything else is read: a large file of another kind is never
    read into memory."""
    size = signature[0]
    if size > max_file_bytes:
        raise _Refused(f"{size} bytes, more than {max_file_bytes} bytes "
                       "([watch_folder] max_file_mb)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise _Changed from err
    except OSError as err:
        raise _Refused(f"cannot open ({err.strerror})") from err
    try:
        info = os.fstat(fd)
        if (info.st_size, info.st_mtime_ns, info.st_ino) != signature:
            raise _Changed
        kind = _sniff(os.pread(fd, _SNIFF_BYTES, 0))
        if kind is None:
            raise _Refused("neither DICOM Part 10 (no 'DICM' at byte 128), PNG nor JPEG")
        chunks: list[bytes] = []
        remaining = size + 1                      # one more: a file that grew is seen
        while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 20))):
            chunks.append(chunk)
            remaining -= len(chunk)
        payload = b"".join(chunks)
        info = os.fstat(fd)
        if len(payload) != size or (info.st_size, info.st_mtime_ns) != signature[:2]:
            raise _Changed
    except OSError as err:
        raise _Refused(f"cannot read ({err.strerror})") from err
    finally:
        os.close(fd)
    return kind, payload


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `stem-1.ext`, `stem-2.ext`, …: never an existing file."""
    candidate = folder / name
    stem, dot, suffix = name.partition(".") if not name.startswith(".") else (name, "", "")
    number = 0
    while os.path.lexists(candidate) or os.path.lexists(f"{candidate}.reason.txt"):
        number += 1
        candidate = folder / f"{stem}-{number}{dot}{suffix}"
    return candidate


# -- JPEG baseline: the bitstream kept as is, encapsulated (PS3.5 A.4.1, 8.2.1) --------------
class JpegError(ValueError):
    """Not a baseline JPEG this import accepts; the message says why."""


@dataclass(frozen=True)
class JpegInfo:
    rows: int
    columns: int
    components: int
    precision: int
    subsampled: bool = True          # chroma sampled at a lower rate than luma (4:2:2, 4:2:0)


#: start-of-frame markers other than SOF0 (baseline): progressive, lossless, arithmetic, …
_OTHER_SOF = {0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def parse_jpeg_baseline(data: bytes) -> JpegInfo:
    """Rows, columns, components and precision from the SOF0 segment (ITU-T T.81 B.2.2).

    Raises
    ------
    JpegError
        No SOI, truncated, not baseline (SOF0), not 8-bit, or not 1 or 3 components.
    """
    if not data.startswith(b"\xff\xd8"):
        raise JpegError("not a JPEG file (no SOI marker)")
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise JpegError(f"byte {offset}: marker expected")
        marker = data[offset + 1]
        if marker == 0xFF:             # fill byte
            offset += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", data, offset + 2)
        if marker == 0xC0:
            if offset + 2 + length > len(data) or length < 8:
                raise JpegError("truncated SOF0 segment")
            precision, rows, columns, components = struct.unpack_from(">BHHB", data,
                                                                        offset + 4)
            if precision != 8:
                raise JpegError(f"{precision}-bit JPEG: only 8-bit baseline is supported")
            if components not in (1, 3):
                raise JpegError(f"{components} components: only 1 (grey) or 3 (colour)")
            if rows == 0 or columns == 0:
                raise JpegError("SOF0 without a height (DNL marker) is not supported")
            if offset + 10 + 3 * components > len(data):
                raise JpegError("truncated SOF0 segment")
            factors = {data[offset + 11 + 3 * i] for i in range(components)}
            if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                raise JpegError("truncated: no EOI marker at the end")
            return JpegInfo(rows, columns, components, precision, subsampled=len(factors) > 1)
        if marker in _OTHER_SOF:
            raise JpegError(f"SOF{marker - 0xC0} JPEG (not baseline): save it as baseline")
        if marker == 0xDA:
            break
        offset += 2 + length
    raise JpegError("no SOF0 (baseline) frame header found")


def encode_jpeg_baseline(ds: Dataset, bitstream: bytes, jpeg: JpegInfo) -> bytes:
    """Part 10 bytes of `ds` with `bitstream` encapsulated as its only frame, in JPEG Baseline
    (1.2.840.10008.1.2.4.50). PS3.5 8.2.1: a 3-component baseline image is YBR_FULL_422
    when its chroma is subsampled (what JFIF encoders write), YBR_FULL when not; MONOCHROME2
    for 1 component. JPEGs holding RGB without a colour transform (Adobe APP14) are not told
    apart and would be labelled YBR.

    Raises
    ------
    IODError
        If the dataset cannot be encoded.
    """
    out = Dataset(ds)
    if jpeg.components == 1:
        out.PhotometricInterpretation = "MONOCHROME2"
    else:
        out.PhotometricInterpretation = "YBR_FULL_422" if jpeg.subsampled else "YBR_FULL"
    if jpeg.components == 3:
        out.PlanarConfiguration = 0
    out.LossyImageCompression = "01"          # PS3.3 C.7.6.1.1.5: it was lossy already
    out.LossyImageCompressionMethod = "ISO_10918_1"
    out.PixelData = encapsulate([bitstream])
    out["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    out.file_meta = meta
    fp = DicomBytesIO()
    try:
        dcmwrite(fp, out, enforce_file_format=True)
    except (ValueError, TypeError, OverflowError, struct.error) as err:
        raise IODError(f"Part 10: the JPEG image cannot be encoded ({type(err).__name__})") \
            from err
    return fp.getvalue()
