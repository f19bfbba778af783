"""A spooled object in a form an archive that refused its transfer syntax can take.

A sending process has no pixel codecs (agent.pixel_codecs: 8 MB per process): there the copy is
made by a helper process, `python -m agent.net.transcode PATH`, which writes it to its stdout
as a DICOM file. Rare (only a compressed object for an archive that accepts no compressed
syntax for it), so the helper's start (~0.5 s) does not matter.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from pydicom import Dataset, dcmread

from agent.errors import AgentError
from agent.pixel_codecs import pixel_codecs_forgone

#: the helper's exit status when the file cannot be read (an OSError: the object is unreadable)
EXIT_UNREADABLE = 2
#: the helper's exit status when the pixel data cannot be decompressed
EXIT_UNDECODABLE = 1
#: how long the helper may take for one object (a long multi-frame one takes seconds)
HELPER_TIMEOUT_S = 300.0


class TranscodeError(AgentError):
    """The spooled object cannot be decompressed; the message is the decoder's ("Type: what").
    Not a ValueError: to the sending process a ValueError means "no accepted context"."""


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
        return _copy_from_helper(path)
    return _decompressed(path)


def _decompressed(path: Path) -> Dataset:
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    return ds


def _copy_from_helper(path: Path) -> Dataset:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.net.transcode", str(path)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=HELPER_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise TranscodeError(f"{path}: decompressing took more than "
                             f"{HELPER_TIMEOUT_S:.0f} s") from err
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    why = said[-1] if said else f"exit status {done.returncode}"
    if done.returncode == EXIT_UNREADABLE:
        raise OSError(why)
    if done.returncode != 0:
        raise TranscodeError(why)
    return dcmread(io.BytesIO(done.stdout))


def main(argv: list[str]) -> int:
    """The helper: the copy of the file argv[0] as a DICOM file on stdout; on failure one line
    on stderr ("Type: message") and EXIT_UNREADABLE or EXIT_UNDECODABLE."""
    path = Path(argv[0])
    buffer = io.BytesIO()
    try:
        _decompressed(path).save_as(buffer, enforce_file_format=True)
    except OSError as err:
        sys.stderr.write(f"{type(err).__name__}: {err}\n")
        return EXIT_UNREADABLE
    except Exception as err:  # noqa: BLE001 - pixel codecs raise what they like
        sys.stderr.write(f"{type(err).__name__}: {err}\n")
        return EXIT_UNDECODABLE
    sys.stdout.buffer.write(buffer.getbuffer())
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
