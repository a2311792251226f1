"""The response body of an invocation (SPEC 4.1), as an async stream of bytes.

One output file: that file; several: a ZIP of them; none: the logs. Base64-encoded unless
the client accepts the raw bytes. Everything is read from disk as it is sent: a ZIP is
written by `zipfile` in a worker thread into a bounded queue, so neither a large file
nor a large archive is ever held in memory.
"""

from __future__ import annotations

import asyncio
import os
import threading
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pybase64

from faas_supervisor.base64_stream import encode_chunks
from faas_supervisor.errors import FaasError
from faas_supervisor.invocation import (
    Invocation,
    OutputChanged,
    OutputFile,
    open_output,
    opened_path,
)
from faas_supervisor.logs import InvocationLog

CHUNK = 3 * 64 * 1024  # a multiple of 3, so base64 of each chunk concatenates cleanly
TEXT = "text/plain; charset=utf-8"
# Bodies up to this size are read whole at once (most answers are a few lines of logs):
# one read, no chunk loop, sent in one write.
SMALL = 64 * 1024


@dataclass
class Body:
    content_type: str
    stream: AsyncIterator[bytes]
    length: int | None  # known for everything but ZIPs, which are built as they are sent
    kind: str  # "file", "zip" or "logs", for the X- headers and metrics
    data: bytes | None = None  # the whole body when SMALL or less (`stream` yields it too)


def _small(content_type: str, data: bytes, kind: str) -> Body:
    return Body(content_type, _once(data), len(data), kind, data)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _read_small(output: OutputFile, limit: int, log: InvocationLog) -> tuple[bytes | None, int]:
    """(The whole file, its size) if it holds `limit` bytes or fewer, else (None, its
    size): then it is streamed. Read in the loop's thread, so opened as listed
    (invocation.open_output: never a link's target, never a FIFO's wait); one that is no
    longer the file listed reads as empty, skipped with a warning."""
    try:
        fd = open_output(output)
    except OutputChanged as exc:
        _skipped(output, exc, log)
        return b"", 0
    try:
        data = os.read(fd, limit + 1)  # a regular file gives all it has, up to the count
        if len(data) <= limit:
            return data, len(data)
        return None, os.fstat(fd).st_size
    finally:
        os.close(fd)


def _skipped(output: OutputFile, reason: OutputChanged, log: InvocationLog) -> None:
    log.warning(f"output {output.relative} skipped from the response: {reason}")


def success_body(invocation: Invocation, accept: str) -> Body:
    outputs = invocation.outcome.outputs
    if len(outputs) == 1:
        output = outputs[0]
        raw = _accepts(accept, "application/octet-stream")
        log = invocation.log
        data, size = _read_small(output, SMALL if raw else SMALL // 4 * 3, log)
        if data is not None:
            if raw:
                return _small("application/octet-stream", data, "file")
            return _small(TEXT, pybase64.b64encode(data), "file")
        if raw:
            return Body("application/octet-stream", file_chunks(output, log), size, "file")
        return Body(TEXT, encode_chunks(file_chunks(output, log)), 4 * ((size + 2) // 3), "file")
    if len(outputs) > 1:
        if _accepts(accept, "application/zip"):
            return Body("application/zip", zip_chunks(outputs, invocation.log), None, "zip")
        return Body(TEXT, encode_chunks(zip_chunks(outputs, invocation.log)), None, "zip")
    return logs_body(invocation, None)


def failure_body(invocation: Invocation, error: FaasError) -> Body:
    """A one-line reason first, then the logs."""
    return logs_body(invocation, error.message)


def logs_body(invocation: Invocation, first_line: str | None) -> Body:
    """The logs; their length is known, since the script and its group are gone."""
    head = (first_line.encode() + b"\n" if first_line else b"") + invocation.log.text()
    log = invocation.script_log
    script_bytes = os.fstat(log).st_size if log is not None else 0
    if len(head) + script_bytes <= SMALL:
        script = os.pread(log, script_bytes, 0) if log is not None and script_bytes else b""
        return _small(TEXT, head + script, "logs")
    return Body(
        TEXT, logs_chunks(invocation, head, script_bytes), len(head) + script_bytes, "logs"
    )


def _accepts(accept: str, media_type: str) -> bool:
    """Whether `accept` names `media_type` itself (names are case-insensitive) with a
    weight above 0: `q=0` says "not acceptable" (RFC 9110, 12.4.2)."""
    for part in accept.split(","):
        name, *parameters = part.split(";")
        if name.strip().lower() != media_type:
            continue
        weight = "1"
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                weight = value.strip()
        try:
            if float(weight) > 0:
                return True
        except ValueError:  # a malformed weight: the type is still named
            return True
    return False


async def file_chunks(
    output: OutputFile, log: InvocationLog, chunk_size: int = CHUNK
) -> AsyncIterator[bytes]:
    """The output as listed (open_output); one that is no longer that file gives nothing,
    and the answer ends short of the length announced (the sender says so, and closes)."""
    try:
        fd = open_output(output)
    except OutputChanged as exc:
        _skipped(output, exc, log)
        return
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


class _Abandoned(Exception):
    """Raised in the ZIP worker once the consumer has gone, to stop building the archive."""


class _QueueWriter:
    """A write-only, unseekable file that hands what zipfile writes to the event loop."""

    def __init__(self, queue: asyncio.Queue[bytes | None], loop: asyncio.AbstractEventLoop) -> None:
        self.queue = queue
        self.loop = loop
        self.buffer = bytearray()
        # Set by the consumer when the client leaves: the rest of the archive is not wanted.
        self.abandoned = threading.Event()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self._send()
        return len(data)

    def _send(self) -> None:
        if self.abandoned.is_set():
            raise _Abandoned
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            # Blocks the worker thread while the queue is full: back-pressure.
            asyncio.run_coroutine_threadsafe(self.queue.put(data), self.loop).result()

    def flush(self) -> None:
        self._send()

    def close(self) -> None:
        """zipfile never closes a file it was given; here for the file protocol."""


async def zip_chunks(outputs: Sequence[OutputFile], log: InvocationLog) -> AsyncIterator[bytes]:
    """A ZIP of the outputs (paths relative to TMP_OUTPUT_DIR), built as it is sent."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
    writer = _QueueWriter(queue, loop)

    def build() -> None:
        try:
            # zipfile sees an unseekable file and writes data descriptors: a streamed ZIP.
            with zipfile.ZipFile(
                writer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1
            ) as zf:
                for output in outputs:
                    try:
                        fd = open_output(output)  # as listed: see there
                    except OutputChanged as exc:
                        _skipped(output, exc, log)  # (its lines are taken from any thread)
                        continue
                    with os.fdopen(fd, "rb") as src:
                        # Not strict: a file dated before 1980 or after 2107 (`touch -d
                        # @0`, files from a reproducible build) is dated at the nearest end,
                        # not a broken answer after its 200.
                        info = zipfile.ZipInfo.from_file(opened_path(fd, output),
                                                         output.relative,
                                                         strict_timestamps=False)
                        info.compress_type = zipfile.ZIP_DEFLATED
                        with zf.open(info, "w") as dest:
                            while chunk := src.read(CHUNK):
                                if writer.abandoned.is_set():  # compressible data writes rarely
                                    raise _Abandoned
                                dest.write(chunk)
            writer.flush()
        except Exception:
            if not writer.abandoned.is_set():
                raise
            # The client left (and the folder may be gone already): nothing is owed.
        finally:
            if not writer.abandoned.is_set():
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    task = loop.run_in_executor(None, build)
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
        await task  # re-raise what went wrong in the worker
    finally:
        if not task.done():
            # The client left. Stop the worker rather than build the rest of the archive
            # for no one (it would hold the invocation's folder that long), and free the
            # queue so the one put it may be blocked on completes; it puts nothing more.
            writer.abandoned.set()
            while not queue.empty():
                queue.get_nowait()


async def logs_chunks(
    invocation: Invocation, head: bytes, script_bytes: int
) -> AsyncIterator[bytes]:
    """The reason and runtime lines at or above log_level, then the script's output: no
    more of it than the Content-Length announced, whatever a straggler still wrote."""
    if head:
        yield head
    log = invocation.script_log
    offset = 0
    # The log is the invocation's until remove(), which runs once the response is sent.
    while log is not None and offset < script_bytes:
        chunk = os.pread(log, min(CHUNK, script_bytes - offset), offset)
        if not chunk:  # a straggler truncated it: the answer ends short, as it must
            break
        offset += len(chunk)
        yield chunk
