"""The close code a relayed WebSocket session passes on (websocket_relay.py), with fake
sockets: what aiohttp's receive() returns is all the pump sees."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from faas_supervisor.websocket_relay import Socket, _pump, relay


class FakeSocket:
    """Receives `messages`, then nothing more; `gone`: every send fails as aiohttp's does
    once the peer's connection is lost."""

    def __init__(self, *messages: WSMessage, gone: bool = False) -> None:
        self.messages = list(messages)
        self.gone = gone
        self.sent: list[object] = []
        self.closed: tuple[int, bytes] | None = None

    async def receive(self) -> WSMessage:
        if not self.messages:
            await asyncio.Event().wait()  # until cancelled
        return self.messages.pop(0)

    async def send_str(self, data: str) -> None:
        self._send(data)

    async def send_bytes(self, data: bytes) -> None:
        self._send(data)

    def _send(self, data: object) -> None:
        if self.gone:
            raise ConnectionResetError("Cannot write to closing transport")
        self.sent.append(data)

    async def close(self, *, code: int, message: bytes) -> bool:
        self.closed = (code, message)
        return True


async def pumped(*messages: WSMessage) -> tuple[int, bytes]:
    source, sink = FakeSocket(*messages), FakeSocket()
    return await _pump(cast(Socket, source), cast(Socket, sink), lambda _size: None)


def message(kind: WSMsgType, data: Any = None, extra: str | None = None) -> WSMessage:
    return WSMessage(kind, data, extra)


# aiohttp closes the source with the code of what it refused and returns an ERROR: a
# review found a message over the limit relayed as 1011, not 1009.
@pytest.mark.parametrize("code", [WSCloseCode.MESSAGE_TOO_BIG, WSCloseCode.PROTOCOL_ERROR,
                                  WSCloseCode.INVALID_TEXT])
async def test_a_refused_message_passes_its_close_code_on(code: WSCloseCode) -> None:
    refused = aiohttp.WebSocketError(code, "refused")
    assert await pumped(message(WSMsgType.ERROR, refused)) == (code, b"")


async def test_any_other_failure_is_an_internal_error() -> None:
    failed = message(WSMsgType.ERROR, ConnectionResetError("gone"))
    assert await pumped(failed) == (WSCloseCode.INTERNAL_ERROR, b"")


async def test_a_close_frame_passes_on_with_its_reason() -> None:
    assert await pumped(message(WSMsgType.TEXT, "hi"),
                        message(WSMsgType.CLOSE, 4001, "bye")) == (4001, b"bye")


async def test_a_client_gone_as_a_message_goes_to_it_sends_the_upstream_away() -> None:
    """The relay raised, and the watchdog's cleanup closed the upstream with 1000 (normal
    closure), for a client that had vanished (a review found it)."""
    client = FakeSocket(gone=True)
    upstream = FakeSocket(message(WSMsgType.BINARY, b"data"))
    await relay(cast(web.WebSocketResponse, client),
                cast(aiohttp.ClientWebSocketResponse, upstream))
    assert upstream.closed == (WSCloseCode.GOING_AWAY, b"")


async def test_a_close_goes_to_the_far_side() -> None:
    client = FakeSocket(message(WSMsgType.CLOSE, 4002, "done"))
    upstream = FakeSocket()
    await relay(cast(web.WebSocketResponse, client),
                cast(aiohttp.ClientWebSocketResponse, upstream))
    assert upstream.closed == client.closed == (4002, b"done")
