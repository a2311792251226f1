"""The controller's bucket stores (controller/buckets.py) on real storage: the folder
store on disk, and S3Store against moto. What a failed service create removes: a bucket
that holds folders only, never one with an object."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from faas_supervisor.controller.buckets import FolderStore, S3Store
from tests.integration.conftest import S3Server

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
