"""`/run`, `/job` and a service's exposed port: requests carried to a service.

`/run` and the exposed routes stream the request to the service's watchdog and its
answer back, the path and query as the client encoded them (a `%2F` or `%3F` is not the
`/` or `?` it decodes to), with the client's Host and X-Forwarded-For, -Host and -Proto
as an Ingress sets them; an exposed route relays a WebSocket session too
(websocket_relay.py). A client that leaves takes its call along: the watchdog sees the
controller leave in turn, and kills the script (SPEC 4.1). `/job` hands the event to the
jobs' queue. `/run` and `/job` take the service's token or the admin's; `/job` also takes
a Ceph RGW event carrying the token as its `opaqueData`, since RGW sends no Authorization
header.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from faas_supervisor import strict_json
from faas_supervisor.controller.auth import Credentials, token_matches
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.routes import Routes
from faas_supervisor.controller.routes.answers import json_response
from faas_supervisor.errors import (
    BadEvent,
    NotFound,
    Unauthorized,
    UnreadableBody,
    UpstreamFailed,
    unreadable_body,
)
from faas_supervisor.http_headers import (
    PassedOnResponse,
    PassedOnWhole,
    forwarded_headers,
    not_utf8,
)
from faas_supervisor.http_timeouts import CLIENT_CLOSED, client_gone, when_client_leaves
from faas_supervisor.logs import get_logger
from faas_supervisor.watchdog.answers import STOPPED
from faas_supervisor.websocket_relay import (
    WS_HANDSHAKE,
    NotUpgraded,
    is_websocket,
    offered_protocols,
    relay,
    upgraded_or_answer,
)

if TYPE_CHECKING:
    from faas_supervisor.controller.api import Api

WHOLE_BODY_MAX = 64 << 10  # proxied answers up to this size are read, then sent whole
CEPH_EVENT_MAX = 1 << 20  # an unauthenticated body is read only to find its token
# Idle connections kept open to each service's watchdog for the next request. In-flight
# requests are not limited (a synchronous call lasts as long as its script, and a cap
# would queue, or deadlock, calls behind slow ones); only what is kept afterwards is.
IDLE_UPSTREAM_PER_HOST = 32
# The largest WebSocket message relayed: the watchdog's own default max_body_size, which
# limits it again with the service's setting (aiohttp's 4 MiB default would be ours).
WS_MESSAGE_MAX = (1 << 30) + 1  # aiohttp refuses a message of max_msg_size bytes itself
EXPOSED_PREFIX = "/system/services/{name}/exposed"
# A watchdog's refusal once it is stopping (answers.refusal: its reason's line).
STOPPED_ANSWER = f"{STOPPED}\n".encode()
logger = get_logger(component="api")


class InvocationRoutes(Routes):
    def __init__(self, api: Api) -> None:
        super().__init__(api)
        self._session: aiohttp.ClientSession | None = None
        self._sockets: set[web.WebSocketResponse] = set()  # the WebSocket sessions relayed

    async def open_session(self, _app: web.Application) -> None:
        # No overall timeout: a synchronous invocation lasts as long as its script.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=UpstreamConnector(IDLE_UPSTREAM_PER_HOST),
            auto_decompress=False,  # bodies pass through byte for byte
            # A WebSocket handshake's answer other than 101 is relayed whole, not followed.
            middlewares=(upgraded_or_answer,),
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
        # Without set_auth the controller asked for no credentials: an Authorization the
        # client sends is the service's own (its server's login, a bearer of its API), and
        # reaches it as OSCAR's Ingress passes it on. With it, it was ours: kept back. The
        # admin's are never passed on (a browser that logged in to /system/ sends them to
        # every path below it, this one too).
        keep = not service.expose.set_auth and not api.is_admin(request)
        return await self._proxy(request, service, _exposed_path(request, service),
                                 keep_authorization=keep)

    async def run(self, request: web.Request) -> web.StreamResponse:
        service = self.api.service(request)
        if not self.api.authorised(request, service):
            raise Unauthorized()
        return await self._proxy(request, service, "/")

    async def _proxy(self, request: web.Request, service: Service, path: str,
                     keep_authorization: bool = False) -> web.StreamResponse:
        """The request to the service's watchdog and its answer back, both streamed.

        `path` is raw (percent-encoded as the client sent it), and so is the query: the
        URL is never decoded and encoded again, which would turn `%3F` into a query,
        `%23` into a fragment, `%2F` into a separator and `%2541` into `A`."""
        assert self._session is not None
        garbled = not_utf8(request.headers)
        if garbled is not None:  # passed on, it would arrive altered (as the watchdog refuses it)
            raise BadEvent(f"request header {garbled} is not UTF-8")
        # Watched from before the wait for a starting service (up to --sync-wait): a
        # client gone meanwhile makes no call.
        watch = _ClientWatch(request)
        query = request.rel_url.raw_query_string

        async def watchdog_url() -> URL:
            base = await self.api.backend.invoke_url(service.name)
            return URL(f"{base}{path}" + (f"?{query}" if query else ""), encoded=True)

        try:
            url = await watchdog_url()
            # The service's watchdog never sees the controller's credentials (unless they
            # were none of ours: keep_authorization).
            drop = () if keep_authorization else ("authorization",)
            if is_websocket(request):
                return await self._websocket(request, service, url, watch, drop)
            headers = _from_client(request, forwarded_headers(request.headers, drop=drop))
            body: bytes | aiohttp.StreamReader | None = None
            if request.body_exists:
                length = request.content_length
                # A small body of known length is read first and goes out with the headers;
                # a stream is written by a task of its own, loop iterations on every request.
                small = length is not None and length <= WHOLE_BODY_MAX
                body = await request.read() if small else request.content
            async with await self._forward(request, url, headers, body) as upstream:
                if isinstance(body, aiohttp.StreamReader) or not await _refused_stopping(
                        upstream):
                    return await _answer(request, upstream)
            # The watchdog was stopped after its address was taken (the local backend stops
            # the old ones of an update or a restart as soon as the new ones are made), and
            # refused the request before anything of it ran: it goes once more, its body
            # still whole in hand (a stream's is spent), to the service's watchdog now.
            async with await self._forward(request, await watchdog_url(), headers,
                                           body) as upstream:
                return await _answer(request, upstream)
        except asyncio.CancelledError:
            if not watch.left:
                raise  # the controller stops
            # The client left (and the request upstream was closed): what the usage log
            # keeps is a cut body's 400, as below, else CLIENT_CLOSED.
            cut = _body_cut(request)
            if cut is not None:
                raise cut from None
            return _client_closed()
        except (aiohttp.ClientError, OSError) as exc:  # OSError: reading the small body
            cut = _body_cut(request)
            if cut is not None:  # the client's body broke, or it left mid-body: not the service
                raise cut from None
            if isinstance(exc, aiohttp.ClientError):
                raise _no_answer(service, exc) from None
            raise
        finally:
            watch.stop()

    async def _forward(self, request: web.Request, url: URL, headers: CIMultiDict[str],
                       body: bytes | aiohttp.StreamReader | None) -> aiohttp.ClientResponse:
        """The request sent to `url`; the answer's head (the caller releases it)."""
        assert self._session is not None
        return await self._session.request(
            request.method,
            url,
            headers=headers,
            data=body,
            # The client's headers only: aiohttp's own (Accept: */* among them) would
            # reach the script as Http_* variables the client never sent.
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
            # A redirect is the client's to follow (as the watchdog's proxy passes it
            # on): followed here, the controller would fetch any address a service
            # names, with the caller's headers, and the client never see the 3xx.
            allow_redirects=False,
        )

    async def _websocket(
        self, request: web.Request, service: Service, url: URL, watch: _ClientWatch,
        drop: tuple[str, ...],
    ) -> web.StreamResponse:
        """A WebSocket session relayed to the service's watchdog (which relays it to the
        service's server). Connected there first, so that its answer (a refusal, a
        redirect, the subprotocol chosen) is the client's."""
        assert self._session is not None
        try:
            upstream = await self._session.ws_connect(
                url,
                headers=_from_client(
                    request, forwarded_headers(request.headers, drop=(*drop, *WS_HANDSHAKE))),
                protocols=offered_protocols(request),
                autoclose=False,  # close frames are relayed with their code, not answered
                max_msg_size=WS_MESSAGE_MAX,
                compress=0,  # a hop on this machine (or its engine's network): no deflate
            )
        except NotUpgraded as refused:
            try:
                return await _answer(request, refused.answer)
            finally:
                refused.answer.release()
        except aiohttp.WSServerHandshakeError as exc:  # a 101 that is no WebSocket's
            raise UpstreamFailed(
                f"service {service.name}'s WebSocket handshake failed ({exc.message})"
            ) from None
        except aiohttp.ClientError as exc:
            raise _no_answer(service, exc) from None
        # Connected: from here the relay sees the client go (its socket ends), and a
        # cancellation would cut the session's close handshake short.
        watch.stop()
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoclose=False,
            max_msg_size=WS_MESSAGE_MAX,
        )
        self._sockets.add(client)
        try:
            try:
                await client.prepare(request)
            except ConnectionError:  # gone during the handshake: the session ends unopened
                return _client_closed()
            await relay(client, upstream)
        finally:
            self._sockets.discard(client)
            # Still open: the client went (during its handshake) or the controller stops.
            await upstream.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        return client

    async def close_sockets(self, _app: web.Application) -> None:
        """The controller stops: each WebSocket session ends, 1001 (going away) to both
        sides (the relay passes the client's close on to the service)."""
        await asyncio.gather(*(
            client.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"controller stopping")
            for client in list(self._sockets)
        ), return_exceptions=True)

    async def job(self, request: web.Request) -> web.Response:
        api = self.api
        service = api.service(request)
        try:
            if api.authorised(request, service):
                chunks = request.content.iter_chunked(1 << 16)
                name, new = await api.jobs.submit(service, chunks)
            elif "Authorization" not in request.headers:
                body = await _read_at_most(request.content, CEPH_EVENT_MAX)
                if body is None or not _ceph_token_ok(body, service.token):
                    raise Unauthorized()
                name, new = await api.jobs.submit(service, body)
            else:
                raise Unauthorized()
        except OSError:
            cut = _body_cut(request)
            if cut is None:
                raise
            raise cut from None  # the client left mid-body: its fault, not the controller's
        # An event naming an object that has a job already (a redelivery): that job,
        # and nothing made (200, not 201).
        return json_response({"job": name}, HTTPStatus.CREATED if new else HTTPStatus.OK)


def _from_client(request: web.Request, headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """The headers a service learns its client by, as nginx-ingress (OSCAR's Ingress)
    sets them by default (use-forwarded-headers off): Host as the client sent it (which
    `headers` keeps), X-Forwarded-For, -Host and -Proto from this connection, whatever
    the client said of them. A watchdog reached on loopback (the local and Docker
    backends) passes them on as they are; on Kubernetes it appends this hop to
    X-Forwarded-For, as it does behind the Ingress."""
    for name in ("X-Forwarded-For", "X-Forwarded-Host"):
        headers.popall(name, None)
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    if "Host" in request.headers:  # else aiohttp's own Host, the watchdog's address
        headers["X-Forwarded-Host"] = request.headers["Host"]
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


def _exposed_path(request: web.Request, service: Service) -> str:
    """The raw path an exposed service gets, as OSCAR's Ingress gives it: what follows
    `/system/services/NAME/exposed`, or with `rewrite_target` the whole path (that prefix
    written as the route names it, as the Ingress's `rewrite-target` annotation does)."""
    # The route's four segments first: none holds a `/`, encoded or not (a name with
    # one is no service's), so the raw path's fifth `/` ends them.
    parts = request.rel_url.raw_path.split("/", 5)
    tail = "/" + (parts[5] if len(parts) > 5 else "")
    if service.expose.rewrite_target:
        return EXPOSED_PREFIX.format(name=service.name) + tail
    return tail


async def _answer(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """The watchdog's answer passed on: status, end-to-end headers, body.

    A streamed answer that ends early keeps the status sent (the usage log's too): the
    client left (a write failed, or its watch cancelled the call), or the service's
    answer broke, and then the client gets a cut connection, not a short body that would
    pass for whole."""
    answer_headers = forwarded_headers(upstream.headers, drop=("server", "date"))
    length = upstream.content_length
    if request.method != "HEAD" and length is not None and length <= WHOLE_BODY_MAX:
        # Small and of known length: sent with its headers in one write. A streamed
        # response sends its headers alone first, a second syscall and wake-up that was
        # most of what the proxy added.
        # No Content-Type where the service sent none (aiohttp would add one): both.
        return PassedOnWhole(
            status=upstream.status,
            reason=upstream.reason,
            body=await upstream.read(),
            headers=answer_headers,
        )
    response = PassedOnResponse(
        status=upstream.status, reason=upstream.reason, headers=answer_headers
    )
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    except asyncio.CancelledError:
        if not client_gone(request):
            raise  # the controller stops
    except (aiohttp.ClientError, ConnectionError) as exc:
        transport = request.transport
        if transport is not None and not transport.is_closing():  # the service's answer broke
            logger.warning("answer cut short", path=request.path,
                           error=str(exc) or type(exc).__name__)
            transport.abort()
    return response


async def _refused_stopping(upstream: aiohttp.ClientResponse) -> bool:
    """Whether the watchdog refused the request as it is stopping, before anything of it
    ran: a 503 of that one line (answers.refusal), and no invocation's answer (each has an
    X-Invocation-Id: one the watchdog cut short at the end of its drain answers that 503
    too, its logs after the line, which may be none). Its body, read, stays for _answer."""
    if (upstream.status != HTTPStatus.SERVICE_UNAVAILABLE
            or upstream.content_length != len(STOPPED_ANSWER)
            or "X-Invocation-Id" in upstream.headers):
        return False
    return await upstream.read() == STOPPED_ANSWER


def _client_closed() -> web.Response:
    """What a call whose client left is recorded as (the usage log): sent to nobody."""
    return web.Response(status=CLIENT_CLOSED, reason="Client Closed Request")


def _body_cut(request: web.Request) -> UnreadableBody | None:
    """The 400 for a body that stopped before its end (a broken chunk, the client gone
    mid-body), if it did. Once the body is whole, the client leaving breaks nothing of it."""
    content = request.content
    unread = None if content.is_eof() else content.exception()
    return None if unread is None else unreadable_body(unread)


class _ClientWatch:
    """Cancels the task serving a proxied call once the client's connection is lost
    (http_timeouts.when_client_leaves): its request to the watchdog is closed, and the
    watchdog, seeing its client go, kills the script, as it does for a client of its own
    (SPEC 4.1)."""

    def __init__(self, request: web.Request) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.left = False
        self._stopped = False
        self._forget = when_client_leaves(request, self._lost)

    def _lost(self) -> None:
        if not self._stopped:
            self.left = True
            self._task.cancel()

    def stop(self) -> None:
        """No more cancelling (called again, nothing more happens)."""
        if self._stopped:
            return
        self._stopped = True
        self._forget()
        if self.left:  # its cancellation was caught: taken back, as asyncio.timeout does
            self._task.uncancel()


def _no_answer(service: Service, exc: aiohttp.ClientError) -> UpstreamFailed:
    logger.warning("service did not answer", service=service.name, error=str(exc))
    # Its kind only: aiohttp's text names the service's internal address.
    return UpstreamFailed(f"service {service.name} did not answer ({type(exc).__name__})")


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
