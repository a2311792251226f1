"""Storage servers for the provider tests, started for real on loopback.

* `start_moto`: a moto S3 server of one's own, to pause or kill without touching the
  session's shared one;
* `start_wsgidav`: a WebDAV server (wsgidav), anonymous or with one basic-auth user;
* `CuttingProxy`: a TCP proxy that can break connections mid-transfer and tells when a
  number of bytes has gone through (an event to await, not a sleep);
* `StallingProxy`: a TCP proxy, in threads of its own (for tests without an event loop),
  that stops forwarding requests when told, and tells when it has dropped one;
* `FakeOneprovider`: a small aiohttp app serving only the Oneprovider REST endpoints the
  Onedata provider calls (no Onedata server can run here), with the documented shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.integration.conftest import S3Server, free_port, wait_for_http

# ---- moto --------------------------------------------------------------------------------


@dataclass
class MotoProcess:
    process: subprocess.Popen[bytes]
    server: S3Server
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_moto(folder: Path) -> MotoProcess:
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server is not installed: run `make test`, which installs moto[server]")
    port = free_port()
    log = folder / f"moto-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT)
    wait_for_http(f"http://127.0.0.1:{port}/moto-api/", process, log=log)
    return MotoProcess(process, S3Server(f"http://127.0.0.1:{port}"), log)


# ---- wsgidav -----------------------------------------------------------------------------


@dataclass
class DavServer:
    process: subprocess.Popen[bytes]
    url: str
    root: Path
    log: Path
    login: str = ""
    password: str = ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_wsgidav(folder: Path, login: str = "", password: str = "") -> DavServer:
    """wsgidav on a free port serving `folder/root`; with a user, basic auth is required."""
    exe = shutil.which("wsgidav")
    if exe is None:
        pytest.fail("wsgidav is not installed: run `make test`, which installs wsgidav cheroot")
    root = folder / "dav-root"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "provider_mapping": {"/": str(root)},
        "verbose": 1,
        "dir_browser": {"enable": False},
        "http_authenticator": {"accept_basic": True, "accept_digest": False,
                               "default_to_digest": False},
        "simple_dc": {"user_mapping": {"*": {login: {"password": password}} if login else True}},
    }
    config_path = folder / f"wsgidav-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = folder / f"wsgidav-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([exe, "--config", str(config_path)], stdout=out,
                                   stderr=subprocess.STDOUT)
    _wait_for_port(port, process, log)
    return DavServer(process, f"http://127.0.0.1:{port}", root, log, login, password)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path,
                   timeout: float = 30.0) -> None:
    """Until the port accepts connections (wsgidav with auth has no URL answering 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)  # polling a socket that has no readiness event to await
    pytest.fail(f"port {port} did not open within {timeout} s:\n{log.read_text()}")


# ---- a proxy that breaks mid-transfer ----------------------------------------------------


@contextlib.contextmanager
def stalling_store(on_request: Callable[[], None] = lambda: None,
                   ) -> Iterator[tuple[str, list[socket.socket]]]:
    """An S3 store that answers each request's head, a few body bytes of 1000, then
    nothing: its URL and the connections it took (one per request). `on_request` runs
    once each answer has begun. Closed, its connections with it, at the end."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def stall() -> None:
        with contextlib.suppress(OSError):  # the server closed at the end
            while True:
                conn, _ = server.accept()
                held.append(conn)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n"
                             b"Content-Type: application/octet-stream\r\nETag: \"x\"\r\n\r\nabc")
                on_request()

    threading.Thread(target=stall, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", held
    finally:
        server.close()
        for conn in held:
            conn.close()


@contextlib.contextmanager
def gated_store(body: bytes = b"input\n") -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """An S3 store answering each request with `body`, held after its first byte until
    `gate` is set: its URL, `asked` (set once a request's answer has begun) and `gate`.
    A download through it is so held in the middle for as long as a test needs."""
    server = socket.create_server(("127.0.0.1", 0))
    asked, gate = threading.Event(), threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n"
                         b"Content-Type: application/octet-stream\r\nETag: \"x\"\r\n\r\n"
                         % len(body) + body[:1])
            asked.set()
            gate.wait()
            conn.sendall(body[1:])

    def serve() -> None:
        with contextlib.suppress(OSError):  # the server closed at the end
            while True:
                conn, _ = server.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", asked, gate
    finally:
        gate.set()
        server.close()


class StallingProxy:
    """Forwards loopback connections to an S3 server until `stall()`; from then on what
    the client sends is read and dropped, so no request gets an answer (on connections
    already open too). `stalled_request` is set once a request has been dropped."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self._stalled = threading.Event()
        self.stalled_request = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def stall(self) -> None:
        self._stalled.set()

    def close(self) -> None:
        self._server.close()
        for sock in self._held:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the server closed at the end
            while True:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self._upstream)
                self._held += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream, True),
                                 daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, False),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, towards_store: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if towards_store and self._stalled.is_set():
                    self.stalled_request.set()
                    continue
                target.sendall(data)


class CuttingProxy:
    """Forwards 127.0.0.1:port to an upstream port, in the running event loop.

    `cut_after`: a connection that has carried more than this many bytes towards the
    store is reset (both ways), as a store dying mid-body would. Small requests (create,
    abort, list) pass; every attempt at a big body fails.
    """

    def __init__(self, upstream_port: int, cut_after: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.forwarded = 0
        self.cuts = 0
        self._waiters: list[tuple[int, asyncio.Event]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def passed(self, count: int) -> asyncio.Event:
        """An event set once `count` bytes in all have gone towards the store."""
        event = asyncio.Event()
        self._waiters.append((count, event))
        self._notify()
        return event

    def _notify(self) -> None:
        for count, event in self._waiters:
            if self.forwarded >= count:
                event.set()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            store_r, store_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            self._tasks.discard(task)
            return
        sent = 0

        async def upstream() -> None:
            nonlocal sent
            while data := await client_r.read(65536):
                sent += len(data)
                if self.cut_after is not None and sent > self.cut_after:
                    self.cuts += 1
                    client_w.transport.abort()
                    store_w.transport.abort()
                    return
                store_w.write(data)
                await store_w.drain()
                self.forwarded += len(data)
                self._notify()
            store_w.close()

        async def downstream() -> None:
            while data := await store_r.read(65536):
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled by close(): end quietly, asyncio would log it otherwise
        finally:
            client_w.transport.abort()
            store_w.transport.abort()
            self._tasks.discard(task)


# ---- a Oneprovider REST API of the endpoints we call -------------------------------------

API = "/api/v3/oneprovider"


class FakeOneprovider:
    """Files of `root/<space>/...`; a file id is the hex of its path under `root`.

    `fail_next`: that many coming requests answer 503 (to see retries happen);
    `fail_puts`: the same, for PUT requests only.
    `requests`: every request as (method, path, X-Auth-Token header), for assertions.
    """

    def __init__(self, root: Path, token: str, space: str) -> None:
        self.root = root
        self.token = token
        self.space = space
        self.fail_next = 0
        self.fail_puts = 0
        self.requests: list[tuple[str, str, str]] = []
        (root / space).mkdir(parents=True, exist_ok=True)
        self.app = web.Application(middlewares=[self._auth])
        self.app.router.add_post(API + "/lookup-file-id/{path:.+}", self.lookup)
        self.app.router.add_get(API + "/data/{id}/path/{path:.+}", self.download)
        self.app.router.add_put(API + "/data/{id}/path/{path:.+}", self.create)
        self.app.router.add_put(API + "/data/{id}/content", self.update)
        self.app.router.add_delete(API + "/data/{id}", self.remove)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FakeOneprovider:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        token = request.headers.get("X-Auth-Token", "")
        self.requests.append((request.method, request.path, token))
        if self.fail_next > 0 or (self.fail_puts > 0 and request.method == "PUT"):
            if self.fail_next > 0:
                self.fail_next -= 1
            else:
                self.fail_puts -= 1
            await request.read()
            return _error(503, "temporarily_unavailable")
        if request.headers.get("X-Auth-Token") != self.token:
            return _error(401, "unauthorized")
        return await handler(request)

    def _id(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix().encode().hex() or "00"

    def _by_id(self, file_id: str) -> Path | None:
        try:
            relative = bytes.fromhex(file_id).decode()
        except ValueError:
            return None
        path = self.root / relative
        return path if path.exists() else None

    async def lookup(self, request: web.Request) -> web.StreamResponse:
        path = self.root / request.match_info["path"]
        if not path.exists():
            return _error(404, "not_found")
        return web.json_response({"fileId": self._id(path)})

    async def download(self, request: web.Request) -> web.StreamResponse:
        base = self._by_id(request.match_info["id"])
        path = base / request.match_info["path"] if base else None
        if path is None or not path.is_file():
            return _error(404, "not_found")
        return web.FileResponse(path)

    async def create(self, request: web.Request) -> web.StreamResponse:
        base = self._by_id(request.match_info["id"])
        if base is None:
            return _error(404, "not_found")
        path = base / request.match_info["path"]
        if path.exists():
            return _error(400, "posix", errno="eexist")
        if not path.parent.is_dir():
            if request.query.get("create_parents") != "true":
                return _error(404, "not_found")
            path.parent.mkdir(parents=True)
        await _receive(request, path)
        return web.json_response({"fileId": self._id(path)}, status=201)

    async def update(self, request: web.Request) -> web.StreamResponse:
        path = self._by_id(request.match_info["id"])
        if path is None or not path.is_file():
            return _error(404, "not_found")
        await _receive(request, path)
        return web.Response(status=204)

    async def remove(self, request: web.Request) -> web.StreamResponse:
        path = self._by_id(request.match_info["id"])
        if path is None:
            return _error(404, "not_found")
        path.unlink()
        return web.Response(status=204)


async def _receive(request: web.Request, path: Path) -> None:
    with open(path, "wb") as out:
        async for chunk in request.content.iter_chunked(1 << 20):
            out.write(chunk)


def _error(status: int, error_id: str, **details: str) -> web.Response:
    body = {"error": {"id": error_id, "description": error_id, "details": details}}
    return web.json_response(body, status=status)


async def streamed_answer(request: web.Request, status: int, headers: dict[str, str],
                          size: int, sent: list[int]) -> web.StreamResponse:
    """An answer of `size` bytes sent a MiB at a time, as long as the client reads (a
    server answering with a body nobody should read whole): the bytes it could send
    before the client closed the connection are appended to `sent`."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = size
    await response.prepare(request)
    count, chunk = 0, b"y" * (1 << 20)
    try:
        while count < size:
            await response.write(chunk)
            count += len(chunk)
    except ConnectionError:
        pass
    finally:
        sent.append(count)
    return response
