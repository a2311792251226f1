"""The direct S3 requests' signing and where they are used (storage_providers/s3_direct.py).

Their round trips, retries and refusals run against real stores in
tests/integration/test_storage_providers.py (Ceph RGW checks the signatures).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from faas_supervisor import aws_sigv4
from faas_supervisor.config import ProviderConfig, Secret
from faas_supervisor.storage_providers import s3_direct
from faas_supervisor.storage_providers.s3 import S3Provider
from faas_supervisor.storage_providers.s3_direct import DirectS3, direct


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/bucket/plain.txt", b""),
    ("PUT", "/bucket/with%20space/%C3%A9t%C3%A9%2Bplus%25.txt", b"body"),
])
def test_the_authorization_is_botocores_for_the_same_request(method: str, path: str,
                                                             body: bytes) -> None:
    # Over plain HTTP botocore signs the body's SHA-256 too, as the direct requests do.
    request = AWSRequest(method, f"http://127.0.0.1:9000{path}", data=body)
    S3SigV4Auth(Credentials("AKDIRECT", "secret/key+1"), "s3", "eu-west-3").add_auth(request)
    amz_date = request.headers["X-Amz-Date"]
    payload = hashlib.sha256(body).hexdigest()
    assert request.headers["X-Amz-Content-SHA256"] == payload
    ours = aws_sigv4.authorization(
        "AKDIRECT", "secret/key+1", "eu-west-3", method, path,
        {"host": "127.0.0.1:9000", "x-amz-content-sha256": payload, "x-amz-date": amz_date},
        amz_date)
    assert ours == request.headers["Authorization"]


def provider_config(kind: str = "minio", **settings: Any) -> ProviderConfig:
    values: dict[str, str | bool | Secret] = {
        "endpoint": "http://minio.minio:9000", "access_key": Secret("AK"),
        "secret_key": Secret("SK"), **settings}
    return ProviderConfig(kind, "default", {k: v for k, v in values.items() if v != "-"})


def test_used_for_a_minio_provider_on_plain_http_with_its_keys() -> None:
    made = direct(provider_config(), 5.0, 20.0)
    assert made is not None and made.host == "minio.minio:9000"
    assert made.region == "us-east-1"
    assert "SK" not in repr(made)
    bare = direct(provider_config(endpoint="minio:9000", region="eu-west-1"), 5.0, 20.0)
    assert bare is not None and (bare.host, bare.region) == ("minio:9000", "eu-west-1")


@pytest.mark.parametrize("kind,settings", [
    ("s3", {}),  # Amazon's addressing is boto3's to choose
    ("minio", {"endpoint": "https://minio.example.org"}),  # TLS and its CAs: boto3's
    ("minio", {"endpoint": "http://proxy.example.org/s3"}),  # a path prefix
    ("minio", {"access_key": "-"}),  # boto3's credential chain
    ("minio", {"secret_key": "-"}),
    ("minio", {"endpoint": "-"}),
])
def test_boto3_does_everything_else(kind: str, settings: dict[str, str]) -> None:
    assert direct(provider_config(kind, **settings), 5.0, 20.0) is None


# ---- against a scripted store on loopback: the answers no real store here gives at will ----


class Store:
    """An aiohttp app that answers each request with the next of `answers` (the last one
    repeated), and counts them. An answer: (status, headers, body, bytes actually sent)."""

    def __init__(self, *answers: tuple[int, dict[str, str], bytes, int | None]) -> None:
        self.answers = list(answers)
        self.requests: list[web.Request] = []
        self.bodies: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.host = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.bodies.append(await request.read())
        status, headers, body, sent = self.answers[min(len(self.requests),
                                                       len(self.answers)) - 1]
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:sent] if sent is not None else body)
        if sent is not None:  # cut: the connection closed cleanly, the body short
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    async def __aenter__(self) -> Store:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.host = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def error(code: str, extra: str = "") -> bytes:
    return f"<Error><Code>{code}</Code><Message>m</Message>{extra}</Error>".encode()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_direct.random, "uniform", lambda low, high: 0.0)


async def test_a_body_cut_short_is_retried_then_fails(tmp_path: Path) -> None:
    """http.client's read(n) answers b"" when the store closes early: the length is checked
    (a short input file would otherwise pass as the object)."""
    async with Store((200, {}, b"x" * 1000, 100)) as store:
        client = DirectS3(store.host, "us-east-1", "AK", "SK")
        with pytest.raises(http.client.IncompleteRead):
            await asyncio.to_thread(client.get, "b", "k", tmp_path / "dest", 1 << 20)
    assert len(store.requests) == 3
    assert list(tmp_path.iterdir()) == []


async def test_request_timeout_and_5xx_are_retried(tmp_path: Path) -> None:
    async with Store((400, {}, error("RequestTimeout"), None), (503, {}, error("SlowDown"), None),
                     (200, {}, b"data", None)) as store:
        client = DirectS3(store.host, "us-east-1", "AK", "SK")
        assert await asyncio.to_thread(client.get, "b", "k", tmp_path / "dest", 1 << 20)
    assert len(store.requests) == 3
    assert (tmp_path / "dest").read_bytes() == b"data"


async def test_our_own_disk_failing_is_not_retried(tmp_path: Path) -> None:
    async with Store((200, {}, b"data", None)) as store:
        client = DirectS3(store.host, "us-east-1", "AK", "SK")
        with pytest.raises(FileNotFoundError):
            await asyncio.to_thread(client.get, "b", "k", tmp_path / "no" / "dest", 1 << 20)
    assert len(store.requests) == 1


async def test_another_region_is_left_to_boto3s_redirector(tmp_path: Path) -> None:
    """A store that signs for a region the config does not name answers 400 with the
    right one: botocore retries with it; the direct request hands the transfer to boto3."""

    async def handle(request: web.Request) -> web.Response:
        if "/eu-west-9/s3/" not in request.headers.get("Authorization", ""):
            # As S3 answers it: the region in the body and, for a HEAD, in a header.
            return web.Response(status=400, headers={"x-amz-bucket-region": "eu-west-9"},
                                body=error("AuthorizationHeaderMalformed",
                                           "<Region>eu-west-9</Region>"))
        return web.Response(body=b"from boto3")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        provider = S3Provider(provider_config(endpoint=f"http://127.0.0.1:{port}"))
        await provider.download("b", "k", tmp_path / "dest")
        provider.close()
    finally:
        await runner.cleanup()
    assert (tmp_path / "dest").read_bytes() == b"from boto3"


def test_a_proxy_in_the_environment_is_boto3s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example.org:3128")
    assert direct(provider_config(), 5.0, 20.0) is None


def test_an_endpoint_whose_port_is_not_a_number_is_boto3s() -> None:
    assert direct(provider_config(endpoint="http://minio:nine"), 5.0, 20.0) is None


def test_the_keys_are_not_in_its_repr() -> None:
    made = direct(provider_config(access_key=Secret("AKREPR"), secret_key=Secret("SKREPR")),
                  5.0, 20.0)
    assert made is not None and "AKREPR" not in repr(made) and "SKREPR" not in repr(made)


# ---- a PUT's body waits for the store's go-ahead (Expect: 100-continue) ---------------------


def read_body(conn: socket.socket, head: bytes, length: int) -> bytes:
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < length and (piece := conn.recv(4096)):
        body += piece
    return body


def read_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        piece = conn.recv(4096)
        if not piece:
            break
        head += piece
    return head


@contextmanager
def raw_store(answer: Callable[[socket.socket, bytes], None]) -> Iterator[tuple[str, list[bytes]]]:
    """A plain socket server on loopback: each connection's head read, then `answer`; the
    heads it got, in order."""
    listener = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                head = read_head(conn)
                heads.append(head)
                answer(conn, head)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", heads
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


def refusal() -> bytes:
    body = error("AccessDenied")
    return (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def refuse_and_reset(conn: socket.socket, _head: bytes, before: bytes = b"") -> None:
    """As Go's HTTP server (MinIO's) answers a request refused from its head: the answer
    (in one write with `before`), then the connection closed with the body unread (past
    256 KiB), which resets it."""
    conn.sendall(before + refusal())
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_put_refused_from_its_head_says_why(tmp_path: Path) -> None:
    """The store's refusal reaches the caller, once, not three connection resets: the
    body is sent only once the store says to (its head alone went)."""
    src = tmp_path / "big"
    src.write_bytes(b"x" * (16 << 20))  # more than the sockets hold: it cannot all go
    with raw_store(refuse_and_reset) as (host, heads):
        client = DirectS3(host, "us-east-1", "AK", "SK")
        with pytest.raises(s3_direct.DirectError) as refused:
            client.put(src, "b", "k")
    assert (refused.value.status, refused.value.code) == (403, "AccessDenied")
    assert len(heads) == 1


def test_a_put_to_a_store_that_ignores_expect_goes_after_the_wait(tmp_path: Path) -> None:
    src = tmp_path / "small"
    src.write_bytes(b"payload")
    got: list[bytes] = []

    def read_then_answer(conn: socket.socket, head: bytes) -> None:
        # No `100 Continue`: the body comes anyway once the client stops waiting.
        got.append(read_body(conn, head, len(b"payload")))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with raw_store(read_then_answer) as (host, heads):
        client = DirectS3(host, "us-east-1", "AK", "SK", continue_timeout=0.2)
        assert client.put(src, "b", "k")
    assert got == [b"payload"]
    assert b"\r\nexpect: 100-continue\r\n" in heads[0].lower()


async def test_a_put_waits_for_100_continue_then_sends_its_body(tmp_path: Path) -> None:
    """aiohttp's server answers `Expect` with `100 Continue`, as MinIO, Ceph and moto do:
    the body goes then, long before the wait for silence would end."""
    src = tmp_path / "small"
    src.write_bytes(b"payload")
    async with Store((200, {}, b"", None)) as store:
        client = DirectS3(store.host, "us-east-1", "AK", "SK", continue_timeout=60)
        started = time.monotonic()
        assert await asyncio.to_thread(client.put, src, "b", "k")
        assert time.monotonic() - started < 30
    assert store.bodies == [b"payload"]
    assert store.requests[0].headers["Expect"] == "100-continue"


def test_a_100_with_the_refusal_behind_it_sends_no_body(tmp_path: Path) -> None:
    """`100 Continue` and a 403 in one write, then a reset: the 403 is the answer."""
    src = tmp_path / "big"
    src.write_bytes(b"x" * (16 << 20))

    def go_ahead_then_refuse(conn: socket.socket, head: bytes) -> None:
        refuse_and_reset(conn, head, before=b"HTTP/1.1 100 Continue\r\n\r\n")

    with raw_store(go_ahead_then_refuse) as (host, heads):
        client = DirectS3(host, "us-east-1", "AK", "SK")
        with pytest.raises(s3_direct.DirectError) as refused:
            client.put(src, "b", "k")
    assert refused.value.code == "AccessDenied"
    assert len(heads) == 1


@pytest.mark.timeout(30)  # the bug this guards against was a wait without end
@pytest.mark.parametrize("before_body,after_body,wait", [
    # The rest only once the body has come: the wait ends at its deadline, not in a
    # loop on the queued part.
    ([b"HTTP/1.1 100 Cont"], b"inue\r\n\r\n", 0.3),
    # The rest while the client waits for more: the body goes then (the deadline, an
    # hour away, is never reached).
    ([b"HTTP/1.1 100 Cont", b"inue\r\n\r\n"], b"", 3600.0),
])
def test_an_interim_head_cut_in_two_lets_the_body_go(
        tmp_path: Path, before_body: list[bytes], after_body: bytes, wait: float) -> None:
    src = tmp_path / "small"
    src.write_bytes(b"payload")
    got: list[bytes] = []

    def go_ahead_in_two(conn: socket.socket, head: bytes) -> None:
        for part in before_body:
            conn.sendall(part)
        got.append(read_body(conn, head, len(b"payload")))
        conn.sendall(after_body + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with raw_store(go_ahead_in_two) as (host, _heads):
        client = DirectS3(host, "us-east-1", "AK", "SK", continue_timeout=wait)
        assert client.put(src, "b", "k")
    assert got == [b"payload"]


@pytest.mark.timeout(30)  # as above
def test_two_interim_answers_in_one_write_let_the_body_go(tmp_path: Path) -> None:
    """moto's server (werkzeug) answers `Expect` with two `100 Continue`s: the second is
    no final answer, and the body goes."""
    src = tmp_path / "small"
    src.write_bytes(b"payload")
    got: list[bytes] = []

    def two_go_aheads(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 2)
        got.append(read_body(conn, head, len(b"payload")))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with raw_store(two_go_aheads) as (host, _heads):
        client = DirectS3(host, "us-east-1", "AK", "SK", read_timeout=5, continue_timeout=60)
        assert client.put(src, "b", "k")
    assert got == [b"payload"]


@pytest.mark.timeout(30)  # as above
@pytest.mark.parametrize("start", [b"HTTP/1.1 5", b"HTTP/1.1 100 Cont"])
def test_a_store_that_closes_mid_head_is_retried_then_fails(tmp_path: Path,
                                                             start: bytes) -> None:
    """A head cut short by the store closing: no wait without end, three attempts."""
    src = tmp_path / "small"
    src.write_bytes(b"payload")

    def start_then_close(conn: socket.socket, _head: bytes) -> None:
        conn.sendall(start)

    with raw_store(start_then_close) as (host, heads):
        client = DirectS3(host, "us-east-1", "AK", "SK", continue_timeout=60)
        with pytest.raises((OSError, http.client.HTTPException)):
            client.put(src, "b", "k")
    assert len(heads) == 3
