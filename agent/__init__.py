"""modality-agent: the DICOM side of an imaging device (worklist, IODs, store-and-forward)."""

__version__ = "0.1.0"
