"""Time limits on the connections of our HTTP servers (the watchdog's and the controller's).

aiohttp closes a connection that waits for a request longer than `keepalive_timeout`
(counted from its opening or its last answer), but sets no limit of its own on a request
head that has started to arrive: a client sending it a byte at a time holds the
connection for as long as that timer allows, and a handler's limits start only once the
head is complete. Here a request head must be complete within `head_timeout` of its
first byte, else the client gets `408` and the connection is closed.

The hook is aiohttp's connection class (`RequestHandler`, its protocol): one timer per
request whose head comes in more than one piece; a head read whole (nearly all of them)
costs a counter comparison.

A body is the app's to bound, since only it knows whether it reads the body itself or
streams it elsewhere (to a watchdog, whose own limits apply): `bounded_body` makes
every wait of the body's stream for the client's next bytes end by a deadline, or after
a time without a byte, with `BodyLate`.

An answer is bounded by `send_timeout` (the controller's): a client that stops reading
while its answer is being sent, its receive window shut, has its connection aborted by
the kernel once nothing has been taken for that long (TCP_USER_TIMEOUT, which counts a
zero window since Linux 5.11), whatever writes the answer (a stream, sendfile). Without
it the socket, the file being sent and the buffered answer were held for as long as the
client kept the connection open.

A server out of file descriptors cannot accept a connection, and asyncio logs each
failed retry with its traceback (tens of thousands of lines a minute): the runner logs
them in one line now and then instead (`_AcceptFailures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.helpers import BaseTimerContext
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from faas_supervisor.logs import get_logger

FORCED_SHUTDOWN_TIMEOUT = 0.01  # seconds: see TimedAppRunner.stop_waiting
# The status a request whose client left before its answer began is counted and logged
# with (nginx's): never sent, there is nobody to send it to.
CLIENT_CLOSED = 499
_408 = b"the request head was not received in time\n"
_408_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_408)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _408
)
# asyncio's message for an accept that failed for want of a descriptor or of memory.
ACCEPT_FAILED = "socket.accept() out of system resource"
ACCEPT_LOG_INTERVAL = 10.0  # seconds: at most one line this often for those failures
logger = get_logger(component="http")


class _Connection(RequestHandler):
    """aiohttp's connection, with a timer from a request head's first byte to its last."""

    __slots__ = ("_head_timeout", "_head_timer", "_on_lost", "_send_timeout", "head_started")

    def __init__(self, manager: web.Server, head_timeout: float, send_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._send_timeout = send_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        # When the head being read (or the last one read) began to arrive; None when it
        # arrived in one piece, so that "now" is as good.
        self.head_started: float | None = None
        self._on_lost: Callable[[], None] | None = None  # when_client_leaves

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if self._send_timeout and sock is not None and sock.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):  # a kernel without it: no bound, as before
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                                int(self._send_timeout * 1000))

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a head is complete, or the parser failed
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            else:
                self.head_started = None
            self._fail_body_in_progress()
        elif (
            self._head_timer is None
            and self._head_timeout > 0
            and self._current_request is None  # not the body of a request being served
            and not self._messages
            and not self._upgraded
        ):
            self.head_started = self._loop.time()
            self._head_timer = self._loop.call_at(
                self.head_started + self._head_timeout, self._head_late
            )

    def _fail_body_in_progress(self) -> None:
        """A parse error in the middle of a body reaches the handler reading it.

        aiohttp's C parser, failing there (a bad chunk size, say), queues an error
        answer but leaves the body's stream open: the handler would wait on it for ever.
        """
        request = self._current_request
        message = self._messages[-1][0] if self._messages else None
        if request is None or message is None or isinstance(message, RawRequestMessage):
            return
        body = request.content
        if body.exception() is None and not body.is_eof():
            reason = str(getattr(message, "message", "") or "bad request")
            error = web.RequestPayloadError(reason)
            error.__cause__ = getattr(message, "exc", None)
            body.set_exception(error)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._waiter is None or self._waiter.done():
            return  # a request is being served after all: its handler's limits apply
        if self.transport is not None:  # between requests: an answer can be sent
            self.transport.write(_408_ANSWER)
        self.force_close()  # the transport sends what it was given, then closes

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()


def _unknown_coding(request: web.BaseRequest) -> str | None:
    """A transfer coding other than `chunked`, if the request names one.

    aiohttp reads `Transfer-Encoding: x-unknown, chunked` as plain chunked. RFC 9112
    (6.1) wants such a request refused: a proxy in front that reads the same header
    otherwise would split the stream at another place (smuggling). It is refused with a
    400, not the RFC's 501: bad input never gets a 5xx here (docs/RELIABILITY.md).
    """
    for value in request.headers.getall("Transfer-Encoding", ()):
        for coding in value.split(","):
            coding = coding.strip().lower()
            if coding and coding != "chunked":
                return coding
    return None


_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _hang_up(request: web.BaseRequest) -> web.StreamResponse:
    """No answer, the connection closed: for a request line of another HTTP version than
    1.x (`HTTP/2.0` on a plain connection), which nothing here serves.

    aiohttp's parser takes any `HTTP/d.d` and would serve it, writing the request's
    version into the answer's status line (`HTTP/2.0 200 OK`). Its public API has no way
    to answer with another version's status line, an `HTTP/2.0 400` or `505` is no
    answer an HTTP/1 client can read, and a 505 would be a 5xx for bad input
    (docs/RELIABILITY.md): so the connection is closed, nothing sent. The response
    returned is never sent: aiohttp, writing it, finds the transport closing and takes
    the client for gone (quietly, as any client that leaves before its answer).
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=400)


def _screened(handler: _Handler) -> _Handler:
    """`handler` behind what aiohttp lets through: a version not 1.x (`_hang_up`), a
    transfer coding other than chunked (`_unknown_coding`). The one coroutine this module
    adds to a request: both checks cost it an attribute comparison and a header lookup."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.version.major != 1:
            return _hang_up(request)
        if "Transfer-Encoding" in request.headers:
            coding = _unknown_coding(request)
            if coding is not None:
                return web.Response(
                    status=400,
                    text=f"transfer coding {coding[:40]!r} is not supported\n",
                    headers={"Connection": "close"},
                )
        return await handler(request)

    return handle


class _Server(web.Server):
    """aiohttp's server, whose connections are `_Connection`s, and which serves only
    HTTP/1.x requests in transfer codings it can read (`_screened`)."""

    def __init__(self, made: web.Server, head_timeout: float, send_timeout: float) -> None:
        super().__init__(
            _screened(made.request_handler),
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )
        self.head_timeout = head_timeout
        self.send_timeout = send_timeout

    def __call__(self) -> RequestHandler:
        return _Connection(self, self.head_timeout, self.send_timeout, loop=self._loop,
                           **self._kwargs)


class TimedAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections bound the time to receive a request head.

    `head_timeout` (seconds, 0 for none) is counted from the head's first byte; pass
    aiohttp's `keepalive_timeout` as well for connections that send nothing.
    `send_timeout` (seconds, 0 for none) bounds how long an answer may wait for a client
    that takes none of it (see the module's docstring). Its setup also makes the event
    loop log failed accepts in one line now and then (`_AcceptFailures`).
    """

    def __init__(self, app: web.Application, *, head_timeout: float,
                 send_timeout: float = 0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout = head_timeout
        self._send_timeout = send_timeout

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server(), self._head_timeout, self._send_timeout)

    async def setup(self) -> None:
        await super().setup()
        _AcceptFailures.install(asyncio.get_running_loop())

    def stop_waiting(self) -> None:
        """A forced exit: cleanup() waits no longer for the requests in flight, they are
        cancelled now (as when their client goes). aiohttp gives them `shutdown_timeout`
        from when cleanup() reaches them: those it has not reached yet get near nothing
        (0 would mean no limit to aiohttp)."""
        self._shutdown_timeout = FORCED_SHUTDOWN_TIMEOUT
        server = self.server
        for connection in server._connections if server is not None else ():
            task = connection._task_handler
            if task is not None and not task.done():
                task.cancel()


def client_gone(request: web.BaseRequest) -> bool:
    """Whether the request's connection is lost (or closing) now."""
    transport = request.transport
    return transport is None or transport.is_closing()


def when_client_leaves(
    request: web.BaseRequest, callback: Callable[[], None]
) -> Callable[[], None]:
    """`callback` called once if the request's connection is lost before the returned
    function is called (which forgets it); at once if it is lost already. aiohttp's own
    word of a client gone is `handler_cancellation`, which cancels the handlers of every
    route: this is for the one handler that asks. On a server not made by
    TimedAppRunner, nothing is called."""
    connection = request.protocol
    if not isinstance(connection, _Connection):
        return _nothing
    if connection.transport is None or connection.transport.is_closing():
        callback()  # lost already (while the handler waited on something else)
        return _nothing
    connection._on_lost = callback

    def forget() -> None:
        if connection._on_lost is callback:
            connection._on_lost = None

    return forget


def _nothing() -> None:
    pass


def request_started(request: web.BaseRequest) -> float:
    """When the request began to arrive (event loop time), for limits on the whole request."""
    started = getattr(request.protocol, "head_started", None)
    return started if started is not None else asyncio.get_running_loop().time()


class BodyLate(Exception):
    """A request body that did not arrive within its bound (`bounded_body`)."""


class _BodyTimer(BaseTimerContext):
    """What aiohttp's body stream enters around each wait for the client's next bytes
    (its `_timer`): a timer, cancelled when bytes come, that otherwise sets `BodyLate` on
    the stream, which the waiting read raises (as it raises a broken body's error), and
    so will every later read. Time the handler spends on anything else does not count,
    so a handler that reads slowly (a disk) is never taken for a slow client."""

    __slots__ = ("_body", "_connection", "_deadline", "_idle", "_loop", "_timer")

    def __init__(self, request: web.BaseRequest, deadline: float | None,
                 idle: float | None) -> None:
        self._body: StreamReader = request.content
        self._connection = request.protocol
        self._deadline = deadline
        self._idle = idle
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> BaseTimerContext:
        if self._idle is None:
            assert self._deadline is not None
            when = self._deadline
        else:
            when = self._loop.time() + self._idle
            if self._deadline is not None:
                when = min(when, self._deadline)
        self._timer = self._loop.call_at(when, self._late)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        self._timer = None
        past_deadline = self._deadline is not None and self._loop.time() >= self._deadline
        what = "in time" if past_deadline else f"for {self._idle:g} s"
        self._body.set_exception(BodyLate(f"the request body did not come {what}"))
        # The connection takes nothing more (close: the parser is fed no more bytes) and
        # ends once the answer is sent; the body counts as ended, so aiohttp does not
        # linger over it, reading what is left to discard (its read would raise BodyLate).
        self._connection.close()
        self._body.feed_eof()


@contextlib.contextmanager
def bounded_body(
    request: web.BaseRequest, *, deadline: float | None = None, idle: float | None = None
) -> Iterator[None]:
    """Within the block, a read of the request's body that waits for the client past
    `deadline` (event loop time: `request_started(request) + limit` bounds the whole
    request), or `idle` seconds without a byte, raises `BodyLate`, for the caller to
    answer; the connection is closed after that answer, what is left of the body unread.
    A body already whole, or none, is never late.

    The hook is aiohttp's StreamReader's timer, which it enters around every wait for
    data, however the body is read (`read`, `readany`, `readuntil`, `iter_chunked`)."""
    body = request.content
    if not request.body_exists or (deadline is None and idle is None):
        yield
        return
    kept = body._timer
    body._timer = _BodyTimer(request, deadline, idle)
    try:
        yield
    finally:
        body._timer = kept  # aiohttp's lingering read of a body left unread is its own


class _AcceptFailures:
    """The event loop's exception handler for one kind of report: a listening socket's
    accept failing for want of a file descriptor (EMFILE) or of memory. asyncio retries
    a second later, and logs each failure with its traceback: under a flood of
    connections, tens of thousands of lines a minute. Here they are one line at most
    every ACCEPT_LOG_INTERVAL, counting the failures since the last. Every other report
    goes to the handler that was there (asyncio's default, which logs it as before)."""

    def __init__(
        self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    ) -> None:
        self._previous = previous
        self._next_line = float("-inf")
        self._unsaid = 0

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Once per loop (each server's runner asks)."""
        previous = loop.get_exception_handler()
        if not isinstance(getattr(previous, "__self__", None), cls):
            loop.set_exception_handler(cls(previous).handle)

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self._unsaid += 1
        now = loop.time()
        if now < self._next_line:
            return
        self._next_line = now + ACCEPT_LOG_INTERVAL
        exc = context.get("exception")
        sock = context.get("socket")
        try:
            address = sock.getsockname() if sock is not None else None
        except OSError:
            address = None
        logger.warning(
            "cannot accept connections, retrying",
            error=getattr(exc, "strerror", None) or str(exc),
            listening=str(address),
            failures=self._unsaid,
        )
        self._unsaid = 0
