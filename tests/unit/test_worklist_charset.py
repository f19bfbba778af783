"""Worklist text decoding by (0008,0005): every set the RIS may send, strictly; errors name no
value; no silent '?' or U+FFFD."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.charset import convert_encodings, encode_string
from pydicom.valuerep import PersonName

from agent.worklist.charset import CharsetError, TextDecoder, parse_character_set

JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def encoded(text: str, terms: list[str], *, person_name: bool = False) -> bytes:
    """`text` as a DICOM writer (pydicom) encodes it for (0008,0005) = `terms`."""
    encodings = convert_encodings(terms)
    if person_name:
        return PersonName(text).encode(encodings)
    return encode_string(text, encodings)


@pytest.mark.parametrize(("terms", "text", "person_name"), [
    (["ISO_IR 100"], "Müller^Jürgen", True),
    (["ISO_IR 100"], "Röntgen Thorax p.a.", False),
    (["ISO_IR 192"], "Müller^Jürgen", True),
    (["ISO_IR 192"], "Γιάννης^Παπαδόπουλος", True),
    (["ISO_IR 192"], JAPANESE, True),
    (["ISO_IR 126"], "Γιάννης^Παπαδόπουλος", True),
    (["ISO_IR 126"], "Ακτινογραφία θώρακος", False),
    (["", "ISO 2022 IR 87"], JAPANESE, True),
    (["ISO 2022 IR 13", "ISO 2022 IR 87"], "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", True),
    (["ISO_IR 6"], "Doe^John", True),
])
def test_every_declared_set_decodes_exactly(terms: list[str], text: str,
                                            person_name: bool) -> None:
    raw = encoded(text, terms, person_name=person_name)
    decoded = TextDecoder(terms).decode(raw, person_name=person_name)
    assert decoded.text == text
    assert decoded.fallback is False
    assert decoded.charset == "\\".join(terms)


def test_iso_2022_latin1_extension_switches_back_at_delimiters() -> None:
    # PS3.5 6.1.2.5.3: value 1's set is active again before ^ and =; a writer re-designates
    # G1 after each (pydicom itself writes plain Latin-1 here, so the bytes are spelled out)
    raw = b"\x1b-AM\xfcller^\x1b-AJ\xfcrgen"
    decoder = TextDecoder(["ISO 2022 IR 6", "ISO 2022 IR 100"])
    assert decoder.decode(raw, person_name=True).text == "Müller^Jürgen"
    with pytest.raises(CharsetError, match="byte 0xFC is not valid in ISO 2022 IR 6"):
        decoder.decode(b"\x1b-AM\xfcller^J\xfcrgen", person_name=True)


def test_japanese_iso_2022_bytes_really_use_escape_sequences() -> None:
    raw = encoded(JAPANESE, ["", "ISO 2022 IR 87"], person_name=True)
    assert b"\x1b$B" in raw and b"\x1b(B" in raw          # JIS X 0208 in and out
    assert parse_character_set(b"\\ISO 2022 IR 87 ") == ("", "ISO 2022 IR 87")


def test_padding_is_removed() -> None:
    assert TextDecoder(["ISO_IR 192"]).decode("Müller ".encode()).text == "Müller"
    assert TextDecoder([]).decode(b"P-1\x00").text == "P-1"


def test_no_character_set_means_ascii_then_the_fallbacks_in_order() -> None:
    decoder = TextDecoder([], ("ISO_IR 192", "ISO_IR 100"))
    assert decoder.decode(b"Doe^John") == decoder.decode(b"Doe^John ")
    assert decoder.decode(b"Doe^John").fallback is False
    utf8 = decoder.decode("Müller".encode())
    assert (utf8.text, utf8.charset, utf8.fallback) == ("Müller", "ISO_IR 192", True)
    latin1 = decoder.decode("Müller".encode("latin-1"))
    assert (latin1.text, latin1.charset, latin1.fallback) == ("Müller", "ISO_IR 100", True)


def test_no_character_set_and_no_fallback_is_an_error() -> None:
    with pytest.raises(CharsetError, match=r"without a Specific Character Set.*no fallback"):
        TextDecoder([], ()).decode("Müller".encode("latin-1"))


def test_fallback_that_fails_is_named() -> None:
    with pytest.raises(CharsetError, match="not valid in the fallback ISO_IR 192"):
        TextDecoder([], ("ISO_IR 192",)).decode("Müller".encode("latin-1"))


@pytest.mark.parametrize(("terms", "raw", "message"), [
    (["ISO_IR 192"], b"M\xfcller", r"byte 0xFC at offset 1 is not valid in ISO_IR 192"),
    (["ISO_IR 126"], b"\xae", r"byte 0xAE .*not valid in ISO_IR 126"),
    (["ISO_IR 100"], "Müller".encode(), r"bytes are UTF-8 but .* says ISO_IR 100.*-csk"),
    (["ISO_IR 6"], b"M\xfcller", r"above 0x7F, but Specific Character Set is ISO_IR 6"),
    (["ISO_IR 100"], b"M\x1b$B;3\x1b(B", r"escape sequence for a character set that"),
    (["ISO_IR 192"], b"\x1b$B;3ED\x1b(B", r"escape sequence in a value of ISO_IR 192"),
    ([], b"\x1b$B;3ED\x1b(B", r"ISO 2022 escape sequences, but .* is absent"),
    (["", "ISO 2022 IR 87"], b"\x1b$Z;3", r"unknown escape sequence"),
    (["ISO_IR 192"], b"Doe\nJohn", r"control character U\+000A"),
    (["ISO_IR 100"], b"Doe\x85John", r"control character U\+0085"),
    (["ISO_IR 192"], b"Doe\x00John", r"control character U\+0000"),
])
def test_undecodable_bytes_are_errors(terms: list[str], raw: bytes, message: str) -> None:
    with pytest.raises(CharsetError, match=message) as info:
        TextDecoder(terms).decode(raw)
    assert "ller" not in str(info.value) and "John" not in str(info.value)


def test_greek_that_happens_to_be_valid_utf8_is_not_mistaken_for_mislabelled_utf8() -> None:
    raw = "άΆ".encode("iso8859_7")                      # 0xDC 0xB6: also valid UTF-8
    raw.decode("utf-8")
    assert TextDecoder(["ISO_IR 126"]).decode(raw).text == "άΆ"


def test_multiline_text_may_hold_line_breaks() -> None:
    assert TextDecoder(["ISO_IR 192"]).decode(b"one\r\ntwo", multiline=True).text == "one\r\ntwo"


@pytest.mark.parametrize("term", ["ISO_IR 999", "Latin1", "UTF-8"])
def test_unknown_character_set_is_named(term: str) -> None:
    with pytest.raises(CharsetError, match=f"Specific Character Set '{term}' is not supported"):
        TextDecoder([term])


def test_non_ascii_character_set_value() -> None:
    with pytest.raises(CharsetError, match="not ASCII"):
        parse_character_set(b"ISO_IR\xff")


@pytest.mark.parametrize("fallback", [("ISO 2022 IR 87",), ("",), ("nonsense",)])
def test_fallback_must_be_a_single_set(fallback: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="fallback character set"):
        TextDecoder([], fallback)


# --- properties: what a writer encodes, the decoder gives back ------------------------------

_NAME_PART = {
    "ISO_IR 100": st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzÄÖÜäöüßéèçñ"), max_size=12),
    "ISO_IR 126": st.text(st.sampled_from("αβγδεζηθικλμνξοπρστυφχψωΆΈΉάέή"), max_size=12),
    "ISO_IR 192": st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFFFF,
                                        categories=("L", "N", "Zs"),
                                        exclude_characters="\\^="), max_size=12),
}


@pytest.mark.parametrize("term", sorted(_NAME_PART))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_decode_inverts_encode(term: str, data: st.DataObject) -> None:
    family = data.draw(_NAME_PART[term]).strip()
    given_name = data.draw(_NAME_PART[term]).strip()
    name = f"{family}^{given_name}".rstrip("^")
    raw = encoded(name, [term], person_name=True)
    assert TextDecoder([term]).decode(raw, person_name=True).text == name


@settings(max_examples=40, deadline=None)
@given(kanji=st.text(st.sampled_from("山田太郎花子東京病院"), min_size=1, max_size=6),
       kana=st.text(st.sampled_from("やまだたろうはなこ"), min_size=1, max_size=6))
def test_iso_2022_japanese_inverts(kanji: str, kana: str) -> None:
    name = f"Yamada^Tarou={kanji}^{kanji}={kana}^{kana}"
    raw = encoded(name, ["", "ISO 2022 IR 87"], person_name=True)
    assert TextDecoder(["", "ISO 2022 IR 87"]).decode(raw, person_name=True).text == name


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=40))
def test_arbitrary_bytes_decode_or_raise_charset_error(raw: bytes) -> None:
    for terms in ([], ["ISO_IR 192"], ["ISO_IR 100"], ["", "ISO 2022 IR 87"]):
        try:
            text = TextDecoder(terms).decode(raw, person_name=True).text
        except CharsetError:
            continue
        assert "\ufffd" not in text
