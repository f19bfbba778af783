"""Where the spool may be: not a system folder, not someone else's files, apart from the folders
the agent imports from (issue 13, finding 8).

The queue sets permissions in the spool, cleans its `tmp/` and deletes delivered objects: pointed
at `/etc`, a home folder or the watch folder by a careless edit, it would touch files it does not
own. `load_config` does not look at the disk; this is the check-config side, run by `preflight`.
`QueueStore.open` refuses the same at run time.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from agent.config import AgentConfig
from agent.queue.spool import SPOOL_MARKER

#: folders that are never a spool themselves (a folder inside one is fine); /lib* is matched apart
SYSTEM_FOLDERS: frozenset[str] = frozenset({
    "/", "/etc", "/usr", "/bin", "/sbin", "/boot", "/dev", "/proc", "/sys", "/run", "/var",
    "/home", "/root", "/tmp", "/opt", "/srv", "/mnt", "/media",
})
#: the database file of spools made before the marker existed
LEGACY_SPOOL_FILE = "queue.db"


def check_spool_location(config: AgentConfig) -> list[str]:
    """Problems with where `[agent] spool_dir` is, as `file: [section] key: expected ..., got ...`.

    Reads the disk (which folders exist, what the spool holds, where links point) but changes
    nothing.

    Parameters
    ----------
    config
        A config from `load_config` (its paths are absolute).

    Returns
    -------
    list[str]
        Empty if the spool is fine: `spool_dir` is not ``/`` or a system folder; if it exists and
        is not empty it holds the spool marker (or, from older versions, ``queue.db``); neither
        `[watch_folder] path` nor any `[api] import_folders` entry is the spool, inside it or
        contains it (compared after following symbolic links).

    Raises
    ------
    Nothing
        A folder that cannot be listed is reported as a problem.
    """
    name = config.path.name
    spool = config.agent.spool_dir
    problems = _system_folder(name, spool)
    if not problems:
        # a system folder is never empty: saying so again would only repeat the point
        problems += _foreign_contents(name, spool)
    problems += _overlaps(name, config)
    return problems


def _quoted(path: Path) -> str:
    return f'"{path}"'


def _is_system_folder(path: str) -> bool:
    pure = PurePosixPath(path)
    # /lib, /lib32, /lib64, /libx32: the list differs between distributions
    return path in SYSTEM_FOLDERS or (pure.parent == PurePosixPath("/")
                                      and pure.name.startswith("lib"))


def _system_folder(name: str, spool: Path) -> list[str]:
    expected = "a folder of its own, not / or a system folder (a folder inside one is fine)"
    # as written ("/usr/../etc" is /etc), then after links (/srv/spool -> /etc); on merged-/usr
    # systems /lib is a link to /usr/lib, so the written form is checked first
    written = os.path.normpath(spool)
    real = os.path.realpath(spool)
    if _is_system_folder(written):
        return [f"{name}: [agent] spool_dir: expected {expected}, got {_quoted(spool)}"]
    if _is_system_folder(real):
        return [f"{name}: [agent] spool_dir: expected {expected}, got {_quoted(spool)} "
                f"(it is {real})"]
    return []


def _foreign_contents(name: str, spool: Path) -> list[str]:
    where = f"{name}: [agent] spool_dir"
    try:
        if not spool.exists():
            return []                      # the queue makes it, with the marker
        if not spool.is_dir():
            return [f"{where}: expected a folder, got {_quoted(spool)} (a file)"]
        entries = sum(1 for _ in spool.iterdir())
    except OSError as err:                 # a parent or the folder this user may not read
        return [f"{where}: expected a folder this user can list, got {_quoted(spool)} "
                f"({err.strerror or err})"]
    if entries == 0:
        return []
    if (spool / SPOOL_MARKER).is_file() or (spool / LEGACY_SPOOL_FILE).is_file():
        return []
    return [f"{where}: expected an empty folder or a modality-agent spool (with {SPOOL_MARKER} "
            f"or {LEGACY_SPOOL_FILE}), got {_quoted(spool)} (holds {entries} "
            f"{'entry' if entries == 1 else 'entries'}, no spool marker)"]


def _relation(folder: Path, spool: Path) -> str | None:
    """How `folder` overlaps `spool` (both real paths), or None if they are apart."""
    if folder == spool:
        return "the spool itself"
    if spool in folder.parents:
        return "inside the spool"
    if folder in spool.parents:
        return "contains the spool"
    return None


def _overlaps(name: str, config: AgentConfig) -> list[str]:
    # realpath: a link in either path must not hide that two folders are one; compared by path
    # components, so "spool-in" is not inside "spool"
    spool = Path(os.path.realpath(config.agent.spool_dir))
    apart = f"apart from the spool ([agent] spool_dir {config.agent.spool_dir})"
    problems = []
    if config.watch_folder is not None:
        folder = config.watch_folder.path
        relation = _relation(Path(os.path.realpath(folder)), spool)
        if relation is not None:
            problems.append(f"{name}: [watch_folder] path: expected a folder {apart}, "
                            f"got {_quoted(folder)} ({relation})")
    for number, folder in enumerate(config.api.import_folders, start=1):
        relation = _relation(Path(os.path.realpath(folder)), spool)
        if relation is not None:
            problems.append(f"{name}: [api] import_folders: expected folders {apart}, "
                            f"got #{number} {_quoted(folder)} ({relation})")
    return problems


__all__ = ["LEGACY_SPOOL_FILE", "SYSTEM_FOLDERS", "check_spool_location"]
