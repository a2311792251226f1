"""Each storage provider against a real server on loopback: moto for `minio` and `s3`,
wsgidav for `webdav`, an aiohttp app of the documented Oneprovider endpoints for
`onedata`. Round trips with awkward keys and multi-megabyte bodies, and the faults:
a store that is not there, one that stops mid-transfer, wrong credentials.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import logging
import os
import re
import signal
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from faas_supervisor.config import ProviderConfig, Secret
from faas_supervisor.errors import StorageError
from faas_supervisor.storage_providers import build_provider, s3_direct
from faas_supervisor.storage_providers.onedata import OnedataProvider
from faas_supervisor.storage_providers.s3 import S3Provider
from faas_supervisor.storage_providers.webdav import WebDavProvider
from tests.integration.ceph import CephRgw
from tests.integration.conftest import S3Server, free_port
from tests.integration.servers import (
    CuttingProxy,
    DavServer,
    FakeOneprovider,
    stalling_store,
    start_moto,
    start_wsgidav,
    streamed_answer,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MiB = 1 << 20
ACCESS_KEY = "AKIAFAASTESTACCESS"
SECRET_KEY = "s3cr3t-Key/that+must~never_leak"
PASSWORD = "dav-pa55word-never-shown"
TOKEN = "MDAxY-onedata-token-never-shown"
AWKWARD_KEYS = [
    "plain.txt",
    "with space/file name.txt",
    "plus+sign/a+b.txt",
    "percent%20/100%.txt",
    "unicode/été ünï 文件.txt",
    "deep/er/and/deeper/x.bin",
]
# A bound on "fails quickly": 3 attempts with backoff against a refused port take seconds.
FAIL_FAST_SECONDS = 20


def write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


# ---- S3: minio and s3 types against moto -------------------------------------------------


def s3_config(kind: str, endpoint: str) -> ProviderConfig:
    settings: dict[str, str | bool | Secret] = {
        "access_key": Secret(ACCESS_KEY), "secret_key": Secret(SECRET_KEY),
        "endpoint": endpoint,
    }
    if kind == "minio":
        settings["verify"] = False
    else:
        settings["region"] = "eu-west-1"
    return ProviderConfig(type=kind, id="default", settings=settings)


S3Factory = Callable[..., S3Provider]


@pytest.fixture
def s3_factory() -> Iterator[S3Factory]:
    made: list[S3Provider] = []

    def make(kind: str, endpoint: str, **options: Any) -> S3Provider:
        provider = S3Provider(s3_config(kind, endpoint), **options)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def new_bucket(server: S3Server) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize("kind", ["minio", "s3"])
async def test_s3_an_endpoints_password_is_in_no_message(
    s3_factory: S3Factory, tmp_path: Path, kind: str
) -> None:
    """An endpoint given as `http://user:password@host`, unreachable: botocore's message
    quotes the URL whole; the error (a 502's body, a log line) must not."""
    provider = s3_factory(kind, f"http://user:URLPASSWORD@127.0.0.1:{free_port()}",
                          connect_timeout=1, read_timeout=1)
    with pytest.raises(StorageError) as caught:
        await provider.download("bucket", "in/f.txt", tmp_path / "f.txt")
    assert "URLPASSWORD" not in caught.value.message
    assert caught.value.message.startswith(f"{kind}.default: cannot download bucket/in/f.txt")


@pytest.mark.parametrize("password", [
    "p@ss@URLPASSWORD",  # an `@` in it: botocore quotes the URL as configured
    "2024/URLPASSWORD",  # `user:2024` reads as host:port, the rest as a path botocore quotes
    "2024?URLPASS#WORD",  # botocore refuses the endpoint, quoting it
])
async def test_s3_an_endpoint_password_of_any_shape_is_in_no_message(
    s3_factory: S3Factory, tmp_path: Path, password: str
) -> None:
    provider = s3_factory("minio", f"http://user:{password}@127.0.0.1:{free_port()}",
                          connect_timeout=1, read_timeout=1)
    with pytest.raises(StorageError) as caught:
        await provider.download("bucket", "in/f.txt", tmp_path / "f.txt")
    message = caught.value.message
    assert message.startswith("minio.default: cannot download bucket/in/f.txt: ")
    assert_no_secret(message, "URLPASS", "WORD", "2024")


async def test_s3_a_missing_keys_control_characters_are_escaped_in_its_one_line(
    moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    """What `run` prints and a 502 starts with: a key from an event may hold anything."""
    provider = s3_factory("minio", moto_server.endpoint)
    bucket = new_bucket(moto_server)
    key = "in/a\x1b]0;pwned\x07\x7f\x9b31m\nb.txt"
    with pytest.raises(StorageError) as missing:
        await provider.download(bucket, key, tmp_path / "x")
    message = missing.value.message
    assert message.isprintable(), repr(message)
    assert message.startswith(f"minio.default: cannot download {bucket}/in/a\\x1b]0;pwned")
    assert "no such object" in message


@pytest.mark.parametrize("kind", ["minio", "s3"])
async def test_s3_round_trip_of_awkward_keys(
    kind: str, moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    provider = s3_factory(kind, moto_server.endpoint)
    assert provider.name == f"{kind}.default"
    bucket = new_bucket(moto_server)
    for i, key in enumerate(AWKWARD_KEYS):
        src = tmp_path / f"src{i}"
        src.write_bytes(f"content of {key}".encode())
        await provider.upload(src, bucket, key)
    listed = moto_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(AWKWARD_KEYS)  # stored as given
    for i, key in enumerate(AWKWARD_KEYS):
        dest = tmp_path / f"dest{i}"
        await provider.download(bucket, key, dest)
        assert dest.read_bytes() == f"content of {key}".encode()


async def test_s3_empty_object(moto_server: S3Server, s3_factory: S3Factory,
                               tmp_path: Path) -> None:
    provider = s3_factory("minio", moto_server.endpoint)
    bucket = new_bucket(moto_server)
    (tmp_path / "empty").write_bytes(b"")
    await provider.upload(tmp_path / "empty", bucket, "empty")
    await provider.download(bucket, "empty", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b""


@pytest.mark.parametrize("kind", ["minio", "s3"])
async def test_s3_multipart_both_ways(
    kind: str, moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    provider = s3_factory(kind, moto_server.endpoint, multipart_threshold=5 * MiB,
                          multipart_chunksize=5 * MiB)
    ranges: list[str] = []

    def record(params: dict[str, Any], **kwargs: Any) -> None:
        ranges.append(params.get("Range", ""))

    provider.client.meta.events.register("provide-client-params.s3.GetObject", record)
    bucket = new_bucket(moto_server)
    src = tmp_path / "big.bin"
    digest = write_random(src, 13 * MiB)
    await provider.upload(src, bucket, "results/big file+1.bin")
    head = moto_server.client().head_object(Bucket=bucket, Key="results/big file+1.bin")
    assert head["ContentLength"] == 13 * MiB
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload
    dest = tmp_path / "back.bin"
    await provider.download(bucket, "results/big file+1.bin", dest)
    assert sha256(dest) == digest
    assert len(ranges) == 3 and all(r.startswith("bytes=") for r in ranges)  # ranged GETs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "big.bin"]  # no temp


async def test_s3_missing_object_and_bucket(moto_server: S3Server, s3_factory: S3Factory,
                                            tmp_path: Path) -> None:
    provider = s3_factory("minio", moto_server.endpoint)
    bucket = new_bucket(moto_server)
    with pytest.raises(StorageError) as missing:
        await provider.download(bucket, "in/nothing here.txt", tmp_path / "x")
    assert str(missing.value).startswith(f"minio.default: cannot download {bucket}/in/nothing")
    assert "no such object" in str(missing.value)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError) as no_bucket:
        await provider.upload(tmp_path / "f", "no-such-bucket", "k")
    assert "no-such-bucket/k" in str(no_bucket.value)
    assert StorageError.http_status == 502 and StorageError.exit_status == 3


@pytest.mark.parametrize("verb", ["upload", "download"])
async def test_s3_unreachable_store_fails_quickly(
    verb: str, s3_factory: S3Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = s3_factory("minio", f"http://127.0.0.1:{free_port()}")  # nothing listens
    src = tmp_path / "f"
    src.write_bytes(b"data")
    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        if verb == "upload":
            await provider.upload(src, "bucket", "out/f")
        else:
            await provider.download("bucket", "in/f", tmp_path / "dest")
    assert time.monotonic() - started < FAIL_FAST_SECONDS
    message = str(failure.value)
    assert message.startswith(f"minio.default: cannot {verb} bucket/")
    assert "\n" not in message
    assert_no_secret(message, ACCESS_KEY, SECRET_KEY)
    # botocore logs at DEBUG here (the runtime keeps libraries at WARNING): even so, the
    # secret key is never in a line (requests are signed with it, never carry it).
    assert_no_secret(caplog.text, SECRET_KEY)
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records
                               if r.levelno >= logging.INFO), ACCESS_KEY, SECRET_KEY)


async def test_s3_upload_cut_mid_transfer_leaves_no_partial_object(
    moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    # Every connection that carries more than 1 MiB towards the store is reset, as a store
    # dying mid-body would; small requests (create, abort, list) still pass, so we see
    # s3transfer abort the multipart upload after the part's 3 attempts failed.
    proxy = await CuttingProxy(int(moto_server.endpoint.rsplit(":", 1)[1]), 1 * MiB).start()
    try:
        provider = s3_factory("minio", proxy.url, multipart_threshold=5 * MiB,
                              multipart_chunksize=5 * MiB, max_concurrency=2)
        bucket = new_bucket(moto_server)
        src = tmp_path / "big.bin"
        write_random(src, 12 * MiB)
        with pytest.raises(StorageError) as failure:
            await provider.upload(src, bucket, "out/big.bin")
    finally:
        await proxy.close()
    assert f"minio.default: cannot upload {bucket}/out/big.bin" in str(failure.value)
    assert proxy.cuts >= 3  # retried
    direct = moto_server.client()
    assert direct.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_s3_store_stopped_mid_upload_fails_in_bounded_time(
    s3_factory: S3Factory, tmp_path: Path
) -> None:
    moto = start_moto(tmp_path)
    try:
        port = int(moto.server.endpoint.rsplit(":", 1)[1])
        proxy = await CuttingProxy(port).start()  # cuts nothing: it tells us when to stop
        provider = s3_factory("minio", proxy.url, multipart_threshold=5 * MiB,
                              multipart_chunksize=5 * MiB, read_timeout=1.0,
                              connect_timeout=1.0)
        bucket = new_bucket(moto.server)
        src = tmp_path / "big.bin"
        write_random(src, 40 * MiB)
        upload = asyncio.create_task(provider.upload(src, bucket, "out/big.bin"))
        await proxy.passed(8 * MiB).wait()
        moto.process.send_signal(signal.SIGSTOP)  # the store hangs: connections stay open
        started = time.monotonic()
        with pytest.raises(StorageError) as failure:
            await upload
        elapsed = time.monotonic() - started
        moto.process.send_signal(signal.SIGCONT)
        await proxy.close()
        # 1 s read timeouts, 3 attempts with backoff, then the abort's own attempts.
        assert elapsed < 45, elapsed
        assert "minio.default: cannot upload" in str(failure.value)
        head = moto.server.client().list_objects_v2(Bucket=bucket)
        assert head.get("KeyCount") == 0  # never completed
    finally:
        moto.stop()


async def test_s3_built_from_config(moto_server: S3Server) -> None:
    provider = build_provider(s3_config("minio", moto_server.endpoint))
    assert isinstance(provider, S3Provider)
    provider.close()


# ---- S3: objects under the threshold in one signed request (s3_direct.py) ----------------


async def test_s3_small_objects_go_direct_and_ceph_checks_their_signatures(
    ceph_rgw: CephRgw, tmp_path: Path
) -> None:
    """Ceph RGW checks every SigV4 signature (moto does not): the direct requests' are
    right for awkward keys too, the progress adds up, and boto3 is never built."""
    settings: dict[str, str | bool | Secret] = {
        "endpoint": ceph_rgw.endpoint, "region": ceph_rgw.region,
        "access_key": Secret(ceph_rgw.access_key), "secret_key": Secret(ceph_rgw.secret_key)}
    provider = S3Provider(ProviderConfig("minio", "ceph", settings))
    bucket = f"direct-{uuid.uuid4().hex[:10]}"
    ceph_rgw.client().create_bucket(Bucket=bucket)
    for key in AWKWARD_KEYS:
        src = tmp_path / "src.bin"
        digest = write_random(src, 300_000)
        moved: list[int] = []
        await provider.upload(src, bucket, key, progress=moved.append)
        assert sum(moved) == 300_000
        head = ceph_rgw.client().head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == 300_000
        dest = tmp_path / "dest.bin"
        moved.clear()
        await provider.download(bucket, key, dest, progress=moved.append)
        assert sha256(dest) == digest and sum(moved) == 300_000
    assert provider._built is None  # neither boto3's client nor its models
    wrong = S3Provider(ProviderConfig("minio", "ceph", {**settings,
                                                        "secret_key": Secret("not-the-key")}))
    with pytest.raises(StorageError) as refused:
        await wrong.download(bucket, AWKWARD_KEYS[0], tmp_path / "refused.bin")
    assert "access denied (SignatureDoesNotMatch) (HTTP 403)" in str(refused.value)
    # An upload too, past the 256 KiB a Go server (MinIO's) would read before a reset:
    # refused from its head, before any body (it waits for `100 Continue`).
    big = tmp_path / "big.bin"
    write_random(big, 2 << 20)
    with pytest.raises(StorageError) as refused:
        await wrong.upload(big, bucket, "refused.bin")
    assert "access denied (SignatureDoesNotMatch) (HTTP 403)" in str(refused.value)
    big.unlink()
    with pytest.raises(StorageError) as missing:
        await provider.download(bucket, "in/none.txt", tmp_path / "missing.bin")
    assert str(missing.value) == (f"minio.ceph: cannot download {bucket}/in/none.txt: "
                                  "no such object (HTTP 404)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.bin", "src.bin"]  # no temp


async def test_s3_objects_from_the_threshold_up_go_through_boto3(
    moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    provider = s3_factory("minio", moto_server.endpoint, multipart_threshold=64 * 1024)
    bucket = new_bucket(moto_server)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small_digest, big_digest = write_random(small, 64 * 1024 - 1), write_random(big, 64 * 1024)
    await provider.upload(small, bucket, "out/small.bin")
    await provider.download(bucket, "out/small.bin", tmp_path / "small-back.bin")
    assert provider._built is None
    await provider.upload(big, bucket, "out/big.bin")
    assert provider._built is not None
    provider._built = None  # the download decides alone: its GET sees the length, hands over
    await provider.download(bucket, "out/big.bin", tmp_path / "big-back.bin")
    assert provider._built is not None
    assert sha256(tmp_path / "small-back.bin") == small_digest
    assert sha256(tmp_path / "big-back.bin") == big_digest
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big-back.bin", "big.bin", "small-back.bin", "small.bin"]


async def test_s3_direct_upload_is_tried_three_times_then_fails(
    moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    """SPEC 6.2's bound holds for the direct requests too: 3 attempts, no object left."""
    proxy = await CuttingProxy(int(moto_server.endpoint.rsplit(":", 1)[1]), 64 * 1024).start()
    try:
        provider = s3_factory("minio", proxy.url)
        bucket = new_bucket(moto_server)
        src = tmp_path / "f.bin"
        write_random(src, MiB)
        moved: list[int] = []
        with pytest.raises(StorageError) as failure:
            await provider.upload(src, bucket, "out/f.bin", progress=moved.append)
    finally:
        await proxy.close()
    assert str(failure.value).startswith(f"minio.default: cannot upload {bucket}/out/f.bin: ")
    assert proxy.cuts == 3
    assert sum(moved) == 0  # each retry took back what its attempt had counted
    assert moto_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert provider._built is None


def test_s3_direct_request_cancelled_is_not_tried_again(tmp_path: Path) -> None:
    """A store that answers a head and then stalls: once cancelled (a stopped job or
    client waits for this thread), the attempt under way is the last, with no retry and
    no back-off after it; before, all three attempts ran, about a minute."""
    cancelled = threading.Event()
    # The caller gives up while the first attempt waits.
    with stalling_store(cancelled.set) as (url, requests_seen):
        config = s3_config("minio", url)
        direct = s3_direct.direct(config, 1.0, 1.0)  # each read gives up after 1 s
        assert direct is not None
        with pytest.raises((s3_direct.Cancelled, OSError, http.client.HTTPException)):
            direct.get("bucket", "in/f.txt", tmp_path / "f.txt", 8 * MiB, None, cancelled)
    assert len(requests_seen) == 1
    assert list(tmp_path.iterdir()) == []


async def test_s3_direct_transfers_cancelled_leave_nothing(
    moto_server: S3Server, tmp_path: Path
) -> None:
    """A cancelled direct request stops at its next piece: a download is not renamed into
    place (the invocation's folder may be gone), an upload is abandoned mid-body."""
    config = s3_config("minio", moto_server.endpoint)
    direct = s3_direct.direct(config, 5.0, 20.0)
    assert direct is not None
    bucket = new_bucket(moto_server)
    src = tmp_path / "src.bin"
    write_random(src, 3 * MiB)  # several pieces each way
    await S3Provider(config).upload(src, bucket, "in/src.bin")
    cancelled = threading.Event()
    with pytest.raises(s3_direct.Cancelled):
        direct.get(bucket, "in/src.bin", tmp_path / "dest.bin", 8 * MiB,
                   lambda _moved: cancelled.set(), cancelled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.bin"]
    cancelled.clear()
    with pytest.raises(s3_direct.Cancelled):
        direct.put(src, bucket, "out/src.bin", lambda _moved: cancelled.set(), cancelled)
    assert moto_server.client().list_objects_v2(Bucket=bucket, Prefix="out/")["KeyCount"] == 0


async def test_s3_download_into_a_fifo_writes_into_it(
    moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    """A special file stays one (s3transfer writes into it; a rename would replace it, as
    it would replace /dev/null for `service get-file ... /dev/null` run as root)."""
    provider = s3_factory("minio", moto_server.endpoint)
    bucket = new_bucket(moto_server)
    moto_server.client().put_object(Bucket=bucket, Key="in/f.txt", Body=b"into the fifo")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    await provider.download(bucket, "in/f.txt", fifo)
    reader.join(30)
    assert received == [b"into the fifo"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


async def test_s3_a_file_name_of_255_bytes_downloads(
    moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    """The temporary name beside it is cut to 255 bytes, as s3transfer's is."""
    provider = s3_factory("minio", moto_server.endpoint)
    bucket = new_bucket(moto_server)
    name = "n" * 251 + ".txt"
    moto_server.client().put_object(Bucket=bucket, Key=f"in/{name}", Body=b"long")
    await provider.download(bucket, f"in/{name}", tmp_path / name)
    assert (tmp_path / name).read_bytes() == b"long"
    assert provider._built is None


async def test_s3_a_multibyte_file_name_of_254_bytes_downloads_through_boto3(
    moto_server: S3Server, s3_factory: S3Factory, tmp_path: Path
) -> None:
    """s3transfer cuts its temporary name (`NAME.XXXXXXXX`) to 255 characters, not bytes:
    this name, which the event parser accepts, once failed with "File name too long"."""
    provider = s3_factory("s3", moto_server.endpoint)  # an `s3` provider: never direct
    bucket = new_bucket(moto_server)
    name = "é" * 127  # 254 bytes
    moto_server.client().put_object(Bucket=bucket, Key=f"in/{name}", Body=b"multibyte")
    await provider.download(bucket, f"in/{name}", tmp_path / name)
    assert provider._built is not None  # boto3's path it was
    assert (tmp_path / name).read_bytes() == b"multibyte"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    # A download failing at its last step (the name is a folder's: the rename fails)
    # leaves neither its temporary file nor anything in the folder.
    taken = tmp_path / "taken"
    (taken / name).mkdir(parents=True)
    (taken / name / "inside").write_bytes(b"")
    with pytest.raises(StorageError, match=f"s3.default: cannot download {bucket}/in/"):
        await provider.download(bucket, f"in/{name}", taken / name)
    assert [p.name for p in taken.iterdir()] == [name]
    assert [p.name for p in (taken / name).iterdir()] == ["inside"]


# ---- WebDAV against wsgidav --------------------------------------------------------------


@pytest.fixture
def dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DavServer]:
    server = start_wsgidav(tmp_path_factory.mktemp("dav"), login="oscar", password=PASSWORD)
    yield server
    server.stop()


def dav_provider(url: str, password: str = PASSWORD) -> WebDavProvider:
    config = ProviderConfig(type="webdav", id="dcache", settings={
        "hostname": url, "login": Secret("oscar"), "password": Secret(password)})
    provider = build_provider(config)
    assert isinstance(provider, WebDavProvider)
    return provider


async def test_webdav_round_trip_with_folders_and_awkward_keys(dav: DavServer,
                                                               tmp_path: Path) -> None:
    provider = dav_provider(dav.url)
    for i, key in enumerate(AWKWARD_KEYS):
        src = tmp_path / f"src{i}"
        src.write_bytes(f"content of {key}".encode())
        await provider.upload(src, "outputs", key)  # folders made with MKCOL
        assert (dav.root / "outputs" / key).read_bytes() == src.read_bytes()
        dest = tmp_path / f"dest{i}"
        await provider.download("outputs", key, dest)
        assert dest.read_bytes() == src.read_bytes()


async def test_webdav_a_file_name_of_255_bytes_downloads(dav: DavServer, tmp_path: Path) -> None:
    """Its temporary name beside it (`.NAME.partial`) once overflowed NAME_MAX."""
    provider = dav_provider(dav.url)
    name = "é" * 127 + "x"  # 255 bytes
    (dav.root / "in").mkdir()
    (dav.root / "in" / name).write_bytes(b"long")
    await provider.download("in", name, tmp_path / name)
    assert (tmp_path / name).read_bytes() == b"long"
    assert [p.name for p in tmp_path.iterdir()] == [name]


async def test_webdav_large_file_streams_both_ways(dav: DavServer, tmp_path: Path) -> None:
    provider = dav_provider(dav.url)
    src = tmp_path / "big.bin"
    digest = write_random(src, 24 * MiB)
    await provider.upload(src, "big", "a/b/big.bin")
    await provider.upload(src, "big", "a/b/big.bin")  # overwrite
    assert sha256(dav.root / "big/a/b/big.bin") == digest
    await provider.download("big", "a/b/big.bin", tmp_path / "back.bin")
    assert sha256(tmp_path / "back.bin") == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "big.bin"]


async def test_webdav_wrong_password_is_refused(dav: DavServer, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # moto accepts any keys, so wrong credentials are tested where they are checked.
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-right-pa55word"
    provider = dav_provider(dav.url, password=wrong)
    (tmp_path / "f").write_bytes(b"x")
    for attempt in (provider.upload(tmp_path / "f", "out", "f"),
                    provider.download("out", "f", tmp_path / "g")):
        with pytest.raises(StorageError) as failure:
            await attempt
        assert "webdav.dcache: cannot" in str(failure.value)
        assert "401" in str(failure.value)
        assert_no_secret(str(failure.value), wrong, PASSWORD)
    assert_no_secret(caplog.text, wrong, PASSWORD)


async def test_webdav_missing_object(dav: DavServer, tmp_path: Path) -> None:
    provider = dav_provider(dav.url)
    with pytest.raises(StorageError, match=r"webdav.dcache: cannot download in/none.txt: no "):
        await provider.download("in", "none.txt", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


async def test_webdav_unreachable_fails_quickly(tmp_path: Path) -> None:
    provider = dav_provider(f"http://127.0.0.1:{free_port()}")
    (tmp_path / "f").write_bytes(b"x")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"webdav.dcache: cannot upload out/f: cannot conn"):
        await provider.upload(tmp_path / "f", "out", "f")
    assert time.monotonic() - started < FAIL_FAST_SECONDS


async def test_webdav_upload_cut_mid_transfer_leaves_no_file(dav: DavServer,
                                                             tmp_path: Path) -> None:
    proxy = await CuttingProxy(int(dav.url.rsplit(":", 1)[1]), 2 * MiB).start()
    try:
        provider = dav_provider(proxy.url)
        src = tmp_path / "big.bin"
        write_random(src, 8 * MiB)
        (dav.root / "out").mkdir()
        with pytest.raises(StorageError, match=r"webdav\.dcache: cannot upload out/big\.bin"):
            await provider.upload(src, "out", "big.bin")
    finally:
        await proxy.close()
    # 3 attempts, 3 PUTs: aiohttp's own resend of a PUT cut mid-body once made it 6.
    assert proxy.cuts == 3
    assert list((dav.root / "out").iterdir()) == []


async def serve(handler: Any) -> tuple[web.AppRunner, str]:
    """`handler` answering every path and method on a free loopback port; its runner (to
    clean up) and its URL."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


class RefusingProxy:
    """In front of wsgidav: the methods of `refuse` answered with their status (a body
    read, nothing forwarded), as an overloaded store or its proxy would; the rest
    forwarded as they come."""

    def __init__(self, upstream: str, refuse: dict[str, int]) -> None:
        self.upstream = upstream
        self.refuse = refuse
        self.methods: list[str] = []
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> RefusingProxy:
        self._runner, self.url = await serve(self._handle)
        self._client = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.methods.append(request.method)
        body = await request.read()
        if request.method in self.refuse:
            return web.Response(status=self.refuse[request.method])
        assert self._client is not None
        async with self._client.request(request.method, self.upstream + request.path_qs,
                                        headers=request.headers, data=body) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                headers={k: v for k, v in answer.headers.items()
                                         if k.lower() in ("etag", "last-modified")})


@pytest.mark.parametrize("refused", [{"PUT": 503}, {"HEAD": 405, "PUT": 503},
                                     {"HEAD": 503}])
async def test_webdav_upload_refused_leaves_the_object_that_was_there(
    dav: DavServer, tmp_path: Path, refused: dict[str, int],
) -> None:
    """A PUT answered 503 each time wrote nothing: the object the key held stays. The
    clean-up of a failed upload once DELETEd it, the last good result lost; so did it
    when HEAD could not tell the object's version (405), and a HEAD answered 503 fails
    the upload before any PUT (a review found both)."""
    (dav.root / "out").mkdir()
    (dav.root / "out" / "r.txt").write_bytes(b"previous good result")
    proxy = await RefusingProxy(dav.url, refused).start()
    try:
        provider = dav_provider(proxy.url)
        (tmp_path / "r.txt").write_bytes(b"new result")
        with pytest.raises(StorageError, match=r"webdav\.dcache: cannot upload out/r\.txt: "
                                               r".*503"):
            await provider.upload(tmp_path / "r.txt", "out", "r.txt")
    finally:
        await proxy.close()
    assert "DELETE" not in proxy.methods
    assert ("PUT" in proxy.methods) == ("PUT" in refused)
    assert (dav.root / "out" / "r.txt").read_bytes() == b"previous good result"


async def test_webdav_upload_works_where_head_is_not_allowed(dav: DavServer,
                                                             tmp_path: Path) -> None:
    """The HEAD before the PUT tells what a failed upload may remove; a door that does
    not allow it (405) must not fail an upload the PUT alone completes."""
    proxy = await RefusingProxy(dav.url, {"HEAD": 405}).start()
    try:
        provider = dav_provider(proxy.url)
        (tmp_path / "r.txt").write_bytes(b"result")
        await provider.upload(tmp_path / "r.txt", "out", "r.txt")
    finally:
        await proxy.close()
    assert proxy.methods[0] == "HEAD" and "PUT" in proxy.methods
    assert (dav.root / "out" / "r.txt").read_bytes() == b"result"


async def test_webdav_a_redirect_s_signed_query_never_shows_in_the_error(tmp_path: Path) -> None:
    """A door that redirects to a pool URL it cannot be followed to: the error names the
    URL without its query (a presigned signature, a token), which it once showed whole."""
    async def redirect(_request: web.Request) -> web.Response:
        location = "http://[::1/pool/in/x?X-Amz-Signature=SIGSECRET&token=POOLTOKEN"
        return web.Response(status=302, headers={"Location": location})

    runner, url = await serve(redirect)
    try:
        provider = dav_provider(url)
        with pytest.raises(StorageError) as failure:
            await provider.download("b", "in/y", tmp_path / "y")
    finally:
        await runner.cleanup()
    assert str(failure.value).startswith("webdav.dcache: cannot download b/in/y: ")
    assert "http://[::1/pool/in/x" in str(failure.value)
    assert_no_secret(str(failure.value), "SIGSECRET", "POOLTOKEN")
    assert list(tmp_path.iterdir()) == []


async def test_webdav_upload_cancelled_mid_transfer_leaves_no_file(dav: DavServer,
                                                                   tmp_path: Path) -> None:
    """A job stopped mid-upload (its `run` SIGTERMed): what the PUT had written goes too,
    as after a failed upload, before the cancellation goes on."""
    proxy = await CuttingProxy(int(dav.url.rsplit(":", 1)[1])).start()
    try:
        provider = dav_provider(proxy.url)
        src = tmp_path / "big.bin"
        write_random(src, 64 * MiB)
        (dav.root / "out").mkdir()
        upload = asyncio.ensure_future(provider.upload(src, "out", "big.bin"))
        await proxy.passed(8 * MiB).wait()
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
    finally:
        await proxy.close()
    assert list((dav.root / "out").iterdir()) == []


async def test_webdav_a_put_answered_with_a_huge_body_reads_little_of_it(
    tmp_path: Path,
) -> None:
    """A door answering the PUT 201 with a 32 MiB body: the upload succeeds having read
    at most DISCARD_LIMIT of it; the whole body was once read into memory (a 1 GB one,
    2 GB of RSS). What the server could send before the client closed the connection
    bounds what was read (the rest sits in socket buffers, a few MiB)."""
    size = 32 * MiB
    sent: list[int] = []
    done = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.method != "PUT":
            return web.Response(status=404)
        await request.read()
        try:
            return await streamed_answer(request, 201, {}, size, sent)
        finally:
            done.set()

    runner, url = await serve(answer)
    try:
        (tmp_path / "r.txt").write_bytes(b"result")
        await dav_provider(url).upload(tmp_path / "r.txt", "out", "r.txt")
        await done.wait()
    finally:
        await runner.cleanup()
    assert sent[0] < size // 2, sent


async def test_webdav_a_gzip_encoded_object_is_staged_in_as_stored(tmp_path: Path) -> None:
    """An object served with `Content-Encoding: gzip` (a `.gz` file an Apache door marks
    so) is its bytes, as S3 and curl give them: identity asked for, nothing undone. aiohttp
    once asked for gzip and decompressed it."""
    stored = gzip.compress(b"line1\nline2\n")
    asked: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Accept-Encoding"))
        return web.Response(body=stored, headers={"Content-Encoding": "gzip",
                                                  "Content-Type": "application/gzip"})

    runner, url = await serve(answer)
    try:
        await dav_provider(url).download("in", "data.gz", tmp_path / "data.gz")
    finally:
        await runner.cleanup()
    assert (tmp_path / "data.gz").read_bytes() == stored
    assert asked == ["identity"]


# ---- Onedata against the documented endpoints --------------------------------------------


@pytest.fixture
async def oneprovider(tmp_path: Path) -> AsyncIterator[FakeOneprovider]:
    server = await FakeOneprovider(tmp_path / "onedata", TOKEN, "my space").start()
    yield server
    await server.close()


def onedata_provider(url: str, token: str = TOKEN) -> OnedataProvider:
    config = ProviderConfig(type="onedata", id="od1", settings={
        "oneprovider_host": url, "token": Secret(token), "space": "my space"})
    provider = build_provider(config)
    assert isinstance(provider, OnedataProvider)
    return provider


async def test_tokens_never_follow_a_redirect(tmp_path: Path) -> None:
    """A Oneprovider or a Rucio server answering 307 to another origin: aiohttp drops only
    Authorization and cookies there, so X-Auth-Token, X-Rucio-Password and the Rucio
    token went along. A redirect is now a failure of its own; nothing reaches the other."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{elsewhere}{request.path_qs}")

    runners = []
    for handler in (record, redirect):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append((runner, site))
    elsewhere, here = (f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
                       for _, site in runners)
    try:
        providers = [
            onedata_provider(here),
            build_provider(ProviderConfig(type="rucio", id="default", settings={
                "host": here, "auth_host": here, "account": "root", "rse": "R",
                "username": "u", "password": "RUCIO-PASSWORD-NEVER-SHOWN"})),
        ]
        for provider in providers:
            with pytest.raises(StorageError, match="307"):
                await provider.download("my space", "in/f.txt", tmp_path / "f.txt")
    finally:
        for runner, _ in runners:
            await runner.cleanup()
    assert seen == []


async def test_onedata_round_trip(oneprovider: FakeOneprovider, tmp_path: Path) -> None:
    provider = onedata_provider(oneprovider.url)
    space = oneprovider.root / "my space"
    for i, key in enumerate(AWKWARD_KEYS):
        src = tmp_path / f"src{i}"
        src.write_bytes(f"content of {key}".encode())
        # An output path `results/...` is relative to the space, as in OSCAR.
        await provider.upload(src, "results", key)
        assert (space / "results" / key).read_bytes() == src.read_bytes()
        # An event names the space as its bucket: it is not repeated.
        dest = tmp_path / f"dest{i}"
        await provider.download("my space", f"results/{key}", dest)
        assert dest.read_bytes() == src.read_bytes()
    assert {token for _, _, token in oneprovider.requests} == {TOKEN}


async def test_onedata_large_file_and_overwrite(oneprovider: FakeOneprovider,
                                                tmp_path: Path) -> None:
    provider = onedata_provider(oneprovider.url)
    src = tmp_path / "big.bin"
    write_random(src, 12 * MiB)
    await provider.upload(src, "out", "big.bin")
    digest = write_random(src, 9 * MiB)
    await provider.upload(src, "out", "big.bin")  # exists: its content is replaced
    assert ("PUT", f"/api/v3/oneprovider/data/{oneprovider._id(oneprovider.root / 'my space/out/big.bin')}/content", TOKEN) in oneprovider.requests  # noqa: E501
    await provider.download("out", "big.bin", tmp_path / "back.bin")
    assert sha256(tmp_path / "back.bin") == digest


@pytest.mark.parametrize(("body", "why"), [
    (b"<html>not JSON</html>", "lookup-file-id answered without a fileId"),
    (b"{" + b" " * (2 * MiB) + b"}", "the server's answer is over 1048576 bytes"),
], ids=["not-json", "over-the-limit"])
async def test_onedata_a_lookup_answer_not_json_or_too_long_is_a_storage_error(
    tmp_path: Path, body: bytes, why: str,
) -> None:
    """A lookup-file-id answered 200 with a body that is not JSON, or with more than the
    1 MiB an answer may have: a StorageError naming what was wrong (exit status 3), having
    read no more than the limit. The body was read whole, and a bad one raised
    JSONDecodeError, which no provider error caught."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    runner, url = await serve(answer)
    try:
        with pytest.raises(StorageError, match=r"onedata.od1: cannot download my space/in/f: "
                                               + re.escape(why) + "$"):
            await onedata_provider(url).download("my space", "in/f", tmp_path / "f")
    finally:
        await runner.cleanup()
    assert not (tmp_path / "f").exists()


async def test_onedata_transient_errors_are_retried(oneprovider: FakeOneprovider,
                                                    tmp_path: Path) -> None:
    provider = onedata_provider(oneprovider.url)
    (oneprovider.root / "my space" / "in").mkdir()
    (oneprovider.root / "my space" / "in" / "f.txt").write_bytes(b"hello")
    oneprovider.fail_next = 2  # two 503s, then the third attempt succeeds
    await provider.download("my space", "in/f.txt", tmp_path / "f.txt")
    assert (tmp_path / "f.txt").read_bytes() == b"hello"
    oneprovider.fail_next = 3  # three in a row: given up
    with pytest.raises(StorageError, match=r"onedata.od1: cannot download my space/in/f.txt: "
                                           r"HTTP 503"):
        await provider.download("my space", "in/f.txt", tmp_path / "g.txt")


async def test_onedata_upload_refused_leaves_the_file_that_was_there(
    oneprovider: FakeOneprovider, tmp_path: Path,
) -> None:
    """Each PUT of the new content answered 503: the file found there stays as it was (it
    was once deleted by the clean-up meant for a file the upload had made)."""
    provider = onedata_provider(oneprovider.url)
    (oneprovider.root / "my space" / "out").mkdir()
    (oneprovider.root / "my space" / "out" / "r.txt").write_bytes(b"previous good result")
    (tmp_path / "r.txt").write_bytes(b"new result")
    oneprovider.fail_puts = 3
    with pytest.raises(StorageError, match=r"onedata\.od1: cannot upload out/r\.txt: HTTP 503"):
        await provider.upload(tmp_path / "r.txt", "out", "r.txt")
    assert [m for m, _, _ in oneprovider.requests].count("DELETE") == 0
    assert (oneprovider.root / "my space/out/r.txt").read_bytes() == b"previous good result"


async def test_onedata_replace_cut_mid_transfer_leaves_no_partial_file(
    oneprovider: FakeOneprovider, tmp_path: Path,
) -> None:
    """The file found there has its content replaced, and each attempt is cut part way:
    what is left is part of ours, not the old file, and goes (SPEC 6.2). A store that
    answers each attempt with an error wrote nothing: that file stays (test above)."""
    target = oneprovider.root / "my space" / "out" / "r.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"previous good result")
    proxy = await CuttingProxy(int(oneprovider.url.rsplit(":", 1)[1]), 2 * MiB).start()
    try:
        provider = onedata_provider(proxy.url)
        src = tmp_path / "big.bin"
        write_random(src, 8 * MiB)
        with pytest.raises(StorageError, match=r"onedata\.od1: cannot upload out/r\.bin"):
            await provider.upload(src, "out", "r.bin")
    finally:
        await proxy.close()
    assert proxy.cuts >= 3
    assert not target.exists()


class CutThenBusy(FakeOneprovider):
    """The first replaces of a file's content write part of the body, then the
    connection drops (twice: aiohttp sends a PUT cut on its way once more itself, and
    tells us nothing of the first); every later one is answered 503 (nothing written)."""

    replaces = 0

    async def update(self, request: web.Request) -> web.StreamResponse:
        self.replaces += 1
        path = self._by_id(request.match_info["id"])
        assert path is not None
        if self.replaces > 2:
            async for _chunk in request.content.iter_any():  # read, not kept
                pass
            return web.Response(status=503)
        path.write_bytes(await request.content.readexactly(1 << 20))  # part of ours
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=204)  # never sent


async def test_onedata_replace_cut_once_then_refused_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    """The clean-up judged the last attempt only (a 503): the first attempt, cut, had
    already replaced the file's content with part of ours, and that was kept."""
    server = await CutThenBusy(tmp_path / "onedata", TOKEN, "my space").start()
    try:
        target = server.root / "my space" / "out" / "r.bin"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"previous good result")
        provider = onedata_provider(server.url)
        src = tmp_path / "big.bin"
        write_random(src, 4 * MiB)
        with pytest.raises(StorageError, match=r"onedata\.od1: cannot upload out/r\.bin: "
                                               r"HTTP 503"):
            await provider.upload(src, "out", "r.bin")
    finally:
        await server.close()
    assert server.replaces >= 3  # (aiohttp may send a PUT cut on its way again itself)
    assert not target.exists()


async def test_onedata_wrong_token(oneprovider: FakeOneprovider, tmp_path: Path) -> None:
    wrong = "MDAx-wrong-token-value"
    provider = onedata_provider(oneprovider.url, token=wrong)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError) as failure:
        await provider.upload(tmp_path / "f", "out", "f")
    expected = "onedata.od1: cannot upload out/f: the token is refused (HTTP 401)"
    assert str(failure.value) == expected
    assert_no_secret(str(failure.value), wrong, TOKEN)


async def test_onedata_missing_object(oneprovider: FakeOneprovider, tmp_path: Path) -> None:
    provider = onedata_provider(oneprovider.url)
    with pytest.raises(StorageError, match="no such object"):
        await provider.download("my space", "in/none.txt", tmp_path / "x")
    assert [p.name for p in tmp_path.iterdir()] == ["onedata"]  # nothing left behind
