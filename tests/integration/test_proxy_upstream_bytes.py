"""http mode (SPEC 4.4) against a server that breaks HTTP: bytes sent past an answer, and
answers aiohttp cannot parse. A real watchdog; the user's server is a raw asyncio one
(RAW_SERVER) that writes exactly the bytes each test needs.

The server answers `/answer/CODE` with a CODE answer (`304` bodyless, else a 2-byte
body) and keeps that connection for `/stray`, a request the test sends it straight
(not through the watchdog): the server then writes another whole response on the kept
connection, and answers `/stray` once that is written. `/ok` answers `abc`; `/clte` and
`/garbage` answer what no HTTP parser takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import WatchdogFactory, WatchdogProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

RAW_SERVER = r'''
import asyncio, os

STRAY = (b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\nSet-Cookie: session=alice\r\n\r\n"
         b"alice's private data\n")
FIXED = {
    "/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "/answer/304": b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\n',
    "/answer/200": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "/clte": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\n\r\n"),
    "/garbage": b"garbage line here\r\n\r\n",
}
kept = []  # the connections that got an /answer/


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode().partition("?")[0]
            if path == "/stray":
                strays = 0
                for other in kept:
                    if not other.is_closing():
                        other.write(STRAY)
                        await other.drain()
                        strays += 1
                body = str(strays).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
            else:
                writer.write(FIXED[path])
                if path.startswith("/answer/"):
                    kept.append(writer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["upstream_port"]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


def start(watchdog: WatchdogFactory, tmp_path: Path) -> tuple[WatchdogProcess, int]:
    app = tmp_path / "raw_server.py"
    app.write_text(RAW_SERVER)
    port = free_port()
    wd = watchdog(f'exec "{sys.executable}" "{app}"\n',
                  env={"mode": "http", "upstream_port": str(port)})
    return wd, port


@pytest.mark.parametrize("code", [304, 200])
def test_bytes_past_an_answer_never_reach_another_client(
    watchdog: WatchdogFactory, tmp_path: Path, code: int
) -> None:
    """The server answers a client, then sends a whole response more on that connection
    (a body on a 304 it thought it owed, say). Kept for the next request, the connection
    gave that response, alice's cookie and data, to the next client, and every client
    after it got the answer of the one before (a review found it)."""
    wd, port = start(watchdog, tmp_path)
    first = requests.get(f"{wd.url}/answer/{code}", timeout=10)
    assert first.status_code == code
    # Written on the watchdog's connection before this answer comes back.
    strays = requests.get(f"http://127.0.0.1:{port}/stray", timeout=10)
    assert strays.status_code == 200
    for _ in range(2):
        answer = requests.get(f"{wd.url}/ok", timeout=10)
        assert (answer.status_code, answer.text) == (200, "abc")
        assert "Set-Cookie" not in answer.headers


@pytest.mark.parametrize("path", ["/clte?token=s3cr3t", "/garbage?token=s3cr3t"])
def test_an_answer_that_is_not_http_is_a_one_line_502_and_a_warning(
    watchdog: WatchdogFactory, tmp_path: Path, path: str
) -> None:
    """The 502 was aiohttp's text: lines of parser drawing, the server's bytes, a `400`
    and the internal URL with its query (a token), saying the server did not answer
    though it did; and nothing was logged (a review found it)."""
    wd, _ = start(watchdog, tmp_path)
    answer = requests.get(f"{wd.url}{path}", timeout=10)
    assert (answer.status_code, answer.text) == (
        502, "the server's answer is not valid HTTP\n")
    # Logged before the answer went: there once it came.
    warnings = [line for line in wd.log.read_text().splitlines()
                if "the server's answer is not valid HTTP" in line]
    assert len(warnings) == 1, wd.log.read_text()
    assert "warning" in warnings[0] and f"path={path.partition('?')[0]}" in warnings[0]
    assert "s3cr3t" not in warnings[0] and "127.0.0.1" not in warnings[0]
