"""Base64 on the fly, both ways: text arriving in pieces of any length, bytes in chunks.

Used by the watchdog (request bodies in, responses out) and by the client (`service run`).
pybase64 does the work: its SIMD codec decodes about four times and encodes about twice
as fast as `binascii` here. With blanks stripped only from text that has some (see
Base64Decoder), the codec is a small part of a payload's round trip through the
watchdog: the kernel's copies are most of it (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import binascii
from collections.abc import AsyncIterator

import pybase64

from faas_supervisor.errors import NotBase64

WHITESPACE = b" \t\r\n\x0b\x0c"
PAD = ord("=")


class Base64Decoder:
    """Strict base64 in pieces of any length; blanks and newlines anywhere are allowed.

    Two paths, one result. The fast one decodes a piece as it came, through a memoryview:
    one strict decode, no copy of the text. It is for text without blanks (what clients
    send: `base64 -w0`, OSCAR's CLI), and it declines anything else before changing any
    state: blanks, data after padding, a character that is not base64. The careful path
    then strips blanks (a copy, and `bytes.translate` costs seven times the decode) and
    says what is wrong, if anything. Once it has met blanks it is used for the rest of
    the text: a body wrapped in lines would otherwise be decoded twice.
    """

    def __init__(self) -> None:
        self.pending = b""  # an incomplete group (under 4 characters), blanks removed
        self.padded = False
        self.offset = 0  # characters consumed, for the error message
        self.fast = True

    def feed(self, chunk: bytes) -> bytes:
        if self.fast:
            decoded = self._feed_fast(chunk)
            if decoded is not None:
                return decoded
        return self._feed_careful(chunk)

    def _feed_fast(self, chunk: bytes) -> bytes | None:
        """`chunk` decoded, or None (and nothing changed) when it needs the careful path."""
        if self.padded:
            return None
        view = memoryview(chunk)
        group = b""
        if self.pending:  # the group begun by the last piece, completed by this one
            group = self.pending + bytes(view[: 4 - len(self.pending)])
            if len(group) < 4:
                return None
            view = view[4 - len(self.pending) :]
        usable = len(view) - len(view) % 4
        tail = bytes(view[usable:])
        if tail.translate(None, WHITESPACE) != tail or (group.endswith(b"=") and len(view)):
            return None
        try:
            head = pybase64.b64decode(group, validate=True) if group else b""
            decoded = pybase64.b64decode(view[:usable], validate=True)
        except binascii.Error:
            return None
        self.pending = tail
        self.offset += len(group) + usable
        if usable:
            self.padded = view[usable - 1] == PAD
        elif group:
            self.padded = group[-1] == PAD
        # Joining copies the decoded piece: only when a group straddled two pieces.
        return head + decoded if head else decoded

    def _feed_careful(self, chunk: bytes) -> bytes:
        stripped = chunk.translate(None, WHITESPACE)
        if len(stripped) != len(chunk):
            self.fast = False
        data = self.pending + stripped
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
