"""Base64 on the fly, both ways, for the client's `service run` and `service job`.

The input is read and encoded a chunk at a time into a chunked request; the response is
decoded a chunk at a time as it arrives. Neither is ever held whole in memory, so the
size of a file the client can send or receive is bounded by disk, not RAM.

A successful `/run` answers base64 when the script wrote an output file, and the plain
logs when it wrote none (SPEC 4.1), with the same content type. So the head of the
response (up to `SNIFF` bytes) decides: base64 if it could be, else raw text. A longer
response whose head is base64 but which goes wrong later is an error, not silently
mixed output.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

# A multiple of 3, so each chunk's base64 concatenates into one valid base64 text.
CHUNK = 3 * 256 * 1024
SNIFF = 1 << 20
WHITESPACE = b" \t\r\n\x0b\x0c"
_COMPLETE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_PARTIAL = re.compile(rb"[A-Za-z0-9+/]*")


class NotBase64(ValueError):
    """The response stopped being base64 after its head was."""


async def encode_base64(source: BinaryIO, progress: Callable[[int], None]) -> AsyncIterator[bytes]:
    """Base64 of `source`, read in chunks off the event loop; `progress` gets raw byte counts."""
    rest = b""
    while chunk := await asyncio.to_thread(source.read, CHUNK):
        progress(len(chunk))
        data = rest + chunk if rest else chunk
        # A pipe may return short reads: keep the bytes beyond a whole 3-byte group.
        usable = len(data) - len(data) % 3
        rest = data[usable:]
        if usable:
            yield base64.b64encode(data[:usable])
    if rest:
        yield base64.b64encode(rest)


def looks_like_base64(head: bytes, complete: bool) -> bool:
    """Whether `head` (the whole body when `complete`) can be read as base64."""
    text = head.translate(None, WHITESPACE)
    if not text:
        return False
    if complete:
        return _COMPLETE.fullmatch(text) is not None
    return _PARTIAL.fullmatch(text) is not None


class Base64Decoder:
    """Strict base64 in pieces of any length; whitespace between pieces is allowed."""

    def __init__(self) -> None:
        self.pending = b""
        self.padded = False
        self.offset = 0  # characters consumed, for the error message

    def feed(self, chunk: bytes) -> bytes:
        data = self.pending + chunk.translate(None, WHITESPACE)
        if self.padded and data:
            raise NotBase64(f"data after the end of base64 at character {self.offset}")
        usable = len(data) - len(data) % 4
        block, self.pending = data[:usable], data[usable:]
        if not block:
            return b""
        try:
            decoded = binascii.a2b_base64(block, strict_mode=True)
        except binascii.Error as exc:
            raise NotBase64(f"not base64 near character {self.offset}: {exc}") from None
        self.offset += len(block)
        self.padded = block.endswith(b"=")
        return decoded

    def finish(self) -> None:
        if self.pending:
            raise NotBase64(f"base64 cut short after character {self.offset}")


async def write_result(chunks: AsyncIterator[bytes], sink: BinaryIO, *, raw: bool = False) -> None:
    """Write a `/run` response body to `sink`: decoded if base64, else as it is."""
    head = bytearray()
    complete = True
    async for chunk in chunks:
        head += chunk
        if len(head) >= SNIFF:
            complete = False
            break
    if raw or not looks_like_base64(bytes(head), complete):
        sink.write(head)
        async for chunk in chunks:
            sink.write(chunk)
        return
    decoder = Base64Decoder()
    sink.write(decoder.feed(bytes(head)))
    del head
    async for chunk in chunks:
        sink.write(decoder.feed(chunk))
    decoder.finish()
