"""Time limits on our servers' connections: a real aiohttp server on loopback, in process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from faas_supervisor.http_timeouts import TimedAppRunner, request_started

HEAD_TIMEOUT = 0.5
READING = web.AppKey("reading", asyncio.Event)  # set when the handler starts on the body
APPS: dict[int, web.Application] = {}  # the server fixture's app, by its port


async def echo(request: web.Request) -> web.Response:
    request.app[READING].set()
    try:
        body = await request.read()
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # as the parser raises it
        return web.Response(status=400, text=f"unreadable: {exc.__cause__ or exc}")
    waited = asyncio.get_running_loop().time() - request_started(request)
    return web.Response(body=body, headers={"X-Head-Waited": f"{waited:.3f}"})


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    keepalive = getattr(request, "param", 30.0)
    app = web.Application()
    app[READING] = asyncio.Event()
    app.router.add_route("*", "/", echo)
    runner = TimedAppRunner(
        app, head_timeout=HEAD_TIMEOUT, keepalive_timeout=keepalive, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    APPS[port] = app
    yield port
    del APPS[port]
    await runner.cleanup()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """A slow client: one byte at a time, until the server closes the connection."""
    for byte in data:
        writer.write(bytes([byte]))
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)  # the client's pace is what is tested


async def test_a_head_sent_byte_by_byte_is_408_after_head_timeout(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = asyncio.create_task(
        trickle(writer, b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200, 0.05)
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    elapsed = loop.time() - started
    slow.cancel()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"Connection: close" in answer and answer.endswith(b"in time\n")
    assert HEAD_TIMEOUT - 0.05 <= elapsed < 5


@pytest.mark.parametrize("server", [0.5], indirect=True)
async def test_a_connection_that_sends_nothing_is_closed_after_keepalive(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_requests_in_time_are_served_and_the_connection_kept(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    # A head in two pieces, in time: served, and its wait counted from its first byte.
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)  # the client's pace is what is tested
    writer.write(b"Content-Length: 2\r\n\r\nhi")
    first = await reader.readuntil(b"hi")
    assert first.startswith(b"HTTP/1.1 200")
    waited = float(first.split(b"X-Head-Waited: ")[1].split(b"\r\n")[0])
    assert 0.15 <= waited < HEAD_TIMEOUT + 1
    # The same connection, idle longer than head_timeout, then a request in one piece.
    await asyncio.sleep(HEAD_TIMEOUT * 2)  # idle is not a slow head
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nbye")
    second = await reader.readuntil(b"bye")
    assert second.startswith(b"HTTP/1.1 200")
    assert float(second.split(b"X-Head-Waited: ")[1].split(b"\r\n")[0]) < 0.1
    writer.close()


async def test_a_slow_body_is_not_cut_by_the_head_timer(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    body = b"x" * 20
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n")
    await trickle(writer, body, HEAD_TIMEOUT * 2 / len(body) * 1.5)  # 1.5 head_timeouts
    answer = await asyncio.wait_for(reader.readuntil(body), 10)
    assert answer.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_body_that_breaks_midway_fails_its_reader_instead_of_hanging(server: int) -> None:
    """aiohttp's C parser left the handler waiting for ever on a bad chunk size."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    # The handler is reading the body when the bad chunk comes.
    await asyncio.wait_for(APPS[server][READING].wait(), 10)
    writer.write(b"zz\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"unreadable: " in answer
    writer.close()


async def test_a_request_of_another_version_than_1x_is_not_served_and_gets_no_answer(
    server: int,
) -> None:
    """aiohttp serves `HTTP/2.0` in a request line, its answer's status line `HTTP/2.0`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST / HTTP/2.0\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert not APPS[server][READING].is_set()  # the handler never ran


async def test_the_requests_before_one_of_another_version_are_answered(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
                 b"Content-Length: 3\r\n\r\none"
                 b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo"
                 b"POST / HTTP/2.0\r\nHost: x\r\nContent-Length: 5\r\n\r\nthree")
    answers = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answers.startswith(b"HTTP/1.0 200 OK\r\n"), answers
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == 1, answers
    assert answers.endswith(b"two") and b"three" not in answers, answers
