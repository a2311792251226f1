"""Streaming HTTP transfers with retries: what the WebDAV, Onedata and Rucio providers share.

Bodies never sit whole in memory: a download is written chunk by chunk to a temporary file
beside its destination and renamed when complete; an upload sends an open file, which
aiohttp reads chunk by chunk. Connection failures, timeouts, truncated bodies, 5xx and 429
are transient: retried with backoff, at most ATTEMPTS attempts in all (one attempt is one
request: aiohttp's own resend is turned off). Anything else (401, 403, 404...) fails at once.
An answer's body is read only as far as it is used: at most ANSWER_LIMIT bytes of JSON,
DISCARD_LIMIT of one nobody uses. Bytes move as stored: no content coding asked for or
undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from faas_supervisor.errors import StorageError
from faas_supervisor.storage_providers import partial_path

T = TypeVar("T")

ATTEMPTS = 3
BACKOFF_BASE = 0.5  # seconds before the second attempt, doubled for the third (with jitter)
CHUNK_SIZE = 1 << 20
# Short connect timeout so a dead store fails quickly; sock_read bounds a stalled transfer
# (no byte for that long) without bounding a long healthy one.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
# The most bytes of an answer a provider uses (JSON: a DID's metadata, a token): a longer
# one is a failure, never read whole into memory.
ANSWER_LIMIT = 1 << 20
# The most bytes read of an answer nobody uses whole (a PUT's, a MKCOL's; an error's text,
# quoted cut anyway). A short one is read out, so its connection serves the next request;
# the rest of a longer one is left unread, and its connection closed with the response.
DISCARD_LIMIT = 1 << 16


class HttpFailure(Exception):
    """One attempt failed; `transient` says whether another attempt may succeed.

    Not a FaasError (so not in errors.py): the retry loop's own signal, never answered;
    the providers turn the last one into a StorageError.
    """

    def __init__(self, reason: str, transient: bool, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.status = status


def session(
    headers: dict[str, str] | None = None,
    verify: bool = True,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
) -> aiohttp.ClientSession:
    """A session for one transfer: aiohttp sessions belong to one event loop, and providers
    are built before the loop runs, so each transfer opens (and closes) its own.

    An object is its stored bytes: aiohttp would ask for gzip and undo it, so that a file
    stored compressed (served with `Content-Encoding: gzip`) came in decompressed, other
    bytes than S3 or curl give. Identity is asked for, and nothing is decoded."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                    sock_read=read_timeout)
    connector = aiohttp.TCPConnector(ssl=verify)  # False: no certificate check
    return aiohttp.ClientSession(timeout=timeout,
                                 headers={"Accept-Encoding": "identity", **(headers or {})},
                                 connector=connector, auto_decompress=False,
                                 middlewares=(_sent_once,))


async def _sent_once(request: aiohttp.ClientRequest,
                     handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
    """A lost connection fails the request: aiohttp would send an idempotent one (a PUT)
    once more itself, so that a PUT cut mid-body went out twice an attempt, six times in
    all where SPEC 6.2 allows 3. Its own retry catches only these two errors (a
    connection that cannot be made is raised as is), so another one ends it; `retrying`
    makes the attempts."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise ConnectionLost(str(exc) or type(exc).__name__) from exc


class ConnectionLost(aiohttp.ClientConnectionError):
    """The connection closed or failed before the answer came (no aiohttp resend)."""


def join_url(base: str, *parts: str) -> URL:
    """`base/part/...`, each path segment percent-encoded once (spaces, `+`, `%`, unicode)."""
    segments = [s for part in parts for s in part.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise HttpFailure(f"path {'/'.join(parts)!r} has a '.' or '..' segment", False)
    path = "/".join(quote(s, safe="") for s in segments)
    return URL(f"{base.rstrip('/')}/{path}", encoded=True)


def status_failure(response: aiohttp.ClientResponse) -> HttpFailure:
    reason = f"HTTP {response.status} {response.reason or ''}".strip()
    if response.status == 404:
        reason = "no such object (HTTP 404)"
    transient = response.status >= 500 or response.status in (408, 429)
    return HttpFailure(reason, transient, response.status)


def expect(response: aiohttp.ClientResponse, ok: Iterable[int]) -> None:
    if response.status not in ok:
        raise status_failure(response)


async def retrying(operation: Callable[[], Awaitable[T]]) -> T:
    """Run `operation` until it succeeds, fails for good, or ATTEMPTS are spent."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await operation()
        except HttpFailure as exc:
            failure = exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = HttpFailure(_describe(exc), transient=True)
        if not failure.transient or attempt == ATTEMPTS:
            raise failure
        # Backoff with jitter, so a restarting store is not hit by every client at once.
        await asyncio.sleep(BACKOFF_BASE * 2 ** (attempt - 1) * (0.5 + random.random()))
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def upload_failures(
    what: str,
    as_error: Callable[[HttpFailure], StorageError],
    remove_partial: Callable[[HttpFailure | None], Awaitable[None]],
) -> AsyncIterator[None]:
    """An upload's failures as one StorageError: a transfer cut short (a transient failure,
    or a cancellation, which is raised on) may have left part of the object, which goes
    first (`remove_partial` is given the failure, None for a cancellation); a local file
    that cannot be read is named. `what` is "<provider>: cannot
    upload <bucket>/<key>"."""
    try:
        yield
    except HttpFailure as exc:
        if exc.transient:
            await remove_partial(exc)
        raise as_error(exc) from None
    except OSError as exc:
        raise StorageError(f"{what}: {exc.strerror}") from None
    except asyncio.CancelledError:
        # Stopped mid-transfer (a job deleted, `run` stopped): what the PUT wrote goes
        # first, shielded from the cancellation, which then goes on.
        with contextlib.suppress(Exception):
            await asyncio.shield(remove_partial(None))
        raise


async def save_body(response: aiohttp.ClientResponse, dest: Path) -> None:
    """Stream the body to `dest` through a temporary file: no half file is ever `dest`."""
    partial = partial_path(dest, ".partial")
    try:
        with open(partial, "wb") as out:
            async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                out.write(chunk)
        os.replace(partial, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


async def read_answer(response: aiohttp.ClientResponse, limit: int = ANSWER_LIMIT) -> bytes:
    """The body of an answer that is used (JSON): more than `limit` bytes fails, for good
    (the server would send it again), having read no more than that."""
    body = await read_some(response, limit + 1)
    if len(body) > limit:
        raise HttpFailure(f"the server's answer is over {limit} bytes", False)
    return body


async def read_some(response: aiohttp.ClientResponse, limit: int = DISCARD_LIMIT) -> bytes:
    """At most `limit` bytes of the body, the rest left unread (see DISCARD_LIMIT)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := await response.content.read(limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.strerror or 'refused'})"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection broken mid-transfer"
    # A URL's query may be a credential (a presigned one that a redirect handed out):
    # shown without it.
    text = _QUERY.sub(r"\1", str(exc))
    if isinstance(exc, ConnectionLost):
        return f"connection lost ({text})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_QUERY = re.compile(r"(\w+://[^\s?#]*)[?#]\S*")
