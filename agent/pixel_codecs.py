"""Keeping numpy and the pixel codecs out of a process that never decodes pixels: the sending
processes (agent.net.store_process), one per association.

Why: pydicom 3.0 imports numpy whenever it is installed (pydicom.config, pydicom.pixels.decoders
.base) and registers every decoder plugin at import time, which imports pylibjpeg, openjpeg,
rle and jpeg_ls (pydicom.pixels.decoders.__init__ → Decoder.add_plugins → import_module). There
is no setting for it; import order cannot avoid it either, as pydicom itself does the imports.
A sending process streams files and decodes nothing, except for the rare transcode
(agent.net.transcode), which then runs in a helper process. Measured on the reference machine
(one sending process after 3 objects, median of 3): 41 MB PSS with them, 32 MB without.

This module imports only agent.errors (no pydicom): it must run before pydicom is imported.
"""

from __future__ import annotations

import sys

from agent.errors import AgentError

#: numpy, and every package pydicom 3.0 tries for pixel (de)compression
#: (pydicom.pixels.decoders/encoders, pydicom.pixel_data_handlers)
CODEC_MODULES = ("numpy", "pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls", "PIL", "gdcm")


class PixelCodecsLoadedError(AgentError, RuntimeError):
    """forgo_pixel_codecs() came too late: pydicom or a codec is imported already."""


def forgo_pixel_codecs() -> None:
    """Make numpy and the codecs unimportable in this process for its lifetime (an import
    raises ModuleNotFoundError, which pydicom takes as "not installed").

    Raises
    ------
    PixelCodecsLoadedError
        If pydicom or one of CODEC_MODULES is already imported: the call must come first.
    """
    loaded = [name for name in ("pydicom", *CODEC_MODULES)
              if sys.modules.get(name, None) is not None]
    if loaded:
        raise PixelCodecsLoadedError(f"cannot forgo the pixel codecs: {', '.join(loaded)} "
                                     f"imported already")
    for name in CODEC_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]


def pixel_codecs_forgone() -> bool:
    """Whether forgo_pixel_codecs() ran in this process: pixel data cannot be decoded here."""
    return "numpy" in sys.modules and sys.modules["numpy"] is None
