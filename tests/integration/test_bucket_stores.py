"""The controller's bucket stores (controller/buckets.py) on real storage: the folder
store on disk, and S3Store against moto. What a failed service create removes: a bucket
that holds folders only, never one with an object."""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.controller.buckets import FolderStore, S3Store
from tests.integration.conftest import S3Server
from tests.integration.controller_fixture import ControllerProcess

pytestmark = pytest.mark.integration


def test_s3_remove_if_empty_takes_folder_markers_and_leaves_objects(
    moto_server: S3Server,
) -> None:
    store = S3Store(moto_server.endpoint, moto_server.access_key, moto_server.secret_key,
                    moto_server.region)
    client = moto_server.client()
    empty, full = f"e-{uuid.uuid4().hex[:12]}", f"f-{uuid.uuid4().hex[:12]}"
    for bucket in (empty, full):
        store.ensure_path(bucket, "in/deep")
        store.ensure_path(bucket, "out")
    client.put_object(Bucket=full, Key="in/photo.jpg", Body=b"data")
    assert store.remove_if_empty(empty) is True
    assert not store.bucket_exists(empty)
    assert store.remove_if_empty(full) is False
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=full)["Contents"]}
    assert keys == {"in/deep/", "out/", "in/photo.jpg"}


def test_folder_remove_if_empty_keeps_a_bucket_with_any_file(tmp_path: Path) -> None:
    """A hidden file counts (an S3 endpoint's upload being received, `.s3-tmp/...`)."""
    store = FolderStore(tmp_path / "storage")
    for bucket in ("empty", "busy"):
        store.ensure_path(bucket, "in/deep")
    (tmp_path / "storage/busy/.s3-tmp").mkdir()
    (tmp_path / "storage/busy/.s3-tmp/part").write_bytes(b"x")
    assert store.remove_if_empty("empty") is True
    assert store.remove_if_empty("busy") is False
    assert sorted(p.name for p in (tmp_path / "storage").iterdir()) == ["busy"]
    assert (tmp_path / "storage/busy/in/deep").is_dir()


def _bucket_with(root: Path, bucket: str, files: list[str]) -> FolderStore:
    store = FolderStore(root)
    store.create_bucket(bucket)
    for name in files:
        (root / bucket / name).parent.mkdir(parents=True, exist_ok=True)
        (root / bucket / name).write_bytes(b"x")
    return store


def _on_first_scan(
    monkeypatch: pytest.MonkeyPatch, folder: Callable[[Path], bool], act: Callable[[], None]
) -> None:
    """`act()` runs once, just before the first listing of a folder `folder` accepts: what
    a delete running beside a listing does between two of its steps, made certain."""
    scandir = os.scandir
    done: list[bool] = []

    def scan(path: Any = ".") -> Any:
        if not done and folder(Path(path)):
            done.append(True)
            act()
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scan)


def test_folder_listing_skips_a_folder_gone_while_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its objects deleted meanwhile: the listing is of what is still there (it was a
    FileNotFoundError, a 502 in the bucket API and a failed service create)."""
    root = tmp_path / "storage"
    store = _bucket_with(root, "box", ["top", "keep/a", "gone/x", "gone/deep/y"])
    _on_first_scan(monkeypatch, lambda p: p == root / "box/gone",
                   lambda: shutil.rmtree(root / "box/gone"))
    listed = [o.key for o in store.list_objects("box")]
    monkeypatch.undo()
    assert listed == ["keep/a", "top"]


def test_folder_listing_skips_a_file_gone_after_a_first_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed just after the listing first looked at it (whatever it looks at): listed or
    not, never a failure."""
    root = tmp_path / "storage"
    store = _bucket_with(root, "box", ["top", "in/going", "in/staying"])
    going = root / "box/in/going"
    stat = os.stat
    done: list[bool] = []

    def look(path: Any, *args: Any, **kwargs: Any) -> Any:
        result = stat(path, *args, **kwargs)
        if not done and Path(path) == going:
            done.append(True)
            going.unlink()
        return result

    monkeypatch.setattr(os, "stat", look)
    listed = {o.key for o in store.list_objects("box", "in/")}
    monkeypatch.undo()
    assert done
    assert {"in/staying"} <= listed <= {"in/staying", "in/going"}


def test_folder_listing_of_a_bucket_deleted_while_walked_reads_as_no_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket deleted (DELETE /system/buckets/box) after the listing read its top
    folder: nothing of what it read there is answered; it lists as a missing bucket."""
    root = tmp_path / "storage"
    store = _bucket_with(root, "box", ["top1", "top2", "d0/f", "d1/f", "d2/deep/f"])
    _on_first_scan(monkeypatch, lambda p: p.parent == root / "box",
                   lambda: store.delete_bucket("box"))
    listed = store.list_objects("box")
    prefixed = store.list_objects("box", "d1/")  # its walk starts in a folder already gone
    monkeypatch.undo()
    assert not store.bucket_exists("box")
    assert listed == prefixed == store.list_objects("never-made") == []


IN_OPEN = 0x20  # inotify: a file or folder opened (a folder is, to read its entries)


class _FirstOpen:
    """The first opening of a folder, or of anything in it, through inotify (Linux): when
    a listing of the folder has begun in another process."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(folder), IN_OPEN) < 0:
            reason = f"no inotify here: {os.strerror(ctypes.get_errno())}"
            print(reason)
            pytest.skip(reason)

    def wait(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        os.close(self.fd)


def test_folder_bucket_read_racing_its_delete_never_fails(
    controller: ControllerProcess,
) -> None:
    """GET /system/buckets/race while DELETE /system/buckets/race removes it: the DELETE
    is sent once the GET's walk has opened the bucket's folder, so the bucket goes while
    it is walked (thousands of files: the walk outlasts the DELETE's way to the rename).
    The GET answers the whole listing (walked before the delete) or 404 (gone before its
    lookup, or while walked); never a 502, never a part of it."""
    assert controller.request("POST", "/system/buckets",
                              json={"bucket_name": "race"}).status_code == 201
    bucket = controller.storage / "race"
    keys = {f"d{d:02}/f{f:03}" for d in range(30) for f in range(100)}
    one = controller.data_dir / "one"
    one.write_bytes(b"x")
    for key in keys:
        (bucket / key).parent.mkdir(exist_ok=True)
        os.link(one, bucket / key)  # a file each, made many times faster than written
    opened = _FirstOpen(bucket)  # after the files were written: only readers open it now
    try:
        with ThreadPoolExecutor(1) as pool:
            read = pool.submit(controller.request, "GET", "/system/buckets/race")
            assert opened.wait(60), read.result().text
            deleted = controller.request("DELETE", "/system/buckets/race")
            got = read.result()
    finally:
        opened.close()
    assert deleted.status_code == 204, deleted.text
    assert got.status_code in (200, 404), got.text
    if got.status_code == 200:
        assert {o["object_name"] for o in got.json()["objects"]} == keys
    assert controller.request("GET", "/system/buckets/race").status_code == 404


def test_an_s3_server_that_never_answers_fails_a_store_call_within_its_timeouts() -> None:
    """A server that accepts and then says nothing (packets dropped past the handshake)
    fails a call after the store's read timeout at each of its three attempts, not
    botocore's 60 s each: a service's create, and a watcher's thread, are not held for
    minutes. The defaults are the runtime's own (5 s to connect, 20 s between reads);
    the call here runs with shorter ones, through the same client configuration."""
    import socket
    import time

    from faas_supervisor.controller import buckets

    assert (buckets.CONNECT_TIMEOUT, buckets.READ_TIMEOUT) == (5.0, 20.0)
    default = S3Store("http://127.0.0.1:9", "AK", "SECRETSECRET", "us-east-1")
    config = default.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (5.0, 20.0)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        store = S3Store(f"http://127.0.0.1:{silent.getsockname()[1]}", "AK", "SECRETSECRET",
                        "us-east-1", connect_timeout=1, read_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            store.bucket_exists("anything")
        took = time.monotonic() - started
    assert type(failed.value).__name__ == "ReadTimeoutError", failed.value
    assert took < 10, took  # three attempts of 0.5 s (and botocore's backoff between them)
