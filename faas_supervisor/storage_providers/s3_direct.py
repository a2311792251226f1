"""One-request S3 transfers of small objects: GetObject and PutObject over `http.client`.

Why not boto3 for these: importing boto3 and building its S3 client costs about 190 ms
and 20 MiB (botocore's models), more than the rest of a job's start-up together
(bench/job.py), and a job's objects are mostly small. For an object below the multipart
threshold s3transfer sends one GetObject or one PutObject too; this module sends that
same request, signed with SigV4 (aws_sigv4.py), and nothing else.

This is a bounded exception to the house rule "don't rewrite what boto3 does", made for
issue 10's job targets (README, "Storage providers"). `S3Provider` uses it only for a
`minio` provider (path-style addressing) on a plain-HTTP endpoint with its keys in the
config and no proxy in the environment, a regular file (or none yet) at our end, an
object under the multipart threshold. Anything else (multipart, HTTPS and its CA bundle,
boto3's credential chain, proxies, listing) stays with boto3, and so does a request the
store redirects or answers with another region (`DirectError.hand_over`).

As the boto3 path does: at most 3 attempts per request (SPEC 6.2), connection errors,
cut bodies, 5xx, throttling and `RequestTimeout` retried after botocore's jittered
backoff (up to 1 s, then 2 s), local file errors not retried; a download written to a
temporary name beside its destination (at most 255 bytes long) and renamed only when
whole and not cancelled; an upload's body signed by its SHA-256, so that the store
refuses one that changed on the way, sent after the store's `100 Continue` (botocore's
`Expect` for PutObject: a refusal from the head is then an answer, not a reset), and
abandoned mid-body when cancelled.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

from faas_supervisor import aws_sigv4
from faas_supervisor.config import ProviderConfig
from faas_supervisor.storage_providers import partial_path

ATTEMPTS = 3
PIECE = 256 << 10  # bytes per read and per send
RETRIED = {500, 502, 503, 504, 429}
RETRIED_CODES = {"RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable"}
ERROR_BODY = 64 << 10  # the most of an error's XML body read
# Seconds a body waits for `100 Continue` before it goes anyway (a store that ignores
# `Expect`): botocore's wait.
CONTINUE_TIMEOUT = 1.0
INTERIM_MAX = 8 << 10  # the most of an interim answer's head read
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")

Progress = Callable[[int], None]
T = TypeVar("T")


class DirectError(Exception):
    """The store answered an error: its HTTP status and S3 error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message

    @property
    def retried(self) -> bool:
        return self.status in RETRIED or self.code in RETRIED_CODES

    @property
    def hand_over(self) -> bool:
        """An answer boto3 acts on and we do not: a redirect, or a region to sign for
        (botocore's S3 region redirector retries with the one the answer names)."""
        return self.status in (301, 302, 307, 308) or self.code in (
            "AuthorizationHeaderMalformed", "PermanentRedirect", "TemporaryRedirect")


class Cancelled(Exception):
    """The transfer's caller went away: nothing renamed into place, the PUT abandoned."""


class _LocalError(Exception):
    """Our own disk failed (not retried: another attempt would fail alike)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class DirectS3:
    """Signed single requests to one S3 endpoint with one pair of keys."""

    host: str  # host[:port], as the Host header carries it
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    continue_timeout: float = CONTINUE_TIMEOUT

    def get(self, bucket: str, key: str, dest: Path, limit: int,
            progress: Progress | None = None,
            cancelled: threading.Event | None = None) -> bool:
        """The object into `dest`, if it is smaller than `limit` bytes: True when done;
        False, nothing written, when it is not (for a multipart download instead).
        Raises Cancelled, nothing left, once `cancelled` is set."""
        cancelled = cancelled or threading.Event()
        temp = partial_path(dest, f".{uuid.uuid4().hex[:8]}.part")
        try:
            done = self._attempts(
                lambda: self._get_once(bucket, key, temp, limit, progress, cancelled),
                cancelled)
            if done:
                if cancelled.is_set():
                    raise Cancelled()
                os.replace(temp, dest)
            return done
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def put(self, src: Path, bucket: str, key: str, progress: Progress | None = None,
            cancelled: threading.Event | None = None) -> bool:
        """`src` as the object, in one PutObject: True once stored."""
        digest = hashlib.sha256()
        with open(src, "rb") as f:
            while piece := f.read(PIECE):
                digest.update(piece)
        sha256 = digest.hexdigest()
        cancelled = cancelled or threading.Event()
        self._attempts(lambda: self._put_once(src, bucket, key, sha256, progress, cancelled),
                       cancelled)
        return True

    def _get_once(self, bucket: str, key: str, temp: Path, limit: int,
                  progress: Progress | None, cancelled: threading.Event) -> bool:
        connection = self._connect()
        written = 0
        try:
            response = self._send(connection, "GET", bucket, key, aws_sigv4.EMPTY_SHA256)
            if response.status != 200:
                raise _error(response)
            length = int(response.getheader("Content-Length") or limit)
            if length >= limit:
                return False
            try:
                f = open(temp, "wb")  # noqa: SIM115 - closed by `with f` below
            except OSError as exc:
                raise _LocalError(exc) from None
            with f:
                while piece := response.read(PIECE):
                    if cancelled.is_set():
                        raise Cancelled()
                    try:
                        f.write(piece)
                    except OSError as exc:
                        raise _LocalError(exc) from None
                    written += len(piece)
                    if progress is not None:
                        progress(len(piece))
            if written != length:  # read(n) answers b"" when the store closed early
                raise http.client.IncompleteRead(b"", length - written)
            return True
        except BaseException:
            if written and progress is not None:
                progress(-written)  # a retry starts over
            raise
        finally:
            connection.close()

    def _put_once(self, src: Path, bucket: str, key: str, sha256: str,
                  progress: Progress | None, cancelled: threading.Event) -> None:
        connection = self._connect()
        with open(src, "rb") as f:
            body = _Counted(f, progress, cancelled)
            try:
                response = self._send(connection, "PUT", bucket, key, sha256, body,
                                      os.fstat(f.fileno()).st_size)
                if response.status != 200:
                    raise _error(response)
                response.read()
            except BaseException:
                if body.sent and progress is not None:
                    progress(-body.sent)
                raise
            finally:
                connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection(self.host, timeout=self.connect_timeout,
                                                blocksize=PIECE)
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(self.read_timeout)  # each read and send, as botocore's
        return connection

    def _send(self, connection: http.client.HTTPConnection, method: str, bucket: str,
              key: str, sha256: str, body: _Counted | None = None,
              size: int = 0) -> http.client.HTTPResponse:
        path = "/" + aws_sigv4.uri_encode(f"{bucket}/{key}")
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed = {"host": self.host, "x-amz-content-sha256": sha256, "x-amz-date": amz_date}
        headers = {
            **signed,
            "Authorization": aws_sigv4.authorization(
                self.access_key, self.secret_key, self.region, method, path, signed, amz_date),
        }
        if body is None:
            connection.request(method, path, headers=headers)
            return connection.getresponse()
        # The body waits for the store's go-ahead, as botocore's PutObject does: a store
        # that refuses from the head alone (keys that do not match, no such bucket) then
        # says why. Sent at once, a body the store will not read gets the connection
        # reset under it (Go's server, MinIO's, does so past 256 KiB unread), and the
        # answer is lost: "connection reset", three times, instead of "access denied".
        headers["Content-Length"] = str(size)
        headers["Expect"] = "100-continue"
        connection.putrequest(method, path, skip_host=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        if _go_ahead(connection, self.continue_timeout):
            connection.send(body)  # http.client reads it by blocks (`blocksize`)
        return connection.getresponse()

    @staticmethod
    def _attempts(once: Callable[[], T], cancelled: threading.Event) -> T:
        """`once`, again after a failure a retry may mend; never again once `cancelled`
        (its caller gone: a stopped job or client waits for this thread), nor during the
        wait between two attempts."""
        attempt = 1
        while True:
            try:
                return once()
            except _LocalError as exc:
                raise exc.error from None
            except DirectError as exc:
                if not exc.retried or attempt == ATTEMPTS:
                    raise
            except (OSError, http.client.HTTPException):
                if attempt == ATTEMPTS:
                    raise
            # botocore's standard mode: a random wait up to 2^(attempt-1) s, at most 20 s.
            if cancelled.wait(random.uniform(0, min(20, 2 ** (attempt - 1)))):
                raise Cancelled()
            attempt += 1


def direct(config: ProviderConfig, connect_timeout: float,
           read_timeout: float) -> DirectS3 | None:
    """The direct client for the provider, or None where boto3 must do the work."""
    endpoint = config.get("endpoint")
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"  # as the boto3 path reads OSCAR's `minio:9000`
    parts = urlsplit(endpoint)
    access_key, secret_key = config.get("access_key"), config.get("secret_key")
    try:
        parts.port  # noqa: B018 - a port that is not a number: boto3 says so
    except ValueError:
        return None
    # The variables botocore reads when it builds its client: with a proxy to go
    # through, boto3 goes (it knows NO_PROXY and the proxy's own settings).
    proxied = any(os.environ.get(name) for name in PROXY_VARIABLES)
    if (config.type != "minio" or parts.scheme != "http" or not parts.netloc
            or parts.path not in ("", "/") or parts.query or parts.username
            or not access_key or not secret_key or proxied):
        return None
    return DirectS3(parts.netloc, config.get("region") or "us-east-1", access_key,
                    secret_key, connect_timeout, read_timeout)


class _Counted:
    """A file read by http.client as it sends it; counts the bytes for `progress`, and
    stops the send (an incomplete body the store discards) once `cancelled` is set."""

    def __init__(self, f: BinaryIO, progress: Progress | None,
                 cancelled: threading.Event) -> None:
        self._f = f
        self._progress = progress
        self._cancelled = cancelled
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        if self._cancelled.is_set():
            raise Cancelled()
        piece = self._f.read(size)
        self.sent += len(piece)
        if piece and self._progress is not None:
            self._progress(len(piece))
        return piece


def _go_ahead(connection: http.client.HTTPConnection, timeout: float) -> bool:
    """Whether to send the body, once the head went with `Expect: 100-continue`: yes on
    `100 Continue` alone (consumed here), or when the store says nothing whole within
    `timeout`; no when it answered already, or closed (getresponse() then reads what it
    said, or fails and the request is retried)."""
    sock = connection.sock
    assert sock is not None
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select(): a descriptor may be numbered past 1023
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            events = poller.poll(remaining * 1000)
            if not events:
                break
            if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLRDHUP):
                return False  # the store closed: no go-ahead can come
            head = sock.recv(INTERIM_MAX, socket.MSG_PEEK)  # left in place for getresponse()
            if not head or not _interim(head):
                return False  # the final answer before the body (or none: closed)
            end = head.find(b"\r\n\r\n")
            if end >= 0:
                sock.recv(end + 4)  # the interim answer, and nothing past it
                if len(head) == end + 4:
                    return True
                # More came behind it: another interim answer (moto sends two), or the
                # final one (a `100` then a refusal: no body). The next round tells.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                continue
            if len(head) == INTERIM_MAX:
                return False  # no end to it: not an answer to wait on
            # Part of an interim head (servers write it whole: seldom seen). The peek left
            # it queued, so wait for more than it (poll may still wake sooner, when the
            # kernel is short of memory: the deadline bounds the rounds).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, len(head) + 1)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)  # http.client's reads
    # Silence (a store that ignores Expect), or an interim head not yet whole
    # (getresponse() skips one left unread): the body goes.
    return True


_INTERIM = re.compile(rb"HTTP/1\.[01] 100[ \r]")
_INTERIM_STARTS = (b"HTTP/1.1 100", b"HTTP/1.0 100")


def _interim(head: bytes) -> bool:
    """Whether `head` is, or may still become, an interim answer's head."""
    if len(head) > len(_INTERIM_STARTS[0]):
        return _INTERIM.match(head) is not None
    return any(start.startswith(head) for start in _INTERIM_STARTS)


def _error(response: http.client.HTTPResponse) -> DirectError:
    """The S3 error in the answer's XML body (a HEAD-like answer may have none)."""
    text = response.read(ERROR_BODY).decode("utf-8", "replace")
    code = _tag(text, "Code") or str(response.status)
    return DirectError(response.status, code, _tag(text, "Message") or response.reason)


def _tag(text: str, name: str) -> str:
    found = re.search(f"<{name}>([^<]*)</{name}>", text)
    return found.group(1).strip() if found else ""
