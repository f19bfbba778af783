"""A sending process forgoes numpy and the pixel codecs (agent.pixel_codecs), and then makes a
decompressed copy in a helper process (agent.net.transcode). Each case runs in a fresh Python:
forgoing is for a process's lifetime."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from agent.config import TLS_PROFILES
from agent.net.tls import PROFILES

SC = "1.2.840.10008.5.1.4.1.1.7"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
PIXELS = bytes(range(256)) * 16

#: the first statements of a sending process
FORGO = """
import json, sys
from agent.pixel_codecs import forgo_pixel_codecs
forgo_pixel_codecs()
"""

#: what the sending process imports (agent.net.store_process's child_main and what it calls)
CHILD_IMPORTS = """
import agent.logsetup, agent.net.ae, agent.net.store_process, agent.net.transcode
from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StorageCommitmentPushModel
"""

#: numpy, the codecs, and their extension modules' top-level names
LOADED_CODECS = """
from agent.pixel_codecs import CODEC_MODULES
codecs = CODEC_MODULES + ("_openjpeg", "_CharLS")
loaded = sorted({name.split(".")[0] for name, module in sys.modules.items()
                 if module is not None and name.split(".")[0] in codecs})
"""


def run_python(*parts: str) -> dict[str, Any]:
    """Run the code `parts` in a new interpreter; they print one JSON object as the last line."""
    code = "\n".join(textwrap.dedent(part) for part in parts)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def write_sc(path: Path, *, compressed: bool) -> str:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = PIXELS
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if compressed:
        ds.compress(JPEG_LS_LOSSLESS, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def test_without_forgoing_pydicom_imports_numpy_and_the_codecs() -> None:
    # the reason for agent.pixel_codecs: if pydicom stops doing this, it can go
    result = run_python("import json, sys", CHILD_IMPORTS, LOADED_CODECS,
                        'print(json.dumps({"loaded": loaded}))')
    assert "numpy" in result["loaded"] and "openjpeg" in result["loaded"]


def test_a_process_that_forgoes_them_imports_no_codec_nor_the_daemons_modules() -> None:
    result = run_python(FORGO, CHILD_IMPORTS, LOADED_CODECS, """
        import pydicom.config
        from agent.pixel_codecs import pixel_codecs_forgone
        print(json.dumps({"loaded": loaded, "have_numpy": pydicom.config.have_numpy,
                          "forgone": pixel_codecs_forgone(),
                          "agent": sorted(m for m in sys.modules if m.startswith("agent."))}))
    """)
    assert result["loaded"] == []
    assert result["have_numpy"] is False and result["forgone"] is True
    # the configuration and the queue's records are the daemon's, not a sending process's
    assert "agent.config" not in result["agent"]
    assert "agent.records" not in result["agent"]


def test_forgoing_after_pydicom_is_imported_is_refused() -> None:
    result = run_python("""
        import json
        import pydicom
        from agent.pixel_codecs import PixelCodecsLoadedError, forgo_pixel_codecs
        try:
            forgo_pixel_codecs()
            said = None
        except PixelCodecsLoadedError as err:
            said = str(err)
        print(json.dumps({"said": said}))
    """)
    said = result["said"]
    assert said.startswith("cannot forgo the pixel codecs: pydicom") and "numpy" in said


def test_without_codecs_the_decompressed_copy_comes_from_a_helper(tmp_path: Path) -> None:
    compressed = tmp_path / "jls.dcm"
    uid = write_sc(compressed, compressed=True)
    assert dcmread(compressed).file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
    corrupt = tmp_path / "corrupt.dcm"
    write_sc(corrupt, compressed=False)
    ds = dcmread(corrupt)
    ds.file_meta.TransferSyntaxUID = JPEG_LS_LOSSLESS
    ds.PixelData = encapsulate([b"not a JPEG-LS codestream"])
    ds.save_as(corrupt, enforce_file_format=True)
    result = run_python(FORGO, f"""
        from pathlib import Path
        from agent.net import transcode
        from agent.net.transcode import TranscodeError, uncompressed_copy
        transcode.HELPER_IDLE_S = 1.0
        ds = uncompressed_copy(Path({str(compressed)!r}))
        helper = transcode._helper._proc
        errors = []
        for name in ("missing.dcm", "corrupt.dcm"):
            try:
                uncompressed_copy(Path({str(tmp_path)!r}) / name)
                errors.append(None)
            except (OSError, TranscodeError) as err:
                errors.append([type(err).__name__, str(err)])
        again = uncompressed_copy(Path({str(compressed)!r}))
        kept = transcode._helper._proc is helper and helper.poll() is None
        helper.wait(30)                 # idle for HELPER_IDLE_S: it ends by itself
        after_idle = uncompressed_copy(Path({str(compressed)!r}))
        renewed = transcode._helper._proc is not helper
    """, LOADED_CODECS, """
        print(json.dumps({"uid": ds.SOPInstanceUID, "syntax": ds.file_meta.TransferSyntaxUID,
                          "pixels": ds.PixelData.hex(), "errors": errors, "loaded": loaded,
                          "kept": kept, "renewed": renewed,
                          "later": [again.PixelData.hex(), after_idle.PixelData.hex()]}))
    """)
    # lossless and under the same SOP Instance UID (DICOM-NOTES.md §6)
    assert result["uid"] == uid
    assert result["syntax"] == ExplicitVRLittleEndian
    assert bytes.fromhex(result["pixels"]) == PIXELS
    missing, undecodable = result["errors"]
    assert missing[0] == "OSError" and "missing.dcm" in missing[1]
    assert undecodable[0] == "TranscodeError" and undecodable[1]
    # the helper decoded: this process still has no codec
    assert result["loaded"] == []
    # one helper for consecutive copies (also after errors), a new one after it ended idle
    assert result["kept"] is True and result["renewed"] is True
    assert [bytes.fromhex(pixels) for pixels in result["later"]] == [PIXELS, PIXELS]


def test_the_tls_profiles_are_the_configs() -> None:
    # agent.net.tls names them without importing agent.config (a sending process's footprint)
    assert PROFILES == TLS_PROFILES
