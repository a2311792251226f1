"""parsers/body.py: every row of the SPEC 4.1 body table, fed in pieces of any size.

The body arrives as an async stream of chunks; whatever the split, the event and the
input file must be the same. Hypothesis chooses the splits (and, for base64, where the
blanks and newlines go).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from faas_supervisor import strict_json
from faas_supervisor.errors import BadEvent, PayloadTooLarge
from faas_supervisor.parsers.body import AMBIGUOUS_HEAD, EVENT_TEXT_LIMIT, read_body
from faas_supervisor.parsers.event import Event

OCTET = "application/octet-stream"


async def _chunks(pieces: Sequence[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """`data` cut at the given offsets (any order, repeats allowed: empty pieces)."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def sizes_split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def read(
    pieces: Sequence[bytes], input_dir: Path, content_type: str = "", max_size: int = 0
) -> Event:
    return asyncio.run(
        read_body(_chunks(pieces), content_type=content_type, input_dir=input_dir,
                  max_size=max_size)
    )


def input_files(input_dir: Path) -> list[Path]:
    return sorted(input_dir.iterdir())


def wrap_base64(data: bytes, width: int = 76) -> bytes:
    encoded = base64.b64encode(data)
    return b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width)) + b"\n"


# ---- the rows of the table, one by one -------------------------------------------------


@pytest.mark.parametrize("pieces", [[], [b""], [b"", b""]])
def test_empty_body_has_no_input_file(tmp_path: Path, pieces: list[bytes]) -> None:
    event = read(pieces, tmp_path)
    assert event.kind == "empty"
    assert event.input_file is None
    assert input_files(tmp_path) == []


def test_empty_octet_stream_body_is_still_empty(tmp_path: Path) -> None:
    """`empty` is the table's first row: no input file, whatever the Content-Type."""
    event = read([], tmp_path, OCTET)
    assert event.kind == "empty"
    assert event.input_file is None
    assert input_files(tmp_path) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"message": "hello", "n": [1, 2.5, null]}',
        b'  \n{"padded": true}\n',
        b'[1, "two", {"three": 3}]',
        b'"just a string"',
        b"-12.5e3",
        b"true",
        b"false",
        b"42",
        b"null",
        b" \t\r\n7",  # blanks first: the first byte that counts is the digit
        '{"accents": "\u00e9t\u00e9 \u2603"}'.encode(),
    ],
)
def test_json_is_saved_byte_for_byte(tmp_path: Path, body: bytes) -> None:
    for size in (1, 3, len(body)):
        folder = tmp_path / str(size)
        folder.mkdir()
        event = read(sizes_split(body, size), folder)
        assert event.kind == "json", size
        assert event.input_file is not None
        assert event.input_file.parent == folder
        assert event.input_file.name.startswith("event-file-")
        assert event.input_file.read_bytes() == body
        assert event.text == body.decode()  # EVENT: the raw event text
        assert input_files(folder) == [event.input_file]


def test_many_blanks_then_anything_or_nothing(tmp_path: Path) -> None:
    """Blanks past what is kept in memory: still empty alone (README: blank bodies are
    empty), JSON after them byte for byte, base64 after them decoded alone."""
    blanks = b" \n" * AMBIGUOUS_HEAD
    for name, tail, kind, saved in [("none", b"", "empty", None),
                                    ("json", b'{"late": 1}', "json", blanks + b'{"late": 1}'),
                                    ("base64", base64.b64encode(b"late"), "base64", b"late")]:
        folder = tmp_path / name
        folder.mkdir()
        event = read(sizes_split(blanks + tail, 10_000), folder)
        assert event.kind == kind, name
        if saved is None:
            assert input_files(folder) == []
        else:
            assert event.input_file is not None
            assert event.input_file.read_bytes() == saved, name
            assert input_files(folder) == [event.input_file]


def test_input_file_names_are_unique(tmp_path: Path) -> None:
    first = read([b"[1]"], tmp_path)
    second = read([b"[2]"], tmp_path)
    assert first.input_file != second.input_file


def test_base64_with_blanks_and_newlines_is_decoded(tmp_path: Path) -> None:
    data = os.urandom(5000)
    body = b"  " + wrap_base64(data).replace(b"\n", b"\r\n") + b" \t\n"
    event = read(sizes_split(body, 7), tmp_path)
    assert event.kind == "base64"
    assert event.input_file is not None
    assert event.input_file.read_bytes() == data
    assert event.text == body.decode()


def test_large_base64_is_decoded(tmp_path: Path) -> None:
    """Past the size kept in memory to tell JSON from base64."""
    data = os.urandom(3 * AMBIGUOUS_HEAD)
    event = read(sizes_split(wrap_base64(data), 65536), tmp_path)
    assert event.kind == "base64"
    assert event.input_file is not None
    assert event.input_file.read_bytes() == data
    assert event.text is None  # too large for one environment string


@pytest.mark.parametrize(
    "body",
    [b"QUJD", b'{"a": 1}', b"\x00\xff\xfe garbage \x80", b"hello world", b"  \n"],
)
def test_octet_stream_is_saved_raw(tmp_path: Path, body: bytes) -> None:
    for content_type in (OCTET, "Application/Octet-Stream; charset=binary"):
        folder = tmp_path / str(len(content_type))
        folder.mkdir()
        event = read(sizes_split(body, 2), folder, content_type)
        assert event.kind == "raw"
        assert event.input_file is not None
        assert event.input_file.read_bytes() == body  # not decoded, not parsed


@pytest.mark.parametrize(
    "body",
    [
        b"hello world!",
        b"hello",
        b"QUJD=",  # bad padding
        b"QQ==QUJD",  # data after the padding
        b"QQ==\nQQ==",
        b"QUJD\xff",
        b"\xff\xfe\x00garbage",
        b"{not json",
        b'{"a": 1',
        b'["unterminated',
        b'"unterminated',
        b"-not-a-number",
        b"<xml>not this</xml>",
        b"key=value&other=1",
        # RFC 8259 has no NaN or Infinity, which Python's json reads (issue 8).
        b'{"a": NaN}',
        b"[Infinity]",
        b"-Infinity",
        b'{"a": [1, {"b": -Infinity}]}',
        b"NaN",
        b'{"Records": [{"eventSource": "minio:s3", "s3": {"bucket": {"name": "b"}, '
        b'"object": {"key": "in/k", "size": NaN}}}]}',
        b'"utf-16"'.decode().encode("utf-16"),  # JSON between systems is UTF-8
    ],
)
def test_anything_else_is_a_bad_event(tmp_path: Path, body: bytes) -> None:
    for size in (1, len(body)):
        with pytest.raises(BadEvent) as info:
            read(sizes_split(body, size), tmp_path)
        assert "\n" not in info.value.message
        assert info.value.http_status == 400
        assert info.value.exit_status == 2


def test_large_garbage_is_refused_early(tmp_path: Path) -> None:
    """A large non-base64 body fails once past the ambiguous head, not at its end."""
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 4096
            yield b"this is not base64! " * 204 + b"....."

    with pytest.raises(BadEvent):
        asyncio.run(read_body(endless(), content_type="", input_dir=tmp_path, max_size=0))
    assert sent <= 2 * AMBIGUOUS_HEAD + 4096


def test_event_text_is_kept_only_when_it_fits_an_environment_string(tmp_path: Path) -> None:
    small = json.dumps({"k": "v" * 100}).encode()
    large = json.dumps({"k": "v" * EVENT_TEXT_LIMIT}).encode()
    assert read([small], tmp_path).text == small.decode()
    event = read([large], tmp_path)
    assert event.kind == "json"
    assert event.text is None
    assert event.input_file is not None
    assert event.input_file.read_bytes() == large


# ---- max_size --------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["", OCTET])
def test_max_size(tmp_path: Path, content_type: str) -> None:
    body = base64.b64encode(b"x" * 300)  # 400 bytes
    assert read(sizes_split(body, 64), tmp_path, content_type, max_size=400).kind in (
        "base64", "raw",
    )
    with pytest.raises(PayloadTooLarge) as info:
        read(sizes_split(body, 64), tmp_path, content_type, max_size=399)
    assert info.value.http_status == 413


def test_max_size_stops_reading(tmp_path: Path) -> None:
    """An endless body is cut off at max_size, not read to its end."""
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 1000
            yield b"A" * 1000

    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(endless(), content_type="", input_dir=tmp_path, max_size=10_000))
    assert sent <= 11_000


# ---- any split gives the same result ---------------------------------------------------

cuts = st.lists(st.integers(min_value=0, max_value=12_000), max_size=12)


def _is_json(text: bytes) -> bool:
    try:
        strict_json.loads(text)
    except ValueError:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=6000),
    blanks=st.lists(st.tuples(st.integers(min_value=0), st.sampled_from([b" ", b"\n", b"\r\n",
                                                                         b"\t", b"  \n "])),
                    max_size=20),
    cut_at=cuts,
)
def test_any_split_of_base64_decodes_to_the_same_bytes(
    data: bytes, blanks: list[tuple[int, bytes]], cut_at: list[int]
) -> None:
    body = bytearray(base64.b64encode(data))
    # JSON comes first in the table: a base64 text that also parses as JSON (`1234`) is JSON.
    assume(not _is_json(bytes(body)))
    for position, blank in sorted(blanks, reverse=True):
        at = position % (len(body) + 1)
        body[at:at] = blank
    with tempfile.TemporaryDirectory() as folder:
        event = read(split(bytes(body), cut_at), Path(folder))
        assert event.kind == "base64"
        assert event.input_file is not None
        assert event.input_file.read_bytes() == data


@settings(max_examples=100, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                     max_size=4),
        max_leaves=20,
    ),
    indent=st.sampled_from([None, 0, 2]),
    cut_at=cuts,
)
def test_any_split_of_json_saves_the_same_bytes(value: object, indent: int | None,
                                                cut_at: list[int]) -> None:
    body = json.dumps(value, indent=indent).encode()
    with tempfile.TemporaryDirectory() as folder:
        event = read(split(body, cut_at), Path(folder))
        assert event.kind == "json"
        assert event.input_file is not None
        assert event.input_file.read_bytes() == body


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=6000), cut_at=cuts)
def test_any_split_of_octet_stream_saves_the_same_bytes(data: bytes, cut_at: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        event = read(split(data, cut_at), Path(folder), OCTET)
        assert event.kind == "raw"
        assert event.input_file is not None
        assert event.input_file.read_bytes() == data


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=600), cut_at=cuts,
       junk=st.sampled_from([b"!", b"*", b"\xff", b"=A", b"\x00", b"_-"]),
       where=st.integers(min_value=0))
def test_any_split_of_base64_with_junk_is_refused(data: bytes, cut_at: list[int], junk: bytes,
                                                  where: int) -> None:
    body = bytearray(base64.b64encode(data))
    at = where % (len(body) + 1)
    body[at:at] = junk
    assume(not _is_json(bytes(body)))
    with tempfile.TemporaryDirectory() as folder, pytest.raises(BadEvent):
        read(split(bytes(body), cut_at), Path(folder))
