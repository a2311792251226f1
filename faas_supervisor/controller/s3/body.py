"""A PutObject's (or UploadPart's) body, streamed to a file in bounded memory and checked.

The body is what the request's signature says it is (sigv4.Signed.payload): the bytes
themselves, whose SHA-256 must match a signed hash; or `aws-chunked` (the `STREAMING-*`
forms), each chunk's size on its own line, chained chunk signatures when signed, and
trailing headers (a checksum) when announced. Declared checksums (`Content-MD5`,
`x-amz-checksum-*` as a header or a trailer) are checked too. Nothing is kept unless
every check passed: the caller renames the file only then.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import StreamReader

from faas_supervisor.controller.s3 import sigv4
from faas_supervisor.controller.s3.digits import decimal
from faas_supervisor.controller.s3.errors import S3Error

PIECE = 1 << 20  # bytes handed to the writing thread at once
MAX_LINE = 4096  # a chunk's size line, or a trailer's
HEX_SIZE = re.compile(r"[0-9a-fA-F]{1,16}")  # a chunk's size: under 2**64


class _Crc32:
    """zlib's CRC-32 as a hashlib-like object (S3's `crc32` checksum)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _checksum(algorithm: str) -> Any:
    """A hasher for S3's checksum of that name; None for one this server cannot compute
    (crc32c and crc64nvme need a native library): such a checksum is not checked."""
    if algorithm == "crc32":
        return _Crc32()
    if algorithm in ("sha1", "sha256"):
        return hashlib.new(algorithm)
    return None


@dataclass(frozen=True)
class Received:
    size: int
    md5: str  # hex: the object's ETag when whole


class _Sink:
    """The file and every hash the body must match; written in a worker thread."""

    def __init__(self, path: Path, sha256: bool, checksums: Mapping[str, Any]) -> None:
        self.file = open(path, "wb")  # noqa: SIM115  closed by close()
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256() if sha256 else None
        self.checksums = checksums
        self.size = 0

    def write(self, data: bytes) -> None:
        self.md5.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        for hasher in self.checksums.values():
            hasher.update(data)
        self.file.write(data)
        self.size += len(data)

    def close(self) -> None:
        self.file.close()


async def receive(
    reader: StreamReader,
    headers: Mapping[str, str],
    signed: sigv4.Signed,
    path: Path,
) -> Received:
    """The body written to `path` and checked; an S3Error (the file left to the caller)
    when it is not what was declared."""
    payload = signed.payload
    streaming = payload in sigv4.STREAMING
    checksums: dict[str, Any] = {}
    expected: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith("x-amz-checksum-") and name != "x-amz-checksum-type":
            algorithm = name.removeprefix("x-amz-checksum-")
            if (hasher := _checksum(algorithm)) is not None:
                checksums[algorithm], expected[algorithm] = hasher, value
    trailer = headers.get("x-amz-trailer", "").strip().lower()
    if trailer.startswith("x-amz-checksum-"):
        algorithm = trailer.removeprefix("x-amz-checksum-")
        if (hasher := _checksum(algorithm)) is not None:
            checksums[algorithm] = hasher
    sink = _Sink(path, not streaming and payload != sigv4.UNSIGNED, checksums)
    chunked = _Chunked(reader, signed) if streaming else None
    try:
        async for piece in _batched(chunked if chunked is not None else _plain(reader)):
            await asyncio.to_thread(sink.write, piece)
    finally:
        await asyncio.to_thread(sink.close)
    declared = headers.get("x-amz-decoded-content-length" if streaming else "content-length")
    # Read up to one past the size: any longer number is as wrong as that one.
    length = None if declared is None else decimal(declared, sink.size + 1)
    if length is not None and length != sink.size:
        raise S3Error("IncompleteBody", "You did not provide the number of bytes specified by "
                      "the Content-Length (or x-amz-decoded-content-length) HTTP header")
    if sink.sha256 is not None and sink.sha256.hexdigest() != payload:
        raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header "
                      "does not match what was computed.")
    content_md5 = headers.get("content-md5")
    md5_base64 = base64.b64encode(sink.md5.digest()).decode()
    if content_md5 is not None and content_md5.strip() != md5_base64:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we "
                      "received.")
    for name, value in (chunked.trailers if chunked is not None else {}).items():
        if name.startswith("x-amz-checksum-"):
            expected[name.removeprefix("x-amz-checksum-")] = value
    for algorithm, hasher in checksums.items():
        declared = expected.get(algorithm)
        if declared is not None and declared.strip() != base64.b64encode(hasher.digest()).decode():
            raise S3Error("BadDigest", f"The {algorithm.upper()} you specified did not match "
                          "the calculated checksum.")
    return Received(sink.size, sink.md5.hexdigest())


def check_whole(
    data: bytes, headers: Mapping[str, str], signed: sigv4.Signed, checksums: bool = True
) -> None:
    """A small body read whole (an XML request: DeleteObjects, CompleteMultipartUpload,
    CreateBucket) checked as `receive` checks a streamed one: its signed SHA-256, then the
    Content-MD5 and (unless `checksums` is False: CompleteMultipartUpload's describe the
    object, not the XML) `x-amz-checksum-*` headers declared. aws-chunked is for object
    data only (no SDK sends it for these requests): refused, never taken unchecked."""
    if signed.payload in sigv4.STREAMING:
        raise S3Error("InvalidRequest", "aws-chunked bodies are taken for object data only")
    if signed.payload != sigv4.UNSIGNED and hashlib.sha256(data).hexdigest() != signed.payload:
        raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header "
                      "does not match what was computed.")
    content_md5 = headers.get("content-md5")
    if content_md5 is not None and (
        content_md5.strip() != base64.b64encode(hashlib.md5(data).digest()).decode()
    ):
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we "
                      "received.")
    for name, value in headers.items() if checksums else ():
        if name.startswith("x-amz-checksum-") and name != "x-amz-checksum-type":
            algorithm = name.removeprefix("x-amz-checksum-")
            hasher = _checksum(algorithm)
            if hasher is None:
                continue
            hasher.update(data)
            if value.strip() != base64.b64encode(hasher.digest()).decode():
                raise S3Error("BadDigest", f"The {algorithm.upper()} you specified did not "
                              "match the calculated checksum.")


async def _plain(reader: StreamReader) -> AsyncIterator[bytes]:
    while True:
        data = await reader.readany()
        if not data:
            return
        yield data


async def _batched(pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Pieces gathered up to PIECE: one thread hop per MiB, not per network read."""
    batch: list[bytes] = []
    size = 0
    async for piece in pieces:
        batch.append(piece)
        size += len(piece)
        if size >= PIECE:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


class _Chunked:
    """`aws-chunked`: an async iterator of the data, then `trailers`."""

    def __init__(self, reader: StreamReader, signed: sigv4.Signed) -> None:
        self.reader = reader
        self.signed = signed
        self.chunk_signed = signed.payload != sigv4.STREAMING_UNSIGNED_TRAILER
        self.with_trailer = signed.payload != sigv4.STREAMING_SIGNED
        self.previous = signed.signature
        self.trailers: dict[str, str] = {}

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._data()

    async def _line(self) -> bytes:
        try:
            line = await self.reader.readuntil(b"\n")
        except (asyncio.IncompleteReadError, ValueError):
            raise S3Error("IncompleteBody", "The aws-chunked body ended early") from None
        if len(line) > MAX_LINE or not line.endswith(b"\r\n"):
            raise S3Error("InvalidArgument", "The aws-chunked body is malformed")
        return line[:-2]

    async def _data(self) -> AsyncIterator[bytes]:
        while True:
            head = (await self._line()).decode("latin-1")
            size_text, _, extension = head.partition(";")
            # Hex digits only: int() would also take a sign, blanks and `_`, and a negative
            # size would read the rest of the body in one piece.
            if not HEX_SIZE.fullmatch(size_text):
                raise S3Error("InvalidArgument", "The aws-chunked body is malformed")
            size = int(size_text, 16)
            digest = hashlib.sha256()
            left = size
            while left:
                data = await self.reader.read(min(left, PIECE))
                if not data:
                    raise S3Error("IncompleteBody", "The aws-chunked body ended early")
                left -= len(data)
                if self.chunk_signed:
                    digest.update(data)
                yield data
            if self.chunk_signed:
                self._check_chunk(extension, digest.hexdigest())
            if size == 0:
                break
            if await self._line() != b"":
                raise S3Error("InvalidArgument", "The aws-chunked body is malformed")
        if self.with_trailer:
            await self._read_trailers()
        elif await self._line() != b"":
            raise S3Error("InvalidArgument", "The aws-chunked body is malformed")

    def _check_chunk(self, extension: str, data_hash: str) -> None:
        name, _, given = extension.partition("=")
        if name.strip() != "chunk-signature":
            raise S3Error("SignatureDoesNotMatch", "A chunk of the body is not signed")
        text = "\n".join([
            "AWS4-HMAC-SHA256-PAYLOAD",
            self.signed.amz_date,
            self.signed.scope,
            self.previous,
            sigv4.EMPTY_SHA256,
            data_hash,
        ])
        expected = sigv4.hmac_hex(self.signed.signing_key, text)
        if not sigv4.same(given.strip(), expected):
            raise S3Error("SignatureDoesNotMatch", "A chunk's signature does not match")
        self.previous = expected

    async def _read_trailers(self) -> None:
        lines: list[str] = []
        signature: str | None = None
        while True:
            line = (await self._line()).decode("latin-1")
            if not line:
                break
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "x-amz-trailer-signature":
                signature = value.strip()
                continue
            if len(lines) > 16:
                raise S3Error("InvalidArgument", "Too many trailing headers")
            lines.append(line)
            self.trailers[name] = value.strip()
        if self.chunk_signed:
            text = "".join(line + "\n" for line in lines)
            expected = sigv4.hmac_hex(self.signed.signing_key, "\n".join([
                "AWS4-HMAC-SHA256-TRAILER",
                self.signed.amz_date,
                self.signed.scope,
                self.previous,
                hashlib.sha256(text.encode("latin-1")).hexdigest(),
            ]))
            if signature is None or not sigv4.same(signature, expected):
                raise S3Error("SignatureDoesNotMatch", "The trailer's signature does not match")
