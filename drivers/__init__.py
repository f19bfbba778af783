"""Hardware adapters. They know nothing of DICOM: a driver turns bytes from a device into Frames."""
