"""The offline worklist cache: the last good RIS answer, in one JSON file, written durably.

The file holds patient data, so it is created 0600 in a folder created 0700 (RELIABILITY.md
§2.4), and it is replaced atomically: written to a temporary file, fsynced, renamed over the
old one, and the folder fsynced (STYLE.md (e)). A power cut leaves the old cache or the new
one, never half of either.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.worklist.errors import WorklistCacheError
from agent.worklist.model import WorklistItem

CACHE_FILE_NAME = "worklist-cache.json"
CACHE_FORMAT = 1

#: a cache larger than this is not ours (500 items are ~1 MB)
MAX_CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CachedWorklist:
    """What the cache holds: the items of one broad query and when the RIS gave them."""

    items: tuple[WorklistItem, ...]
    fetched_at: float              # wall-clock seconds since the epoch
    station_ae_title: str          # the query they answered: a cache made for another
    modality: str                  # station or modality is not shown
    truncated: bool = False
    limit: int = 0


class WorklistCache:
    """One cache file in `folder` (created 0700 on first save)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CACHE_FILE_NAME

    def save(self, cached: CachedWorklist) -> None:
        """Replace the cache durably (tmp, fsync, rename, fsync folder); mode 0600.

        Raises
        ------
        WorklistCacheError
            If the folder or file cannot be written; the previous cache is then unchanged.
        """
        document = {
            "format": CACHE_FORMAT,
            "fetched_at": cached.fetched_at,
            "station_ae_title": cached.station_ae_title,
            "modality": cached.modality,
            "truncated": cached.truncated,
            "limit": cached.limit,
            "items": [item.to_cache() for item in cached.items],
        }
        payload = json.dumps(document, ensure_ascii=False, indent=1).encode("utf-8")
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # a tmp file left by a crash (or planted as a link) goes first: unlink never
            # follows a link, and O_EXCL | O_NOFOLLOW then create a fresh private file
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)           # whatever the umask
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)           # without it, ext4 may leave an empty file after a crash
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)       # the rename is durable only from here
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise WorklistCacheError(f"worklist cache {self.path}: cannot write: "
                                     f"{err.strerror or err}") from err

    def load(self) -> CachedWorklist | None:
        """The cached worklist, or None when there is no cache file.

        Raises
        ------
        WorklistCacheError
            If the file cannot be read or is not a cache this agent wrote.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise WorklistCacheError(f"worklist cache {self.path}: cannot open: "
                                     f"{err.strerror or err}") from err
        try:
            with os.fdopen(fd, "rb") as file:
                payload = file.read(MAX_CACHE_BYTES + 1)
        except OSError as err:
            raise WorklistCacheError(f"worklist cache {self.path}: cannot read: "
                                     f"{err.strerror or err}") from err
        if len(payload) > MAX_CACHE_BYTES:
            raise WorklistCacheError(f"worklist cache {self.path}: larger than "
                                     f"{MAX_CACHE_BYTES} bytes; not a cache this agent wrote")
        try:
            document = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            position = getattr(err, "pos", getattr(err, "start", "?"))
            raise WorklistCacheError(f"worklist cache {self.path}: damaged "
                                     f"({type(err).__name__} at byte {position})") from err
        return self._parse(document)

    def _parse(self, document: Any) -> CachedWorklist:
        where = f"worklist cache {self.path}"
        if not isinstance(document, dict) or document.get("format") != CACHE_FORMAT:
            raise WorklistCacheError(f"{where}: not format {CACHE_FORMAT}")
        fetched_at = document.get("fetched_at")
        if isinstance(fetched_at, bool) or not isinstance(fetched_at, int | float):
            raise WorklistCacheError(f"{where}: fetched_at is not a time")
        station, modality = document.get("station_ae_title"), document.get("modality")
        truncated, limit = document.get("truncated"), document.get("limit")
        items = document.get("items")
        if not isinstance(station, str) or not isinstance(modality, str) \
                or not isinstance(truncated, bool) or isinstance(limit, bool) \
                or not isinstance(limit, int) or not isinstance(items, list):
            raise WorklistCacheError(f"{where}: damaged header")
        try:
            parsed = tuple(WorklistItem.from_cache(item) for item in items)
        except WorklistCacheError as err:
            raise WorklistCacheError(f"{where}: {err}") from err
        return CachedWorklist(parsed, float(fetched_at), station, modality, truncated, limit)
