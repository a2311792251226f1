"""Rucio (`rucio.*`): DIDs read and written through Rucio's REST API, over aiohttp.

An object `bucket/key` is the DID `bucket:key` (scope and name). The catalogue is spoken
to over HTTP, as Rucio's own client does; the bytes move with the protocol the RSE
offers. Only the `file` protocol (a POSIX folder the RSE's PFNs name, which this host
sees) is supported: its files are read and written as `rucio upload` / `rucio download`
do with `rucio.rse.protocols.posix`. An RSE without it is a clear error, never a guess.

Endpoints used, each with the `X-Rucio-Auth-Token` header:

* `GET /auth/userpass` (username/password login: the token comes back in a header);
* `GET /dids/{scope}/{name}/files`: the files of a DID (a file lists itself);
* `POST /replicas/list`: where they are, as `file://` PFNs;
* `GET /dids/{scope}/{name}/meta`: an existing DID's size and adler32;
* `GET /rses/{rse}/lfns2pfns`: where a new file goes (the RSE's own naming algorithm);
* `POST /replicas`, then `POST /rules/`: register the file once its bytes are in place
  (what `rucio upload --register-after-upload` does), so that a failed copy leaves no
  DID and a failed registration no file. A DID that exists with the same content gets
  its rule again (Rucio's DuplicateRule is success): a rule refused the first time
  (no quota left) is made by the rerun.

Credentials: `username` + `password` (a Rucio token is fetched, and fetched again before
it expires), or an OIDC `access_token` sent as is. An access token that expires within
REFRESH_MARGIN is refreshed first at `token_endpoint` with the `refresh_token` (the
original supervisor's grant: `client_id`, `scopes`, `oidc_audience` as `resource`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import functools
import hashlib
import json
import os
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from faas_supervisor.config import ProviderConfig
from faas_supervisor.errors import (
    NO_SPACE,
    BadEvent,
    ConfigError,
    StorageConflict,
    StorageError,
    local_write_error,
    printable,
)
from faas_supervisor.logs import get_logger
from faas_supervisor.storage_providers import (
    http,
    partial_path,
    scrub,
    stoppable_copy,
    url_secrets,
)
from faas_supervisor.storage_providers.http import HttpFailure

_logger = get_logger(component="rucio")

# The original supervisor's defaults (EGI Check-in).
DEFAULT_TOKEN_ENDPOINT = "https://aai.egi.eu/auth/realms/egi/protocol/openid-connect/token"
DEFAULT_CLIENT_ID = "token-portal"
DEFAULT_SCOPES = "openid profile offline_access eduperson_entitlement"
REFRESH_MARGIN = 60.0  # seconds: a token expiring sooner is renewed before use
USERPASS_LIFETIME = 3600.0  # assumed when the server does not say when its token expires
FILE_SCHEME = "file"
CHUNK = 1 << 20
# Seconds an upload's clean-up may spend asking whether a DID names the file it placed,
# well within what a watchdog shut down waits for the steps it cut (watchdog.server's
# ABORT_GRACE, 5 s) before its server cancels the handler, whose 503 would never go.
CHECK_TIMEOUT = 3.0
DUPLICATE_RULE = "DuplicateRule"  # Rucio's ExceptionClass (a 409) for a rule that exists
# os.link's errors on a file system that has no hard links.
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)


@dataclass(frozen=True)
class RemoteFile:
    """A file DID and where its bytes are on this host."""

    scope: str
    name: str
    size: int
    adler32: str
    path: Path | None  # None: no replica readable through the `file` protocol

    @property
    def did(self) -> str:
        return f"{self.scope}:{self.name}"

    @property
    def base_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]


class RucioProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self._host = base_url(config.get("host"))
        self._auth_host = base_url(config.get("auth_host") or config.get("host"))
        self._account = config.get("account")
        self._rse = config.get("rse")
        self._verify = config.flag("verify", True)
        self._username = config.get("username")
        self._password = config.get("password")
        self._access_token = config.get("access_token")
        self._refresh_token = config.get("refresh_token")
        self._token_endpoint = config.get("token_endpoint") or DEFAULT_TOKEN_ENDPOINT
        self._client_id = config.get("client_id") or DEFAULT_CLIENT_ID
        self._client_secret = config.get("client_secret")
        self._scopes = config.get("scopes") or DEFAULT_SCOPES
        self._audience = config.get("oidc_audience")
        # What the configured URLs' userinfo holds: messages quote them as configured.
        self._url_secrets = [s for url in (config.get("host"), config.get("auth_host"),
                                           self._token_endpoint) for s in url_secrets(url)]
        if not self._access_token and not (self._username and self._password):
            raise ConfigError(f"storage provider {self.name} has neither 'username' and "
                              "'password' nor 'access_token'")
        self._token = ""  # the X-Rucio-Auth-Token in use ("" until the first request)
        self._expires = 0.0  # its expiry, seconds since the epoch (0: unknown)
        if self._access_token:
            self._token, self._expires = self._access_token, jwt_expiry(self._access_token)
            if self._expires and self._expires < time.time() and not self._refresh_token:
                raise ConfigError(f"storage provider {self.name}: access_token expired and "
                                  "there is no refresh_token to renew it")
        # Created here, bound to the loop on first use (Python >= 3.10): one refresh or
        # login at a time, however many invocations need a token at once.
        self._token_lock = asyncio.Lock()

    # ---- what invocations call ------------------------------------------------------

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        """One file DID to `dest`; a collection is download_all's."""
        async with self._session() as session, self._failures("download", bucket, key):
            files = await self._locate(session, bucket, key)
            if len(files) != 1 or files[0].did != f"{bucket}:{key}":
                raise HttpFailure("not a file DID", False)
            await asyncio.to_thread(copy_checked, files[0], dest)

    async def download_all(self, bucket: str, key: str, folder: Path) -> list[Path]:
        """Every file of the DID (a file, dataset or container) into `folder`, each under
        its base name, made unique (`name`, `name_1`...); the paths written, in order."""
        async with self._session() as session, self._failures("download", bucket, key):
            files = await self._locate(session, bucket, key)
            targets = unique_names(f.base_name for f in files)
            staged = frozenset(targets)
            written = []
            for remote, target in zip(files, targets, strict=True):
                dest = folder / target
                await asyncio.to_thread(copy_checked, remote, dest, staged)
                written.append(dest)
            return written

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        did = f"{bucket}:{key}"
        async with self._session() as session, self._failures("upload", bucket, key):
            size, adler, md5 = await asyncio.to_thread(checksums, src)
            existing = await self._meta(session, bucket, key)
            if existing is not None:
                if not same_content(existing, size, adler):
                    raise StorageConflict(f"{self.name}: cannot upload {printable(did)}: the DID "
                                          "exists with other content (Rucio DIDs are immutable)")
                # An earlier run may have registered the replica and then had its rule
                # refused (no quota left): the rerun finishes that work. A DID some rule
                # keeps already (another account's upload) needs none of ours.
                rules = await self._lines(session, "GET", self._url("dids", bucket, key, "rules"))
                if not rules:
                    await self._keep(session, bucket, key)
                _logger.info("DID exists with the same content: not uploaded again",
                             provider=self.name, did=did)
                return
            target = await self._new_path(session, bucket, key)
            await put_on_rse(src, target)
            replica = {"scope": bucket, "name": key, "bytes": size, "adler32": adler,
                       "md5": md5}
            try:
                await self._call(session, "POST", self._url("replicas"), {
                    "rse": self._rse, "files": [replica], "ignore_availability": True})
            except BaseException:
                # Unless the server did register it (an answer lost on the way), a file no
                # DID names is dark data: not left behind. The look and the removal are a
                # task of their own, waited for even when cancelled again (a watchdog shut
                # down cuts the upload, then its server cancels the handler): else the
                # look is cut and the file stays, the client with no answer.
                cleaning = asyncio.ensure_future(self._remove_unnamed(session, bucket, key,
                                                                      target))
                try:
                    await asyncio.shield(cleaning)
                finally:
                    if not cleaning.done():
                        await asyncio.wait([cleaning])  # CHECK_TIMEOUT at most
                raise
            await self._keep(session, bucket, key)

    async def _remove_unnamed(self, session: aiohttp.ClientSession, scope: str, name: str,
                              target: Path) -> None:
        """Remove the file placed at `target` if no DID `scope:name` names it. A look that
        fails or takes over CHECK_TIMEOUT tells nothing: the file is left, as a replica
        registered (its answer lost) must never lose its bytes."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CHECK_TIMEOUT):
                meta = await self._meta(session, scope, name)
            if meta is None:
                target.unlink()

    async def _keep(self, session: aiohttp.ClientSession, scope: str, name: str) -> None:
        """A rule of one copy on the RSE, as `rucio upload` makes: it keeps the replica
        from the reaper. One that exists already (a rerun, or a retry whose first answer
        was lost) is what is wanted."""
        await self._call(session, "POST", URL(f"{self._host}/rules/"), {
            "dids": [{"scope": scope, "name": name}], "account": self._account,
            "copies": 1, "rse_expression": self._rse,
        }, exists_ok=True)

    # ---- the catalogue ----------------------------------------------------------------

    async def _locate(
        self, session: aiohttp.ClientSession, scope: str, name: str
    ) -> list[RemoteFile]:
        """The DID's files, each with its local replica path, refusing names that would
        not be a file in the input folder before anything is written."""
        listed = await self._lines(session, "GET", self._url("dids", scope, name, "files"))
        paths = await self._replica_paths(session, scope, name)
        files = []
        for entry in listed:
            fscope, fname = str(entry.get("scope", "")), str(entry.get("name", ""))
            base = fname.rsplit("/", 1)[-1]
            if base in ("", ".", "..") or "\x00" in fname:
                raise BadEvent(f"{self.name}: DID {fscope}:{printable(fname)} in "
                               f"{scope}:{printable(name)} does not name a file that can be "
                               "written to the input folder")
            path = paths.get((fscope, fname))
            if path is None:
                raise HttpFailure(f"no replica of {fscope}:{fname} on an RSE this host reads "
                                  f"with the {FILE_SCHEME} protocol", False)
            files.append(RemoteFile(fscope, fname, int(entry.get("bytes") or 0),
                                    str(entry.get("adler32") or ""), path))
        return files

    async def _replica_paths(
        self, session: aiohttp.ClientSession, scope: str, name: str
    ) -> dict[tuple[str, str], Path]:
        """(scope, name) -> a local path of an available replica, the configured RSE's
        first. Rucio expands a dataset or container to its files here."""
        body = {"dids": [{"scope": scope, "name": name}], "schemes": [FILE_SCHEME],
                "all_states": False}
        found: dict[tuple[str, str], Path] = {}
        for replica in await self._lines(session, "POST", self._url("replicas", "list"), body):
            rses = replica.get("rses") or {}
            ordered = sorted(rses.items(), key=lambda item: item[0] != self._rse)
            local = [path for _rse, pfns in ordered for pfn in pfns
                     if isinstance(pfn, str) and (path := pfn_path(pfn)) is not None]
            if local:
                found[(str(replica.get("scope")), str(replica.get("name")))] = local[0]
        return found

    async def _meta(
        self, session: aiohttp.ClientSession, scope: str, name: str
    ) -> dict[str, Any] | None:
        answer = await self._call(session, "GET", self._url("dids", scope, name, "meta"),
                                  missing_ok=True)
        return answer if isinstance(answer, dict) else None

    async def _new_path(self, session: aiohttp.ClientSession, scope: str, name: str) -> Path:
        url = self._url("rses", self._rse, "lfns2pfns").with_query(
            [("lfn", f"{scope}:{name}"), ("scheme", FILE_SCHEME), ("operation", "write")]
        )
        answer = await self._call(session, "GET", url)
        pfn = answer.get(f"{scope}:{name}") if isinstance(answer, dict) else None
        path = pfn_path(pfn) if isinstance(pfn, str) else None
        if path is None:
            raise HttpFailure(f"RSE {self._rse} has no {FILE_SCHEME} protocol to write with",
                              False)
        return path

    # ---- HTTP -------------------------------------------------------------------------

    def _url(self, *parts: str) -> URL:
        # Each part one segment: a DID name's `/` is encoded, as Rucio's client sends it.
        return URL(f"{self._host}/" + "/".join(quote(p, safe="") for p in parts),
                   encoded=True)

    def _session(self) -> aiohttp.ClientSession:
        return http.session(verify=self._verify)

    async def _call(self, session: aiohttp.ClientSession, method: str, url: URL,
                    body: Any = None, missing_ok: bool = False, exists_ok: bool = False) -> Any:
        """One JSON request with retries and a fresh token; None for a 404 if missing_ok,
        and for Rucio's DuplicateRule (409) if exists_ok."""
        async def attempt() -> Any:
            headers = {"X-Rucio-Auth-Token": await self._auth(session)}
            # No request with a credential follows a redirect: aiohttp drops only
            # Authorization and cookies for another origin, not Rucio's headers.
            async with session.request(method, url, json=body, headers=headers,
                                       allow_redirects=False) as response:
                duplicate = (response.status == 409
                             and response.headers.get("ExceptionClass") == DUPLICATE_RULE)
                if (response.status == 404 and missing_ok) or (duplicate and exists_ok):
                    await http.read_some(response)
                    return None
                await self._check(response)
                text = await http.read_answer(response)
            try:
                return json.loads(text)
            except ValueError:  # a write answers `Created`, not JSON
                return None

        return await http.retrying(attempt)

    async def _lines(self, session: aiohttp.ClientSession, method: str, url: URL,
                     body: Any = None) -> list[dict[str, Any]]:
        """A streamed answer: one JSON object a line (Rucio's `application/x-json-stream`)."""
        async def attempt() -> list[dict[str, Any]]:
            headers = {"X-Rucio-Auth-Token": await self._auth(session)}
            out = []
            async with session.request(method, url, json=body, headers=headers,
                                       allow_redirects=False) as response:
                await self._check(response)
                async for line in response.content:
                    if line.strip():
                        item = json.loads(line)
                        if isinstance(item, dict):
                            out.append(item)
            return out

        return await http.retrying(attempt)

    async def _check(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 300:
            return
        detail = ""
        with contextlib.suppress(Exception):
            detail = (response.headers.get("ExceptionMessage")
                      or json.loads(await http.read_some(response)).get("ExceptionMessage", ""))
        if response.status == 401:
            self._token, self._expires = "", 0.0  # log in (or refresh) again next attempt
            failure = HttpFailure("the token is refused (HTTP 401)",
                                  transient=bool(self._username or self._refresh_token),
                                  status=401)
        else:
            failure = http.status_failure(response)
        if detail and response.status != 401:
            failure.reason = f"{failure.reason}: {str(detail)[:200]}"
        raise failure

    async def _auth(self, session: aiohttp.ClientSession) -> str:
        """The token to send, logged in or refreshed first when it expires soon."""
        if self._token and not self._expiring():
            return self._token
        async with self._token_lock:
            if self._token and not self._expiring():  # another request renewed it
                return self._token
            if self._access_token:
                if self._refresh_token:
                    await self._refresh(session)
                elif not self._token:
                    self._token = self._access_token
            else:
                await self._login(session)
            return self._token

    def _expiring(self) -> bool:
        return bool(self._expires) and self._expires - time.time() < REFRESH_MARGIN

    async def _login(self, session: aiohttp.ClientSession) -> None:
        headers = {"X-Rucio-Account": self._account, "X-Rucio-Username": self._username,
                   "X-Rucio-Password": self._password}
        async with session.get(f"{self._auth_host}/auth/userpass", headers=headers,
                               allow_redirects=False) as response:
            await http.read_some(response)
            if response.status == 401:
                raise HttpFailure("wrong username or password (HTTP 401)", False, 401)
            http.expect(response, (200,))
            token = response.headers.get("X-Rucio-Auth-Token", "")
            expires = response.headers.get("X-Rucio-Auth-Token-Expires", "")
        if not token:
            raise HttpFailure("the login answered without a token", False)
        self._token = token
        self._expires = http_date(expires) or time.time() + USERPASS_LIFETIME

    async def _refresh(self, session: aiohttp.ClientSession) -> None:
        form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token,
                "client_id": self._client_id, "scope": self._scopes}
        if self._client_secret:
            form["client_secret"] = self._client_secret
        if self._audience:
            form["resource"] = self._audience
        try:
            async with session.post(self._token_endpoint, data=form,
                                    allow_redirects=False) as response:
                answer: Any = json.loads(await http.read_answer(response)) \
                    if response.status == 200 else await http.read_some(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise HttpFailure(f"cannot refresh the OIDC access token at "
                              f"{self._token_endpoint}: {type(exc).__name__}", True) from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if status != 200 or not isinstance(token, str) or not token:
            raise HttpFailure(f"cannot refresh the OIDC access token at {self._token_endpoint}"
                              f" (HTTP {status})", status >= 500)
        self._access_token = self._token = token
        if isinstance(answer.get("refresh_token"), str) and answer["refresh_token"]:
            self._refresh_token = answer["refresh_token"]  # the endpoint rotates them
        lifetime = answer.get("expires_in")
        self._expires = (time.time() + float(lifetime)
                         if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool)
                         else jwt_expiry(token))
        _logger.info("OIDC access token refreshed", provider=self.name)

    # ---- errors -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _failures(self, verb: str, scope: str, name: str) -> AsyncIterator[None]:
        try:
            yield
        except HttpFailure as exc:
            raise StorageError(f"{self.name}: cannot {verb} {scope}:{printable(name)}: "
                               f"{scrub(exc.reason, self._secrets())}") from None
        except (ValueError, TypeError) as exc:  # an answer that is not Rucio's JSON
            raise StorageError(f"{self.name}: cannot {verb} {scope}:{printable(name)}: unexpected "
                               f"answer ({type(exc).__name__})") from None
        except OSError as exc:
            # A download writes to our disk: full, it is a 507 / exit 4 as with the other
            # providers. An upload writes to the RSE: its disk full is the store's failure.
            if verb == "download" and exc.errno in NO_SPACE:
                raise local_write_error(
                    exc, f"the download of {scope}:{printable(name)} ({self.name})") from None
            raise StorageError(f"{self.name}: cannot {verb} {scope}:{printable(name)}: "
                               f"{exc.strerror or type(exc).__name__}") from None

    def _secrets(self) -> list[str]:
        return [s for s in (self._password, self._access_token, self._refresh_token,
                            self._client_secret, self._token, *self._url_secrets) if s]


# ---- helpers (no I/O but the local files') ---------------------------------------------


def base_url(host: str) -> str:
    return (host if "://" in host else f"https://{host}").rstrip("/")


def pfn_path(pfn: str) -> Path | None:
    """The local path of a `file://` PFN, else None."""
    url = URL(pfn)
    if url.scheme != FILE_SCHEME or not url.path.startswith("/"):
        return None
    return Path(url.path)


def jwt_expiry(token: str) -> float:
    """A JWT's `exp` claim (seconds since the epoch), or 0 when the token is not a JWT
    or says nothing: then it is used until the server refuses it."""
    parts = token.split(".")
    if len(parts) != 3:
        return 0.0
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (ValueError, binascii.Error):
        return 0.0
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else 0.0


def http_date(text: str) -> float:
    """Rucio's `X-Rucio-Auth-Token-Expires` (`Mon, 30 Nov 2026 19:00:00 UTC`), or 0."""
    try:
        return parsedate_to_datetime(text.replace("UTC", "GMT")).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0


def unique_names(names: Iterable[str]) -> list[str]:
    """The names in order, a later duplicate made `stem_1.ext`, `stem_2.ext`..."""
    taken: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 0
        stem, dot, ext = name.partition(".") if not name.startswith(".") else (name, "", "")
        while candidate in taken:
            n += 1
            candidate = f"{stem}_{n}{dot}{ext}"
        taken.add(candidate)
        out.append(candidate)
    return out


def checksums(path: Path) -> tuple[int, str, str]:
    """Size, adler32 (8 hex digits, as Rucio stores it) and md5, in one streamed read."""
    adler, md5, size = 1, hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            adler = zlib.adler32(chunk, adler)
            md5.update(chunk)
            size += len(chunk)
    return size, f"{adler:08x}", md5.hexdigest()


def same_content(meta: dict[str, Any], size: int, adler: str) -> bool:
    remote = str(meta.get("adler32") or "").lstrip("0")
    return remote == adler.lstrip("0") and int(meta.get("bytes") or -1) == size


def temporary_path(dest: Path, staged: AbstractSet[str]) -> Path:
    """Where `dest` is written until whole: `.NAME.partial` beside it, or `.NAME.1.partial`,
    `.NAME.2.partial`... when that is the name of a file `staged` in the same folder (a
    dataset may hold both `x` and `.x.partial`): writing there would lose that file."""
    partial, n = partial_path(dest, ".partial"), 0
    while partial.name in staged:
        n += 1
        partial = partial_path(dest, f".{n}.partial")
    return partial


def copy_checked(remote: RemoteFile, dest: Path,
                 staged: AbstractSet[str] = frozenset()) -> None:
    """Copy a replica to `dest` through a temporary file, checking its adler32 on the way
    (as `rucio download` does): a corrupt replica never becomes the input. `staged`: the
    names of the files staged in beside it, which the temporary file never takes."""
    if remote.path is None:
        raise HttpFailure(f"no local replica of {remote.did}", False)
    partial = temporary_path(dest, staged)
    adler, created = 1, False
    try:
        # Opened exclusively: a file already there, whatever put it there, is never
        # written over (nor removed below): the copy fails instead.
        with open(remote.path, "rb") as source, open(partial, "xb") as out:
            created = True
            while chunk := source.read(CHUNK):
                adler = zlib.adler32(chunk, adler)
                out.write(chunk)
        if remote.adler32 and f"{adler:08x}".lstrip("0") != remote.adler32.lstrip("0"):
            raise HttpFailure(f"the replica of {remote.did} does not match its adler32", False)
        os.replace(partial, dest)
    finally:
        if created:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


async def put_on_rse(src: Path, target: Path) -> None:
    """`place` in a thread, leaving nothing on the RSE if cancelled: neither its temporary
    file nor the target, if placed anyway (the registration comes after: no DID names it)."""
    partial = partial_path(target, f".{uuid.uuid4().hex}.rucio.upload", prefix="")
    await stoppable_copy(functools.partial(place, src, target, partial), partial,
                         placed=target)


def place(src: Path, target: Path, partial: Path, stop: threading.Event) -> bool:
    """Write `src` at the RSE path `target` as the posix protocol does: the temporary
    name `partial` beside it, linked to `target` when complete (and removed); never over
    an existing file. False (nothing placed) if `stop` is set before the copy ends."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(src, "rb") as source, open(partial, "xb") as out:
            while not stop.is_set() and (chunk := source.read(CHUNK)):
                out.write(chunk)
        if stop.is_set():
            return False
        exists = HttpFailure(f"{target.name} exists on the RSE but no DID names it", False)
        try:
            # A link, not a rename after a look: it fails if the target exists, at once.
            # Two uploads of one DID at a time would otherwise both find the path free,
            # and one replace the other's file under the other's checksums.
            os.link(partial, target)
        except FileExistsError:
            raise exists from None
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
            # A file system without hard links (some FUSE and network mounts): the look
            # and the rename, as the posix protocol does.
            if target.exists():
                raise exists from None
            os.replace(partial, target)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
