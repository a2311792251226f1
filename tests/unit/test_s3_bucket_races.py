"""A bucket deleted (S3's DeleteBucket, or the bucket API's, which shares it) in the middle
of a write into it: the write is refused with S3's error for what went (NoSuchBucket,
NoSuchUpload), never answered 500, and leaves no object or upload behind the delete.

Each interleaving is forced by wrapping one step of the write so that the delete runs
right after it, in the same thread: the store's lock is free between two steps."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, TestServer
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from faas_supervisor.controller.s3.app import s3_app
from faas_supervisor.controller.s3.errors import S3Error
from faas_supervisor.controller.s3.objects import MIN_PART, Objects, Upload
from faas_supervisor.controller.s3.sigv4 import Keys

ACCESS, SECRET = "AK", "SKSKSKSK"


def delete_after(objects: Objects, step: str, again: bool = False) -> None:
    """`objects.<step>` made to delete bucket `bkt` (with its objects, as the bucket API
    does; `again`: and make it anew) once it returns, the first time it is called."""
    real: Callable[..., Any] = getattr(objects, step)
    fired: list[bool] = []

    def then_deleted(*args: Any) -> Any:
        result = real(*args)
        if not fired:
            fired.append(True)
            objects.delete_bucket("bkt", with_objects=True)
            if again:
                objects.create_bucket("bkt")
        return result

    setattr(objects, step, then_deleted)


def store(tmp_path: Path) -> Objects:
    objects = Objects(tmp_path)
    objects.create_bucket("bkt")
    return objects


def uploaded(objects: Objects, parts: list[bytes]) -> tuple[Upload, list[tuple[int, str]]]:
    upload_id = objects.create_upload("bkt", "big", "text/plain", {})
    upload = objects.upload("bkt", "big", upload_id)
    wanted = []
    for number, data in enumerate(parts, 1):
        temp = objects.part_temporary(upload)
        temp.write_bytes(data)
        etag = hashlib.md5(data).hexdigest()
        objects.commit_part(upload, number, temp, etag)
        wanted.append((number, etag))
    return upload, wanted


def test_an_upload_begun_as_its_bucket_goes_is_refused(tmp_path: Path) -> None:
    """CreateMultipartUpload found the bucket, then DeleteBucket took it (and its uploads):
    the upload is refused, not left to complete into a bucket of that name made later."""
    objects = store(tmp_path)
    delete_after(objects, "path")
    with pytest.raises(S3Error) as caught:
        objects.create_upload("bkt", "late.bin", "text/plain", {})
    assert caught.value.code == "NoSuchBucket"
    objects.create_bucket("bkt")
    assert objects.list_uploads("bkt") == []
    assert not objects.uploads.is_dir() or list(objects.uploads.iterdir()) == []


@pytest.mark.parametrize("again", [False, True], ids=["deleted", "made-again"])
def test_a_complete_whose_bucket_goes_while_joining_is_refused(
    tmp_path: Path, again: bool
) -> None:
    """The parts being joined go with the bucket: NoSuchBucket (NoSuchUpload when a bucket
    of that name was made meanwhile), never a FileNotFoundError (a 500)."""
    objects = store(tmp_path)
    upload, wanted = uploaded(objects, [b"a" * MIN_PART, b"tail"])
    delete_after(objects, "temporary", again=again)
    with pytest.raises(S3Error) as caught:
        objects.complete(upload, wanted)
    assert caught.value.code == ("NoSuchUpload" if again else "NoSuchBucket")
    assert not (tmp_path / "bkt" / "big").exists()
    if again:
        assert [p.name for p in (tmp_path / "bkt").iterdir()] in ([], [".s3-tmp"])
        assert list((tmp_path / "bkt").glob(".s3-tmp/*")) == []
    else:
        assert not (tmp_path / "bkt").exists()


def test_a_copy_whose_bucket_goes_is_no_such_bucket(tmp_path: Path) -> None:
    objects = store(tmp_path)
    objects.create_bucket("src")
    temp = objects.temporary("src", "k")
    temp.write_bytes(b"data")
    objects.commit(temp, "src", "k", hashlib.md5(b"data").hexdigest(), "text/plain", {})
    delete_after(objects, "temporary")
    with pytest.raises(S3Error) as caught:
        objects.copy(("src", "k"), "bkt", "copied", None, None)
    assert caught.value.code == "NoSuchBucket"
    assert not (tmp_path / "bkt").exists()


@contextmanager
def arriving_at_removal(
    in_removed: Callable[[Path], bool], arrive: Callable[[], object]
) -> Iterator[list[object]]:
    """`arrive` run (its result or error kept) just before the first folder that
    `in_removed` names is removed by its last `rmdir`: after everything listed in it
    was, as a write racing the removal lands."""
    real = os.rmdir
    outcome: list[object] = []

    def rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if not outcome and in_removed(Path(os.fsdecode(path))):
            try:
                outcome.append(arrive())
            except (OSError, S3Error) as error:
                outcome.append(error)
        real(path, *args, **kwargs)

    with mock.patch.object(os, "rmdir", rmdir):
        yield outcome


def test_a_part_arriving_as_its_upload_is_removed_is_not_left(tmp_path: Path) -> None:
    """A part renamed into the upload's folder while the bucket's delete removes it: the
    part is refused (NoSuchUpload), and nothing of the upload is left on disk."""
    objects = store(tmp_path)
    upload, _ = uploaded(objects, [])

    def part() -> object:
        temp = objects.part_temporary(upload)
        return objects.commit_part(upload, 1, temp, hashlib.md5(b"").hexdigest())

    with arriving_at_removal(lambda p: p.parent == objects.uploads, part) as outcome:
        objects.delete_bucket("bkt", with_objects=True)
    (result,) = outcome
    assert isinstance(result, S3Error) and result.code == "NoSuchUpload", result
    assert list(objects.uploads.iterdir()) == []


def test_a_body_arriving_as_its_bucket_is_removed_is_not_left(tmp_path: Path) -> None:
    """A put's temporary file opened (made again) while the bucket's delete removes it:
    the delete is not failed by it (a 500), and the bucket is not left half there."""
    objects = store(tmp_path)
    temp = objects.temporary("bkt", "late.txt")

    def body() -> object:
        with open(temp, "wb") as out:  # what the body's receiver does, `body._Sink`
            return out.write(b"late")

    with arriving_at_removal(lambda p: p.name == ".s3-tmp", body) as outcome:
        objects.delete_bucket("bkt", with_objects=True)
    (result,) = outcome
    assert isinstance(result, FileNotFoundError), result  # the put answers NoSuchBucket
    assert [p.name for p in tmp_path.iterdir()] == []


def _signed(url: str, method: str, body: bytes) -> dict[str, str]:
    request = AWSRequest(method, url, data=body,
                         headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", "us-east-1").add_auth(request)
    return {k: v for k, v in request.headers.items() if k != "Content-Length"}


async def test_a_put_whose_bucket_goes_before_its_body_is_no_such_bucket(
    tmp_path: Path,
) -> None:
    """The bucket goes between the put's temporary file and its body's first byte."""
    objects = store(tmp_path)
    delete_after(objects, "temporary")
    server = TestServer(s3_app(objects, Keys(ACCESS, SECRET)))
    async with TestClient(server) as client:
        url = f"http://127.0.0.1:{server.port}/bkt/late.txt"
        answer = await client.session.put(url, data=b"late", headers=_signed(url, "PUT", b"late"))
        text = await answer.text()
    assert (answer.status, "<Code>NoSuchBucket</Code>" in text) == (404, True), text
    assert not (tmp_path / "bkt").exists()


async def test_a_part_whose_bucket_goes_before_its_body_is_no_such_upload(
    tmp_path: Path,
) -> None:
    """The bucket (and so the upload) goes between the part's temporary file and its
    body's first byte."""
    objects = store(tmp_path)
    upload, _ = uploaded(objects, [])
    delete_after(objects, "part_temporary")
    server = TestServer(s3_app(objects, Keys(ACCESS, SECRET)))
    async with TestClient(server) as client:
        url = f"http://127.0.0.1:{server.port}/bkt/big?partNumber=1&uploadId={upload.upload_id}"
        answer = await client.session.put(url, data=b"part", headers=_signed(url, "PUT", b"part"))
        text = await answer.text()
    assert (answer.status, "<Code>NoSuchUpload</Code>" in text) == (404, True), text
    assert list(objects.uploads.iterdir()) == []
