"""The site acceptance test's object (`selftest --store-test-object`): a small Secondary Capture
that says in every place an archive administrator looks that it is not a patient's image.

Built like every other image (same builder, same validation), never from the device: a
selftest must not fire an X-ray.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

import numpy as np
from pydicom import Dataset

from agent.iod.images import build_image
from agent.iod.modules import ConversionType
from agent.iod.secondary_capture import new_series_context
from agent.iod.uids import UIDSource
from agent.records import DeviceInfo, Order
from drivers.frame import Frame

#: who the test object is "for": no real patient has this name or ID
TEST_PATIENT_NAME = "MODALITY-AGENT^SELFTEST"
TEST_PATIENT_ID = "MA-SELFTEST"
TEST_DESCRIPTION = "modality-agent selftest: not a patient image, may be deleted"


def test_pattern(size: int = 64) -> np.ndarray:
    """A ramp with a cross: recognisable in any viewer, 8-bit grey."""
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    ramp[size // 2, :] = 255
    ramp[:, size // 2] = 255
    return ramp


def build_test_object(*, device: DeviceInfo, uids: UIDSource, now: datetime,
                      tz: tzinfo | None = None) -> Dataset:
    """The test object, validated like any image; its own study and series.

    Raises
    ------
    IODError
        If it cannot be built (never expected: the inputs are fixed).
    """
    order = Order(patient_name=TEST_PATIENT_NAME, patient_id=TEST_PATIENT_ID,
                  requested_procedure_description=TEST_DESCRIPTION)
    series = new_series_context(uids, order, started_at=now, series_number=9999, tz=tz)
    frame = Frame(pixels=test_pattern(), bits_stored=8, photometric_interpretation="MONOCHROME2",
                  t_mono=0.0, t_wall=now.timestamp(), sequence_number=0)
    ds = build_image("secondary-capture", [frame], order=order, device=device, series=series,
                     instance_number=1, sop_instance_uid=uids.new_uid(),
                     conversion_type=ConversionType.WORKSTATION, tz=tz)
    # the places an administrator's list shows: study, series, image comments
    ds.StudyDescription = TEST_DESCRIPTION
    ds.SeriesDescription = "modality-agent selftest"
    ds.ImageComments = TEST_DESCRIPTION
    return ds
