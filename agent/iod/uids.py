"""UIDs: where new ones are minted, and what makes one valid (PS3.5 §9.1, Annex B)."""

from __future__ import annotations

import re
import uuid

from pydicom.uid import generate_uid

from agent.errors import IODError

#: PS3.5 §9.1: at most 64 characters
MAX_UID_LENGTH = 64

#: PS3.5 §9.1: components of digits separated by ".", no leading zero unless the component is "0"
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

#: decimal digits a uuid4 can fill (2**128 < 10**39)
_MAX_SUFFIX_DIGITS = 39

#: fewest random digits we accept under a custom root. Birthday bound: n UIDs collide with
#: probability about n**2 / (2 * 10**20); for the 10**7 images of a device's life, 5e-7
MIN_SUFFIX_DIGITS = 20

#: the longest custom root that still leaves MIN_SUFFIX_DIGITS after the "."
MAX_ROOT_LENGTH = MAX_UID_LENGTH - 1 - MIN_SUFFIX_DIGITS


def is_valid_uid(uid: object) -> bool:
    """True if `uid` is a string of at most 64 characters in the UID syntax of PS3.5 §9.1."""
    return (
        isinstance(uid, str)
        and 0 < len(uid) <= MAX_UID_LENGTH
        and _UID_PATTERN.fullmatch(uid) is not None
    )


class UIDSource:
    """Mints globally unique UIDs, either as `2.25.<uuid4 as integer>` or under an org root.

    Parameters
    ----------
    root
        "" (default) for UUID-derived UIDs under 2.25 (PS3.5 Annex B.2); otherwise the
        organisation's registered root, e.g. "1.2.826.0.1.3680043.10.1234", under which
        `<root>.<random decimal>` is made. pydicom's own root is not ours to use.

    Raises
    ------
    IODError
        If `root` is not a valid UID, ends with ".", or is longer than MAX_ROOT_LENGTH
        characters (too little room left for a random suffix).
    """

    def __init__(self, root: str = "") -> None:
        if root:
            if not is_valid_uid(root):
                raise IODError(
                    f"UIDSource: root {root!r} is not a valid UID (digits and dots, no "
                    "leading zeros in a component, at most 64 characters)"
                )
            if len(root) > MAX_ROOT_LENGTH:
                raise IODError(
                    f"UIDSource: root {root!r} has {len(root)} characters; at most "
                    f"{MAX_ROOT_LENGTH} leave room for {MIN_SUFFIX_DIGITS} random digits"
                )
        self.root = root
        self._suffix_digits = min(_MAX_SUFFIX_DIGITS, MAX_UID_LENGTH - 1 - len(root))

    def __repr__(self) -> str:
        return f"UIDSource(root={self.root!r})"

    def new_uid(self) -> str:
        """Return a new UID, different from every UID made before (with overwhelming odds).

        Returns
        -------
        str
            A valid UID of at most 64 characters.

        Raises
        ------
        IODError
            If the result is not a valid UID (a bug: it is checked, not assumed).
        """
        if self.root:
            # str() of an int has no leading zeros, so the new component is valid as is
            suffix = uuid.uuid4().int % (10**self._suffix_digits)
            uid = f"{self.root}.{suffix}"
        else:
            uid = str(generate_uid(prefix=None))
        if not is_valid_uid(uid):
            raise IODError(f"UIDSource: made an invalid UID {uid!r} under root {self.root!r}")
        return uid
