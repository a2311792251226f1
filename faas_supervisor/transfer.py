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
import re
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

from faas_supervisor.base64_stream import WHITESPACE, Base64Decoder, encode_chunks

# A multiple of 3, so each chunk's base64 concatenates into one valid base64 text.
CHUNK = 3 * 256 * 1024
SNIFF = 1 << 20
_COMPLETE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_PARTIAL = re.compile(rb"[A-Za-z0-9+/]*")


async def encode_base64(source: BinaryIO, progress: Callable[[int], None]) -> AsyncIterator[bytes]:
    """Base64 of `source`, read in chunks off the event loop; `progress` gets raw byte counts."""
    async for encoded in encode_chunks(_read_chunks(source, progress)):
        yield encoded


async def _read_chunks(source: BinaryIO, progress: Callable[[int], None]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(source.read, CHUNK):
        progress(len(chunk))
        yield chunk


def looks_like_base64(head: bytes, complete: bool) -> bool:
    """Whether `head` (the whole body when `complete`) can be read as base64."""
    text = head.translate(None, WHITESPACE)
    if not text:
        return False
    if complete:
        return _COMPLETE.fullmatch(text) is not None
    return _PARTIAL.fullmatch(text) is not None


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
