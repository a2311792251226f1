"""Streaming a request body (or a job event) to disk, and deciding what it is (SPEC 4.1).

The body is never held whole in memory: base64 is decoded as it arrives. The first
non-blank byte decides the path. `{`, `[`, `"` and `-` cannot start base64, so such a
body is JSON or nothing, and is written as it comes. Any other body is decoded as base64
on the fly while its first bytes are kept: a short body that parses as JSON (`true`,
`42`) is JSON, since JSON comes first in the table.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from faas_supervisor import strict_json
from faas_supervisor.base64_stream import WHITESPACE, Base64Decoder
from faas_supervisor.errors import BadEvent, NotBase64, PayloadTooLarge, writing
from faas_supervisor.parsers import recognise
from faas_supervisor.parsers.event import Event, GatewayBody, StorageObject

# JSON bodies up to this size are parsed (to validate them and to find storage events,
# which are a few KiB); larger ones that start like JSON are taken as JSON unparsed, so
# that memory does not grow with the payload.
JSON_PARSE_LIMIT = 1 << 20
# A body that might be either JSON or base64 is kept in memory up to this size.
AMBIGUOUS_HEAD = 64 << 10
# EVENT holds the raw event text when it fits in one environment string (Linux allows
# 128 KiB per string, name included).
EVENT_TEXT_LIMIT = (128 << 10) - 64
HEAD_LIMIT = max(AMBIGUOUS_HEAD, EVENT_TEXT_LIMIT)
JSON_ONLY_STARTS = b'{["-'
# What else a JSON text may start with (numbers, true, false, null): an ambiguous body
# starting otherwise is not JSON, and is not parsed as such (a parse that fails costs
# more than the rest of a small body's reading).
JSON_OTHER_STARTS = b"0123456789tfn"


def input_file_name() -> str:
    return f"event-file-{uuid.uuid4()}"


class _Base64Sink:
    """Decodes base64 arriving in pieces into a file; remembers, not raises, bad input
    (a short body that is not base64 may still be JSON)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.decoder = Base64Decoder()
        self.valid = True

    def feed(self, chunk: bytes) -> None:
        if not self.valid:
            return
        try:
            self.out.write(self.decoder.feed(chunk))
        except NotBase64:
            self.valid = False

    def finish(self) -> bool:
        return self.valid and not self.decoder.pending


async def read_body(
    chunks: AsyncIterator[bytes],
    *,
    content_type: str,
    input_dir: str | Path,
    max_size: int,
) -> Event:
    """Stream the body into `input_dir` and return the Event it is.

    A full disk is a 507 naming the input (and the other write errors a 500 naming it),
    never a traceback; the caller removes the folder and what it holds.
    """
    with writing("the input"):
        return await _read_body(chunks, content_type, input_dir, max_size)


async def _read_body(
    chunks: AsyncIterator[bytes], content_type: str, input_dir: str | Path, max_size: int
) -> Event:
    raw = content_type.split(";", 1)[0].strip().lower() == "application/octet-stream"
    path = Path(f"{input_dir}/{input_file_name()}")
    total = 0
    head = bytearray()  # the first bytes, kept for JSON and for EVENT
    pending = bytearray()  # what came while only blanks had come
    flushed = False  # whether blanks went to the file meanwhile
    mode = "raw" if raw else "undecided"
    sink: _Base64Sink | None = None
    first = b""

    with open(path, "wb") as out:
        async for chunk in chunks:
            total += len(chunk)
            if max_size and total > max_size:
                raise PayloadTooLarge(f"request body is over max_body_size ({max_size} bytes)")
            if len(head) < HEAD_LIMIT:
                head += chunk[: HEAD_LIMIT - len(head)]
            if mode == "undecided":
                pending += chunk  # blanks so far, then this chunk
                first = bytes(pending).lstrip(WHITESPACE)[:1]
                if not first:
                    if len(pending) > AMBIGUOUS_HEAD:
                        # Many blanks, and maybe nothing else (an empty body): into the
                        # file, not memory, as a JSON body after them would be saved.
                        out.write(pending)
                        pending, flushed = bytearray(), True
                    continue
                data, pending = bytes(pending), bytearray()
                if first in JSON_ONLY_STARTS:
                    mode = "json"
                    out.write(data)
                else:
                    if flushed:  # base64's blanks are no part of what it decodes to
                        out.seek(0)
                        out.truncate()
                    mode = "ambiguous"
                    sink = _Base64Sink(out)
                    sink.feed(data)
                continue
            if mode == "ambiguous":
                assert sink is not None
                sink.feed(chunk)
                if not sink.valid and total > AMBIGUOUS_HEAD:
                    raise BadEvent("request body is not JSON, base64 or application/octet-stream")
            else:
                out.write(chunk)

    text = _event_text(head, total)
    if mode == "raw" and total:
        return Event(kind="raw", input_file=path, text=text)
    # Empty whatever the Content-Type: `empty` is the first row of the table, and a
    # script must not get an INPUT_FILE_PATH to a file of nothing.
    if mode == "undecided" or total == 0:  # empty, or blanks only
        path.unlink()
        return Event(kind="empty")
    if mode == "ambiguous":
        assert sink is not None
        if total <= AMBIGUOUS_HEAD and first in JSON_OTHER_STARTS:
            value = _json_or_none(bytes(head))
            if value is not _NOT_JSON:
                path.write_bytes(head)
                return await _json_event(value, path, text, input_dir, max_size)
        if sink.finish():
            return Event(kind="base64", input_file=path, text=text)
        path.unlink()
        raise BadEvent("request body is not JSON, base64 or application/octet-stream")
    # mode == "json"
    if total > JSON_PARSE_LIMIT:
        return Event(kind="json", input_file=path, text=None)
    try:
        value = strict_json.loads(path.read_bytes())
    except strict_json.NotJson as exc:
        path.unlink()
        raise BadEvent(f"request body is not valid JSON: {exc}") from None
    return await _json_event(value, path, text, input_dir, max_size)


_NOT_JSON = object()


def _json_or_none(data: bytes) -> Any:
    try:
        return strict_json.loads(data)
    except strict_json.NotJson:
        return _NOT_JSON


async def _json_event(
    value: Any, path: Path, text: str | None, input_dir: str | Path, max_size: int
) -> Event:
    try:
        found = recognise(value)
    except BadEvent:
        path.unlink()  # as for any refused body: nothing of it stays
        raise
    if found is None:
        return Event(kind="json", input_file=path, text=text)
    path.unlink()
    if isinstance(found, StorageObject):
        return Event(kind="storage", storage=found, text=text)
    assert isinstance(found, GatewayBody)
    inner = await read_body(
        _one(found.body), content_type=found.content_type, input_dir=input_dir, max_size=max_size
    )
    return dataclasses.replace(inner, text=text)  # EVENT: the envelope, as it came


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _event_text(head: bytearray, total: int) -> str | None:
    if total > EVENT_TEXT_LIMIT or b"\x00" in head:
        return None
    try:
        return head.decode()
    except UnicodeDecodeError:
        return None
