"""Base64 on the fly, both ways, for the client's `service run` and `service job`.

The input is read and encoded a chunk at a time into a chunked request; the response is
decoded a chunk at a time as it arrives. Neither is ever held whole in memory, so the
size of a file the client can send or receive is bounded by disk, not RAM.

A successful `/run` answers base64 when the script wrote an output file, and the plain
logs when it wrote none (SPEC 4.1), with the same content type. So the head of the
response (up to `SNIFF` bytes) decides: base64 if it could be, else raw text. A longer
response whose head is base64 but which goes wrong later is an error, not silently
mixed output.

Standard input, when it is a pipe or a terminal, is read through `StdinReader`: a read
that a signal's cleanup can stop while the writer keeps the pipe open and sends nothing.
Results are written with `write_all`, which never lets a short write pass as a whole one.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO, Protocol

from faas_supervisor.base64_stream import WHITESPACE, Base64Decoder, encode_chunks

# A multiple of 3, so each chunk's base64 concatenates into one valid base64 text.
CHUNK = 3 * 256 * 1024
SNIFF = 1 << 20
_COMPLETE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_PARTIAL = re.compile(rb"[A-Za-z0-9+/]*")
PIECE = 1 << 20  # the most one os.read of standard input asks for


class Readable(Protocol):
    """What an input is read from: a file, a StdinReader, text in memory."""

    def read(self, size: int = -1, /) -> bytes: ...


async def encode_base64(source: Readable, progress: Callable[[int], None]) -> AsyncIterator[bytes]:
    """Base64 of `source`, read in chunks off the event loop; `progress` gets raw byte counts."""
    async for encoded in encode_chunks(_read_chunks(source, progress)):
        yield encoded


async def _read_chunks(source: Readable, progress: Callable[[int], None]) -> AsyncIterator[bytes]:
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
        write_all(sink, head)
        async for chunk in chunks:
            write_all(sink, chunk)
        return
    decoder = Base64Decoder()
    write_all(sink, decoder.feed(bytes(head)))
    del head
    async for chunk in chunks:
        write_all(sink, decoder.feed(chunk))
    decoder.finish()


def write_all(sink: BinaryIO, data: bytes | bytearray) -> None:
    """All of `data`, or the OSError that stopped it. A buffered file's write() can answer
    a short count, the error dropped, when the kernel took part of a large write (a file
    reaching `ulimit -f`): the rest is written again, which raises the error."""
    view = memoryview(data)
    while view:
        view = view[sink.write(view):]


class StdinStopped(Exception):
    """Private to the client: a read of standard input stopped by `StdinReader.close`."""


class StdinReader:
    """Standard input for a worker thread (`to_thread`, s3transfer's): `read(n)` answers
    n bytes, fewer only at the end, as a buffered file's does (s3transfer takes a short
    read for the end). A thread blocked in read() cannot be cancelled, and a process
    waits for its threads before it exits: SIGTERM would wait for the writer of an idle
    pipe to close it. So each read waits in select() on standard input and on a pipe of
    its own, which `close` writes to: the read stops at once (StdinStopped)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._wake_read, self._wake_write = os.pipe()
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            if self._closed:
                raise StdinStopped()
            self._busy = True
        try:
            return self._read(size if size >= 0 else sys.maxsize)
        finally:
            with self._lock:
                self._busy = False
                if self._closed:  # closed meanwhile: its pipe is freed here, after the select
                    self._free()

    def _read(self, size: int) -> bytes:
        pieces: list[bytes] = []
        left = size
        while left > 0:
            ready, _, _ = select.select([self._fd, self._wake_read], [], [])
            if self._wake_read in ready:
                raise StdinStopped()
            piece = os.read(self._fd, min(left, PIECE))
            if not piece:
                break
            pieces.append(piece)
            left -= len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        """Stop the read under way, if any, and every later one."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._wake_write, b"x")
            if not self._busy:
                self._free()

    def _free(self) -> None:
        os.close(self._wake_read)
        os.close(self._wake_write)

    def __enter__(self) -> StdinReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stdin_source() -> BinaryIO | StdinReader:
    """Standard input to read from: a regular file as it is (s3transfer seeks it and knows
    its size, and its reads never wait), anything else (a pipe, a terminal) through a
    StdinReader, which the caller closes."""
    buffer = sys.stdin.buffer
    try:
        regular = stat.S_ISREG(os.fstat(buffer.fileno()).st_mode)
    except OSError:
        regular = False
    return buffer if regular else StdinReader(buffer.fileno())
