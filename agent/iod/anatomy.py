"""Anatomic regions and sides: which body part an acquisition images and on which side, from
what the technologist chose or what the order says, so a DX of a paired body part is never
exposed without its side (Image Laterality (0020,0062) "U" means *unpaired*, PS3.3 C.8.11.2).

The regions are those of PS3.16 Annex L (Body Part Examined defined terms and their SNOMED CT
codes, CID 4031) that an X-ray room images. An order names its region and side only in
words (the meaning of its Requested Procedure / Scheduled Protocol codes, e.g. "XR Hand Left")
or by an anatomic SNOMED CT code: a region or side is taken from the order only when it names
exactly one; anything else is asked of the technologist, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import IODError
from agent.records import Code, Order

#: Image Laterality (0020,0062) enumerated values (PS3.3 C.8.11.2): "U" is *unpaired*, not
#: unknown
IMAGE_LATERALITIES = ("R", "L", "B", "U")


@dataclass(frozen=True)
class Region:
    """One anatomic region: its Body Part Examined term, its code, whether it is paired, and
    the words an order's text may name it by (lower case)."""

    body_part: str
    code: Code
    paired: bool
    words: tuple[str, ...]


def _r(body_part: str, value: str, meaning: str, paired: bool, *words: str) -> Region:
    return Region(body_part, Code(value, "SCT", meaning), paired,
                  (meaning.lower(), *words))


#: PS3.16 Annex L terms and codes, the ones this room images; `words` are matched whole
REGIONS: tuple[Region, ...] = (
    _r("CHEST", "51185008", "Chest", False, "thorax"),
    _r("ABDOMEN", "818983003", "Abdomen", False),
    _r("PELVIS", "816092008", "Pelvis", False),
    _r("HEAD", "69536005", "Head", False),
    _r("SKULL", "89546000", "Skull", False),
    _r("NECK", "45048000", "Neck", False),
    _r("CSPINE", "122494005", "Cervical spine", False, "c-spine"),
    _r("TSPINE", "122495006", "Thoracic spine", False, "t-spine"),
    _r("LSPINE", "122496007", "Lumbar spine", False, "l-spine"),
    _r("SSPINE", "54735007", "Sacrum", False),
    _r("COCCYX", "64688005", "Coccyx", False),
    _r("SPINE", "421060004", "Spine", False),
    _r("WHOLEBODY", "38266002", "Entire body", False, "whole body"),
    _r("BREAST", "76752008", "Breast", True),
    _r("KNEE", "72696002", "Knee", True),
    _r("HAND", "85562004", "Hand", True),
    _r("FOOT", "56459004", "Foot", True),
    _r("SHOULDER", "16982005", "Shoulder", True),
    _r("ELBOW", "127949000", "Elbow", True),
    _r("WRIST", "8205005", "Wrist", True),
    _r("ANKLE", "344001", "Ankle", True),
    _r("HIP", "29836001", "Hip", True),
    _r("FEMUR", "71341001", "Femur", True),
    _r("TIBIA", "12611008", "Tibia", True),
    _r("HUMERUS", "85050009", "Humerus", True),
    _r("FOREARM", "14975008", "Forearm", True),
    _r("LEG", "30021000", "Lower leg", True),
    _r("THIGH", "68367000", "Thigh", True),
    _r("ARM", "40983000", "Upper arm", True),
    _r("CLAVICLE", "51299004", "Clavicle", True),
    _r("EYE", "81745001", "Eye", True),
    _r("KIDNEY", "64033007", "Kidney", True),
)
#: older SNOMED codes of the same unpaired regions (DICOM retired them; archives still send)
_RETIRED_UNPAIRED = frozenset({"113345001", "12921003"})

PAIRED_REGIONS = frozenset(r.code.value for r in REGIONS if r.paired)
UNPAIRED_REGIONS = frozenset(r.code.value for r in REGIONS if not r.paired) | _RETIRED_UNPAIRED
BY_BODY_PART = {r.body_part: r for r in REGIONS}
_BY_CODE = {r.code.value: r for r in REGIONS}

#: side words an order's text may use, whole words, lower case
_SIDE_WORDS = {"left": "L", "right": "R", "bilateral": "B", "both": "B"}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def region_for_body_part(body_part: str) -> Region:
    """The region of a Body Part Examined term ("CHEST", "HAND", ...; case-insensitive).

    Raises
    ------
    IODError
        For a term this station does not know, listing the ones it does.
    """
    region = BY_BODY_PART.get(body_part.strip().upper()) if isinstance(body_part, str) \
        else None
    if region is None:
        raise IODError(f"body_part: {body_part!r} is not one of "
                       f"{', '.join(sorted(BY_BODY_PART))}")
    return region


def region_of_code(code: Code) -> Region | None:
    if code.scheme not in ("SCT", "SRT"):
        return None
    return _BY_CODE.get(code.value)


def pairing(region: Code | None) -> str:
    """"paired", "unpaired" or "unknown" for this region code."""
    if region is None or region.scheme not in ("SCT", "SRT"):
        return "unknown"
    if region.value in PAIRED_REGIONS:
        return "paired"
    return "unpaired" if region.value in UNPAIRED_REGIONS else "unknown"


@dataclass(frozen=True)
class Anatomy:
    """What an acquisition images: region code and Image Laterality, each None when unknown;
    `source` says where each came from, for the technologist's screen."""

    region: Code | None = None
    laterality: str | None = None
    region_source: str = ""
    laterality_source: str = ""


@dataclass(frozen=True)
class AnatomyChoice:
    """What the technologist said about the body part for one acquisition (console, CLI):
    a Body Part Examined term ("HAND") and a side (R, L, B, U); None where they said
    nothing."""

    body_part: str | None = None
    laterality: str | None = None

    @property
    def empty(self) -> bool:
        return self.body_part is None and self.laterality is None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _regions_named(text: str) -> set[str]:
    """Body Part terms whose words occur whole in `text`, longest first (so "lumbar spine" is
    not also "spine")."""
    words = _words(text)
    found: set[str] = set()
    used = [False] * len(words)
    candidates = sorted(((tuple(w.split()), r.body_part) for r in REGIONS for w in r.words),
                        key=lambda c: -len(c[0]))
    for phrase, body_part in candidates:
        n = len(phrase)
        for start in range(len(words) - n + 1):
            if tuple(words[start:start + n]) == phrase and not any(used[start:start + n]):
                found.add(body_part)
                for i in range(start, start + n):
                    used[i] = True
    return found


def from_order(order: Order) -> Anatomy:
    """The region and side the order names unambiguously: an anatomic SNOMED CT code among its
    requested procedure / scheduled protocol codes, else whole words of their meanings and of
    the descriptions; a side from the words left / right / bilateral. Two different regions or
    sides: that one is unknown (asked, not guessed)."""
    codes = (*order.requested_procedure_codes, *order.scheduled_protocol_codes)
    texts = [c.meaning for c in codes] + [order.requested_procedure_description,
                                         order.sps_description]
    by_code = {r.body_part for c in codes if (r := region_of_code(c)) is not None}
    named = by_code or set().union(*(_regions_named(t) for t in texts))
    sides = {_SIDE_WORDS[w] for t in texts for w in _words(t) if w in _SIDE_WORDS}
    region = BY_BODY_PART[next(iter(named))].code if len(named) == 1 else None
    laterality = next(iter(sides)) if len(sides) == 1 else None
    return Anatomy(region, laterality,
                   "order" if region is not None else "",
                   "order" if laterality is not None else "")


def check_image_laterality(laterality: object, region: Code | None) -> str:
    """The DX Image Laterality to write: the side given, or "U" for a known unpaired region.

    Raises
    ------
    IODError
        A value outside R/L/B/U; "U" for a region not known to be unpaired (or none); a
        paired (or unrecognised) region with no side. Nothing is guessed.
    """
    where = "DX Anatomy Imaged: ImageLaterality"
    kind = pairing(region)
    named = "no anatomic region" if region is None else f"{region.meaning!r} ({region.value})"
    if laterality is None:
        if kind == "unpaired":
            return "U"
        reason = "is a paired body part" if kind == "paired" else \
            "is not known to be unpaired"
        raise IODError(f"{where}: {named} {reason}: give the side (image_laterality R, L or "
                       "B); \"U\" would claim an unpaired region")
    if not isinstance(laterality, str) or laterality not in IMAGE_LATERALITIES:
        raise IODError(f"{where}: expected one of R, L, B, U, got {laterality!r}")
    if laterality == "U" and kind != "unpaired":
        raise IODError(f"{where}: 'U' means unpaired (PS3.3 C.8.11.2), but the region is "
                       f"{named}: give R, L or B, or an unpaired anatomic_region")
    return laterality


def decide(order: Order, choice: AnatomyChoice, *, default_region: Code | None,
           writes_laterality: bool, iod: str) -> Anatomy:
    """The region and side an acquisition's objects will carry: the technologist's choice,
    else what the order names, else `default_region` (`[modality] anatomic_region`). For an
    IOD with Image Laterality (DX: `writes_laterality`) the side must then be known, or the
    region be unpaired ("U").

    Raises
    ------
    IODError
        An unknown body part or side; a choice that contradicts the order (a wrong side is a
        patient-safety error: the order is corrected, not overridden); a side for an IOD
        without Image Laterality; a DX whose side is unknown (naming what to give).
    """
    ordered = from_order(order)
    region, region_source = ordered.region, ordered.region_source
    laterality, side_source = ordered.laterality, ordered.laterality_source
    if choice.body_part is not None:
        chosen = region_for_body_part(choice.body_part).code
        if region is not None and chosen != region:
            raise IODError(f"body_part: the order names {region.meaning}, not "
                           f"{chosen.meaning}: correct the order at the RIS")
        region, region_source = chosen, "technologist"
    if choice.laterality is not None:
        if choice.laterality not in IMAGE_LATERALITIES:
            raise IODError(f"laterality: expected one of R, L, B, U, got "
                           f"{choice.laterality!r}")
        if laterality is not None and choice.laterality != laterality:
            raise IODError(f"laterality: the order says {laterality}, not "
                           f"{choice.laterality}: correct the order at the RIS")
        laterality, side_source = choice.laterality, "technologist"
    if region is None and default_region is not None:
        region, region_source = default_region, "config"
    if not writes_laterality:
        if choice.laterality is not None:
            raise IODError(f"laterality: {iod} objects carry no Image Laterality; leave the "
                           "side out")
        return Anatomy(region, None, region_source, "")
    try:
        laterality = check_image_laterality(laterality, region)
    except IODError as err:
        raise IODError(f"{err}; a DX needs the side of a paired body part before the "
                       "exposure: give the body part and side (console), or --body-part and "
                       "--laterality R|L|B|U (CLI)") from err
    return Anatomy(region, laterality, region_source, side_source or "region")


def regions_markdown() -> str:
    """The regions an order or the technologist may name (docs/worklist.md), from REGIONS."""
    head = "| Body part (`--body-part`) | SNOMED CT | Meaning | Paired | Words in an order |\n"
    return head + "|---|---|---|---|---|\n" + "".join(
            f"| `{r.body_part}` | {r.code.value} | {r.code.meaning} | "
            f"{'yes: R, L or B' if r.paired else 'no: U'} | "
            f"{', '.join(w for w in r.words)} |\n" for r in REGIONS)
