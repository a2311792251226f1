"""Onedata (`onedata.*`) through the Oneprovider REST file API (`/api/v3/oneprovider`).

Paths are relative to the provider's `space`. An output's `bucket/key` is
`<space>/bucket/key`, as OSCAR writes output paths relative to the space; a Onedata event
names the space itself as the bucket (its key starts with the space), which is then not
repeated. Endpoints used, all with the `X-Auth-Token` header:

* `POST /lookup-file-id/{space}[/{path}]`: a path's file id (404 when there is none);
* `GET /data/{space_dir_id}/path/{path}`: a file's content, streamed;
* `PUT /data/{space_dir_id}/path/{path}?create_parents=true`: a new regular file, the
  request body its content (fails if the file exists);
* `PUT /data/{file_id}/content`: replace an existing file's content;
* `DELETE /data/{file_id}`: remove what a failed upload left (a file it found stays
  unless an attempt was cut part way).

`oneprovider_host` is a host name (HTTPS) or a base URL.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp

from faas_supervisor.config import ProviderConfig
from faas_supervisor.errors import StorageError, printable
from faas_supervisor.storage_providers import http, scrub, url_secrets
from faas_supervisor.storage_providers.http import HttpFailure


class OnedataProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        host = config.get("oneprovider_host")
        base = host if "://" in host else f"https://{host}"
        self._api = f"{base.rstrip('/')}/api/v3/oneprovider"
        self._token = config.get("token")
        self._secrets = [self._token, *url_secrets(host)]  # as configured: messages quote it
        self.space = config.get("space").strip("/")
        self._verify = config.flag("verify", True)
        self._space_dir_id: str | None = None  # stable for the space's life: looked up once

    def _session(self) -> aiohttp.ClientSession:
        # Every request carries the token, so none follows a redirect (allow_redirects=
        # False at each): aiohttp would send X-Auth-Token to another origin too.
        return http.session(headers={"X-Auth-Token": self._token}, verify=self._verify)

    def _path(self, bucket: str, key: str) -> str:
        parts = [key] if bucket.strip("/") == self.space else [bucket, key]
        return "/".join(s for p in parts for s in p.split("/") if s)

    def _error(self, verb: str, bucket: str, key: str, exc: HttpFailure) -> StorageError:
        reason = exc.reason
        if exc.status in (401, 403):
            reason = f"the token is refused (HTTP {exc.status})"
        return StorageError(
            f"{self.name}: cannot {verb} {bucket}/{printable(key)}: {scrub(reason, self._secrets)}"
        )

    async def _lookup(self, session: aiohttp.ClientSession, path: str) -> str | None:
        """The file id of `<space>/<path>`, or None when nothing is there."""
        url = http.join_url(self._api, "lookup-file-id", self.space, path)

        async def post() -> str | None:
            async with session.post(url, allow_redirects=False) as response:
                if response.status == 404:
                    await http.read_some(response)
                    return None
                http.expect(response, (200,))
                answer = await http.read_answer(response)
            try:
                body: Any = json.loads(answer)
            except ValueError:  # not JSON: answered without a fileId, below
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("fileId"), str):
                raise HttpFailure("lookup-file-id answered without a fileId", False)
            return str(body["fileId"])

        return await http.retrying(post)

    async def _space_dir(self, session: aiohttp.ClientSession) -> str:
        if self._space_dir_id is None:
            found = await self._lookup(session, "")
            if found is None:
                raise HttpFailure(f"no space {self.space!r} (HTTP 404)", False, 404)
            self._space_dir_id = found
        return self._space_dir_id

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        path = self._path(bucket, key)

        async def get() -> None:
            async with session.get(url, allow_redirects=False) as response:
                http.expect(response, (200,))
                await http.save_body(response, dest)

        try:
            async with self._session() as session:
                space_dir = await self._space_dir(session)
                url = http.join_url(self._api, "data", space_dir, "path", path)
                await http.retrying(get)
        except HttpFailure as exc:
            raise self._error("download", bucket, key, exc) from None

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        headers = {"Content-Type": "application/octet-stream"}

        async def send(url: Any, ok: tuple[int, ...]) -> None:
            with open(src, "rb") as body:
                try:
                    async with session.put(url, data=body, headers=headers,
                                           allow_redirects=False) as response:
                        await http.read_some(response)  # its answer may be any size
                        http.expect(response, ok)
                except aiohttp.ClientConnectorError:
                    raise  # never connected: nothing sent
                except (aiohttp.ClientError, TimeoutError):
                    writing.append("cut")  # part of the body may have been written
                    raise

        # What the PUTs do, once known: "create" a file, or "replace" the content of the
        # file found there; "cut" once an attempt was cut part way (for the clean-up of a
        # failed upload).
        writing: list[str] = []
        async with self._session() as session, http.upload_failures(
            f"{self.name}: cannot upload {bucket}/{printable(key)}",
            lambda exc: self._error("upload", bucket, key, exc),
            lambda failure: self._remove_partial(session, path, writing, failure),
        ):
            existing = await self._lookup(session, path)
            if existing is not None:
                url = http.join_url(self._api, "data", existing, "content")
                writing.append("replace")
                await http.retrying(lambda: send(url, (200, 204)))
            else:
                space_dir = await self._space_dir(session)
                url = http.join_url(self._api, "data", space_dir, "path", path)
                url = url.with_query({"create_parents": "true"})
                writing.append("create")
                await http.retrying(lambda: send(url, (200, 201)))

    async def _remove_partial(
        self, session: aiohttp.ClientSession, path: str, writing: list[str],
        failure: HttpFailure | None,
    ) -> None:
        """The file the failed upload made goes. A file it found stays when no attempt
        was cut part way (each answered with an error status, a 503: nothing written),
        and goes when one was, or the upload was cancelled (its content replaced by part
        of ours). Best effort: a store that failed the upload may fail this too."""
        if not writing:
            return
        if writing[0] == "replace" and failure is not None and "cut" not in writing:
            return
        with contextlib.suppress(HttpFailure, aiohttp.ClientError, TimeoutError):
            file_id = await self._lookup(session, path)
            if file_id is not None:
                async with session.delete(http.join_url(self._api, "data", file_id),
                                          allow_redirects=False):
                    pass
