"""UIDSource and UID syntax (PS3.5 §9.1): length, pattern, uniqueness, custom roots."""

from __future__ import annotations

import re

import pytest

from agent.errors import IODError
from agent.iod import UIDSource, is_valid_uid

#: PS3.5 §9.1, written independently of agent.iod.uids
UID_SYNTAX = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")

DRAWS = 10_000


def assert_valid(uid: str) -> None:
    assert isinstance(uid, str)
    assert len(uid) <= 64, f"{uid!r} has {len(uid)} characters"
    assert UID_SYNTAX.match(uid), f"{uid!r} is not in UID syntax"


def test_default_root_is_2_25_with_a_uuid_integer() -> None:
    uid = UIDSource().new_uid()
    assert_valid(uid)
    assert uid.startswith("2.25.")
    suffix = uid.removeprefix("2.25.")
    assert "." not in suffix
    assert int(suffix) < 2**128


@pytest.mark.parametrize("root", ["", "1.2.826.0.1.3680043.10.1234", "1.2.3",
                                  "1.2.826.0.1.3680043.10.1234.56789.101112"])
def test_ten_thousand_draws_are_valid_and_unique(root: str) -> None:
    source = UIDSource(root)
    uids = [source.new_uid() for _ in range(DRAWS)]
    for uid in uids:
        assert_valid(uid)
        if root:
            assert uid.startswith(root + ".")
            assert uid.count(".") == root.count(".") + 1
    assert len(set(uids)) == DRAWS


def test_custom_root_fills_up_to_64_characters_with_random_digits() -> None:
    root = "1.2.3"
    uids = [UIDSource(root).new_uid() for _ in range(200)]
    # 39 digits of a uuid4: most draws are long, none longer than 64
    assert max(len(uid) for uid in uids) > len(root) + 30
    assert all(len(uid) <= 64 for uid in uids)


def test_longest_allowed_root_still_gives_valid_uids() -> None:
    root = "1." + "2" * 41          # 43 characters: 20 digits left after the dot
    assert len(root) == 43
    uids = {UIDSource(root).new_uid() for _ in range(1000)}
    assert len(uids) == 1000
    for uid in uids:
        assert_valid(uid)


@pytest.mark.parametrize("root", [
    "1.2.03",        # leading zero in a component
    "1..2",          # empty component
    "1.2.",          # trailing dot
    ".1.2",
    "1.2.a",
    "1.2 .3",
    "1." + "2" * 42,  # 44 characters: too little room for the random part
])
def test_bad_roots_are_refused(root: str) -> None:
    with pytest.raises(IODError, match="UIDSource: root"):
        UIDSource(root)


@pytest.mark.parametrize(("uid", "valid"), [
    ("1.2.840.10008.5.1.4.1.1.7", True),
    ("2.25.0", True),
    ("0.0", True),
    ("1", True),
    ("1.2.3." + "4" * 58, True),    # exactly 64
    ("1.2.3." + "4" * 59, False),   # 65
    ("1.02", False),
    ("1.2.", False),
    ("", False),
    ("1.2.3\x00", False),            # the NUL pad belongs to the encoding, not the UID
    ("1.2.3 ", False),
    (None, False),
    (123, False),
])
def test_is_valid_uid(uid: object, valid: bool) -> None:
    assert is_valid_uid(uid) is valid
