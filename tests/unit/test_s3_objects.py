"""The folder store as S3 objects: S3's listing order over folders, pages and prefixes,
and keys that must not leave the store."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from unittest import mock

import pytest

from faas_supervisor.controller.s3 import objects as objects_module
from faas_supervisor.controller.s3.errors import S3Error
from faas_supervisor.controller.s3.objects import Objects

# Characters on both sides of `/` (0x2f): S3 sorts by code point, `a b` and `a-1` before
# anything under `a/`, `a0` after it.
KEYS = ["a", "a b", "a!x", "a-1", "a0", "b/c/d", "b/c/e", "b/c.txt", "b/c0", "é/z", "z/"]


def store(tmp_path: Path, keys: list[str]) -> Objects:
    objects = Objects(tmp_path)
    objects.create_bucket("bkt")
    for key in keys:
        if key.endswith("/"):
            objects.make_folder("bkt", key)
            continue
        temp = objects.temporary("bkt", key)
        temp.write_bytes(key.encode())
        objects.commit(temp, "bkt", key, "0" * 32, "text/plain", {})
    return objects


def all_keys(objects: Objects, prefix: str = "", delimiter: str = "", page: int = 1000
             ) -> list[str]:
    found, after = [], ""
    while True:
        listed = objects.list_page("bkt", prefix, delimiter, after, page)
        found += [o.key for o in listed.objects] + listed.prefixes
        if not listed.truncated:
            return found
        after = listed.next_after


def test_keys_come_in_s3_order_whatever_the_folders(tmp_path: Path) -> None:
    objects = store(tmp_path, KEYS)
    for page in (1, 2, 3, 1000):
        assert all_keys(objects, page=page) == sorted(KEYS)


def test_prefixes_and_delimiters(tmp_path: Path) -> None:
    objects = store(tmp_path, KEYS[1:])
    assert all_keys(objects, delimiter="/") == ["a b", "a!x", "a-1", "a0", "b/", "z/", "é/"]
    assert sorted(all_keys(objects, delimiter="/", page=1)) == sorted(
        ["a b", "a!x", "a-1", "a0", "b/", "z/", "é/"])
    assert all_keys(objects, prefix="b/", delimiter="/") == ["b/c.txt", "b/c0", "b/c/"]
    assert all_keys(objects, prefix="b/c") == ["b/c.txt", "b/c/d", "b/c/e", "b/c0"]
    assert all_keys(objects, prefix="b/c/") == ["b/c/d", "b/c/e"]
    assert all_keys(objects, prefix="nothing/") == []
    assert all_keys(objects, prefix="../") == []


@pytest.mark.parametrize("key", ["../x", "a/../../x", "a/./b", "a//b", ".hidden", "a/.x", "..",
                                 "/abs", "a\\b", "a\x00b"])
def test_keys_that_are_refused(tmp_path: Path, key: str) -> None:
    objects = store(tmp_path, [])
    with pytest.raises(S3Error) as caught:
        objects.path("bkt", key)
    assert caught.value.code == "InvalidArgument"


def test_a_link_out_of_the_bucket_is_refused(tmp_path: Path) -> None:
    objects = store(tmp_path / "store", [])
    (tmp_path / "outside").mkdir()
    (tmp_path / "store" / "bkt" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(S3Error):
        objects.temporary("bkt", "link/new")
    assert list((tmp_path / "outside").iterdir()) == []
    assert all_keys(objects) == []  # links are not walked


def test_a_description_names_what_it_describes(tmp_path: Path) -> None:
    objects = store(tmp_path, ["k"])
    assert objects.info("bkt", "k").content_type == "text/plain"
    (tmp_path / "bkt" / "k").write_bytes(b"rewritten by hand")  # the attribute is stale now
    info = objects.info("bkt", "k")
    assert (info.content_type, info.size) == ("binary/octet-stream", 17)
    assert info.etag != "0" * 32


def test_max_keys_0_lists_nothing_and_no_next_page(tmp_path: Path) -> None:
    listed = store(tmp_path, ["k"]).list_page("bkt", "", "", "", 0)
    assert (listed.objects, listed.prefixes, listed.truncated) == ([], [], False)


def test_a_page_of_a_large_folder_reads_only_the_names_of_what_it_skips(tmp_path: Path
                                                                        ) -> None:
    """A page of 10 out of 5000 files of one folder stats, describes and builds a path for
    its own entries only: each page once cost a walk of the whole folder (a path built
    for every entry, all sorted: 100 000 objects, 3 s a page whatever its size)."""
    objects = store(tmp_path, [])
    names = [f"obj-{i:04d}.txt" for i in range(5000)]
    for name in names:
        (tmp_path / "bkt" / name).write_bytes(b"x")
    for after in ("", names[2500]):
        with mock.patch("os.lstat", wraps=os.lstat) as lstat, \
                mock.patch("os.stat", wraps=os.stat) as stat, \
                mock.patch("os.getxattr", wraps=os.getxattr) as getxattr, \
                mock.patch.object(objects_module, "Path", wraps=Path) as path:
            listed = objects.list_page("bkt", "", "", after, 10)
        start = names.index(after) + 1 if after else 0
        assert [o.key for o in listed.objects] == names[start:start + 10]
        assert listed.truncated and listed.next_after == names[start + 9]
        assert path.call_count <= 2, f"{path.call_count} paths built for a page of 10"
        assert lstat.call_count + stat.call_count <= 15, "stat calls beyond the page's own"
        assert getxattr.call_count <= 10


# Folders among names that sort on both sides of their `x/`: a folder `x` comes after
# `x-1` and `x 1`, before `x0`; and what is no key: hidden, not UTF-8, links, a pipe.
KEYS_IN_ORDER = ["x 1", "x!/y", "x-1", "x/ /a", "x/-", "x/a/b", "x/a0", "x0", "x1/", "y-/z",
                 "y/1"]


def test_every_start_after_resumes_where_s3_would(tmp_path: Path) -> None:
    keys = KEYS_IN_ORDER
    assert keys == sorted(keys)
    objects = store(tmp_path / "s", keys)
    folder = tmp_path / "s" / "bkt"
    (folder / ".hidden").write_text("no key")
    (folder / "x" / ".hidden").write_text("no key")
    os.close(os.open(os.fsencode(folder / "x") + b"/bad\xff", os.O_CREAT | os.O_WRONLY))
    (folder / "x" / "link").symlink_to(folder / "x0")
    (folder / "link-dir").symlink_to(folder / "x")
    os.mkfifo(folder / "x" / "pipe")
    bounds = [""] + [k[:n] + tail for k in keys for n in range(len(k) + 1)
                     for tail in ("", "\0", " ", "/", "\U0010ffff")]
    for after in bounds:
        for page in (1, 3, 1000):
            listed = objects.list_page("bkt", "", "", after, page)
            expected = [k for k in keys if k > after]
            assert [o.key for o in listed.objects] == expected[:page], (after, page)
            assert listed.truncated == (len(expected) > page)
    for prefix in ["x", "x/", "x/a", "x-", "x0", "y", "y-/", "z"]:
        assert all_keys(objects, prefix=prefix, page=2) == [k for k in keys
                                                            if k.startswith(prefix)]
        assert all_keys(objects, prefix=prefix, delimiter="/", page=1) == sorted(
            {k[: k.find("/", len(prefix)) + 1] or k for k in keys if k.startswith(prefix)})


def test_a_delimiter_skips_a_large_common_prefix_at_once(tmp_path: Path) -> None:
    objects = store(tmp_path, ["a-z", "b"])
    for i in range(3000):
        (tmp_path / "bkt" / f"obj-{i:04d}").write_bytes(b"x")
    with mock.patch("os.lstat", wraps=os.lstat) as lstat:
        listed = objects.list_page("bkt", "", "-", "", 1000)
    assert ([o.key for o in listed.objects], listed.prefixes) == (["b"], ["a-", "obj-"])
    assert lstat.call_count <= 5


def test_an_entry_that_cannot_be_looked_at_is_skipped(tmp_path: Path) -> None:
    """In a folder that may be listed but not searched (mode 0444, as a non-root
    controller finds one a script made), an entry's lstat is refused: it is skipped, as
    an unreadable folder is, where it raised out of the listing (a 500)."""
    objects = store(tmp_path, ["a", "b", "c"])
    real = os.lstat

    def refused(path: str, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).endswith("/b"):
            raise PermissionError(13, "Permission denied", path)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    with mock.patch("os.lstat", side_effect=refused):
        listed = objects.list_page("bkt", "", "", "", 1000)
    assert [o.key for o in listed.objects] == ["a", "c"]


def test_a_put_while_its_bucket_is_deleted_is_never_lost(tmp_path: Path) -> None:
    """DeleteBucket found the bucket empty; a PutObject commits right then: either the
    object is kept (the bucket too) or the put fails, never a success whose object is
    removed with the bucket."""
    objects = Objects(tmp_path)
    objects.create_bucket("bkt")
    temp = objects.temporary("bkt", "late.txt")
    temp.write_bytes(b"late")
    outcome: list[object] = []

    def put() -> None:
        try:
            outcome.append(objects.commit(temp, "bkt", "late.txt", "0" * 32, "text/plain", {}))
        except S3Error as error:
            outcome.append(error)

    real = objects_module._holds_files

    def checked_then_put(folder: Path) -> bool:
        found = real(folder)
        putter = threading.Thread(target=put)
        putter.start()
        putter.join(timeout=0.5)  # the put's chance to commit between check and removal
        threads.append(putter)
        return found

    threads: list[threading.Thread] = []
    with mock.patch.object(objects_module, "_holds_files", checked_then_put):
        objects.delete_bucket("bkt")
    threads[0].join()
    (result,) = outcome
    assert isinstance(result, S3Error) and result.code == "NoSuchBucket"
    assert not (tmp_path / "bkt").exists()


def test_a_bucket_holding_a_hidden_file_is_not_empty(tmp_path: Path) -> None:
    objects = Objects(tmp_path)
    objects.create_bucket("bkt")
    (tmp_path / "bkt" / "folder").mkdir()
    (tmp_path / "bkt" / "folder" / ".env").write_text("kept")
    with pytest.raises(S3Error) as caught:
        objects.delete_bucket("bkt")
    assert caught.value.code == "BucketNotEmpty"
    assert (tmp_path / "bkt" / "folder" / ".env").read_text() == "kept"
    (tmp_path / "bkt" / "folder" / ".env").unlink()
    objects.delete_bucket("bkt")  # empty folders do not count
    assert not (tmp_path / "bkt").exists()


@pytest.mark.parametrize("code", [errno.E2BIG, errno.ENOSPC, errno.ERANGE])
def test_a_description_the_file_system_cannot_keep_refuses_the_object(
    tmp_path: Path, code: int
) -> None:
    """Content-Type and metadata too large for the file's attribute (ext4 keeps some
    4 KiB): MetadataTooLarge and nothing stored. The object was kept undescribed, its
    200's ETag and type lost."""
    objects = store(tmp_path, [])
    temp = objects.temporary("bkt", "k")
    temp.write_bytes(b"hello")
    with mock.patch("os.setxattr", side_effect=OSError(code, os.strerror(code))), \
            pytest.raises(S3Error) as caught:
        objects.commit(temp, "bkt", "k", "0" * 32, "text/plain", {"k": "v"})
    assert caught.value.code == "MetadataTooLarge"
    assert objects.current("bkt", "k") is None
    assert not temp.exists()


def test_a_file_system_without_user_attributes_keeps_the_object_undescribed(
    tmp_path: Path,
) -> None:
    objects = store(tmp_path, [])
    temp = objects.temporary("bkt", "k")
    temp.write_bytes(b"hello")
    with mock.patch("os.setxattr", side_effect=OSError(errno.ENOTSUP, "not supported")):
        objects.commit(temp, "bkt", "k", "0" * 32, "text/plain", {"k": "v"})
    info = objects.info("bkt", "k")
    assert (info.size, info.content_type, info.metadata) == (5, "binary/octet-stream", {})


def test_a_buckets_creation_time_is_recorded_once(tmp_path: Path) -> None:
    """A bucket's creation time is recorded on its folder when made, or, for a folder made
    without it (before this was recorded, or by hand), when first listed: later names at
    its top (which move the folder's time) do not move it."""
    objects = store(tmp_path, [])
    (tmp_path / "old").mkdir()  # a bucket folder of before, without a record
    long_ago = 1_600_000_000.0
    for bucket in ("bkt", "old"):
        os.utime(tmp_path / bucket, (long_ago, long_ago))
    first = dict(objects.buckets())
    assert first["old"] == long_ago  # its folder's time, the best there is
    assert first["bkt"] > long_ago  # recorded when made
    for bucket in ("bkt", "old"):
        temp = objects.temporary(bucket, "top")
        temp.write_bytes(b"x")
        objects.commit(temp, bucket, "top", "0" * 32, "text/plain", {})
        objects.make_folder(bucket, "folder/")
    assert dict(Objects(tmp_path).buckets()) == first  # after a restart too
