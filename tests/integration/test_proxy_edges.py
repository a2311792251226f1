"""http mode (SPEC 4.4) at its edges: what a user's server sends that aiohttp would not
pass on as sent, and how WebSocket sessions end. A real watchdog, a real upstream.

The upstream (UPSTREAM_APP, written out by each test) answers `/raw?B64` with the bytes
B64 decodes to, written as they are, and appends the close code of each WebSocket close
frame it receives (or `none`) to a file, read once the session ended, even after the
watchdog stopped it.
"""

from __future__ import annotations

import asyncio
import base64
import select
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import requests

from tests.integration.conftest import WatchdogFactory, WatchdogProcess, free_port
from tests.integration.test_proxy import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

UPSTREAM_APP = '''
import asyncio, base64, contextlib, os, sys
from aiohttp import WSMsgType, web

CLOSES = sys.argv[1]


def record(code):
    with open(CLOSES, "a") as out:
        out.write(f"{code}\\n")


async def raw(request):
    request.transport.write(base64.urlsafe_b64decode(request.query_string))
    request.transport.close()
    return web.Response()  # never sent: the connection is closed


async def upload(request):
    request.app["uploads"] += 1
    await request.read()
    return web.Response(text="ok")


async def uploads(request):
    return web.json_response(request.app["uploads"])


async def ws(request):
    ws = web.WebSocketResponse(max_msg_size=0, autoclose=False)
    await ws.prepare(request)
    if "send" in request.query:
        await ws.send_bytes(b"B" * int(request.query["send"]))
    streaming = asyncio.create_task(stream(ws)) if "stream" in request.query else None
    try:
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.CLOSE:
                record(msg.data)
                await ws.close()
                return ws
            if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                record("none")
                return ws
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
    finally:
        if streaming is not None:
            streaming.cancel()


async def stream(ws):
    """Messages without end, until the session ends."""
    with contextlib.suppress(ConnectionError):
        while not ws.closed:
            await ws.send_bytes(b"s" * 65536)


app = web.Application()
app["uploads"] = 0
app.router.add_get("/raw", raw)
app.router.add_route("*", "/upload", upload)
app.router.add_get("/uploads", uploads)
app.router.add_get("/ws", ws)
web.run_app(app, host="127.0.0.1", port=int(os.environ["upstream_port"]), print=None)
'''


@dataclass
class Upstream:
    wd: WatchdogProcess
    port: int
    closes_file: Path

    @property
    def url(self) -> str:
        return self.wd.url

    def closes(self) -> list[str]:
        """The close codes the upstream received, one per session ended."""
        if not self.closes_file.exists():
            return []
        return self.closes_file.read_text().split()


def start(watchdog: WatchdogFactory, tmp_path: Path, **settings: str) -> Upstream:
    app = tmp_path / "upstream_app.py"
    app.write_text(UPSTREAM_APP)
    closes = tmp_path / f"closes-{len(list(tmp_path.glob('closes-*')))}"
    closes.touch()
    port = free_port()
    script = f'exec "{sys.executable}" "{app}" "{closes}"\n'
    wd = watchdog(script, env={"mode": "http", "upstream_port": str(port), **settings})
    return Upstream(wd, port, closes)


def through(up: Upstream, answer: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """`answer` sent by the upstream as it is: the status line, headers (lower-case
    names) and body the client gets, as bytes on the wire."""
    query = base64.urlsafe_b64encode(answer).decode()
    with socket.create_connection(("127.0.0.1", up.wd.port), timeout=10) as sock:
        sock.sendall(f"GET /raw?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode().strip()
               for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, body


# ---- headers and reason phrases ---------------------------------------------------------

# aiohttp refuses to write a control character in a header or status line (a header
# injection, to it), from prepare(): a review found a 500 and a traceback for an upstream
# header holding an ESC, and a Latin-1 reason phrase sent altered (`Très` as `Trs`).


@pytest.mark.parametrize("value", [b"\x1b[31mred\x1b[0m", b"a\x7fb", b"a\x01b"])
def test_a_response_header_with_a_control_character_is_a_502(
    watchdog: WatchdogFactory, tmp_path: Path, value: bytes
) -> None:
    up = start(watchdog, tmp_path)
    status, _, body = through(up, b"HTTP/1.1 200 OK\r\nX-Debug: " + value +
                              b"\r\nContent-Length: 2\r\n\r\nok")
    assert (status, body) == (b"HTTP/1.1 502 Bad Gateway",
                              b"the server's header X-Debug holds a control character\n")
    assert "Traceback" not in up.wd.log.read_text(errors="replace")


def test_a_tab_in_a_response_header_passes(watchdog: WatchdogFactory, tmp_path: Path) -> None:
    up = start(watchdog, tmp_path)
    _, headers, body = through(up, b"HTTP/1.1 200 OK\r\nX-A: a\tb\r\nContent-Length: 2\r\n\r\nok")
    assert (headers["x-a"], body) == ("a\tb", b"ok")


def test_a_reason_phrase_is_passed_on_only_as_sent(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    up = start(watchdog, tmp_path)
    tail = b"\r\nContent-Length: 2\r\n\r\nok"
    utf8 = "Très bien".encode()
    assert through(up, b"HTTP/1.1 200 " + utf8 + tail)[0] == b"HTTP/1.1 200 " + utf8
    # Not sendable as sent: the status's standard phrase instead, never an altered one.
    latin1 = "Très bien".encode("latin-1")
    assert through(up, b"HTTP/1.1 200 " + latin1 + tail)[:3:2] == (b"HTTP/1.1 200 OK", b"ok")
    assert through(up, b"HTTP/1.1 404 Not\x01Here" + tail)[:3:2] == (
        b"HTTP/1.1 404 Not Found", b"ok")
    assert "Traceback" not in up.wd.log.read_text(errors="replace")


# aiohttp gives a non-empty body without Content-Type `application/octet-stream`: a review
# found an HTML page so typed (a browser would offer it as a download).


def test_a_response_without_content_type_gets_none(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    up = start(watchdog, tmp_path)
    _, headers, body = through(up, b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\n"
                                   b"<html><b>hi</b></html>")
    assert body == b"<html><b>hi</b></html>"
    assert "content-type" not in headers
    _, typed, _ = through(up, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                              b"Content-Length: 2\r\n\r\nok")
    assert typed["content-type"] == "text/html"


# ---- request bodies ----------------------------------------------------------------------


def test_a_body_declared_over_max_body_size_never_reaches_the_server(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    """Its head and the first pieces of its body were passed on before the 413: the
    server saw a request cut short (a review found it)."""
    up = start(watchdog, tmp_path, max_body_size="1000")

    def uploads() -> int:
        answer = requests.get(f"http://127.0.0.1:{up.port}/uploads", timeout=10)
        return int(answer.json())

    with socket.create_connection(("127.0.0.1", up.wd.port), timeout=10) as sock:
        # The rest of the body is never sent: the answer must not wait for it.
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n"
                     + b"x" * 600)
        wait_until(lambda: bool(select.select([sock], [], [], 0)[0]) or uploads() > 0,
                   "an answer, or the request at the server")
        assert uploads() == 0
        assert sock.recv(1000).startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert requests.post(f"{up.url}/upload", data=b"x" * 1000, timeout=10).text == "ok"
    assert uploads() == 1  # the one within the limit


# ---- WebSocket sessions ------------------------------------------------------------------

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
             b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def test_a_client_that_vanishes_ends_the_session_going_away(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    """aiohttp cancelled the handler, whose cleanup closed the upstream with 1000 (normal
    closure) for a client that never closed (a review found it)."""
    up = start(watchdog, tmp_path)
    with socket.create_connection(("127.0.0.1", up.wd.port), timeout=10) as sock:
        sock.sendall(HANDSHAKE)
        assert sock.recv(1000).startswith(b"HTTP/1.1 101 ")
    wait_until(lambda: bool(up.closes()), "the upstream to see the session end")
    assert up.closes() == ["1001"]


def test_a_client_that_vanishes_as_messages_go_to_it_ends_the_session_going_away(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    """A message written to the vanished client failed: the relay raised, a traceback in
    the log and 1000 to the upstream."""
    up = start(watchdog, tmp_path)
    sessions = 3
    for _ in range(sessions):
        with socket.create_connection(("127.0.0.1", up.wd.port), timeout=10) as sock:
            sock.sendall(HANDSHAKE.replace(b"/ws", b"/ws?stream=1"))
            assert sock.recv(1 << 20).startswith(b"HTTP/1.1 101 ")
            # Reset, not closed: the watchdog's writes to it fail at once.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_until(lambda: len(up.closes()) == sessions, "the upstream to see the sessions end")
    assert up.closes() == ["1001"] * sessions
    assert "Traceback" not in up.wd.log.read_text(errors="replace")


async def test_sigterm_ends_open_sessions_going_away_both_ways(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    """Cancelled at shutdown, a session ended with no close frame to the client (1006)
    and 1000 to the upstream (a review found it)."""
    up = start(watchdog, tmp_path, healthcheck_interval="1")
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{up.url}/ws") as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=10)) == "hello"
        up.wd.process.send_signal(signal.SIGTERM)
        msg = await ws.receive(timeout=20)
        assert (msg.type, msg.data, msg.extra) == (
            aiohttp.WSMsgType.CLOSE, 1001, "watchdog stopping")
    assert await asyncio.to_thread(up.wd.process.wait, 30) == 0
    assert up.closes() == ["1001"]


async def test_websocket_messages_are_limited_to_max_body_size_exactly(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    """One of max_body_size bytes was refused (aiohttp refuses max_msg_size bytes), and
    one over it from the upstream reached the client as 1011, not 1009 (a review found
    both)."""
    up = start(watchdog, tmp_path, max_body_size="100000")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{up.url}/ws", max_msg_size=0) as ws:
            await ws.send_bytes(b"x" * 100000)
            assert len(await ws.receive_bytes(timeout=10)) == 100000
            await ws.send_bytes(b"x" * 100001)
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
        async with session.ws_connect(f"{up.url}/ws?send=100001", max_msg_size=0) as ws:
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
    wait_until(lambda: len(up.closes()) == 2, "the upstream to see both sessions end")
    assert up.closes() == ["1009", "1009"]
