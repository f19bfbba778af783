"""Decode the text of a worklist response by the Specific Character Set (0008,0005) it carries.

PS3.5 §6.1 and PS3.3 C.12.1.1.2: (0008,0005) governs SH, LO, ST, LT, PN, UC and UT. Worklist
SCPs do not honour the set the query asks for (PEERS.md, "Worklist peers and character sets"),
so every response is decoded by its own declaration:

- ISO_IR 100, ISO_IR 126, ISO_IR 192 (UTF-8), the other single-byte sets, and ISO 2022 code
  extensions such as ``ISO 2022 IR 13\\ISO 2022 IR 87`` (Japanese: escape sequences switch
  between JIS X 0201 and JIS X 0208 inside one value; PS3.5 6.1.2.5).
- No (0008,0005): the default repertoire (ASCII). Bytes above 0x7F are then tried against a
  configurable list of fallback sets, and the result says that a fallback was used.

Decoding is strict: a byte that is invalid in the declared set is an error (`CharsetError`),
never a silent '?' or U+FFFD. So is a control character in a name, and so is a Latin-1
declaration on bytes that are valid multi-byte UTF-8 (what ``wlmscpfs -cs1`` sends for a UTF-8
worklist file): a name like "MÃ¼ller" would reach the archive as another patient's name.

pydicom's own decoder (`pydicom.charset.decode_bytes`) replaces undecodable bytes unless its
process-wide reading validation mode is RAISE, and decodes the default repertoire as Latin-1;
its escape-sequence tables are reused here, its decoding is not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.charset import CODES_TO_ENCODINGS, handled_encodings, python_encoding

#: what the agent falls back to when a response has no (0008,0005) and bytes above 0x7F:
#: UTF-8 first (it is self-checking: Latin-1 text is almost never valid UTF-8), then Latin-1
DEFAULT_FALLBACK: tuple[str, ...] = ("ISO_IR 192", "ISO_IR 100")

ESC = b"\x1b"
_ASCII = "ascii"

#: character sets that cannot be combined with code extensions (PS3.3 Table C.12-5)
_STAND_ALONE = frozenset({"ISO_IR 192", "GB18030", "GBK"})

#: terms of (0008,0005) that mean the default repertoire (ISO-IR 6, i.e. ASCII). pydicom maps
#: them to Latin-1; a byte above 0x7F is not ASCII, so here it is an error or a fallback.
_DEFAULT_TERMS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})

#: a fragment of a value: the bytes before the first escape, or one escape sequence and the
#: bytes up to the next one (PS3.5 6.1.2.5.3)
_FRAGMENTS = re.compile(rb"(^[^\x1b]+|\x1b[^\x1b]*)")

#: bytes after which single-byte code extensions fall back to the first set (PS3.5 6.1.2.5.3):
#: CR, LF, TAB, FF, and the value separator; PN adds its component delimiters ^ and =
_TEXT_DELIMITERS = frozenset(b"\r\n\t\f\\")
_PN_DELIMITERS = _TEXT_DELIMITERS | frozenset(b"^=")

#: C0 controls, DEL and C1 controls; multi-line VRs (ST, LT, UT) may hold CR, LF, TAB and FF
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


class CharsetError(ValueError):
    """Bytes that cannot be decoded as declared. The message never holds the bytes."""


@dataclass(frozen=True)
class Decoded:
    """Decoded text and how: `charset` is the term used ("" = default repertoire);
    `fallback` is True when (0008,0005) was absent and a fallback set was needed."""

    text: str
    charset: str
    fallback: bool = False


def parse_character_set(raw: bytes | None) -> tuple[str, ...]:
    """The values of a raw (0008,0005) (CS, backslash-separated, ASCII); () when absent.

    The first value may be empty (``\\ISO 2022 IR 87``: default repertoire, with extensions).

    Raises
    ------
    CharsetError
        If the value is not ASCII.
    """
    if not raw:
        return ()
    try:
        text = raw.decode(_ASCII)
    except UnicodeDecodeError as err:
        raise CharsetError("Specific Character Set is not ASCII") from err
    values = tuple(value.strip(" \x00") for value in text.split("\\"))
    return () if values == ("",) else values


def _codec(term: str) -> str:
    """The Python codec for one term of (0008,0005)."""
    if term in _DEFAULT_TERMS:
        return _ASCII
    codec = python_encoding.get(term)
    if codec is None:
        raise CharsetError(f"Specific Character Set {term!r} is not supported")
    return codec


#: Python codecs of the 8-bit Latin-script sets (ISO_IR 100, 101, 109, 110, 148). Their
#: letters sit at 0xC0-0xFF and their symbols at 0xA0-0xBF, so UTF-8 mislabelled as one of them
#: shows as a letter followed by a symbol ("Ã¼"): essentially never real text. The Greek,
#: Cyrillic, Arabic, Hebrew and Thai sets have letters in 0xB0-0xBF too, and their real text is
#: often valid UTF-8 by accident ("άΆ" in ISO_IR 126), so they cannot be checked this way.
_LATIN_SINGLE_BYTE_CODECS = frozenset({"latin_1", "iso8859_2", "iso8859_3", "iso8859_4",
                                       "iso_ir_148"})


class TextDecoder:
    """Decodes the text values of one C-FIND response.

    Parameters
    ----------
    declared
        The values of the response's (0008,0005), from `parse_character_set`.
    fallback
        Terms tried, in order, for bytes above 0x7F when `declared` is empty. () makes such
        bytes an error.

    Raises
    ------
    CharsetError
        If a declared term is unknown.
    ValueError
        If a fallback term is unknown or is an ISO 2022 (code extension) term.
    """

    def __init__(self, declared: Sequence[str], fallback: Sequence[str] = DEFAULT_FALLBACK
                 ) -> None:
        self.declared = tuple(declared)
        self._codecs = [_codec(term) for term in self.declared]
        for term in fallback:
            if term.startswith("ISO 2022") or term in _DEFAULT_TERMS or term not in python_encoding:
                raise ValueError(f"fallback character set {term!r}: expected a single-set term "
                                 "such as 'ISO_IR 192' or 'ISO_IR 100'")
        self.fallback = tuple(fallback)

    @property
    def described(self) -> str:
        """(0008,0005) as it came, for messages."""
        return "\\".join(self.declared) if self.declared else "absent"

    def decode(self, raw: bytes, *, person_name: bool = False, multiline: bool = False
               ) -> Decoded:
        """Decode one value; trailing padding (spaces, and NULs some SCPs send) is removed.

        Parameters
        ----------
        raw
            The value's bytes as received.
        person_name
            PN: ^ and = reset single-byte code extensions too.
        multiline
            ST, LT, UT: CR, LF, TAB and FF are allowed.

        Raises
        ------
        CharsetError
            If the bytes are invalid in the declared set (or in every fallback), or the text
            holds a control character.
        """
        control = _CONTROL_MULTILINE if multiline else _CONTROL
        if not self._codecs or (all(codec == _ASCII for codec in self._codecs) and ESC not in raw):
            return self._decode_default(raw, control)
        delimiters = _PN_DELIMITERS if person_name else _TEXT_DELIMITERS
        text = self._decode_declared(raw, delimiters)
        _check_controls(text, control)
        return Decoded(text.rstrip(" \x00"), "\\".join(self.declared))

    def _decode_default(self, raw: bytes, control: re.Pattern[str]) -> Decoded:
        term = self.declared[0] if self.declared else ""
        try:
            text = raw.decode(_ASCII)
        except UnicodeDecodeError:
            pass
        else:
            if ESC in raw:
                raise CharsetError("ISO 2022 escape sequences, but Specific Character Set "
                                   f"(0008,0005) is {self.described}")
            _check_controls(text, control)
            return Decoded(text.rstrip(" \x00"), term)
        if ESC in raw:
            raise CharsetError("ISO 2022 escape sequences, but Specific Character Set "
                               f"(0008,0005) is {self.described}")
        if self.declared:
            raise CharsetError(f"bytes above 0x7F, but Specific Character Set is "
                               f"{self.described} (the default repertoire, ASCII)")
        tried = []
        for candidate in self.fallback:
            try:
                text = raw.decode(python_encoding[candidate])
                _check_controls(text, control)
            except (UnicodeDecodeError, CharsetError):
                tried.append(candidate)
                continue
            return Decoded(text.rstrip(" \x00"), candidate, fallback=True)
        detail = f"; not valid in the fallback {', '.join(tried)} either" if tried else \
            " and no fallback character set is configured"
        raise CharsetError("bytes above 0x7F without a Specific Character Set (0008,0005)"
                           + detail)

    def _decode_declared(self, raw: bytes, delimiters: frozenset[int]) -> str:
        first_term, first = self.declared[0], self._codecs[0]
        shown = first_term or "the default repertoire"
        if ESC not in raw:
            try:
                text = raw.decode(first)
            except UnicodeDecodeError as err:
                raise CharsetError(f"byte 0x{raw[err.start]:02X} at offset {err.start} is not "
                                   f"valid in {shown}") from err
            if first in _LATIN_SINGLE_BYTE_CODECS and _looks_like_utf8(raw):
                raise CharsetError(f"the bytes are UTF-8 but Specific Character Set says "
                                   f"{first_term}; the RIS must declare ISO_IR 192 "
                                   "(DCMTK wlmscpfs: use -csk, not -cs1)")
            return text
        if first_term in _STAND_ALONE:
            raise CharsetError(f"escape sequence in a value of {first_term}, which allows no "
                               "code extensions")
        return "".join(self._decode_fragment(fragment, delimiters)
                       for fragment in _FRAGMENTS.findall(raw))

    def _decode_fragment(self, fragment: bytes, delimiters: frozenset[int]) -> str:
        first = self._codecs[0]
        if not fragment.startswith(ESC):
            return _strict(fragment, first, self.declared[0] or "the default repertoire")
        length = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
        codec = CODES_TO_ENCODINGS.get(fragment[:length])
        if codec is None:
            raise CharsetError("unknown escape sequence")
        if codec == CODES_TO_ENCODINGS[ESC + b"(B"]:
            # ESC ( B: G0 back to ASCII; with ISO 2022 IR 13, G1 still holds JIS X 0201
            # katakana (8-bit bytes), which its shift_jis codec decodes
            codec = "shift_jis" if "shift_jis" in self._codecs else _ASCII
        elif codec not in self._codecs:
            raise CharsetError(f"escape sequence for a character set that Specific Character "
                               f"Set ({self.described}) does not declare")
        if codec in handled_encodings:
            # Python's ISO 2022 codecs (JIS X 0208, ...) read the escape sequence themselves;
            # inside a two-byte set ^ = and \ are halves of characters, not delimiters
            return _strict(fragment, codec, codec)
        body = fragment[length:]
        cut = next((i for i, byte in enumerate(body) if byte in delimiters), len(body))
        # a delimiter switches single-byte extensions back to the first set (PS3.5 6.1.2.5.3)
        return _strict(body[:cut], codec, codec) + _strict(body[cut:], first,
                                                            self.declared[0] or "ASCII")


def _strict(raw: bytes, codec: str, shown: str) -> str:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as err:
        raise CharsetError(f"byte 0x{raw[err.start]:02X} is not valid in {shown}") from err


def _check_controls(text: str, control: re.Pattern[str]) -> None:
    match = control.search(text.rstrip("\x00"))
    if match:
        raise CharsetError(f"control character U+{ord(match.group()):04X} at position "
                           f"{match.start()}")


def _looks_like_utf8(raw: bytes) -> bool:
    """Bytes above 0x7F that form valid UTF-8 sequences: text in an 8-bit Latin set essentially
    never does ("Ã¼" is how UTF-8 "ü" reads in Latin-1)."""
    if raw.isascii():
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
