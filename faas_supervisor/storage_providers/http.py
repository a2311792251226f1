"""Streaming HTTP transfers with retries: what the WebDAV and Onedata providers share.

Bodies never sit whole in memory: a download is written chunk by chunk to a temporary file
beside its destination and renamed when complete; an upload sends an open file, which
aiohttp reads chunk by chunk. Connection failures, timeouts, truncated bodies, 5xx and 429
are transient: retried with backoff, at most ATTEMPTS attempts in all. Anything else (401,
403, 404...) fails at once.
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
    are built before the loop runs, so each transfer opens (and closes) its own."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                    sock_read=read_timeout)
    connector = aiohttp.TCPConnector(ssl=verify)  # False: no certificate check
    return aiohttp.ClientSession(timeout=timeout, headers=headers, connector=connector)


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
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_QUERY = re.compile(r"(\w+://[^\s?#]*)[?#]\S*")
