"""The controller's HTTP API (SPEC 7.2), as the `service` subcommands call it.

One aiohttp session per command. Every failure becomes one `RequestFailed` line naming
the request, the HTTP status and the server's own message, which is what a user needs
to act on; nothing here prints.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from faas_supervisor.errors import RequestFailed

# A `/run` may take as long as its script does; only connecting has a deadline.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, connect=60)
DEFAULT_USER = "oscar"
BASE64_TYPE = "text/plain; charset=utf-8"
MESSAGE_LIMIT = 300  # characters of the server's message kept in the one error line
LOG_CHUNK = 64 << 10  # bytes of a job's log read at a time


@dataclass(frozen=True)
class Connection:
    endpoint: str
    user: str | None
    password: str | None

    def basic_auth(self) -> str | None:
        """The `Authorization` value; UTF-8, as the OSCAR manager (Go) reads it.

        A password without a user is for the default user, `oscar`, the controller's
        and the OSCAR manager's.
        """
        if self.user is None and self.password is None:
            return None
        pair = f"{self.user or DEFAULT_USER}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def service_path(prefix: str, name: str, *rest: str) -> str:
    # Names come from the command line: quote them so `a/b` cannot reach another route.
    return "/".join([prefix, *(quote(part, safe="") for part in (name, *rest))])


class ControllerClient:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.base = connection.endpoint.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControllerClient:
        self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ControllerClient used outside `async with`")
        return self._session

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        data: AsyncIterator[bytes] | None = None,
        params: dict[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response, open for streaming; statuses >= 300 not in `accept` raise.

        `data` is a base64 stream, sent chunked as it is produced.
        """
        headers: dict[str, str] = {}
        if data is not None:
            # Bodies are base64 text. aiohttp would label a stream octet-stream, which the
            # watchdog takes as raw bytes, not to be decoded (SPEC 4.1).
            headers["Content-Type"] = BASE64_TYPE
        auth = f"Bearer {token}" if token is not None else self.connection.basic_auth()
        if auth is not None:
            headers["Authorization"] = auth
        what = f"{method} {path}"
        try:
            async with self.session.request(
                method, self.base + path, headers=headers, json=json_body,
                data=data, params=params,
            ) as response:
                if response.status >= 300 and response.status not in accept:
                    raise await self._failure(what, response)
                yield response
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or exc.os_error
            raise RequestFailed(f"{what}: cannot reach {self.base}: {reason}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RequestFailed(f"{what}: {type(exc).__name__}: {exc}") from None

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.request(method, path, **kwargs) as response:
            body = await response.read()
        # JSON is UTF-8 (RFC 8259), whatever charset the answer names: text in another
        # encoding is a malformed answer, said in one line as one that is not JSON.
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            shown = _first_line(body.decode("utf-8", "replace"))
            raise RequestFailed(f"{method} {path}: the answer is not UTF-8 JSON (byte "
                                f"{exc.start}): {shown}") from None
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            raise RequestFailed(f"{method} {path}: the answer is not JSON: "
                                f"{_first_line(text)}") from None
        except RecursionError:  # valid JSON, nested deeper than Python's parser goes
            raise RequestFailed(f"{method} {path}: the answer is nested too deeply") from None

    async def _failure(self, what: str, response: aiohttp.ClientResponse) -> RequestFailed:
        body = (await response.content.read(64 << 10)).decode("utf-8", "replace")
        message = _server_message(body)
        line = f"{what}: {response.status} {response.reason or ''}".rstrip()
        if message:
            line += f": {message}"
        if response.status == 401 and token_free(response):
            line += " (set --user and --password, or FAAS_USER and FAAS_PASSWORD)"
        return RequestFailed(line)

    # The API, one method per call the commands make.

    async def list_services(self) -> list[dict[str, Any]]:
        value = await self.json("GET", "/system/services")
        if value is None:  # Go encodes an empty (nil) list as null
            return []
        if not isinstance(value, list):
            raise unexpected("GET /system/services", "a list of services", value)
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise unexpected("GET /system/services", "a list of services", item,
                                 f"item {i}")
        return value

    async def get_service(self, name: str) -> dict[str, Any]:
        path = service_path("/system/services", name)
        value = await self.json("GET", path)
        if not isinstance(value, dict):
            raise unexpected(f"GET {path}", "a service", value)
        return value

    async def apply_service(self, service: dict[str, Any]) -> str:
        """Create the service, or update it when it exists; says which it did."""
        async with self.request("POST", "/system/services", json_body=service,
                                accept=(409,)) as response:
            if response.status != 409:
                return "created"
        async with self.request("PUT", "/system/services", json_body=service):
            return "updated"

    async def delete_service(self, name: str) -> None:
        async with self.request("DELETE", service_path("/system/services", name)):
            pass

    async def list_jobs(self, name: str) -> dict[str, dict[str, Any]]:
        """All the service's jobs, following OSCAR's `next_page` when the server pages."""
        jobs: dict[str, dict[str, Any]] = {}
        params: dict[str, str] | None = None
        for _ in range(10_000):  # a bound, in case a server keeps sending the same page
            path = service_path("/system/logs", name)
            value = await self.json("GET", path, params=params)
            if value is None:
                break
            if not isinstance(value, dict):
                raise unexpected(f"GET {path}", "a map of jobs", value)
            # Older OSCAR managers answer the job map itself, without the `jobs` key.
            page = value.get("jobs") if "jobs" in value else value
            if page is not None and not isinstance(page, dict):
                raise unexpected(f"GET {path}", "a map of jobs", page, "`jobs`")
            jobs.update({str(k): v for k, v in (page or {}).items() if isinstance(v, dict)})
            next_page = value.get("next_page")
            if not next_page:
                break
            params = {"page": str(next_page)}
        return jobs

    async def job_logs(self, name: str, job: str) -> AsyncGenerator[bytes, None]:
        """The job's log, in pieces as they arrive: bytes, since a script may print
        anything (not UTF-8), and much. Close it when stopping early (`aclosing`)."""
        async with self.request("GET", service_path("/system/logs", name, job)) as response:
            async for chunk in response.content.iter_chunked(LOG_CHUNK):
                yield chunk


def unexpected(what: str, expected: str, value: Any, part: str = "") -> RequestFailed:
    """An answer that is JSON, but not of the shape the call reads: one line, as for one
    that is not JSON. Its JSON type is named rather than the value quoted: it may be
    large, or nested deeper than it can be written back."""
    kind = ("null" if value is None else "true or false" if isinstance(value, bool)
            else "a number" if isinstance(value, int | float)
            else "a string" if isinstance(value, str)
            else "a list" if isinstance(value, list) else "an object")
    return RequestFailed(f"{what}: the answer is not {expected}: {part or 'it'} is {kind}")


def token_free(response: aiohttp.ClientResponse) -> bool:
    """Whether the failed request was sent with basic auth (or none), not a token."""
    return not response.request_info.headers.get("Authorization", "").startswith("Bearer ")


def _server_message(body: str) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict):
        for key in ("message", "error", "msg", "detail"):
            if isinstance(value.get(key), str):
                return _first_line(value[key])
    return _first_line(body)


def _first_line(text: str) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 3] + "..."
