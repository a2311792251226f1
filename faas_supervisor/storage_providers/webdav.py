"""WebDAV (`webdav.*`, dCache's door): GET and PUT streamed with aiohttp, basic auth.

The object `bucket/key` is `<hostname>/bucket/key`. `hostname` is the base URL; without a
scheme it means HTTPS, as dCache's WebDAV doors serve it. Missing folders are made with
MKCOL when a PUT answers 409 (RFC 4918: the parent collection does not exist). An
upload asks first what the key holds (HEAD); a PUT that fails for good is followed by a
DELETE of what it left there, so that no partial file stays behind, while an object that
was there before stays unless it is known to have changed (never lost).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
from pathlib import Path

import aiohttp
from yarl import URL

from faas_supervisor.config import ProviderConfig
from faas_supervisor.errors import StorageError, printable
from faas_supervisor.storage_providers import http, scrub, url_secrets
from faas_supervisor.storage_providers.http import HttpFailure

# A cut PUT may land after our DELETE: check, and delete again, for about 3 s at most.
PARTIAL_CLEANUP_ATTEMPTS = 5

# An object's version as HEAD tells it: ETag, Last-Modified, Content-Length.
Version = tuple[str | None, str | None, str | None]
UNKNOWN: Version = (None, None, None)


class WebDavProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        base = config.get("hostname")
        self._base = (base if "://" in base else f"https://{base}").rstrip("/")
        self._login = config.get("login")
        self._password = config.get("password")
        self._secrets = [self._password, *url_secrets(base)]  # as configured: messages quote it
        self._verify = config.flag("verify", True)

    def _session(self) -> aiohttp.ClientSession:
        credentials = base64.b64encode(f"{self._login}:{self._password}".encode()).decode()
        return http.session(headers={"Authorization": f"Basic {credentials}"},
                            verify=self._verify)

    def _error(self, verb: str, bucket: str, key: str, exc: HttpFailure) -> StorageError:
        reason = exc.reason
        if exc.status == 401:
            reason = "wrong login or password (HTTP 401)"
        return StorageError(
            f"{self.name}: cannot {verb} {bucket}/{printable(key)}: {scrub(reason, self._secrets)}"
        )

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        async def get() -> None:
            async with session.get(url) as response:
                http.expect(response, (200,))
                await http.save_body(response, dest)

        try:
            url = http.join_url(self._base, bucket, key)
            async with self._session() as session:
                await http.retrying(get)
        except HttpFailure as exc:
            raise self._error("download", bucket, key, exc) from None

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        async def put() -> int:
            with open(src, "rb") as body:
                headers = {"Content-Type": "application/octet-stream"}
                async with session.put(url, data=body, headers=headers) as response:
                    await http.read_some(response)  # its answer may be any size: not kept
                    if response.status == 409:  # a parent folder is missing
                        return response.status
                    http.expect(response, (200, 201, 204))
                    return response.status

        try:
            url = http.join_url(self._base, bucket, key)
        except HttpFailure as exc:
            raise self._error("upload", bucket, key, exc) from None
        # What the key held before this upload (None: nothing), once asked: a failed
        # upload removes what it wrote there, never an object it found and left untouched.
        before: list[Version | None] = []
        async with self._session() as session, http.upload_failures(
            f"{self.name}: cannot upload {bucket}/{printable(key)}",
            lambda exc: self._error("upload", bucket, key, exc),
            lambda _failure: self._remove_partial(session, url, before),
        ):
            before.append(await http.retrying(lambda: _version(session, url)))
            if await http.retrying(put) == 409:
                await self._make_folders(session, bucket, key)
                if await http.retrying(put) == 409:
                    raise HttpFailure("the server refuses the folder (HTTP 409)", False, 409)

    @staticmethod
    async def _remove_partial(
        session: aiohttp.ClientSession, url: URL, before: list[Version | None]
    ) -> None:
        """DELETE what the failed upload left at the key, until it is gone: the server may
        still be finishing the cut PUT (and writing what it got) when the DELETE arrives,
        so one DELETE is not enough. The object that was there before (a 503 refused every
        PUT) stays unless it is known to have changed: an object whose version cannot be
        told (HEAD not allowed, or failing now) is left, never lost. Where there was none,
        what is there goes. Nothing is done before the first PUT."""
        if not before:
            return
        was = before[0]
        for attempt in range(PARTIAL_CLEANUP_ATTEMPTS):
            try:
                now = await _version(session, url)
            except (HttpFailure, aiohttp.ClientError, TimeoutError):
                now = UNKNOWN
            if now is None:
                return
            if was is not None and (now == was or UNKNOWN in (now, was)):
                return  # the object found there: unchanged, or not known to be changed
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.delete(url) as response:
                    await http.read_some(response)
            await asyncio.sleep(0.1 * 2**attempt)  # backoff while the server settles

    async def _make_folders(self, session: aiohttp.ClientSession, bucket: str, key: str) -> None:
        """MKCOL each ancestor of the object, top down; 405 means it exists already."""
        segments = [s for s in f"{bucket}/{key}".split("/") if s][:-1]
        for depth in range(1, len(segments) + 1):
            url = http.join_url(self._base, *segments[:depth])
            await http.retrying(functools.partial(self._mkcol, session, url))

    @staticmethod
    async def _mkcol(session: aiohttp.ClientSession, url: URL) -> None:
        async with session.request("MKCOL", url) as response:
            await http.read_some(response)
            http.expect(response, (201, 405))



async def _version(session: aiohttp.ClientSession, url: URL) -> Version | None:
    """The version of the object at `url`; None when there is none. A store that is
    down or busy (5xx, 429) or refuses the login (401) fails as any request; another
    status (a redirect, 403, 405) gives UNKNOWN and never fails the upload: the PUT's
    own answer decides."""
    async with session.head(url) as response:
        if response.status == 404:
            return None
        if response.status in (401, 429) or response.status >= 500:
            http.expect(response, (200,))
        if response.status != 200:
            return UNKNOWN
        headers = response.headers
        return headers.get("ETag"), headers.get("Last-Modified"), headers.get("Content-Length")
