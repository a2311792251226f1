"""base64_stream.Base64Decoder: its fast path (no blanks, no copy) and its careful path
give the same bytes, and the same error, for any text split in any pieces."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from faas_supervisor.base64_stream import WHITESPACE, Base64Decoder
from faas_supervisor.errors import NotBase64


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def decode(pieces: Sequence[bytes], *, careful_only: bool = False) -> bytes | str:
    """The decoded bytes, or the NotBase64 message."""
    decoder = Base64Decoder()
    decoder.fast = not careful_only
    try:
        out = b"".join(decoder.feed(piece) for piece in pieces)
        decoder.finish()
    except NotBase64 as exc:
        return str(exc)
    return out


@st.composite
def texts(draw: st.DrawFn) -> bytes:
    """Base64 of random bytes, then maybe spoiled: a blank, a stray character, a cut,
    more base64 after its padding."""
    text = bytearray(base64.b64encode(draw(st.binary(max_size=40))))
    how = draw(st.sampled_from(["clean", "blank", "stray", "cut", "more", "newline"]))
    where = draw(st.integers(0, len(text)))
    if how == "blank":
        text.insert(where, draw(st.sampled_from(list(WHITESPACE))))
    elif how == "stray" and text:
        text[min(where, len(text) - 1)] = draw(st.sampled_from(list(b"=!-_A")))
    elif how == "cut" and text:
        del text[min(where, len(text) - 1)]
    elif how == "more":
        text += base64.b64encode(draw(st.binary(max_size=4)))
    elif how == "newline":
        text += b"\n"
    return bytes(text)


@settings(max_examples=500, deadline=None)
@given(texts(), st.lists(st.integers(0, 80), max_size=6))
@example(b"aGk=aGk=", [2])  # a padded group completed by a piece that goes on
@example(b"aGk=\n", [])
@example(b"aG\nk=", [1, 3])
def test_fast_and_careful_paths_agree_on_any_text_and_split(text: bytes, cuts: list[int]) -> None:
    pieces = split(text, cuts)
    result = decode(pieces)
    assert result == decode(pieces, careful_only=True)
    if isinstance(result, bytes):
        assert result == base64.b64decode(text.translate(None, WHITESPACE), validate=True)


class _FastOnly(Base64Decoder):
    def _feed_careful(self, chunk: bytes) -> bytes:
        raise AssertionError("the careful path was taken")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 400), max_size=8))
def test_text_without_blanks_never_takes_the_careful_path(data: bytes, cuts: list[int]) -> None:
    """The careful path copies the text (bytes.translate, seven times the cost of the
    decode): pieces of four characters or more never need it, however they are cut."""
    pieces: list[bytes] = []
    for piece in split(base64.b64encode(data), cuts):
        if pieces and len(pieces[-1]) < 4:
            pieces[-1] += piece  # a short piece joins the next one
        else:
            pieces.append(piece)
    if len(pieces) > 1 and len(pieces[-1]) < 4:
        pieces[-2:] = [pieces[-2] + pieces[-1]]
    decoder = _FastOnly()
    out = b"".join(decoder.feed(piece) for piece in pieces)
    decoder.finish()
    assert out == data


def test_text_in_lines_stays_on_the_careful_path() -> None:
    """Once blanks are met the fast path is not tried again (it would decode each piece
    twice, failing first)."""
    text = base64.encodebytes(bytes(range(256)) * 4)  # lines of 76 characters
    decoder = Base64Decoder()
    out = b"".join(decoder.feed(text[i : i + 100]) for i in range(0, len(text), 100))
    decoder.finish()
    assert out == bytes(range(256)) * 4
    assert decoder.fast is False


@pytest.mark.parametrize(("pieces", "message"), [
    ([b"aGk=aGk="], "not base64 near character 0"),
    ([b"aGk=", b"aGk="], "data after the end of base64 at character 4"),
    ([b"aGVs", b"bG8!"], "not base64 near character 4"),
    ([b"aGVsb"], "base64 cut short after character 4"),
])
def test_errors_say_where(pieces: list[bytes], message: str) -> None:
    result = decode(pieces)
    assert isinstance(result, str) and result.startswith(message), result
