"""One-request S3 transfers of small objects: GetObject and PutObject over `http.client`.

Why not boto3 for these: importing boto3 and building its S3 client costs about 190 ms
and 20 MiB (botocore's models), more than the rest of a job's start-up together
(bench/job.py), and a job's objects are mostly small. For an object below the multipart
threshold s3transfer sends one GetObject or one PutObject too; this module sends that
same request, signed with SigV4 (aws_sigv4.py), and nothing else.

`S3Provider` uses it only where it does exactly what boto3 would: a `minio` provider
(path-style addressing) on a plain-HTTP endpoint with its keys in the config, a file on
disk at our end, an object under the multipart threshold. Anything else (multipart,
HTTPS and its certificate handling, boto3's credential chain, listing) stays with boto3.

Like the boto3 path: at most 3 attempts per request (SPEC 6.2), connection errors and
5xx/throttling answers retried after a jittered backoff, a download written to a
temporary name beside its destination and renamed when whole, an upload's body signed
by its SHA-256 so that the store refuses one that changed on the way.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

from faas_supervisor import aws_sigv4
from faas_supervisor.config import ProviderConfig

ATTEMPTS = 3
PIECE = 256 << 10  # bytes per read and per send
RETRIED = {500, 502, 503, 504, 429}
ERROR_BODY = 64 << 10  # the most of an error's XML body read

Progress = Callable[[int], None]
T = TypeVar("T")


class DirectError(Exception):
    """The store answered an error: its HTTP status and S3 error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DirectS3:
    """Signed single requests to one S3 endpoint with one pair of keys."""

    host: str  # host[:port], as the Host header carries it
    region: str
    access_key: str
    secret_key: str = field(repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 20.0

    def get(self, bucket: str, key: str, dest: Path, limit: int,
            progress: Progress | None = None) -> bool:
        """The object into `dest`, if it is smaller than `limit` bytes: True when done;
        False, nothing written, when it is not (for a multipart download instead)."""
        temp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            done = self._attempts(lambda: self._get_once(bucket, key, temp, limit, progress))
            if done:
                os.replace(temp, dest)
            return done
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def put(self, src: Path, bucket: str, key: str, progress: Progress | None = None) -> None:
        """`src` as the object, in one PutObject."""
        digest = hashlib.sha256()
        with open(src, "rb") as f:
            while piece := f.read(PIECE):
                digest.update(piece)
        sha256 = digest.hexdigest()
        self._attempts(lambda: self._put_once(src, bucket, key, sha256, progress))

    def _get_once(self, bucket: str, key: str, temp: Path, limit: int,
                  progress: Progress | None) -> bool:
        connection = self._connect()
        written = 0
        try:
            response = self._send(connection, "GET", bucket, key, aws_sigv4.EMPTY_SHA256)
            if response.status != 200:
                raise _error(response)
            if int(response.getheader("Content-Length") or limit) >= limit:
                return False
            with open(temp, "wb") as f:
                while piece := response.read(PIECE):
                    f.write(piece)
                    written += len(piece)
                    if progress is not None:
                        progress(len(piece))
            return True
        except BaseException:
            if written and progress is not None:
                progress(-written)  # a retry starts over
            raise
        finally:
            connection.close()

    def _put_once(self, src: Path, bucket: str, key: str, sha256: str,
                  progress: Progress | None) -> None:
        connection = self._connect()
        with open(src, "rb") as f:
            body = _Counted(f, progress)
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
        if body is not None:
            headers["Content-Length"] = str(size)
        connection.request(method, path, body=body, headers=headers)
        return connection.getresponse()

    @staticmethod
    def _attempts(once: Callable[[], T]) -> T:
        attempt = 1
        while True:
            try:
                return once()
            except DirectError as exc:
                if exc.status not in RETRIED or attempt == ATTEMPTS:
                    raise
            except (OSError, http.client.HTTPException):
                if attempt == ATTEMPTS:
                    raise
            # A jittered, doubling wait, as botocore's standard mode, but shorter: these
            # requests are small, and a job waits for them.
            time.sleep(random.uniform(0, 0.1 * 2 ** attempt))
            attempt += 1


def direct(config: ProviderConfig, connect_timeout: float,
           read_timeout: float) -> DirectS3 | None:
    """The direct client for the provider, or None where boto3 must do the work."""
    endpoint = config.get("endpoint")
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"  # as the boto3 path reads OSCAR's `minio:9000`
    parts = urlsplit(endpoint)
    access_key, secret_key = config.get("access_key"), config.get("secret_key")
    if (config.type != "minio" or parts.scheme != "http" or not parts.netloc
            or parts.path not in ("", "/") or parts.query or parts.username
            or not access_key or not secret_key):
        return None
    return DirectS3(parts.netloc, config.get("region") or "us-east-1", access_key,
                    secret_key, connect_timeout, read_timeout)


class _Counted:
    """A file read by http.client as it sends it; counts the bytes for `progress`."""

    def __init__(self, f: BinaryIO, progress: Progress | None) -> None:
        self._f = f
        self._progress = progress
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        piece = self._f.read(size)
        self.sent += len(piece)
        if piece and self._progress is not None:
            self._progress(len(piece))
        return piece


def _error(response: http.client.HTTPResponse) -> DirectError:
    """The S3 error in the answer's XML body (a HEAD-like answer may have none)."""
    text = response.read(ERROR_BODY).decode("utf-8", "replace")
    code = _tag(text, "Code") or str(response.status)
    return DirectError(response.status, code, _tag(text, "Message") or response.reason)


def _tag(text: str, name: str) -> str:
    found = re.search(f"<{name}>([^<]*)</{name}>", text)
    return found.group(1).strip() if found else ""
