"""A user's long-running server for the http-mode tests, started by the user's script.

Listens on 127.0.0.1:$upstream_port. Each route exposes one thing the tests check from
the far side of the proxy: what arrived (method, path, headers, body digest), streamed
bodies, a request held open until released, WebSocket echo, and a way to die.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from aiohttp import WSMsgType, web

BLOCK = 1 << 20


def block(i: int) -> bytes:
    """The i-th MiB of /bytes: distinct per block, so reordering would show."""
    return hashlib.sha256(str(i).encode()).digest() * (BLOCK // 32)


async def echo(request: web.Request) -> web.Response:
    digest, length = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    response = web.json_response({
        "method": request.method,
        "path_qs": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "sha256": digest.hexdigest(),
        "length": length,
        "peer_port": request.transport.get_extra_info("peername")[1] if request.transport else 0,
    })
    response.headers.add("Set-Cookie", "a=1")
    response.headers.add("Set-Cookie", "b=2")
    response.headers["X-Upstream"] = "yes"
    return response


async def sized_bytes(request: web.Request) -> web.StreamResponse:
    n = int(request.query["mib"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if "length" in request.query:
        response.content_length = n * BLOCK
    await response.prepare(request)
    for i in range(n):
        await response.write(block(i))
    await response.write_eof()
    return response


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {"Location": "/elsewhere"} if 300 <= code < 400 else {}
    if code == 401:
        headers["WWW-Authenticate"] = 'Basic realm="exposed"'
    return web.Response(status=code, text=None if code == 204 else f"status {code}\n",
                        headers=headers)


async def hold(request: web.Request) -> web.StreamResponse:
    """Answer headers and a first line, then wait for POST /release."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"started\n")
    await request.app["release"].wait()
    await response.write(b"done\n")
    await response.write_eof()
    return response


async def late(request: web.Request) -> web.Response:
    """No headers at all until POST /release, and the body left unread."""
    await request.app["release"].wait()
    return web.Response(text="late\n")


async def broken(request: web.Request) -> web.StreamResponse:
    """Half a chunked body, then the connection cut: a truncated response."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"partial " * 1000)
    assert request.transport is not None
    request.transport.abort()
    return response


async def raw_header(request: web.Request) -> web.Response:
    """A Content-Disposition whose file name is in ?charset=: written by hand, since
    aiohttp writes headers as UTF-8 and could not send Latin-1."""
    name = "café.txt".encode(request.query["charset"])
    assert request.transport is not None
    request.transport.write(b'HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename="'
                            + name + b'"\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n')
    request.transport.close()
    return web.Response()  # never sent: the connection is closed


async def release(request: web.Request) -> web.Response:
    request.app["release"].set()
    return web.Response(text="released\n")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    # autoclose off: the peer's close code is recorded before the close is acknowledged.
    ws = web.WebSocketResponse(protocols=("chat",), autoclose=False)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            if msg.data == "close-me":
                request.app["last_close"] = 4001
                await ws.close(code=4001, message=b"asked to")
                break
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    else:
        request.app["last_close"] = ws.close_code
        await ws.close()
    return ws


async def last_close(request: web.Request) -> web.Response:
    return web.json_response({"code": request.app["last_close"]})


async def pids(_request: web.Request) -> web.Response:
    return web.json_response({"pid": os.getpid(), "ppid": os.getppid()})


async def env(_request: web.Request) -> web.Response:
    return web.json_response({"GREETING": os.environ.get("GREETING")})


async def die(_request: web.Request) -> web.Response:
    os._exit(3)


async def drop(request: web.Request) -> web.Response:
    """The request counted, then the connection dropped with no answer."""
    hits = request.app["hits"]
    hits[request.path] = hits.get(request.path, 0) + 1
    assert request.transport is not None
    request.transport.abort()
    return web.Response()  # never sent: the connection is gone


async def dropped(request: web.Request) -> web.Response:
    return web.json_response(request.app["hits"])


def app() -> web.Application:
    application = web.Application()
    application["release"] = asyncio.Event()
    application["last_close"] = None
    application["hits"] = {}
    application.router.add_get("/bytes", sized_bytes)
    application.router.add_get("/status/{code}", status)
    application.router.add_get("/hold", hold)
    application.router.add_post("/release", release)
    application.router.add_route("*", "/late", late)
    application.router.add_get("/raw-header", raw_header)
    application.router.add_get("/broken", broken)
    application.router.add_get("/ws", websocket)
    application.router.add_get("/last-close", last_close)
    application.router.add_get("/pid", pids)
    application.router.add_get("/env", env)
    application.router.add_post("/die", die)
    application.router.add_route("*", "/echo{tail:.*}", echo)
    application.router.add_route("*", "/drop{tail:.*}", drop)
    application.router.add_get("/dropped", dropped)
    application.router.add_post("/sha256", echo)
    return application


if __name__ == "__main__":
    port = int(os.environ["upstream_port"])  # noqa: SIM112 - the watchdog's name for it
    web.run_app(app(), host="127.0.0.1", port=port, print=None)
