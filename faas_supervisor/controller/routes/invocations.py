"""`/run`, `/job` and a service's exposed port: requests carried to a service.

`/run` and the exposed routes stream the request to the service's watchdog and its
answer back; `/job` hands the event to the jobs' queue. `/run` and `/job` take the
service's token or the admin's; `/job` also takes a Ceph RGW event carrying the token as
its `opaqueData`, since RGW sends no Authorization header.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from faas_supervisor import strict_json
from faas_supervisor.controller.auth import Credentials, token_matches
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.routes import Routes
from faas_supervisor.controller.routes.answers import json_response
from faas_supervisor.errors import NotFound, Unauthorized, UpstreamFailed, unreadable_body
from faas_supervisor.http_headers import forwarded_headers
from faas_supervisor.logs import get_logger

if TYPE_CHECKING:
    from faas_supervisor.controller.api import Api

WHOLE_BODY_MAX = 64 << 10  # proxied answers up to this size are read, then sent whole
CEPH_EVENT_MAX = 1 << 20  # an unauthenticated body is read only to find its token
# Idle connections kept open to each service's watchdog for the next request. In-flight
# requests are not limited (a synchronous call lasts as long as its script, and a cap
# would queue, or deadlock, calls behind slow ones); only what is kept afterwards is.
IDLE_UPSTREAM_PER_HOST = 32
logger = get_logger(component="api")


class InvocationRoutes(Routes):
    def __init__(self, api: Api) -> None:
        super().__init__(api)
        self._session: aiohttp.ClientSession | None = None

    async def open_session(self, _app: web.Application) -> None:
        # No overall timeout: a synchronous invocation lasts as long as its script.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=UpstreamConnector(IDLE_UPSTREAM_PER_HOST),
            auto_decompress=False,  # bodies pass through byte for byte
        )

    async def close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def exposed(self, request: web.Request) -> web.StreamResponse:
        api = self.api
        service = api.service(request)
        if not service.exposed:
            raise NotFound()
        # With set_auth, the credentials OSCAR's Ingress asks for too (user: the service's
        # name, password: its token), besides its token and the admin's.
        if service.expose.set_auth and not api.authorised(request, service) and not \
                Credentials(service.name, service.token).check_basic(
                    request.headers.get("Authorization", "")):
            api.require_admin(request)
        tail = request.match_info.get("tail", "")
        return await self._proxy(request, service, "/" + tail)

    async def run(self, request: web.Request) -> web.StreamResponse:
        service = self.api.service(request)
        if not self.api.authorised(request, service):
            raise Unauthorized()
        return await self._proxy(request, service, "/")

    async def _proxy(self, request: web.Request, service: Service, path: str) -> web.StreamResponse:
        """The request to the service's watchdog and its answer back, both streamed."""
        assert self._session is not None
        base = await self.api.backend.invoke_url(service.name)
        # The service's watchdog never sees the caller's credentials; aiohttp sets Host.
        headers = forwarded_headers(request.headers, drop=("authorization", "host"))
        body: bytes | aiohttp.StreamReader | None = None
        if request.body_exists:
            length = request.content_length
            # A small body of known length is read first and goes out with the headers;
            # a stream is written by a task of its own, loop iterations on every request.
            small = length is not None and length <= WHOLE_BODY_MAX
            body = await request.read() if small else request.content
        url = f"{base}{path}" + (f"?{request.query_string}" if request.query_string else "")
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
                # A redirect is the client's to follow (as the watchdog's proxy passes it
                # on): followed here, the controller would fetch any address a service
                # names, with the caller's headers, and the client never see the 3xx.
                allow_redirects=False,
            ) as upstream:
                answer_headers = forwarded_headers(upstream.headers, drop=("server", "date"))
                length = upstream.content_length
                if request.method != "HEAD" and length is not None and length <= WHOLE_BODY_MAX:
                    # Small and of known length: sent with its headers in one write. A
                    # streamed response sends its headers alone first, a second
                    # syscall and wake-up that was most of what the proxy added.
                    return web.Response(
                        status=upstream.status,
                        reason=upstream.reason,
                        body=await upstream.read(),
                        headers=answer_headers,
                    )
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=answer_headers
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as exc:
            unread = request.content.exception()
            if unread is not None:  # the client's body broke, not the service
                raise unreadable_body(unread) from None
            logger.warning("service did not answer", service=service.name, error=str(exc))
            # Its kind only: aiohttp's text names the service's internal address.
            raise UpstreamFailed(
                f"service {service.name} did not answer ({type(exc).__name__})") from None

    async def job(self, request: web.Request) -> web.Response:
        api = self.api
        service = api.service(request)
        if api.authorised(request, service):
            name, new = await api.jobs.submit(service, request.content.iter_chunked(1 << 16))
        elif "Authorization" not in request.headers:
            body = await _read_at_most(request.content, CEPH_EVENT_MAX)
            if body is None or not _ceph_token_ok(body, service.token):
                raise Unauthorized()
            name, new = await api.jobs.submit(service, body)
        else:
            raise Unauthorized()
        # An event naming an object that has a job already (a redelivery): that job,
        # and nothing made (200, not 201).
        return json_response({"job": name}, HTTPStatus.CREATED if new else HTTPStatus.OK)


class UpstreamConnector(aiohttp.TCPConnector):
    """aiohttp's connector, keeping at most `max_idle` idle connections per host.

    aiohttp keeps every connection released after a request for `keepalive_timeout`
    (15 s), however many a burst opened; `limit_per_host` would bound those in flight
    too. Past `max_idle`, a released connection is closed instead of kept.
    """

    def __init__(self, max_idle: int) -> None:
        super().__init__(limit=0)
        self.max_idle = max_idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        idle = self._conns.get(key)
        if idle is not None and len(idle) >= self.max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None once it is past `limit` bytes (the rest left unread).

    `read(n)` answers with what has arrived, not n bytes: a body sent in several pieces
    (a client's separate writes, chunks) takes several reads.
    """
    body = bytearray()
    while chunk := await content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _ceph_token_ok(body: bytes, token: str) -> bool:
    """A Ceph RGW event whose every record carries the service token as `opaqueData`."""
    try:
        records = strict_json.loads(body).get("Records")
    except (strict_json.NotJson, AttributeError):
        return False
    if not isinstance(records, list) or not records:
        return False
    results = [
        isinstance(r, dict)
        and r.get("eventSource") == "ceph:s3"
        and token_matches(str(r.get("opaqueData", "")), token)
        for r in records
    ]
    return all(results)
