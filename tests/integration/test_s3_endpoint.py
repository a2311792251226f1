"""The controller's S3 endpoint (SPEC 7.2), through boto3 and the AWS CLI, over loopback.

One controller serves the operations' tests (each in its own bucket); the tests of what
the flags change start their own. The AWS CLI runs as a subprocess with `--endpoint-url`
and the keys `/system/config` hands out, as a user would configure it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
import requests
from botocore.auth import HmacV1Auth, S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from faas_supervisor.controller.s3 import sigv4
from faas_supervisor.controller.s3.answers import NAMESPACE
from tests.integration.conftest import S3Server, free_port
from tests.integration.controller_fixture import (
    ControllerFactory,
    ControllerProcess,
    wait_until,
)

pytestmark = pytest.mark.integration
MIB = 1 << 20


@dataclass
class Endpoint:
    controller: ControllerProcess
    url: str
    access_key: str
    secret_key: str

    def client(self, secret: str | None = None, **config: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          **config),
        )

    def aws(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The AWS CLI (from PyPI), as a user runs it."""
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        aws = shutil.which("aws")
        assert aws is not None, "the AWS CLI is not installed: `make deps` installs awscli"
        done = subprocess.run(
            [aws, "--endpoint-url", self.url, *args],
            env=env, capture_output=True, text=True, timeout=300,
        )
        if check:
            assert done.returncode == 0, f"aws {' '.join(args)}: {done.stderr}"
        return done


def endpoint_of(controller: ControllerProcess) -> Endpoint:
    provider = controller.request("GET", "/system/config").json()["minio_provider"]
    return Endpoint(controller, provider["endpoint"], provider["access_key"],
                    provider["secret_key"])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    factory = ControllerFactory(tmp_path_factory.mktemp("s3"))
    try:
        yield endpoint_of(factory())
    finally:
        factory.close()


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[ControllerFactory]:
    factory = ControllerFactory(tmp_path)
    yield factory
    factory.close()


def bucket_name() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


def code_of(error: ClientError) -> tuple[str, int]:
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]


# ---- the endpoint and its keys -----------------------------------------------------------


def test_config_hands_out_the_endpoint_and_the_kept_keys(endpoint: Endpoint) -> None:
    controller = endpoint.controller
    assert listening_ports(controller.process.pid) == {controller.port, controller.s3_port}
    assert endpoint.url == f"http://127.0.0.1:{controller.s3_port}"
    kept = (controller.data_dir / "s3-keys").read_text().split()
    assert kept == [endpoint.access_key, endpoint.secret_key]
    assert (controller.data_dir / "s3-keys").stat().st_mode & 0o777 == 0o600
    assert endpoint.secret_key not in controller.log_text()


def test_keys_survive_a_restart_and_flags_replace_them(controllers: ControllerFactory) -> None:
    first = endpoint_of(controllers())
    first.controller.stop()
    again = endpoint_of(controllers(data_dir=first.controller.data_dir))
    assert (again.access_key, again.secret_key) == (first.access_key, first.secret_key)
    again.controller.stop()
    given = endpoint_of(controllers(
        data_dir=first.controller.data_dir,
        args=["--minio-access-key", "GIVENKEY", "--minio-secret-key", "given-secret-key"],
    ))
    assert (given.access_key, given.secret_key) == ("GIVENKEY", "given-secret-key")
    given.client().create_bucket(Bucket="given-keys")
    with pytest.raises(ClientError) as caught:
        given.client(secret=first.secret_key).list_buckets()
    assert code_of(caught.value) == ("SignatureDoesNotMatch", 403)


def test_stale_temporary_files_and_uploads_go_at_start(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """What a controller killed mid-upload left (a body's temporary file, a part's) and
    an upload without a part for over 7 days are removed when the next one starts; a
    recent upload is kept."""
    storage = tmp_path / "data" / "storage"
    staging = storage / "bkt" / ".s3-tmp"
    staging.mkdir(parents=True)
    (staging / ".s3-tmp-0123456789abcdef").write_bytes(b"half a body")
    uploads = storage / ".s3-uploads"
    old, fresh = "a" * 32, "b" * 32
    for upload_id in (old, fresh):
        (uploads / upload_id).mkdir(parents=True)
        (uploads / upload_id / "upload.json").write_text(json.dumps({
            "bucket": "bkt", "key": f"{upload_id[0]}.bin", "initiated": time.time(),
            "content_type": "binary/octet-stream", "metadata": {}}))
    (uploads / fresh / ".s3-tmp-0123456789abcdef").write_bytes(b"half a part")
    eight_days_ago = time.time() - 8 * 24 * 3600
    os.utime(uploads / old, (eight_days_ago, eight_days_ago))
    endpoint = endpoint_of(controllers())
    listed = endpoint.client().list_multipart_uploads(Bucket="bkt")
    assert [u["UploadId"] for u in listed.get("Uploads", [])] == [fresh]
    assert not staging.exists()
    assert sorted(p.name for p in uploads.iterdir()) == [fresh]
    assert [p.name for p in (uploads / fresh).iterdir()] == ["upload.json"]
    assert [p.name for p in (storage / "bkt").iterdir()] == []


def test_s3_port_0_serves_none(controllers: ControllerFactory) -> None:
    controller = controllers(args=["--s3-port", "0"])
    provider = controller.request("GET", "/system/config").json()["minio_provider"]
    assert provider["endpoint"] == "" and provider["access_key"] == ""
    assert not (controller.data_dir / "s3-keys").exists()
    assert "s3_port=None" in controller.log_text()
    controller.request("POST", "/system/buckets", json={"bucket_name": "off-bucket"})
    answer = controller.request("POST", "/system/buckets/off-bucket/presign",
                                json={"object_key": "a", "operation": "download"})
    assert answer.status_code == 409, answer.text
    assert listening_ports(controller.process.pid) == {controller.port}


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on (its sockets' inodes in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_minio_endpoint_replaces_it(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    port = free_port()
    controller = controllers(args=[
        "--minio-endpoint", moto_server.endpoint, "--minio-access-key", "testing",
        "--minio-secret-key", "testing", "--s3-port", str(port),
    ])
    assert listening_ports(controller.process.pid) == {controller.port}
    assert "s3_port=None" in controller.log_text()
    provider = controller.request("GET", "/system/config").json()["minio_provider"]
    assert provider["endpoint"] == moto_server.endpoint
    bucket = bucket_name()
    moto_server.client().create_bucket(Bucket=bucket)
    upload = controller.request("POST", f"/system/buckets/{bucket}/presign",
                                json={"object_key": "up.txt", "operation": "upload"}).json()
    assert upload["url"].startswith(f"{moto_server.endpoint}/{bucket}/up.txt?")
    assert requests.put(upload["url"], data=b"via moto", timeout=30).status_code == 200
    got = moto_server.client().get_object(Bucket=bucket, Key="up.txt")["Body"].read()
    assert got == b"via moto"


# ---- operations, through boto3 -----------------------------------------------------------


def test_buckets(endpoint: Endpoint) -> None:
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.create_bucket(Bucket=bucket)
    assert code_of(caught.value) == ("BucketAlreadyOwnedByYou", 409)
    s3.put_object(Bucket=bucket, Key="dir/one", Body=b"1")
    with pytest.raises(ClientError) as caught:
        s3.delete_bucket(Bucket=bucket)
    assert code_of(caught.value) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=bucket, Key="dir/one")
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.head_bucket(Bucket=bucket)
    assert code_of(caught.value) == ("404", 404)
    with pytest.raises(ClientError) as caught:
        s3.list_objects_v2(Bucket=bucket)
    assert code_of(caught.value) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as caught:
        s3.create_bucket(Bucket="Not_A_Bucket")
    assert code_of(caught.value) == ("InvalidBucketName", 400)


def test_a_buckets_creation_date_stays_what_it_was(endpoint: Endpoint) -> None:
    """ListBuckets' CreationDate is when the bucket was made (CreateBucket's, or the bucket
    API's), as S3 and MinIO answer it: an object or a folder put at its top later does not
    move it. It was the folder's time, which they change."""
    s3, controller = endpoint.client(), endpoint.controller
    by_s3, by_api = bucket_name(), bucket_name()
    s3.create_bucket(Bucket=by_s3)
    assert controller.request("POST", "/system/buckets",
                              json={"bucket_name": by_api}).status_code == 201
    long_ago = time.time() - 3600  # as if made an hour ago: its folder's time then
    for bucket in (by_s3, by_api):
        os.utime(controller.storage / bucket, (long_ago, long_ago))

    def created() -> dict[str, datetime.datetime]:
        return {b["Name"]: b["CreationDate"] for b in s3.list_buckets()["Buckets"]
                if b["Name"] in (by_s3, by_api)}

    first = created()
    assert set(first) == {by_s3, by_api}
    for bucket in (by_s3, by_api):
        s3.put_object(Bucket=bucket, Key="top.txt", Body=b"x")
        s3.put_object(Bucket=bucket, Key="folder/")
        s3.put_object(Bucket=bucket, Key="new/inside.txt", Body=b"y")
    assert created() == first


def test_objects_put_get_head_copy_delete(endpoint: Endpoint) -> None:
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    data = os.urandom(100_000)
    put = s3.put_object(Bucket=bucket, Key="dir/a b+c.bin", Body=data, ContentType="image/png",
                        Metadata={"origin": "test"})
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    head = s3.head_object(Bucket=bucket, Key="dir/a b+c.bin")
    assert (head["ContentLength"], head["ContentType"], head["Metadata"]) == (
        len(data), "image/png", {"origin": "test"})
    assert head["ETag"] == put["ETag"]
    assert abs(head["LastModified"].timestamp() - time.time()) < 60
    got = s3.get_object(Bucket=bucket, Key="dir/a b+c.bin")
    assert got["Body"].read() == data
    # On disk: the key's path, whole; nothing else but hidden names.
    stored = endpoint.controller.storage / bucket / "dir" / "a b+c.bin"
    assert stored.read_bytes() == data
    assert [p.name for p in stored.parent.iterdir()] == ["a b+c.bin"]
    copied = s3.copy_object(Bucket=bucket, Key="copy.bin",
                            CopySource={"Bucket": bucket, "Key": "dir/a b+c.bin"})
    assert copied["CopyObjectResult"]["ETag"] == put["ETag"]
    assert s3.head_object(Bucket=bucket, Key="copy.bin")["ContentType"] == "image/png"
    with pytest.raises(ClientError) as caught:
        s3.copy_object(Bucket=bucket, Key="copy.bin",
                       CopySource={"Bucket": bucket, "Key": "copy.bin"})
    assert code_of(caught.value) == ("InvalidRequest", 400)
    s3.copy_object(Bucket=bucket, Key="copy.bin", CopySource={"Bucket": bucket, "Key": "copy.bin"},
                   MetadataDirective="REPLACE", ContentType="text/plain")
    assert s3.head_object(Bucket=bucket, Key="copy.bin")["ContentType"] == "text/plain"
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="missing")
    assert code_of(caught.value) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key="missing")
    assert code_of(caught.value) == ("404", 404)
    s3.delete_object(Bucket=bucket, Key="copy.bin")
    s3.delete_object(Bucket=bucket, Key="never-there")  # S3 answers 204 all the same
    deleted = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "dir/a b+c.bin"}, {"Key": "../escape"}]})
    assert [d["Key"] for d in deleted["Deleted"]] == ["dir/a b+c.bin"]
    assert [(e["Key"], e["Code"]) for e in deleted["Errors"]] == [("../escape", "InvalidArgument")]
    assert s3.list_objects_v2(Bucket=bucket, Prefix="dir/a").get("Contents") is None


def test_conditional_writes(endpoint: Endpoint) -> None:
    """If-None-Match / If-Match on PutObject and CompleteMultipartUpload (boto3's IfNoneMatch,
    IfMatch): a write whose condition fails replaces nothing."""
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")["ETag"]
    refused = [
        ({"IfNoneMatch": "*"}, ("PreconditionFailed", 412)),
        ({"IfMatch": '"00000000000000000000000000000000"'}, ("PreconditionFailed", 412)),
    ]
    for condition, answer in refused:
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket=bucket, Key="k", Body=b"second", **condition)
        assert code_of(caught.value) == answer, condition
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch=first)
    assert code_of(caught.value) == ("NoSuchKey", 404)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"
    s3.put_object(Bucket=bucket, Key="k", Body=b"third", IfMatch=first)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"third"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1,
                          Body=b"fourth")["ETag"]
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=upload_id, IfNoneMatch="*",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert code_of(caught.value) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"third"
    # CopyObject: the same conditions on what it replaces, and x-amz-copy-source-if-* on
    # its source; UploadPartCopy's on its source; a folder marker's If-None-Match.
    s3.put_object(Bucket=bucket, Key="src", Body=b"source")
    source = {"Bucket": bucket, "Key": "src"}
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0000"'},
                      {"CopySourceIfMatch": '"0000"'}, {"CopySourceIfNoneMatch": "*"}):
        with pytest.raises(ClientError) as caught:
            s3.copy_object(Bucket=bucket, Key="k", CopySource=source, **condition)
        assert code_of(caught.value) == ("PreconditionFailed", 412), condition
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"third"
    s3.copy_object(Bucket=bucket, Key="k", CopySource=source,
                   CopySourceIfMatch=s3.head_object(Bucket=bucket, Key="src")["ETag"])
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"source"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="parts")["UploadId"]
    with pytest.raises(ClientError) as caught:
        s3.upload_part_copy(Bucket=bucket, Key="parts", UploadId=upload_id, PartNumber=1,
                            CopySource=source, CopySourceIfMatch='"0000"')
    assert code_of(caught.value) == ("PreconditionFailed", 412)
    s3.put_object(Bucket=bucket, Key="docs/", Body=b"")
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="docs/", Body=b"", IfNoneMatch="*")
    assert code_of(caught.value) == ("PreconditionFailed", 412)


def test_range_reads(endpoint: Endpoint) -> None:
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    data = bytes(range(256)) * 40
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    size = len(data)
    for header, start, end in [
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, size - 1),
        ("bytes=-7", size - 7, size - 1),
        ("bytes=10000-99999", 10000, size - 1),
    ]:
        got = s3.get_object(Bucket=bucket, Key="r", Range=header)
        assert got["Body"].read() == data[start : end + 1], header
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"] == f"bytes {start}-{end}/{size}"
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(data)}-")
    assert code_of(caught.value) == ("InvalidRange", 416)


def test_listing_prefix_delimiter_and_pages(endpoint: Endpoint) -> None:
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    keys = ["a-1", "a/b/c", "a/b/d", "a/e", "a0", "b", "photos/2024/x.jpg", "z/"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else key.encode())
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == sorted(keys)
    assert listed["KeyCount"] == len(keys) and not listed["IsTruncated"]
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["a-1", "a0", "b"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "photos/", "z/"]
    under = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in under["Contents"]] == ["a/e"]
    assert [p["Prefix"] for p in under["CommonPrefixes"]] == ["a/b/"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/b")["Contents"]] == [
        "a/b/c", "a/b/d"]
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 3}))
    assert [len(p.get("Contents", [])) for p in pages] == [3, 3, 2]
    assert [o["Key"] for p in pages for o in p["Contents"]] == sorted(keys)
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2}))
    found = [(o["Key"], p["Prefix"]) for page in pages
             for o, p in [(o, {"Prefix": ""}) for o in page.get("Contents", [])]
             + [({"Key": ""}, p) for p in page.get("CommonPrefixes", [])]]
    assert sorted(k or p for k, p in found) == ["a-1", "a/", "a0", "b", "photos/", "z/"]
    assert s3.list_objects_v2(Bucket=bucket, StartAfter="a0")["Contents"][0]["Key"] == "b"
    v1 = s3.list_objects(Bucket=bucket, MaxKeys=2)
    assert [o["Key"] for o in v1["Contents"]] == ["a-1", "a/b/c"] and v1["IsTruncated"]
    with pytest.raises(ClientError) as caught:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!not a token!!")
    assert code_of(caught.value)[0] == "InvalidArgument"


def test_a_prefix_lists_no_shorter_key(endpoint: Endpoint) -> None:
    """A file whose key is the start of the prefix asked is not under it: a prefix delete
    (boto3's `objects.filter(Prefix=...).delete()`) must leave it."""
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    for key in ("input/data.csv", "input/data.csv.old", "input/data.csv.older"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"precious" if key == "input/data.csv" else b"")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="input/data.csv.old")
    assert [o["Key"] for o in listed["Contents"]] == ["input/data.csv.old",
                                                      "input/data.csv.older"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="input/data.csvX",
                                                Delimiter="/")
    assert [o["Key"] for o in s3.list_objects(Bucket=bucket, Prefix="input/data.csv.")[
        "Contents"]] == ["input/data.csv.old", "input/data.csv.older"]
    boto3.resource("s3", endpoint_url=endpoint.url, aws_access_key_id=endpoint.access_key,
                   aws_secret_access_key=endpoint.secret_key, region_name="us-east-1",
                   ).Bucket(bucket).objects.filter(Prefix="input/data.csv.old").delete()
    assert s3.get_object(Bucket=bucket, Key="input/data.csv")["Body"].read() == b"precious"


def test_multipart_upload(endpoint: Endpoint) -> None:
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    parts_data = [os.urandom(5 * MIB), os.urandom(1234)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi", ContentType="text/csv")
    upload_id = upload["UploadId"]
    etags = []
    for n, data in enumerate(parts_data, 1):
        etags.append(s3.upload_part(Bucket=bucket, Key="multi", UploadId=upload_id,
                                    PartNumber=n, Body=data)["ETag"])
    listed = s3.list_parts(Bucket=bucket, Key="multi", UploadId=upload_id)
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed["Parts"]] == [
        (1, etags[0], 5 * MIB), (2, etags[1], 1234)]
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("multi", upload_id)]
    assert s3.list_objects_v2(Bucket=bucket).get("Contents") is None  # not an object yet
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="multi", UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in
                                   enumerate(etags, 1)]})
    digests = b"".join(hashlib.md5(d).digest() for d in parts_data)
    assert done["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-2"'
    got = s3.get_object(Bucket=bucket, Key="multi")
    assert got["Body"].read() == b"".join(parts_data)
    assert got["ContentType"] == "text/csv"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    # Too small a part but the last, then an abort.
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    small = [s3.upload_part(Bucket=bucket, Key="small", UploadId=upload_id, PartNumber=n,
                            Body=b"x")["ETag"] for n in (1, 2)]
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="small", UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in
                                       enumerate(small, 1)]})
    assert code_of(caught.value) == ("EntityTooSmall", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=upload_id)
    with pytest.raises(ClientError) as caught:
        s3.list_parts(Bucket=bucket, Key="small", UploadId=upload_id)
    assert code_of(caught.value) == ("NoSuchUpload", 404)
    # What boto3's transfer manager does with a large file: parts in parallel.
    big = os.urandom(12 * MIB)
    s3.upload_fileobj(io.BytesIO(big), bucket, "transfer",
                      Config=boto3.s3.transfer.TransferConfig(multipart_threshold=5 * MIB,
                                                              multipart_chunksize=5 * MIB))
    assert s3.head_object(Bucket=bucket, Key="transfer")["ETag"].endswith('-3"')
    out = io.BytesIO()
    s3.download_fileobj(bucket, "transfer", out,
                        Config=boto3.s3.transfer.TransferConfig(multipart_threshold=5 * MIB,
                                                                multipart_chunksize=5 * MIB))
    assert out.getvalue() == big
    # The whole object's CRC32 on complete (boto3's ChecksumType="FULL_OBJECT"): it is
    # the object's, not the XML body's, and no reason to refuse the upload.
    whole = os.urandom(5 * MIB) + b"tail"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="full", ChecksumAlgorithm="CRC32",
                                           ChecksumType="FULL_OBJECT")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="full", UploadId=upload_id, PartNumber=n,
                            Body=data, ChecksumAlgorithm="CRC32")["ETag"]
             for n, data in ((1, whole[: 5 * MIB]), (2, whole[5 * MIB:]))]
    s3.complete_multipart_upload(
        Bucket=bucket, Key="full", UploadId=upload_id, ChecksumType="FULL_OBJECT",
        ChecksumCRC32=base64.b64encode(zlib.crc32(whole).to_bytes(4, "big")).decode(),
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in
                                   enumerate(etags, 1)]})
    assert s3.get_object(Bucket=bucket, Key="full")["Body"].read() == whole


def test_listing_counts_as_s3_takes_them(endpoint: Endpoint) -> None:
    """max-keys, max-parts and max-uploads of 0 are an empty page with no next one (as S3
    answers them); a count or marker that is negative or no number is InvalidArgument,
    never a 500 nor a page of another size."""
    s3, bucket = endpoint.client(), bucket_name()
    s3.create_bucket(Bucket=bucket)
    for key in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    for n in (1, 2, 3):
        s3.upload_part(Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=n, Body=b"p")
    uploads = [("m", upload_id)] + [
        ("n", s3.create_multipart_upload(Bucket=bucket, Key="n")["UploadId"]) for _ in (1, 2)]
    for listed in (s3.list_objects(Bucket=bucket, MaxKeys=0),
                   s3.list_objects_v2(Bucket=bucket, MaxKeys=0),
                   s3.list_parts(Bucket=bucket, Key="m", UploadId=upload_id, MaxParts=0),
                   s3.list_multipart_uploads(Bucket=bucket, MaxUploads=0)):
        assert not {"Contents", "Parts", "Uploads"} & listed.keys(), listed
        assert listed["IsTruncated"] is False
    pages = list(s3.get_paginator("list_parts").paginate(
        Bucket=bucket, Key="m", UploadId=upload_id, PaginationConfig={"PageSize": 2}))
    assert [[p["PartNumber"] for p in page["Parts"]] for page in pages] == [[1, 2], [3]]
    pages = list(s3.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 1}))
    assert [[(u["Key"], u["UploadId"]) for u in page["Uploads"]] for page in pages] == [
        [upload] for upload in uploads]  # a key's uploads in the order they were made
    refused = [
        f"/{bucket}?max-keys=-1", f"/{bucket}?list-type=2&max-keys=ten",
        f"/{bucket}?max-keys=1_0", f"/{bucket}?max-keys=2147483648",
        f"/{bucket}/m?uploadId={upload_id}&max-parts=-1",
        f"/{bucket}/m?uploadId={upload_id}&max-parts=x",
        f"/{bucket}/m?uploadId={upload_id}&part-number-marker=-1",
        f"/{bucket}?uploads=&max-uploads=-1", f"/{bucket}?uploads=&max-uploads=x",
    ]
    for path in refused:
        request = AWSRequest("GET", f"{endpoint.url}{path}")
        S3SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                    "us-east-1").add_auth(request)
        answer = requests.get(request.url, headers=dict(request.headers), timeout=30)
        assert answer.status_code == 400, (path, answer.text)
        assert b"<Code>InvalidArgument</Code>" in answer.content, (path, answer.text)
        assert b"must be an integer between 0 and 2147483647" in answer.content


def test_max_keys_0_reads_no_folder(endpoint: Endpoint) -> None:
    """max-keys=0 is an empty page with no next one: the folders are not read for it (a
    listing's read of a folder moves the folder's access time; a page of one does here)."""
    s3, bucket = endpoint.client(), bucket_name()
    s3.create_bucket(Bucket=bucket)
    for key in ("a", "sub/b", "sub/c"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    folders = [endpoint.controller.storage / bucket, endpoint.controller.storage / bucket / "sub"]

    def read_since_aged() -> list[bool]:
        """Whether each folder was read since aged (its access time set 3 days back: read,
        it moves even on `relatime` mounts)."""
        return [f.stat().st_atime > time.time() - 86400 for f in folders]

    def age() -> None:
        for folder in folders:
            old = time.time() - 3 * 86400
            os.utime(folder, (old, folder.stat().st_mtime))

    age()
    s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
    s3.list_objects_v2(Bucket=bucket, Prefix="sub/", MaxKeys=1)
    if read_since_aged() != [True, True]:
        reason = "this file system does not record folder reads (noatime)"
        print(reason)
        pytest.skip(reason)
    age()
    pages = [s3.list_objects(Bucket=bucket, MaxKeys=0),
             s3.list_objects_v2(Bucket=bucket, MaxKeys=0),
             s3.list_objects_v2(Bucket=bucket, MaxKeys=0, Delimiter="/"),
             s3.list_objects_v2(Bucket=bucket, MaxKeys=0, Prefix="sub/")]
    for page in pages:
        assert not {"Contents", "CommonPrefixes", "NextMarker",
                    "NextContinuationToken"} & page.keys(), page
        assert page["IsTruncated"] is False and page["MaxKeys"] == 0
    assert [p["KeyCount"] for p in pages[1:]] == [0, 0, 0]
    assert read_since_aged() == [False, False]
    with pytest.raises(ClientError) as caught:  # the bucket is still checked
        s3.list_objects_v2(Bucket=bucket_name(), MaxKeys=0)
    assert code_of(caught.value) == ("NoSuchBucket", 404)


def test_a_folder_marker_is_listed_under_its_own_prefix(endpoint: Endpoint) -> None:
    """An empty folder (`a/b/` put empty, or a folder made in the store) is the object
    `a/b/`: a listing whose prefix is exactly that key lists it, as S3 lists a marker;
    it was found under `a/` and `a/b` but not under `a/b/`."""
    s3, bucket = endpoint.client(), bucket_name()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b/", Body=b"")
    (endpoint.controller.storage / bucket / "c" / "d").mkdir(parents=True)
    s3.put_object(Bucket=bucket, Key="e/f", Body=b"x")  # a folder with a file: no marker
    for marker in ("a/b/", "c/d/"):
        for listed in (s3.list_objects_v2(Bucket=bucket, Prefix=marker),
                       s3.list_objects_v2(Bucket=bucket, Prefix=marker, Delimiter="/"),
                       s3.list_objects(Bucket=bucket, Prefix=marker, Delimiter="/"),
                       s3.list_objects_v2(Bucket=bucket, Prefix=marker, MaxKeys=1)):
            assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [(marker, 0)], listed
            assert "CommonPrefixes" not in listed and listed["IsTruncated"] is False
        assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=marker,
                                                    StartAfter=marker)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="e/")["Contents"]] == [
        "e/f"]


def test_multipart_upload_listing_encodes_keys_when_asked(endpoint: Endpoint) -> None:
    """encoding-type=url, as ListObjects takes it: KeyMarker, NextKeyMarker, Prefix and
    each Key URL-encoded, and EncodingType in the answer (boto3 decodes none of them for
    this operation: what it parses is what was sent). It was ignored."""
    s3, bucket = endpoint.client(), bucket_name()
    s3.create_bucket(Bucket=bucket)
    keys = ["sp ace/a&b.bin", "sp ace/ü+%.bin"]
    for key in keys:
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    encoded = ["sp%20ace/a%26b.bin", "sp%20ace/%C3%BC%2B%25.bin"]
    page = s3.list_multipart_uploads(Bucket=bucket, Prefix="sp ace/", KeyMarker="sp ace/",
                                     MaxUploads=1, EncodingType="url")
    assert page["EncodingType"] == "url"
    assert (page["Prefix"], page["KeyMarker"], page["NextKeyMarker"]) == (
        "sp%20ace/", "sp%20ace/", encoded[0])
    assert [u["Key"] for u in page["Uploads"]] == encoded[:1] and page["IsTruncated"]
    rest = s3.list_multipart_uploads(Bucket=bucket, EncodingType="url", KeyMarker=keys[0])
    assert [u["Key"] for u in rest["Uploads"]] == encoded[1:]
    plain = s3.list_multipart_uploads(Bucket=bucket, Prefix="sp ace/")
    assert "EncodingType" not in plain and plain["Prefix"] == "sp ace/"
    assert [u["Key"] for u in plain["Uploads"]] == keys


def test_presigned_urls(endpoint: Endpoint) -> None:
    bucket = bucket_name()
    endpoint.client().create_bucket(Bucket=bucket)
    for s3 in (endpoint.client(signature_version="s3v4"), endpoint.client()):  # SigV4, SigV2
        put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "p k"},
                                        ExpiresIn=300)
        assert requests.put(put, data=b"presigned", timeout=30).status_code == 200
        get = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p k"},
                                        ExpiresIn=300)
        assert requests.get(get, timeout=30).content == b"presigned"
        tampered = get.replace("p%20k", "other")
        answer = requests.get(tampered, timeout=30)
        assert answer.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer.content
    expired = sigv4.presign(sigv4.Keys(endpoint.access_key, endpoint.secret_key), "GET",
                            f"{endpoint.url}/{bucket}/p%20k", 5, now=time.time() - 60)
    answer = requests.get(expired, timeout=30)
    assert answer.status_code == 403
    assert b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in answer.content


def test_a_response_override_with_a_line_break_is_invalid(endpoint: Endpoint) -> None:
    """`response-content-disposition` holding CR LF would be a second header: aiohttp
    refused to send it, a 500 with a traceback; it is the client's error."""
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="b", Body=b"x")
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="b",
                      ResponseContentDisposition="attachment;\r\nX-Evil: 1")
    assert code_of(caught.value) == ("InvalidArgument", 400)
    fine = s3.get_object(Bucket=bucket, Key="b", ResponseContentDisposition="attachment")
    assert fine["ContentDisposition"] == "attachment"
    assert "Traceback" not in endpoint.controller.log_text()


def test_sigv2_bucket_level_requests(endpoint: Endpoint) -> None:
    """boto3's SigV2 signs a path-style bucket alone (sent as "/b") as "/b/", S3's form:
    the listings, the bucket's HEAD and its uploads were each a SignatureDoesNotMatch."""
    v4, s3 = endpoint.client(signature_version="s3v4"), endpoint.client(signature_version="s3")
    bucket, other = bucket_name(), bucket_name()
    v4.create_bucket(Bucket=bucket)
    v4.put_object(Bucket=bucket, Key="dir/a", Body=b"a")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]  # an object's
    listed = s3.list_objects(Bucket=bucket, Prefix="dir/", MaxKeys=5)
    assert [o["Key"] for o in listed["Contents"]] == ["dir/a"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["dir/a"]
    assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("m", upload_id)]
    url = s3.generate_presigned_url("list_objects", Params={"Bucket": bucket}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in url
    answer = requests.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    assert b"<Key>dir/a</Key>" in answer.content
    # The signature is still the bucket's: another bucket's name with it is refused.
    s3.create_bucket(Bucket=other)
    answer = requests.get(url.replace(f"/{bucket}?", f"/{other}?"), timeout=30)
    assert answer.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer.content


def test_a_signed_header_not_utf8_is_a_signature_mismatch(endpoint: Endpoint) -> None:
    """A signed header whose value came as Latin-1 bytes (SigV4 and SigV2): 403, not a 500
    from encoding the canonical request."""
    bucket = bucket_name()
    endpoint.client().create_bucket(Bucket=bucket)
    host, port = endpoint.url.removeprefix("http://").split(":")
    for auth in (S3SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                             "us-east-1"),
                 HmacV1Auth(Credentials(endpoint.access_key, endpoint.secret_key))):
        request = AWSRequest("PUT", f"{endpoint.url}/{bucket}/k", data=b"x",
                             headers={"x-amz-meta-name": "caf\xe9"})
        auth.add_auth(request)
        head = f"PUT /{bucket}/k HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()
                        if k.lower() not in ("host", "content-length"))
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode("latin-1") + b"\r\nx")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
        assert b"<Code>SignatureDoesNotMatch</Code>" in answer


def test_a_client_that_leaves_mid_body_is_one_log_line(endpoint: Endpoint) -> None:
    """A PUT cut short, and a GET whose reader leaves: nothing stored, and one line in the
    log for each, not aiohttp's traceback of a server error."""
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(32 * MIB))
    host, port = endpoint.url.removeprefix("http://").split(":")
    keys = Credentials(endpoint.access_key, endpoint.secret_key)
    for method, key, length in (("PUT", "cut", 1 << 20), ("GET", "big", 0)):
        request = AWSRequest(method, f"{endpoint.url}/{bucket}/{key}",
                             headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
        S3SigV4Auth(keys, "s3", "us-east-1").add_auth(request)
        head = f"{method} /{bucket}/{key} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()
                        if k.lower() != "host")
        head += f"Content-Length: {length}\r\n" if length else ""
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode() + b"\r\n" + (b"x" * 1000 if length else b""))
            if method == "GET":
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    wait_until(lambda: endpoint.controller.log_text().count("S3 client went away") >= 2, 30,
               "the two requests' end", endpoint.controller)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="cut")
    assert "Traceback" not in endpoint.controller.log_text()


def test_unsigned_amz_headers_are_refused(endpoint: Endpoint) -> None:
    """A presigned upload (or a signed request) with an x-amz-* header its signature does
    not cover, a copy source, must not copy another bucket's object."""
    s3 = endpoint.client()
    secret, public = bucket_name(), bucket_name()
    s3.create_bucket(Bucket=secret)
    s3.create_bucket(Bucket=public)
    s3.put_object(Bucket=secret, Key="private.txt", Body=b"TOP SECRET")
    copy = {"x-amz-copy-source": f"{secret}/private.txt"}
    keys = sigv4.Keys(endpoint.access_key, endpoint.secret_key)
    v4 = endpoint.client(signature_version="s3v4")
    for url in (
        sigv4.presign(keys, "PUT", f"{endpoint.url}/{public}/upload.txt", 300),
        v4.generate_presigned_url("put_object", Params={"Bucket": public, "Key": "upload.txt"},
                                  ExpiresIn=300),
        s3.generate_presigned_url("put_object", Params={"Bucket": public, "Key": "upload.txt"},
                                  ExpiresIn=300),  # SigV2: it signs every x-amz-* header
    ):
        answer = requests.put(url, data=b"", headers=copy, timeout=30)
        assert answer.status_code == 403, answer.text
        assert b"TOP SECRET" not in answer.content
    request = AWSRequest("PUT", f"{endpoint.url}/{public}/upload.txt", data=b"mine")
    S3SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                "us-east-1").add_auth(request)
    answer = requests.put(request.url, headers={**dict(request.headers), **copy}, data=b"mine",
                          timeout=30)
    assert answer.status_code == 403
    assert b"There were headers present in the request which were not signed" in answer.content
    assert s3.list_objects_v2(Bucket=public).get("Contents") is None
    # What a presigned request may send besides what it signs (S3 takes it).
    url = sigv4.presign(keys, "PUT", f"{endpoint.url}/{public}/upload.txt", 300)
    assert requests.put(url, data=b"x", headers={"x-amz-content-sha256": sigv4.UNSIGNED},
                        timeout=30).status_code == 200


def test_presign_route_of_the_api(endpoint: Endpoint) -> None:
    controller = endpoint.controller
    bucket = bucket_name()
    endpoint.client().create_bucket(Bucket=bucket)
    answer = controller.request("POST", f"/system/buckets/{bucket}/presign", json={
        "object_key": "/up/file.txt", "operation": "upload", "content_type": "text/plain",
        "expires_in": 120})
    assert answer.status_code == 200, answer.text
    upload = answer.json()
    assert set(upload) == {"object_key", "operation", "method", "url", "expires_at", "headers"}
    assert (upload["object_key"], upload["operation"], upload["method"]) == (
        "up/file.txt", "upload", "PUT")
    assert upload["headers"] == {"Content-Type": "text/plain"}
    assert upload["url"].startswith(f"{endpoint.url}/{bucket}/up/file.txt?")
    assert requests.put(upload["url"], data=b"hi", headers=upload["headers"],
                        timeout=30).status_code == 200
    other_type = requests.put(upload["url"], data=b"hi", headers={"Content-Type": "x/y"},
                              timeout=30)
    assert other_type.status_code == 403
    download = controller.request("POST", f"/system/buckets/{bucket}/presign", json={
        "object_key": "up/file.txt", "operation": "download"}).json()
    assert download["method"] == "GET" and "headers" not in download
    assert requests.get(download["url"], timeout=30).content == b"hi"
    for body, status in [
        ({"object_key": "x", "operation": "delete"}, 400),
        ({"operation": "download"}, 400),
        ({"object_key": "x", "operation": "upload", "expires_in": 604801}, 400),
        ({"object_key": "../x", "operation": "upload"}, 400),
    ]:
        assert controller.request("POST", f"/system/buckets/{bucket}/presign",
                                  json=body).status_code == status, body
    missing = controller.request("POST", "/system/buckets/no-such-bucket/presign",
                                 json={"object_key": "x", "operation": "download"})
    assert missing.status_code == 404
    assert controller.request("POST", f"/system/buckets/{bucket}/presign", auth=None,
                              json={"object_key": "x", "operation": "download"}
                              ).status_code == 401


# ---- refusals ------------------------------------------------------------------------------


def test_bad_signatures_and_keys(endpoint: Endpoint) -> None:
    bucket = bucket_name()
    endpoint.client().create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        endpoint.client(secret="wrong-secret").put_object(Bucket=bucket, Key="k", Body=b"x")
    assert code_of(caught.value) == ("SignatureDoesNotMatch", 403)
    stranger = boto3.client("s3", endpoint_url=endpoint.url, aws_access_key_id="STRANGER",
                            aws_secret_access_key=endpoint.secret_key, region_name="us-east-1")
    with pytest.raises(ClientError) as caught:
        stranger.list_buckets()
    assert code_of(caught.value) == ("InvalidAccessKeyId", 403)
    anonymous = requests.get(f"{endpoint.url}/{bucket}", timeout=30)
    assert anonymous.status_code == 403
    assert anonymous.headers["Content-Type"] == "application/xml"
    assert b"<Code>AccessDenied</Code>" in anonymous.content
    # A request signed at another time than now.
    request = AWSRequest("GET", f"{endpoint.url}/{bucket}", headers={
        "X-Amz-Content-SHA256": sigv4.EMPTY_SHA256})
    signer = SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3", "us-east-1")
    with mock.patch("botocore.auth.get_current_datetime",
                    return_value=datetime.datetime(2020, 1, 1)):
        signer.add_auth(request)
    skewed = requests.get(request.url, headers=dict(request.headers), timeout=30)
    assert skewed.status_code == 403 and b"RequestTimeTooSkewed" in skewed.content
    # A body that is not what its signed hash says.
    request = AWSRequest("PUT", f"{endpoint.url}/{bucket}/new/folder/k", data=b"signed body")
    S3SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                "us-east-1").add_auth(request)
    swapped = requests.put(request.url, headers=dict(request.headers), data=b"other body",
                           timeout=30)
    assert swapped.status_code == 400 and b"XAmzContentSHA256Mismatch" in swapped.content
    assert endpoint.client().list_objects_v2(Bucket=bucket).get("Contents") is None
    # Nothing left of it: no object, no folder, no temporary file.
    bucket_folder = endpoint.controller.storage / bucket
    assert [p.name for p in bucket_folder.iterdir()] == [".s3-tmp"]
    assert list((bucket_folder / ".s3-tmp").iterdir()) == []


def test_keys_never_leave_the_store(endpoint: Endpoint, tmp_path: Path) -> None:
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    storage = endpoint.controller.storage
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (storage / bucket / "link").symlink_to(outside)
    for key in ["../escape", "a/../../escape", "a/./b", "a//b", ".hidden", "dir/.s3-tmp-x",
                "link/secret.txt", "link/new.txt", "..", f"../{bucket}2/x"]:
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket=bucket, Key=key, Body=b"escape")
        assert code_of(caught.value) == ("InvalidArgument", 400), key
        with pytest.raises(ClientError) as caught:
            s3.get_object(Bucket=bucket, Key=key)
        assert code_of(caught.value)[1] == 400, key
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert not (storage / "escape").exists() and not (storage.parent / "escape").exists()
    with pytest.raises(ClientError) as caught:
        s3.copy_object(Bucket=bucket, Key="copied", CopySource=f"{bucket}/link/secret.txt")
    assert code_of(caught.value) == ("InvalidArgument", 400)
    # A folder and an object cannot share a name here.
    s3.put_object(Bucket=bucket, Key="file", Body=b"x")
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="file/under", Body=b"x")
    assert code_of(caught.value) == ("XMinioParentIsObject", 400)


def test_a_segment_over_255_bytes_is_a_key_too_long(endpoint: Endpoint) -> None:
    """Each segment of a key is a name on disk: one over 255 bytes is the key's fault (400),
    never the file system's ENAMETOOLONG as a 500; a listing under it is empty."""
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    for key in ("dir/" + "a" * 256, "é" * 128 + "/x"):
        for call, extra in ((s3.put_object, {"Body": b"x"}), (s3.get_object, {}),
                            (s3.delete_object, {})):
            with pytest.raises(ClientError) as caught:
                call(Bucket=bucket, Key=key, **extra)
            assert code_of(caught.value) == ("KeyTooLongError", 400), key
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="b" * 300 + "/")
    assert listed["KeyCount"] == 0
    s3.put_object(Bucket=bucket, Key="a" * 255, Body=b"x")  # the longest name there is


def test_a_folder_key_takes_no_bytes(endpoint: Endpoint) -> None:
    """A PUT to a key ending in `/` with a body is refused, not answered 200 with the bytes
    dropped; an empty one makes the folder marker."""
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="docs/", Body=b"important data" * 1000)
    assert code_of(caught.value) == ("InvalidArgument", 400)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="docs/", Body=b"")
    assert s3.head_object(Bucket=bucket, Key="docs/")["ContentLength"] == 0


def test_a_key_with_a_newline_is_served(endpoint: Endpoint) -> None:
    """S3 takes any character in a key, and the store holds a newline (a job's output): the
    endpoint serves such a key (`%0A` in the path), by either signature, as it lists it;
    it was aiohttp's plain-text 404 to every request."""
    s3, v4 = endpoint.client(), endpoint.client(signature_version="s3v4")
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    v4.put_object(Bucket=bucket, Key="a\nb.txt", Body=b"put")
    (endpoint.controller.storage / bucket / "x\ny.txt").write_bytes(b"dropped")
    listed = [o["Key"] for o in v4.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == ["a\nb.txt", "x\ny.txt"]
    assert v4.get_object(Bucket=bucket, Key="a\nb.txt")["Body"].read() == b"put"
    assert v4.head_object(Bucket=bucket, Key="x\ny.txt")["ContentLength"] == len(b"dropped")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "x\ny.txt"},
                                    ExpiresIn=300)  # SigV2
    assert "%0A" in url
    assert requests.get(url, timeout=30).content == b"dropped"
    v4.delete_object(Bucket=bucket, Key="x\ny.txt")
    with pytest.raises(ClientError) as caught:
        v4.get_object(Bucket=bucket, Key="x\ny.txt")
    assert code_of(caught.value) == ("NoSuchKey", 404)
    assert [o["Key"] for o in v4.list_objects_v2(Bucket=bucket)["Contents"]] == ["a\nb.txt"]


def test_xml_answers_are_well_formed_whatever_the_key(endpoint: Endpoint) -> None:
    """A key's characters XML 1.0 cannot hold (C0 controls) were written raw: the answer was
    no XML, boto3 lost an error's code (NoSuchKey read as "404") and a listing without
    encoding-type=url could not be read. They come as U+FFFD; a CR as itself."""
    s3 = endpoint.client()
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="missing\x02.txt")
    assert code_of(caught.value) == ("NoSuchKey", 404)
    assert caught.value.response["Error"]["Resource"] == f"/{bucket}/missing\ufffd.txt"
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="dir\x01/", Body=b"x")
    assert code_of(caught.value) == ("InvalidArgument", 400)
    for key in ("ctl\x01.txt", "cr\r.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="up\x1f.bin")
    assert upload["Key"] == "up\ufffd.bin"
    s3.abort_multipart_upload(Bucket=bucket, Key="up\x1f.bin", UploadId=upload["UploadId"])
    # boto3 asks listings with encoding-type=url: the keys come exact.
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == ["cr\r.txt", "ctl\x01.txt"]
    request = AWSRequest("GET", f"{endpoint.url}/{bucket}?list-type=2")
    S3SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                "us-east-1").add_auth(request)
    answer = _send(request)
    assert answer.status_code == 200
    keys = [node.text for node in ET.fromstring(answer.content).iter(f"{{{NAMESPACE}}}Key")]
    assert keys == ["cr\r.txt", "ctl\ufffd.txt"]


# ---- aws-chunked bodies (what SDKs send over TLS, or when told to) --------------------------


def _send(request: AWSRequest) -> requests.Response:
    prepared = request.prepare()
    return requests.request(prepared.method, prepared.url, headers=dict(prepared.headers),
                            data=prepared.body, timeout=60)


def test_unsigned_chunks_with_a_trailing_checksum(endpoint: Endpoint) -> None:
    """botocore's own aws-chunked encoder, as boto3 >= 1.36 sends a PutObject over HTTPS."""
    bucket = bucket_name()
    endpoint.client().create_bucket(Bucket=bucket)
    data = os.urandom(300_000)

    def put(body: bytes) -> requests.Response:
        request = AWSRequest("PUT", f"{endpoint.url}/{bucket}/chunked", data=body, headers={
            "Content-Encoding": "aws-chunked",
            "X-Amz-Trailer": "x-amz-checksum-crc32",
            "X-Amz-Decoded-Content-Length": str(len(data)),
        })
        request.context["checksum"] = {
            "request_algorithm": {"in": "trailer", "algorithm": "crc32",
                                  "name": "x-amz-checksum-crc32"}}
        S3SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                    "us-east-1").add_auth(request)
        assert request.headers["X-Amz-Content-SHA256"] == sigv4.STREAMING_UNSIGNED_TRAILER
        return _send(request)

    encoded = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum,
                                checksum_name="x-amz-checksum-crc32", chunk_size=65536).read()
    assert put(encoded).status_code == 200
    got = endpoint.client().get_object(Bucket=bucket, Key="chunked")["Body"].read()
    assert got == data
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big"))
    corrupt = encoded.replace(crc, base64.b64encode(b"\0\0\0\0"))
    answer = put(corrupt)
    assert answer.status_code == 400 and b"BadDigest" in answer.content
    # A size line that is not plain hex (a sign, blanks, `_`): malformed at once. A
    # negative size read the rest of the body in one piece, into memory.
    for size in (b"-1", b"+10000", b" 10000", b"1_0000", b""):
        answer = put(size + encoded[encoded.index(b"\r\n"):])
        assert answer.status_code == 400 and b"malformed" in answer.content, size


def test_signed_chunks(endpoint: Endpoint) -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD (the Java SDK's and minio-go's form): the seed
    signature from botocore, each chunk's chained to it as S3's reference says."""
    bucket = bucket_name()
    endpoint.client().create_bucket(Bucket=bucket)
    chunks = [os.urandom(65536), os.urandom(65536), os.urandom(100), b""]

    def put(tamper: bool) -> requests.Response:
        request = AWSRequest("PUT", f"{endpoint.url}/{bucket}/signed-chunks", headers={
            "Content-Encoding": "aws-chunked",
            "X-Amz-Content-SHA256": sigv4.STREAMING_SIGNED,
            "X-Amz-Decoded-Content-Length": str(sum(map(len, chunks))),
        })
        signer = SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                           "us-east-1")
        signer.add_auth(request)
        previous = request.headers["Authorization"].rsplit("Signature=", 1)[1]
        amz_date = request.headers["X-Amz-Date"]
        scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
        key = sigv4.signing_key(endpoint.secret_key, amz_date[:8], "us-east-1", "s3")
        body = b""
        for i, chunk in enumerate(chunks):
            text = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous,
                              sigv4.EMPTY_SHA256, hashlib.sha256(chunk).hexdigest()])
            previous = sigv4.hmac_hex(key, text)
            # One bit flipped: replacing the last byte with a constant left a random
            # chunk unchanged once in 256 runs, and the test failed in CI that way.
            sent = chunk[:-1] + bytes([chunk[-1] ^ 1]) if tamper and i == 1 else chunk
            body += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + sent + b"\r\n"
        request.data = body
        return _send(request)

    assert put(tamper=False).status_code == 200
    got = endpoint.client().get_object(Bucket=bucket, Key="signed-chunks")["Body"].read()
    assert got == b"".join(chunks)
    answer = put(tamper=True)
    assert answer.status_code == 403 and b"SignatureDoesNotMatch" in answer.content
    got = endpoint.client().get_object(Bucket=bucket, Key="signed-chunks")["Body"].read()
    assert got == b"".join(chunks)  # the refused body replaced nothing


# ---- the AWS CLI ----------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_the_aws_cli(endpoint: Endpoint, tmp_path: Path) -> None:
    bucket = bucket_name()
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_text("hello\n")
    big.write_bytes(os.urandom(20 * MIB))  # above the CLI's 8 MiB: multipart
    aws = endpoint.aws
    aws("s3", "mb", f"s3://{bucket}")
    assert bucket in aws("s3", "ls").stdout
    aws("s3api", "head-bucket", "--bucket", bucket)
    aws("s3", "cp", str(small), f"s3://{bucket}/docs/small.txt")
    aws("s3", "cp", str(big), f"s3://{bucket}/big.bin")
    top = aws("s3", "ls", f"s3://{bucket}").stdout
    assert "PRE docs/" in top and "big.bin" in top
    recursive = aws("s3", "ls", "--recursive", f"s3://{bucket}").stdout
    assert "docs/small.txt" in recursive
    head = json.loads(aws("s3api", "head-object", "--bucket", bucket, "--key", "big.bin").stdout)
    assert head["ContentLength"] == 20 * MIB and head["ETag"].endswith('-3"')
    aws("s3", "cp", f"s3://{bucket}/big.bin", str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == big.read_bytes()
    aws("s3api", "get-object", "--bucket", bucket, "--key", "big.bin", "--range", "bytes=5-14",
        str(tmp_path / "part"))
    assert (tmp_path / "part").read_bytes() == big.read_bytes()[5:15]
    aws("s3", "cp", f"s3://{bucket}/big.bin", f"s3://{bucket}/copy.bin")  # UploadPartCopy
    aws("s3", "cp", f"s3://{bucket}/docs/small.txt", f"s3://{bucket}/docs/copy.txt")
    assert endpoint.client().get_object(Bucket=bucket, Key="copy.bin")["Body"].read() == \
        big.read_bytes()
    listed = json.loads(aws("s3api", "list-objects-v2", "--bucket", bucket, "--prefix", "docs/",
                            "--delimiter", "/").stdout)
    assert [o["Key"] for o in listed["Contents"]] == ["docs/copy.txt", "docs/small.txt"]
    paged = json.loads(aws("s3api", "list-objects-v2", "--bucket", bucket, "--page-size", "1",
                           "--max-items", "2").stdout)
    assert [o["Key"] for o in paged["Contents"]] == ["big.bin", "copy.bin"]
    assert "NextToken" in paged
    upload = json.loads(aws("s3api", "create-multipart-upload", "--bucket", bucket, "--key",
                            "pending").stdout)["UploadId"]
    uploads = json.loads(aws("s3api", "list-multipart-uploads", "--bucket", bucket).stdout)
    assert [u["UploadId"] for u in uploads["Uploads"]] == [upload]
    aws("s3api", "upload-part", "--bucket", bucket, "--key", "pending", "--upload-id", upload,
        "--part-number", "1", "--body", str(small))
    parts = json.loads(aws("s3api", "list-parts", "--bucket", bucket, "--key", "pending",
                           "--upload-id", upload).stdout)
    assert [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, 6)]
    aws("s3api", "abort-multipart-upload", "--bucket", bucket, "--key", "pending",
        "--upload-id", upload)
    url = aws("s3", "presign", f"s3://{bucket}/docs/small.txt", "--expires-in", "60").stdout
    assert requests.get(url.strip(), timeout=30).text == "hello\n"
    missing = aws("s3api", "get-object", "--bucket", bucket, "--key", "nope",
                  str(tmp_path / "nope"), check=False)
    assert missing.returncode != 0 and "NoSuchKey" in missing.stderr
    not_empty = aws("s3", "rb", f"s3://{bucket}", check=False)
    assert not_empty.returncode != 0 and "BucketNotEmpty" in not_empty.stderr
    aws("s3api", "delete-object", "--bucket", bucket, "--key", "copy.bin")
    aws("s3", "rm", "--recursive", f"s3://{bucket}")  # DeleteObjects
    # The folder stays, listed as a folder marker (README: what the endpoint does not do);
    # deleting the marker removes it.
    assert aws("s3", "ls", "--recursive", f"s3://{bucket}").stdout.split()[2:] == ["0", "docs/"]
    aws("s3", "rm", f"s3://{bucket}/docs/")
    assert aws("s3", "ls", "--recursive", f"s3://{bucket}").stdout.strip() == ""
    aws("s3", "rb", f"s3://{bucket}")
    wrong = subprocess.run(
        [shutil.which("aws") or "aws", "--endpoint-url", endpoint.url, "s3", "ls"],
        env={**os.environ, "AWS_ACCESS_KEY_ID": endpoint.access_key,
             "AWS_SECRET_ACCESS_KEY": "wrong", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull},
        capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "SignatureDoesNotMatch" in wrong.stderr


# ---- a PutObject into an input path starts the service's job ------------------------------

SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"; echo "took $STORAGE_OBJECT_KEY"\n'


@pytest.mark.timeout(300)
def test_a_put_into_an_input_path_starts_one_job(endpoint: Endpoint) -> None:
    controller = endpoint.controller
    name = f"s3in-{uuid.uuid4().hex[:8]}"
    controller.create({
        "name": name,
        "image": "busybox",
        "script": SCRIPT,
        "input": [{"storage_provider": "minio", "path": f"{name}/input"}],
        "output": [{"storage_provider": "minio", "path": f"{name}/output"}],
    })
    s3 = endpoint.client()
    listed = s3.list_objects_v2(Bucket=name, Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["input/", "output/"]
    s3.put_object(Bucket=name, Key="input/one.txt", Body=b"one")
    controller.wait_jobs(name, 1, timeout=180)
    got = wait_until(lambda: _get(s3, name, "output/one.txt"), 180, "the job's output",
                     controller)
    assert got == b"one"
    # A multipart upload of 2 parts is one object: one more job, not one per part.
    upload = s3.create_multipart_upload(Bucket=name, Key="input/two.bin")["UploadId"]
    parts = [s3.upload_part(Bucket=name, Key="input/two.bin", UploadId=upload, PartNumber=n,
                            Body=data)["ETag"]
             for n, data in ((1, b"a" * (5 * MIB)), (2, b"b"))]
    s3.complete_multipart_upload(
        Bucket=name, Key="input/two.bin", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in
                                   enumerate(parts, 1)]})
    s3.copy_object(Bucket=name, Key="input/three.txt",
                   CopySource={"Bucket": name, "Key": "input/one.txt"})
    jobs = controller.wait_jobs(name, 3, timeout=180)
    wait_until(lambda: _get(s3, name, "output/three.txt"), 180, "the copy's job", controller)
    wait_until(lambda: _get(s3, name, "output/two.bin"), 180, "the multipart's job", controller)
    # Two listings later, still three: nothing was offered twice.
    time.sleep(1.5)  # the watcher polls every 0.5 s: no event says "no new job"
    jobs = controller.jobs(name)
    assert len(jobs) == 3, jobs
    assert all(job["status"] == "Succeeded" for job in jobs.values()), jobs


def _get(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError:
        return None
    return data


# ---- the bucket API over the same store ----------------------------------------------------


def test_the_bucket_apis_delete_takes_the_buckets_multipart_uploads(endpoint: Endpoint) -> None:
    """DELETE /system/buckets/{b} deletes as DeleteBucket does: an upload begun in the
    bucket does not outlive it, to complete into a bucket of the same name made later."""
    s3, controller, bucket = endpoint.client(), endpoint.controller, bucket_name()
    assert controller.request("POST", "/system/buckets",
                              json={"bucket_name": bucket}).status_code == 201
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="old.bin")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="old.bin", UploadId=upload_id, PartNumber=1,
                          Body=b"OLD DATA")["ETag"]
    assert controller.request("DELETE", f"/system/buckets/{bucket}").status_code == 204
    assert not (controller.storage / ".s3-uploads" / upload_id).exists()
    assert controller.request("POST", "/system/buckets",
                              json={"bucket_name": bucket}).status_code == 201
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(Bucket=bucket, Key="old.bin", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                 "ETag": etag}]})
    assert code_of(caught.value) == ("NoSuchUpload", 404)
    assert s3.list_objects_v2(Bucket=bucket).get("Contents") is None


def test_a_put_whose_bucket_the_api_deletes_meanwhile_is_no_such_bucket(
    endpoint: Endpoint,
) -> None:
    """The bucket API's delete takes the endpoint's lock, as DeleteBucket does: a body
    being received goes with the bucket, and its PUT is answered NoSuchBucket, not a
    server error with a traceback."""
    controller, bucket = endpoint.controller, bucket_name()
    tracebacks = controller.log_text().count("Traceback")
    assert controller.request("POST", "/system/buckets",
                              json={"bucket_name": bucket}).status_code == 201
    keys = sigv4.Keys(endpoint.access_key, endpoint.secret_key)
    url = sigv4.presign(keys, "PUT", f"{endpoint.url}/{bucket}/big.bin", 300)
    host, port = endpoint.url.removeprefix("http://").split(":")
    path = url.removeprefix(endpoint.url)
    staging = controller.storage / bucket / ".s3-tmp"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Content-Length: {4 * MIB}\r\n\r\n".encode() + b"x" * (2 * MIB))
        wait_until(lambda: staging.is_dir() and any(f.stat().st_size for f in staging.iterdir()),
                   30, "the body's first bytes on disk", controller)
        assert controller.request("DELETE", f"/system/buckets/{bucket}").status_code == 204
        sock.sendall(b"x" * (2 * MIB))
        answer = b""
        while b"</Error>" not in answer and (piece := sock.recv(65536)):
            answer += piece
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:300]
    assert b"<Code>NoSuchBucket</Code>" in answer
    assert not (controller.storage / bucket).exists()
    assert controller.log_text().count("Traceback") == tracebacks


def test_a_bucket_folder_that_is_a_link_is_no_bucket(endpoint: Endpoint) -> None:
    """As the endpoint sees it (NoSuchBucket), so the bucket API: not listed, not read,
    and never deleted through, whichever bucket it points to."""
    s3, controller = endpoint.client(), endpoint.controller
    target, alias = bucket_name(), bucket_name()
    assert controller.request("POST", "/system/buckets",
                              json={"bucket_name": target}).status_code == 201
    s3.put_object(Bucket=target, Key="thesis.pdf", Body=b"years of work")
    link = controller.storage / alias
    link.symlink_to(target)
    try:
        with pytest.raises(ClientError) as caught:
            s3.head_bucket(Bucket=alias)
        assert code_of(caught.value) == ("404", 404)
        listed = [b["bucket_name"] for b in controller.request("GET", "/system/buckets").json()]
        assert target in listed and alias not in listed
        for method in ("GET", "DELETE"):
            answer = controller.request(method, f"/system/buckets/{alias}")
            assert answer.status_code == 404, (method, answer.text)
        presign = controller.request("POST", f"/system/buckets/{alias}/presign",
                                     json={"object_key": "thesis.pdf", "operation": "download"})
        assert presign.status_code == 404
        taken = controller.request("POST", "/system/buckets", json={"bucket_name": alias})
        assert taken.status_code == 409  # the name is the link's
        assert link.is_symlink()
        assert s3.get_object(Bucket=target, Key="thesis.pdf")["Body"].read() == b"years of work"
    finally:
        link.unlink()


def test_presign_refuses_a_key_the_store_cannot_hold(endpoint: Endpoint) -> None:
    """One line naming the field, never a 500: a key that is not UTF-8 (a lone
    surrogate), over S3's 1024 bytes, or one the folder store refuses (a segment over 255
    bytes, or hidden: the names it keeps for itself, which the endpoint refuses too)."""
    controller, bucket = endpoint.controller, bucket_name()
    endpoint.client().create_bucket(Bucket=bucket)
    tracebacks = controller.log_text().count("Traceback")
    for key in ["a\ud800", "a" * 1025, "a/" + "b" * 256, ".s3-tmp/x", "in/.hidden"]:
        answer = controller.request("POST", f"/system/buckets/{bucket}/presign",
                                    json={"object_key": key, "operation": "upload"})
        assert answer.status_code == 400, (key[:20], answer.text)
        assert answer.text.startswith("object_key: ") and "\n" not in answer.text
    assert controller.log_text().count("Traceback") == tracebacks


# ---- the endpoint as another controller's --minio-endpoint ---------------------------------


def _over(controllers: ControllerFactory, server: Endpoint, secret: str) -> ControllerProcess:
    """A controller whose --minio-endpoint is `server`'s endpoint: a real S3 server that
    checks every signature (moto takes any keys)."""
    return controllers(data_dir=controllers.tmp_path / f"over-{uuid.uuid4().hex[:8]}", args=[
        "--minio-endpoint", server.url, "--minio-access-key", server.access_key,
        "--minio-secret-key", secret,
    ])


def test_a_bucket_lookup_the_server_refuses_is_a_502(controllers: ControllerFactory) -> None:
    """Wrong keys (403) are the server's failure, as README says, not "no such bucket"."""
    server = endpoint_of(controllers())
    bucket = bucket_name()
    server.client().create_bucket(Bucket=bucket)
    client = _over(controllers, server, "WRONG-SECRET")
    for method, path in [("GET", f"/system/buckets/{bucket}"),
                         ("DELETE", f"/system/buckets/{bucket}"),
                         ("POST", f"/system/buckets/{bucket}/presign")]:
        answer = client.request(method, path, json={"object_key": "k", "operation": "download"})
        assert (answer.status_code, answer.text) == (
            502, f"minio.default: lookup of bucket {bucket} failed (ClientError)"), method
    created = client.request("POST", "/system/buckets", json={"bucket_name": bucket_name()})
    assert created.status_code == 502, created.text
    server.client().head_bucket(Bucket=bucket)


def test_a_bucket_whose_folder_the_server_refuses_is_not_left(
    controllers: ControllerFactory,
) -> None:
    """The bucket made, its folder refused (this endpoint keeps hidden names for itself;
    an S3 server in general does not, so the controller sends them on): the bucket goes
    again, and a retry fails the same way rather than finding it there (409)."""
    server = endpoint_of(controllers())
    client = _over(controllers, server, server.secret_key)
    bucket = bucket_name()
    for _ in range(2):
        answer = client.request("POST", "/system/buckets", json={"bucket_name": f"{bucket}/.in"})
        assert (answer.status_code, answer.text) == (
            502, f"minio.default: creation of {bucket}/.in failed (ClientError)")
        assert bucket not in [b["Name"] for b in server.client().list_buckets()["Buckets"]]


# ---- numbers, metadata and regions as S3 takes them -------------------------------------------


def _signed(endpoint: Endpoint, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> requests.Response:
    """A request signed (SigV4) as sent, query and headers as given."""
    request = AWSRequest(method, f"{endpoint.url}{path}", data=body, headers=headers or {})
    S3SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                "us-east-1").add_auth(request)
    return _send(request)


def test_numbers_are_ascii_digits_and_never_a_500(endpoint: Endpoint) -> None:
    """Part numbers, byte ranges, declared lengths and listing counts: "²" (a digit to
    str.isdigit(), not to int()) and numbers over int()'s 4300 digits were a 500 with a
    traceback; an Arabic-Indic one was read as part 1. Each is now the client's error,
    or a range handled as S3 handles it (an unreadable one ignored, a last byte past the
    end clamped, a first one past it a 416)."""
    s3, bucket = endpoint.client(), bucket_name()
    s3.create_bucket(Bucket=bucket)
    data = b"0123456789"
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=1,
                          Body=b"p")["ETag"]
    huge = "1" + "0" * 5000

    for number in ("%C2%B2", "%D9%A1", huge, "0", "10001"):
        answer = _signed(endpoint, "PUT", f"/{bucket}/m?partNumber={number}&uploadId={upload_id}",
                         b"x")
        assert answer.status_code == 400, (number[:10], answer.text)
        assert b"<Code>InvalidArgument</Code>" in answer.content
    parts = s3.list_parts(Bucket=bucket, Key="m", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, etag)]  # not replaced

    for number, code in (("\u00b2", "MalformedXML"), (huge, "InvalidArgument")):
        xml = (f"<CompleteMultipartUpload><Part><PartNumber>{number}</PartNumber>"
               f"<ETag>{etag}</ETag></Part></CompleteMultipartUpload>").encode()
        answer = _signed(endpoint, "POST", f"/{bucket}/m?uploadId={upload_id}", xml)
        assert answer.status_code == 400, (number[:10], answer.text)
        assert f"<Code>{code}</Code>".encode() in answer.content

    nines = "9" * 5000
    for header, status, start, end in [
        (f"bytes=0-{nines}", 206, 0, 9),  # the last byte clamped to the object's
        (f"bytes=-{nines}", 206, 0, 9),  # a suffix longer than the object: all of it
        (f"bytes=3-{nines}", 206, 3, 9),
    ]:
        answer = _signed(endpoint, "GET", f"/{bucket}/r", headers={"Range": header})
        assert answer.status_code == status, (header[:12], answer.text)
        assert answer.content == data[start : end + 1]
        assert answer.headers.get("Content-Range") == f"bytes {start}-{end}/10"
    answer = _signed(endpoint, "GET", f"/{bucket}/r", headers={"Range": f"bytes={huge}-"})
    assert answer.status_code == 416 and b"<Code>InvalidRange</Code>" in answer.content

    # A presigned URL's Range is not signed: anyone holding the URL sends any bytes.
    url = endpoint.client(signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "r"}, ExpiresIn=300)
    for raw in (b"bytes=\xb2-3", "bytes=\u00b2-3".encode(), "bytes=\u0663-".encode(),
                b"bytes=0-\xb2"):
        answer = requests.get(url, headers={"Range": raw}, timeout=30)  # type: ignore[dict-item]
        assert (answer.status_code, answer.content) == (200, data), raw  # ignored, as S3 does
    answer = requests.get(url, headers={"Range": "bytes=0-3"}, timeout=30)
    assert (answer.status_code, answer.content) == (206, data[:4])

    answer = _signed(endpoint, "PUT", f"/{bucket}/m?partNumber=2&uploadId={upload_id}",
                     headers={"x-amz-copy-source": f"/{bucket}/r",
                              "x-amz-copy-source-range": f"bytes=0-{nines}"})
    assert answer.status_code == 416 and b"<Code>InvalidRange</Code>" in answer.content
    answer = _signed(endpoint, "PUT", f"/{bucket}/m?partNumber=2&uploadId={upload_id}",
                     headers={"x-amz-copy-source": f"/{bucket}/r",
                              "x-amz-copy-source-range": f"bytes={huge}-5"})
    assert answer.status_code == 416 and b"<Code>InvalidRange</Code>" in answer.content

    for declared, status in (("3", 200), (nines, 400), ("4", 400)):
        request = AWSRequest("PUT", f"{endpoint.url}/{bucket}/chunked",
                             data=b"3\r\nabc\r\n0\r\n\r\n", headers={
                                 "Content-Encoding": "aws-chunked",
                                 "X-Amz-Content-SHA256": sigv4.STREAMING_UNSIGNED_TRAILER,
                                 "X-Amz-Decoded-Content-Length": declared})
        # SigV4Auth signs the payload form given (S3SigV4Auth would put the body's hash).
        SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "s3",
                  "us-east-1").add_auth(request)
        answer = _send(request)
        assert answer.status_code == status, (declared[:10], answer.text)
        if status == 400:
            assert b"<Code>IncompleteBody</Code>" in answer.content

    for path in (f"/{bucket}?max-keys={huge}", f"/{bucket}?list-type=2&max-keys={huge}",
                 f"/{bucket}?uploads=&max-uploads={huge}",
                 f"/{bucket}/m?uploadId={upload_id}&max-parts={huge}",
                 f"/{bucket}/m?uploadId={upload_id}&part-number-marker={huge}",
                 f"/{bucket}?max-keys=%D9%A1"):
        answer = _signed(endpoint, "GET", path)
        assert answer.status_code == 400, (path[:60], answer.text)
        assert b"must be an integer between 0 and 2147483647" in answer.content
    log = endpoint.controller.log_text()
    assert "Traceback" not in log and "S3 request failed" not in log


def test_metadata_over_2_kib_is_refused_before_anything_is_stored(endpoint: Endpoint) -> None:
    """User metadata over S3's 2 KiB (names, `x-amz-meta-` included, and values, as MinIO
    counts them) is MetadataTooLarge at PutObject, CreateMultipartUpload and a REPLACE
    copy, before a byte is kept. It was a 200, then lost with the Content-Type and the
    ETag: too large for the file's extended attribute, the object was kept undescribed."""
    s3, bucket = endpoint.client(), bucket_name()
    s3.create_bucket(Bucket=bucket)
    big = {f"k{i}": "v" * 900 for i in range(5)}
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="big", Body=b"hello", ContentType="text/plain",
                      Metadata=big)
    assert code_of(caught.value) == ("MetadataTooLarge", 400)
    with pytest.raises(ClientError) as caught:
        s3.create_multipart_upload(Bucket=bucket, Key="big", ContentType="text/plain",
                                   Metadata=big)
    assert code_of(caught.value) == ("MetadataTooLarge", 400)
    s3.put_object(Bucket=bucket, Key="src", Body=b"hello")
    with pytest.raises(ClientError) as caught:
        s3.copy_object(Bucket=bucket, Key="big", CopySource=f"{bucket}/src",
                       MetadataDirective="REPLACE", Metadata=big)
    assert code_of(caught.value) == ("MetadataTooLarge", 400)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["src"]
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)
    # 2048 bytes exactly: `x-amz-meta-k` (12) and its value. One more is refused.
    fits = {"k": "v" * (2048 - 12)}
    put = s3.put_object(Bucket=bucket, Key="fits", Body=b"hello", ContentType="text/plain",
                        Metadata=fits)
    assert put["ETag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'
    head = s3.head_object(Bucket=bucket, Key="fits")
    assert (head["ETag"], head["ContentType"], head["Metadata"]) == (
        put["ETag"], "text/plain", fits)
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="over", Body=b"x", Metadata={"k": "v" * (2048 - 11)})
    assert code_of(caught.value) == ("MetadataTooLarge", 400)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="text/plain",
                                           Metadata=fits)["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=1,
                          Body=b"part")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": etag}]})
    head = s3.head_object(Bucket=bucket, Key="mp")
    assert (head["ContentType"], head["Metadata"]) == ("text/plain", fits)
    assert head["ETag"].endswith('-1"')


def test_the_bucket_location_is_the_region_flag(
    endpoint: Endpoint, controllers: ControllerFactory
) -> None:
    """GetBucketLocation names `--minio-region` (S3's empty constraint only for us-east-1),
    as HeadBucket does; a CreateBucket asking another region is InvalidRegion, as MinIO
    answers it, and no bucket is made."""
    regional = endpoint_of(controllers(args=["--minio-region", "eu-west-1"]))
    s3 = boto3.client("s3", endpoint_url=regional.url, aws_access_key_id=regional.access_key,
                      aws_secret_access_key=regional.secret_key, region_name="eu-west-1",
                      config=Config(s3={"addressing_style": "path"},
                                    retries={"max_attempts": 1}))
    s3.create_bucket(Bucket="regb", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.create_bucket(Bucket="plain")  # no constraint: the endpoint's region
    for name in ("regb", "plain"):
        assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] == "eu-west-1"
        head = s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPHeaders"]
        assert head["x-amz-bucket-region"] == "eu-west-1"
    with pytest.raises(ClientError) as caught:
        s3.create_bucket(Bucket="regc",
                         CreateBucketConfiguration={"LocationConstraint": "ap-south-1"})
    assert code_of(caught.value) == ("InvalidRegion", 400)
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == ["plain", "regb"]
    answer = _signed(regional, "PUT", "/regd", b"<NotAConfiguration/>")
    assert answer.status_code == 400 and b"<Code>MalformedXML</Code>" in answer.content

    s3, bucket = endpoint.client(), bucket_name()  # us-east-1: S3's empty constraint
    s3.create_bucket(Bucket=bucket)
    assert s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") is None
    with pytest.raises(ClientError) as caught:
        s3.create_bucket(Bucket=bucket_name(),
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert code_of(caught.value) == ("InvalidRegion", 400)
