"""The folder store (storage_providers/local.py): uploads of one key at once."""

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest

from faas_supervisor.config import ProviderConfig
from faas_supervisor.errors import StorageError
from faas_supervisor.storage_providers.local import LocalProvider


def with_bucket(tmp_path: Path, ptype: str, pid: str) -> LocalProvider:
    """A folder store at `tmp_path/store` holding one bucket, `bucket`: an upload makes none."""
    (tmp_path / "store" / "bucket").mkdir(parents=True)
    return LocalProvider(ProviderConfig(ptype, pid, {"path": str(tmp_path / "store")}))


async def test_concurrent_uploads_of_one_key_all_succeed_and_leave_one_whole_object(
    tmp_path: Path,
) -> None:
    # Jobs of one service write the same output key at once (the catalogue's job-flood):
    # each upload's partial file must be its own, or one renames another's away.
    store = with_bucket(tmp_path, "minio", "default")
    sources = []
    for i in range(16):
        src = tmp_path / f"src{i}"
        src.write_bytes(bytes([i]) * (1 << 20))
        sources.append(src)
    for _ in range(5):  # a few rounds: the threads' interleaving varies from run to run
        await asyncio.gather(*(store.upload(src, "bucket", "out/result") for src in sources))
    stored = (tmp_path / "store" / "bucket" / "out" / "result").read_bytes()
    assert stored in {src.read_bytes() for src in sources}
    assert sorted(p.name for p in (tmp_path / "store" / "bucket" / "out").iterdir()) == ["result"]


async def test_a_name_of_255_bytes_is_written_through_a_temporary_name_that_fits(
    tmp_path: Path,
) -> None:
    """An output named with NAME_MAX bytes (two-byte characters here) is valid, and so
    must be the temporary name beside it: `.NAME.<hex>.partial` was too long (ENAMETOOLONG,
    a 'cannot write' storage failure, exit 3), and so for WebDAV, Onedata and Rucio
    downloads (`.NAME.partial`). Found by a review."""
    from faas_supervisor.storage_providers import NAME_MAX, partial_path

    name = "é" * 127 + "x"  # 255 bytes
    assert len(name.encode()) == NAME_MAX
    for suffix, prefix in ((".partial", "."), (".0123456789abcdef.rucio.upload", "")):
        temp = partial_path(tmp_path / name, suffix, prefix)
        assert len(os.fsencode(temp.name)) == NAME_MAX and temp.parent == tmp_path
        assert temp.name.startswith(prefix + "é") and temp.name.endswith(suffix)
        temp.write_bytes(b"fits")  # the file system takes it
    assert partial_path(tmp_path / "short", ".partial").name == ".short.partial"
    store = with_bucket(tmp_path, "minio", "default")
    (tmp_path / "src").write_bytes(b"data")
    await store.upload(tmp_path / "src", "bucket", f"out/{name}")
    assert [p.name for p in (tmp_path / "store/bucket/out").iterdir()] == [name]


async def test_a_key_the_folder_store_keeps_for_itself_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """A segment starting with '.' names what the folder store keeps for itself (partial
    files, multipart uploads): an object written there was never listed nor served by its
    S3 endpoint, which refuses such keys (InvalidArgument) as `run` does over S3 (exit 3).
    Found by a review: the upload succeeded and the output was invisible."""
    store = LocalProvider(ProviderConfig("minio", "default", {"path": str(tmp_path / "store")}))
    (tmp_path / "src").write_bytes(b"data")
    for key in ("out/.meta.json", "out/.cache/c.txt", ".hidden"):
        with pytest.raises(StorageError) as refused:
            await store.upload(tmp_path / "src", "bucket", key)
        assert refused.value.exit_status == 3
        assert refused.value.message == (
            f"minio.default: cannot write bucket/{key}: the key must not have a segment "
            "starting with '.' (kept for partial uploads)")
    assert not (tmp_path / "store").exists()  # not even a folder made


async def test_a_cancelled_upload_stops_its_copy_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    """`run` stopped by SIGTERM cancels the upload, then ends with os._exit: a copy still
    running in its thread was killed before it removed its partial file, which stayed in
    the store for good. Once the cancellation is through, the copy has stopped and its
    partial file is gone. Found by a review."""
    store = with_bucket(tmp_path, "local", "files")
    src = tmp_path / "big"
    with open(src, "wb") as sparse:  # made at once; copied in a second or so
        sparse.truncate(2 << 30)
    folder = tmp_path / "store" / "bucket" / "out"
    upload = asyncio.ensure_future(store.upload(src, "bucket", "out/big"))
    deadline = time.monotonic() + 30
    # No event says the copy started: its partial file's name is looked for.
    while not (folder.is_dir() and any(p.name.endswith(".partial") for p in folder.iterdir())):
        assert not upload.done(), "the upload ended before its copy was seen"
        assert time.monotonic() < deadline, "no partial file in 30 s"
        await asyncio.sleep(0.001)
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "read-write"])
async def test_an_upload_copies_every_byte_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sendfile: bool
) -> None:
    """The copy goes a piece at a time (so that it can stop between pieces): a file of a
    few pieces and a bit, and an empty one, arrive whole; by read and write too, where
    the file system refuses sendfile."""
    from faas_supervisor.storage_providers.local import PIECE

    if not sendfile:
        def refused(*_args: object) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")

        monkeypatch.setattr(os, "sendfile", refused)
    store = with_bucket(tmp_path, "local", "files")
    data = os.urandom(2 * PIECE + 12345)
    for name, content in (("big", data), ("empty", b"")):
        (tmp_path / name).write_bytes(content)
        await store.upload(tmp_path / name, "bucket", f"out/{name}")
        assert (tmp_path / "store" / "bucket" / "out" / name).read_bytes() == content
    assert sorted(p.name for p in (tmp_path / "store/bucket/out").iterdir()) == ["big", "empty"]


async def test_an_upload_to_a_bucket_that_is_not_there_fails_and_makes_nothing(
    tmp_path: Path,
) -> None:
    """As over S3 (`no such bucket (HTTP 404)`, exit 3), and as the folder store's own S3
    endpoint answers once a bucket is deleted: an output to a bucket the store does not
    hold is a storage failure, not a new top folder (whose name no bucket rule checked).
    A folder of the store's own ('.s3-uploads') or a file at the top is no bucket either.
    Found by a review: the upload made the bucket and `run` ended 0."""
    store = with_bucket(tmp_path, "minio", "default")
    root = tmp_path / "store"
    (root / ".s3-uploads").mkdir()
    (root / "a-file").write_text("not a bucket\n")
    (tmp_path / "src").write_bytes(b"data")
    for bucket in ("gone-bucket", "Not_A_Bucket_Name", ".s3-uploads", "a-file"):
        with pytest.raises(StorageError) as refused:
            await store.upload(tmp_path / "src", bucket, "out/a.txt")
        assert refused.value.exit_status == 3
        assert refused.value.message == (
            f"minio.default: cannot write {bucket}/out/a.txt: no such bucket")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        ".s3-uploads", "a-file", "bucket"]
    await store.upload(tmp_path / "src", "bucket", "out/sub/a.txt")  # folders below: made
    assert (root / "bucket" / "out" / "sub" / "a.txt").read_bytes() == b"data"


async def test_a_bucket_deleted_as_the_upload_starts_is_not_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bucket goes between the upload's check and its copy (the bucket API's delete):
    the copy makes the folders below the bucket, never the bucket itself."""
    store = with_bucket(tmp_path, "local", "files")
    (tmp_path / "src").write_bytes(b"data")
    checks = []
    real = LocalProvider._no_such_bucket

    def deleted_after_the_check(self: LocalProvider, bucket: str) -> bool:
        checks.append(real(self, bucket))
        if len(checks) == 1:
            (tmp_path / "store" / "bucket").rmdir()  # gone once seen there
        return checks[-1]
    monkeypatch.setattr(LocalProvider, "_no_such_bucket", deleted_after_the_check)
    with pytest.raises(StorageError) as refused:
        await store.upload(tmp_path / "src", "bucket", "out/a.txt")
    assert checks == [False, True]  # there for the check, gone for the copy
    assert refused.value.message == "local.files: cannot write bucket/out/a.txt: no such bucket"
    assert list((tmp_path / "store").iterdir()) == []


async def test_a_download_from_a_bucket_that_is_not_there_says_so(tmp_path: Path) -> None:
    """In the S3 provider's words; an object missing from a bucket that is there keeps
    the file system's."""
    store = with_bucket(tmp_path, "minio", "default")
    with pytest.raises(StorageError) as missing:
        await store.download("gone-bucket", "in/a.txt", tmp_path / "dest")
    assert missing.value.exit_status == 3
    assert missing.value.message == (
        "minio.default: cannot read gone-bucket/in/a.txt: no such bucket")
    with pytest.raises(StorageError) as missing:
        await store.download("bucket", "in/a.txt", tmp_path / "dest")
    assert missing.value.message == (
        "minio.default: cannot read bucket/in/a.txt: No such file or directory")
    assert not (tmp_path / "dest").exists()


async def test_a_bucket_that_cannot_be_looked_up_gives_the_systems_reason(
    tmp_path: Path,
) -> None:
    """A bucket name the file system cannot look up (300 bytes: ENAMETOOLONG; EACCES is
    alike) made the bucket check raise, and the line said only `failed (OSError)`
    (a review of 1cfa775): the transfer's own reason is given, as before that commit."""
    store = with_bucket(tmp_path, "local", "files")
    (tmp_path / "src").write_bytes(b"data")
    bucket = "b" * 300
    with pytest.raises(StorageError) as upload:
        await store.upload(tmp_path / "src", bucket, "out/a.txt")
    assert upload.value.message == (
        f"local.files: cannot write {bucket}/out/a.txt: File name too long")
    with pytest.raises(StorageError) as download:
        await store.download(bucket, "out/a.txt", tmp_path / "dest")
    assert download.value.message == (
        f"local.files: cannot read {bucket}/out/a.txt: File name too long")
