"""HTTP mode: one long-running user server, every request proxied to it (SPEC 4.4).

For OSCAR's exposed services, which load a model once and serve many requests. The
user's script (`/bin/sh SCRIPT`) is started once, in its own process group, and must
listen on `127.0.0.1:upstream_port`. Requests are forwarded as they come: any method,
bodies streamed both ways, each request on a connection of its own, hop-by-hop headers
dropped, WebSocket upgrades pumped frame by frame (websocket_relay.py, which the
controller's exposed routes share). The server (the Watchdog) keeps the reserved paths,
the limits and the shutdown; this module owns the upstream process and the forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from faas_supervisor import processes
from faas_supervisor.config import WatchdogSettings
from faas_supervisor.errors import (
    BadEvent,
    ConfigError,
    FaasError,
    PayloadTooLarge,
    RequestTimeout,
    ScriptTimeout,
    UpstreamFailed,
    unreadable_body,
)
from faas_supervisor.http_headers import (
    PassedOnResponse,
    forwarded_headers,
    not_utf8,
    sendable_reason,
    with_control,
)
from faas_supervisor.http_timeouts import client_gone
from faas_supervisor.invocation import Runtime
from faas_supervisor.logs import get_logger
from faas_supervisor.watchdog.answers import refusal
from faas_supervisor.watchdog.metrics import UPGRADED, Metrics
from faas_supervisor.websocket_relay import (
    WS_HANDSHAKE,
    NotUpgraded,
    is_websocket,
    offered_protocols,
    relay,
    upgraded_or_answer,
)

UPSTREAM_HOST = "127.0.0.1"
READ_CHUNK = 256 * 1024
CONNECT_POLL = 0.05  # seconds between connection attempts while the server starts
TERM_GRACE = 5.0  # seconds the server gets after SIGTERM before SIGKILL
logger = get_logger(component="watchdog")


class UpstreamServer:
    """The user's server process: started once, watched, terminated with its group."""

    def __init__(self, runtime: Runtime, settings: WatchdogSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.process: processes.Child | None = None
        self.stopping = False  # set once we terminate it ourselves

    def environment(self) -> dict[str, str]:
        env = self.runtime.script_environment()
        # Set even when the default was used, so the script can write `--port $upstream_port`.
        env["upstream_port"] = str(self.settings.upstream_port)
        return env

    async def start(self) -> None:
        self.process = processes.spawn(
            ["/bin/sh", str(self.runtime.script)],
            env=self.environment(),
            # Killed if the watchdog dies, even by SIGKILL: it must not hold the port for
            # the watchdog that replaces this one. Spawned once, so the fork this costs
            # (no vfork with a preexec_fn) does not matter.
            die_with_parent=True,
        )
        logger.info("upstream server started", pid=self.process.pid)

    async def wait_listening(self, stop: asyncio.Event) -> bool:
        """True once the port accepts a connection; False if `stop` was set meanwhile.

        A port has no readiness event to await, so it is polled; the process's exit and
        `stop` are awaited between attempts, so neither waits for the next poll.
        """
        assert self.process is not None
        timeout = self.settings.upstream_start_timeout
        deadline = time.monotonic() + timeout
        exited = asyncio.ensure_future(self.process.exit_status())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while True:
                if exited.done():
                    raise ConfigError(
                        f"the server exited with status {exited.result()} before listening on "
                        f"{UPSTREAM_HOST}:{self.settings.upstream_port}"
                    )
                if stopped.done():
                    return False
                if await _accepts(UPSTREAM_HOST, self.settings.upstream_port):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConfigError(
                        f"the server did not listen on {UPSTREAM_HOST}:"
                        f"{self.settings.upstream_port} within upstream_start_timeout "
                        f"({timeout:g} s)"
                    )
                await asyncio.wait({exited, stopped}, timeout=min(CONNECT_POLL, left),
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            stopped.cancel()

    async def wait(self) -> int:
        """Its exit status once it exits; left unreaped, so that terminate() can still
        reach what it leaves in its group (its server, when the script was a wrapper)."""
        assert self.process is not None
        return await self.process.exit_status()

    async def terminate(self) -> None:
        """SIGTERM to the whole group, SIGKILL to it after TERM_GRACE, and reaped."""
        self.stopping = True
        if self.process is not None:
            await self.process.stop(TERM_GRACE)


class ProxyRunner:
    """Forwards requests and WebSocket sessions to the upstream server."""

    def __init__(self, runtime: Runtime, settings: WatchdogSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.server = UpstreamServer(runtime, settings)
        self.failed = False  # the server exited on its own: the watchdog must exit non-zero
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None
        # The WebSocket sessions relayed, each with the task serving it; `ending` once
        # the watchdog stops them (end_sessions).
        self._sessions: dict[web.WebSocketResponse, asyncio.Task[object]] = {}
        self._ending = False

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, stop: asyncio.Event) -> bool:
        """Start the server and wait for its port; True when ready, False if stopped first.

        Raises ConfigError (one line) when it exits or never listens. Once ready, its exit
        sets `failed` and `stop`, so the watchdog drains and exits non-zero.
        """
        await self.server.start()
        if not await self.server.wait_listening(stop):
            return False
        self._session = aiohttp.ClientSession(
            # We enforce max_inflight ourselves; the connector must not queue below it.
            # A connection per request, closed after its answer: bytes the server sends
            # past an answer (a body on a 304 or a HEAD, a second response) would be read
            # as the answer to the next request on a kept connection, another client's,
            # and aiohttp does not look at an idle connection before reusing it. nginx and
            # Go's Transport close such a connection; not keeping any is what aiohttp's
            # public API allows. It costs a connect and an accept per request on loopback.
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,  # bytes pass through with their Content-Encoding
            cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies never reach another
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            middlewares=(upgraded_or_answer,),
        )
        self._watcher = asyncio.create_task(self._watch(stop))
        logger.info("upstream server listening", port=self.settings.upstream_port)
        return True

    async def _watch(self, stop: asyncio.Event) -> None:
        code = await self.server.wait()
        if not self.server.stopping:
            self.failed = True
            logger.error("upstream server exited; stopping", status=code)
            stop.set()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.server.terminate()
        if self._watcher is not None:
            await self._watcher

    # ---- forwarding ------------------------------------------------------------------

    def _url(self, request: web.Request) -> URL:
        rel = request.rel_url
        return URL.build(scheme="http", host=UPSTREAM_HOST, port=self.settings.upstream_port,
                         path=rel.raw_path, query_string=rel.raw_query_string, encoded=True)

    def _headers(
        self, request: web.Request, drop: frozenset[str] = frozenset()
    ) -> CIMultiDict[str]:
        headers = forwarded_headers(request.headers, drop)
        # Host is kept as the client sent it (apps build their own URLs from it).
        peer = request.remote or ""
        previous = request.headers.get("X-Forwarded-For")
        # A peer on loopback (the controller, on the local and Docker backends) could
        # send anything to the server's own port on loopback: its X-Forwarded-For (the
        # controller's client) is kept as sent, with no 127.0.0.1 appended. Any other
        # peer (a client, an Ingress) may be anyone: it is appended, as proxies do.
        if not (previous and _is_loopback(peer)):
            headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
        headers.setdefault("X-Forwarded-Host", request.host)
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        return headers

    async def forward(self, request: web.Request) -> web.StreamResponse:
        garbled = not_utf8(request.headers)
        if garbled is not None:
            return refusal(BadEvent(f"request header {garbled} is not UTF-8"))
        if is_websocket(request):
            return await self._websocket(request)
        body = _RequestBody(request, self.settings, self.metrics) if request.body_exists else None
        try:
            upstream = await self._send(request, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            if body is not None and body.error is not None:
                return refusal(body.error, close=True)
            if isinstance(exc, TimeoutError):
                return refusal(self._late())
            return refusal(_no_answer(request, exc))
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _send(
        self, request: web.Request, body: _RequestBody | None
    ) -> aiohttp.ClientResponse:
        """One request upstream, on a connection of its own (see start). One the server
        closes without answering (it dropped the request) is tried again by aiohttp for
        idempotent methods only, once (RFC 9112 9.3.1): a POST may have done its work,
        so it is not sent twice, and is a 502.

        exec_timeout bounds each wait on the server: for it to take the next piece of the
        body, and for its answer once the request is sent. The waits on the client are not
        counted: an upload takes as long as it keeps coming (read_timeout bounds its stalls).
        """
        assert self._session is not None
        limit = self.settings.exec_timeout or None
        async with asyncio.timeout(limit) as deadline:
            answered = False

            def waiting_on_client(waiting: bool) -> None:
                # Not once answered (a server may answer before reading the body): the
                # deadline is gone then, and must not be touched.
                if limit and not answered:
                    deadline.reschedule(
                        None if waiting else asyncio.get_running_loop().time() + limit)

            if body is not None:
                body.waiting_on_client = waiting_on_client
            try:
                return await self._session.request(
                    request.method,
                    self._url(request),
                    headers=self._headers(request),
                    allow_redirects=False,
                    data=body.chunks() if body is not None else None,
                )
            finally:
                answered = True

    def _late(self) -> ScriptTimeout:
        return ScriptTimeout(
            f"the server did not answer within exec_timeout ({self.settings.exec_timeout:g} s)")

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = forwarded_headers(upstream.headers)
        garbled = not_utf8(headers)
        if garbled is not None:
            return refusal(UpstreamFailed(f"the server's header {garbled} is not UTF-8"))
        controlled = with_control(headers)
        if controlled is not None:
            return refusal(UpstreamFailed(
                f"the server's header {controlled} holds a control character"))
        response = PassedOnResponse(status=upstream.status,
                                    reason=sendable_reason(upstream.reason))
        response.headers.extend(headers)
        await response.prepare(request)
        sent = 0
        try:
            async for chunk in upstream.content.iter_any():
                async with asyncio.timeout(self.settings.write_timeout or None):
                    await response.write(chunk)
                sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone already: the only honest signal left is a cut connection,
            # so that the client does not take a truncated body for a whole one.
            logger.warning("response cut short", path=request.path,
                           error=str(exc) or type(exc).__name__)
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            self.metrics.bytes_out.inc(sent)
        await response.write_eof()
        return response

    # ---- WebSockets ------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """Connect upstream first, so its answer (refusal, redirect, subprotocol) is the
        client's. exec_timeout bounds the wait for it, as for any request."""
        assert self._session is not None
        # aiohttp's 4 MiB default would be ours, not theirs. It refuses a message of
        # max_msg_size bytes: one of max_body_size passes, as a body of that size does.
        limit = self.settings.max_body_size + 1 if self.settings.max_body_size else 0
        try:
            async with asyncio.timeout(self.settings.exec_timeout or None):
                upstream = await self._session.ws_connect(
                    self._url(request),
                    headers=self._headers(request, drop=WS_HANDSHAKE),
                    protocols=offered_protocols(request),
                    autoclose=False,  # close frames are relayed with their code, not answered
                    max_msg_size=limit,
                )
        except NotUpgraded as refused:
            try:
                return await self._relay(request, refused.answer)
            finally:
                refused.answer.release()
        except TimeoutError:
            return refusal(self._late())
        except aiohttp.WSServerHandshakeError as exc:  # a 101 that is no WebSocket's
            failed = UpstreamFailed(f"the server's WebSocket handshake failed: {exc.message}")
            return refusal(failed)
        except aiohttp.ClientError as exc:
            return refusal(_no_answer(request, exc))
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoclose=False,
            max_msg_size=limit,
        )
        try:
            await client.prepare(request)
            request[UPGRADED] = True
            await self._relay_session(request, client, upstream)
        finally:
            # Still open: the client went (the relay failed writing to it, or its
            # handshake did). The code the relay would have passed on is 1001.
            await upstream.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        return client

    async def _relay_session(self, request: web.Request, client: web.WebSocketResponse,
                             upstream: aiohttp.ClientWebSocketResponse) -> None:
        """The relay, in a task of its own: it ends the session itself, its close code
        passed on. aiohttp cancels this handler when the client's connection is lost
        (handler_cancellation): the relay sees the client go too, and closes the upstream
        with 1001 (going away), which that cancellation would cut to a bare 1000. Only a
        cancellation by the watchdog stopping (end_sessions done, or a second one) ends
        the relay."""
        task = asyncio.current_task()
        assert task is not None
        relaying = asyncio.ensure_future(relay(
            client, upstream, self.metrics.bytes_in.inc, self.metrics.bytes_out.inc))
        self._sessions[client] = task
        try:
            try:
                await asyncio.shield(relaying)
            except asyncio.CancelledError:
                if self._ending or not client_gone(request):
                    raise
                task.uncancel()
                await relaying
        finally:
            del self._sessions[client]
            if not relaying.done():
                relaying.cancel()
                await asyncio.gather(relaying, return_exceptions=True)

    async def end_sessions(self) -> None:
        """The watchdog stops: each WebSocket session ends, 1001 (going away) to both
        sides (the relay passes the client's close on upstream), as the controller
        ends its own. Returns once their handlers are done."""
        self._ending = True
        sessions = dict(self._sessions)
        if not sessions:
            return
        await asyncio.gather(*(
            client.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"watchdog stopping")
            for client in sessions
        ), return_exceptions=True)
        await asyncio.wait(sessions.values())


class _RequestBody:
    """The client's body as it arrives, bounded by max_body_size and read_timeout.

    aiohttp wraps whatever the generator raises, so the reason is kept here for the reply.
    """

    def __init__(self, request: web.Request, settings: WatchdogSettings, metrics: Metrics) -> None:
        self.request = request
        self.settings = settings
        self.metrics = metrics
        self.error: FaasError | None = None
        # Told when a read from the client starts and ends: the proxy's clock stops meanwhile.
        self.waiting_on_client: Callable[[bool], None] = lambda waiting: None

    async def chunks(self) -> AsyncIterator[bytes]:
        limit, total = self.settings.max_body_size, 0
        read_timeout = self.settings.read_timeout or None
        while True:
            self.waiting_on_client(True)
            try:
                async with asyncio.timeout(read_timeout):
                    chunk = await self.request.content.read(READ_CHUNK)
            except TimeoutError:
                self.error = RequestTimeout(
                    f"request body stalled for read_timeout ({self.settings.read_timeout:g} s)")
                raise
            except (web.RequestPayloadError, HttpProcessingError) as exc:  # a bad chunk, say
                self.error = unreadable_body(exc)
                self.request.content.feed_eof()  # nothing left to drain (aiohttp would log it)
                raise self.error from None
            self.waiting_on_client(False)
            if not chunk:
                return
            total += len(chunk)
            if limit and total > limit:
                self.error = PayloadTooLarge(f"request body is over max_body_size ({limit} bytes)")
                raise self.error
            self.metrics.bytes_in.inc(len(chunk))
            yield chunk


def _no_answer(request: web.Request, exc: aiohttp.ClientError) -> UpstreamFailed:
    """The 502 for a request the server gave no usable answer, logged. Its kind only:
    aiohttp's text spans lines, quotes the server's bytes and names its URL, query and
    all (a token, say)."""
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer its parser refused
        reason, kind = "the server's answer is not valid HTTP", ""
        # The rule broken: the first line (the C parser's; the Python one's quotes the
        # line), bounded.
        detail = exc.message.partition("\n")[0].rstrip(":")[:200]
    else:
        reason, kind = "the server did not answer", f" ({type(exc).__name__})"
        detail = (exc.strerror if isinstance(exc, OSError) else None) or type(exc).__name__
    logger.warning(reason, path=request.path, error=detail)
    return UpstreamFailed(reason + kind)


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1, on a socket listening on ::
    return ip.is_loopback


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True

