"""DX Image Laterality (0020,0062) tells the truth: "U" means unpaired (PS3.3 C.8.11.2), so it is
written only for an unpaired region; a paired region needs R, L or B; nothing is guessed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.peers import run_dciodvfy
from test_iod_images import CHEST, ORIENTATION, build, mono

from agent.errors import IODError
from agent.iod import encode_part10
from agent.records import Code

KNEE = Code("72696002", "SCT", "Knee")


def dx(**overrides: Any) -> Any:
    return build("dx", [mono(40, 33, 12)], patient_orientation=ORIENTATION, **overrides)


@pytest.mark.parametrize("side", ["R", "L", "B"])
def test_a_paired_region_takes_the_side_given(side: str) -> None:
    ds = dx(anatomic_region=KNEE, image_laterality=side)
    assert ds.ImageLaterality == side
    assert "Laterality" not in ds


def test_a_sided_knee_passes_dciodvfy(tmp_path: Path) -> None:
    path = tmp_path / "knee.dcm"
    path.write_bytes(encode_part10(dx(anatomic_region=KNEE, image_laterality="L"),
                                   "explicit-little"))
    assert run_dciodvfy(path) == []


def test_a_paired_region_without_a_side_is_refused() -> None:
    with pytest.raises(IODError, match=r"DX Anatomy Imaged: ImageLaterality: .*Knee.* paired"):
        dx(anatomic_region=KNEE)


def test_unpaired_is_refused_for_a_paired_region() -> None:
    with pytest.raises(IODError, match=r"ImageLaterality: 'U' means unpaired.*Knee"):
        dx(anatomic_region=KNEE, image_laterality="U")


def test_an_unpaired_region_is_u() -> None:
    assert dx(anatomic_region=CHEST).ImageLaterality == "U"
    assert dx(anatomic_region=CHEST, image_laterality="U").ImageLaterality == "U"


def test_u_without_a_region_is_refused() -> None:
    with pytest.raises(IODError, match=r"ImageLaterality: 'U' means unpaired"):
        dx(image_laterality="U")


@pytest.mark.parametrize("side", ["X", "r", "", 1])
def test_only_r_l_b_u(side: object) -> None:
    with pytest.raises(IODError, match=r"ImageLaterality: expected one of R, L, B, U"):
        dx(anatomic_region=KNEE, image_laterality=side)


def test_neither_region_nor_side_is_refused() -> None:
    with pytest.raises(IODError, match=r"ImageLaterality: no anatomic region is not known to be "
                                       r"unpaired: give the side"):
        build("dx", [mono(40, 33, 12)], patient_orientation=ORIENTATION,
              image_laterality=None)


def test_a_side_without_a_region_is_kept() -> None:
    ds = dx(image_laterality="L")
    assert ds.ImageLaterality == "L" and ds.AnatomicRegionSequence == []


def test_only_dx_takes_a_laterality() -> None:
    with pytest.raises(IODError, match=r"ImageLaterality.*DX"):
        build("secondary-capture", [mono(40, 33, 8)], image_laterality="R")
