"""A WebSocket session relayed frame by frame between a client and the next hop.

Shared by the two proxies that carry WebSockets: the watchdog's http mode (the client to
the user's server) and the controller's exposed routes (the client to the service's
watchdog). Each leg negotiates its own handshake (its own key and accept); messages,
close codes and close reasons pass from one to the other. What each proxy does when the
next hop cannot be reached, and its limits, stay its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType, hdrs, web

# The WebSocket handshake is negotiated separately on each leg.
WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)

Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


def is_websocket(request: web.Request) -> bool:
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in connection
    )


def offered_protocols(request: web.Request) -> list[str]:
    """The subprotocols the client offers, for the next hop to choose from."""
    return [p.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", ())
            for p in value.split(",") if p.strip()]


class NotUpgraded(Exception):
    """The next hop's answer to a WebSocket handshake, other than 101, carried out whole."""

    def __init__(self, answer: aiohttp.ClientResponse) -> None:
        super().__init__(answer.status)
        self.answer = answer


async def upgraded_or_answer(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """A client session's middleware, acting on WebSocket handshakes alone (only they
    carry Upgrade: it is hop-by-hop, never forwarded). ws_connect would follow a redirect
    and keep only a refusal's status and reason; raised out of it here (NotUpgraded),
    before either, the answer is relayed as any other."""
    answer = await handler(request)
    if answer.status != 101 and hdrs.UPGRADE in request.headers:
        raise NotUpgraded(answer)
    return answer


def _uncounted(_size: int) -> None:
    pass


async def relay(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    count_in: Callable[[int], None] = _uncounted,
    count_out: Callable[[int], None] = _uncounted,
) -> None:
    """Relay until one side closes, then pass its close code to the other. Both sockets
    are made with autoclose off: a close frame is relayed with its code, not answered.
    `count_in` and `count_out` are told each message's size, client to upstream and back."""
    inbound = asyncio.create_task(_pump(client, upstream, count_in))
    outbound = asyncio.create_task(_pump(upstream, client, count_out))
    try:
        done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        finished = done.pop()
        # The far side first, then the reply that completes the closer's handshake: when
        # the closer sees its close acknowledged, the other end has seen it too. Closed
        # while the other pump still waits on it: aiohttp's close() ends that wait itself
        # and then waits for the far side's reply. Cancelled first, that wait would mark
        # the socket aborted, and close() would drop the connection right after its frame
        # (a next hop could see a code other than the one sent).
        first, then = (upstream, client) if finished is inbound else (client, upstream)
        try:
            code, reason = finished.result()
        except ConnectionError:
            # The pump could not write: its far side is gone (a client that vanished as a
            # message went to it). The side still there is told it went away.
            first, then = then, first
            code, reason = aiohttp.WSCloseCode.GOING_AWAY, b""
        await first.close(code=code, message=reason)
        await then.close(code=code, message=reason)
    finally:
        for task in (inbound, outbound):
            task.cancel()
        await asyncio.gather(inbound, outbound, return_exceptions=True)


async def _pump(source: Socket, sink: Socket, count: Callable[[int], None]) -> tuple[int, bytes]:
    """Copy messages until `source` closes; its close code and reason are returned."""
    while True:
        msg = await source.receive()
        if msg.type is WSMsgType.TEXT:
            count(len(msg.data))
            await sink.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            count(len(msg.data))
            await sink.send_bytes(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            return _sendable(msg.data), (msg.extra or "").encode()
        elif msg.type is WSMsgType.ERROR:
            # aiohttp closed `source` with the code of what it refused (1009: a message
            # over the limit, 1002, 1007); that goes on. Any other failure is ours: 1011.
            error = msg.data
            if isinstance(error, aiohttp.WebSocketError):
                return _sendable(error.code), b""
            return aiohttp.WSCloseCode.INTERNAL_ERROR, b""
        elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
            return aiohttp.WSCloseCode.GOING_AWAY, b""
        # PING and PONG are answered by aiohttp on each leg (autoping).


def _sendable(code: object) -> int:
    """A close code that may go on the wire (1005, 1006 and 1015 are reserved)."""
    if isinstance(code, int) and (1000 <= code <= 1003 or 1007 <= code <= 1014 or
                                  3000 <= code <= 4999):
        return code
    return int(aiohttp.WSCloseCode.OK)
