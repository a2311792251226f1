"""Base64 on the fly, both ways: text arriving in pieces of any length, bytes in chunks.

Used by the watchdog (request bodies in, responses out) and by the client (`service run`).
pybase64 does the work: its SIMD codec decodes about four times and encodes about twice
as fast as `binascii` here (bench/RESULTS.md, payload), which is what a 256 MiB payload
round trip spends most of its CPU on.
"""

from __future__ import annotations

import binascii
from collections.abc import AsyncIterator

import pybase64

from faas_supervisor.errors import NotBase64

WHITESPACE = b" \t\r\n\x0b\x0c"


class Base64Decoder:
    """Strict base64 in pieces of any length; blanks and newlines anywhere are allowed."""

    def __init__(self) -> None:
        self.pending = b""
        self.padded = False
        self.offset = 0  # characters consumed, for the error message

    def feed(self, chunk: bytes) -> bytes:
        data = self.pending + chunk.translate(None, WHITESPACE)
        if self.padded and data:
            raise NotBase64(f"data after the end of base64 at character {self.offset}")
        usable = len(data) - len(data) % 4  # whole 4-character groups decode on their own
        block, self.pending = data[:usable], data[usable:]
        if not block:
            return b""
        try:
            decoded = pybase64.b64decode(block, validate=True)
        except binascii.Error as exc:
            raise NotBase64(f"not base64 near character {self.offset}: {exc}") from None
        self.offset += len(block)
        self.padded = block.endswith(b"=")
        return decoded

    def finish(self) -> None:
        if self.pending:
            raise NotBase64(f"base64 cut short after character {self.offset}")


async def encode_chunks(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Base64 of a stream, one line, no newlines: whole 3-byte groups per chunk, so the
    pieces concatenate into one valid text."""
    rest = b""
    async for chunk in source:
        data = rest + chunk if rest else chunk
        usable = len(data) - len(data) % 3
        rest = data[usable:]
        if usable:
            yield pybase64.b64encode(data[:usable] if rest else data)
    if rest:
        yield pybase64.b64encode(rest)
