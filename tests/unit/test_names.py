"""Bucket names and storage paths: S3's rules, segment checks, and the folder store's root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.controller.buckets import FolderStore
from faas_supervisor.controller.fdl import parse_service, parse_service_json
from faas_supervisor.controller.names import (
    bucket_problem,
    folder_key_problem,
    key_problem,
    path_problem,
)
from faas_supervisor.errors import InvalidService


@pytest.mark.parametrize(
    "name", ["abc", "my-bucket", "my.bucket.2024", "a" * 63, "0ab", "xn-a", "192.168.5"]
)
def test_s3_bucket_names_are_accepted(name: str) -> None:
    assert bucket_problem(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("ab", "3 to 63"),
        ("a" * 64, "3 to 63"),
        ("Photos", "3 to 63"),
        ("my_bucket", "3 to 63"),
        ("-abc", "3 to 63"),
        ("abc.", "3 to 63"),
        ("..", "3 to 63"),
        ("...", "3 to 63"),
        ("a..b", "adjacent periods"),
        ("192.168.5.4", "IP address"),
        ("xn--abc", "reserves"),
        ("data-s3alias", "reserves"),
        ("a/b", "3 to 63"),
        ("", "3 to 63"),
    ],
)
def test_names_outside_s3s_rules_are_refused_with_the_reason(name: str, reason: str) -> None:
    problem = bucket_problem(name)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("path", ["a", "a/b c/d", "a/.hidden/b", "a/...", "ü/x"])
def test_plain_paths_are_accepted(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize("path", ["a/../b", "..", "a/./b", "a//b", "a/b\\..\\c", "a/\x00b"])
def test_paths_that_could_leave_their_folder_are_refused(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize("key", ["a", "a/b/", ".hidden/x", "ü" * 300, "a" * 1024, "a" * 1023 + "/"])
def test_keys_any_s3_server_takes(key: str) -> None:
    assert key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("a\ud800", "UTF-8"),
        ("a" * 1025, "at most 1024 bytes"),
        ("a" * 1024 + "/", "at most 1024 bytes"),
        ("ü" * 513, "at most 1024 bytes"),
        ("a/../b", "'..'"),
        ("a//b/", "empty"),
    ],
)
def test_keys_no_s3_server_takes(key: str, reason: str) -> None:
    problem = key_problem(key)
    assert problem is not None and reason in problem


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("a/" + "b" * 256, "over 255 bytes"),
        ("ü" * 128 + "/", "over 255 bytes"),
        (".s3-tmp/", "starting with '.'"),
        ("in/.hidden", "starting with '.'"),
        ("a\ud800", "UTF-8"),
    ],
)
def test_the_folder_store_asks_more_of_a_key(key: str, reason: str) -> None:
    """Each segment a file name, none of the hidden ones it keeps for itself (and lists
    never): a real S3 server takes these (`key_problem`)."""
    problem = folder_key_problem(key)
    assert problem is not None and reason in problem
    assert folder_key_problem("in/" + "b" * 255 + "/x") is None


def definition(path: str, provider: str = "minio") -> dict[str, Any]:
    return {
        "name": "plants",
        "script": "echo\n",
        "input": [{"storage_provider": provider, "path": path}],
    }


@pytest.mark.parametrize(
    "path", ["plants/../../escape", "plants/./in", "plants//in", "../plants/in", "plants/a\\b"]
)
def test_a_service_path_with_bad_segments_is_400_naming_the_field(path: str) -> None:
    with pytest.raises(InvalidService, match=r"^input\[0\]\.path: ") as caught:
        parse_service(definition(path))
    assert caught.value.http_status == 400


def test_a_service_path_on_a_bad_bucket_is_400() -> None:
    with pytest.raises(InvalidService, match=r"^input\[0\]\.path: bucket 'a\.\.b'"):
        parse_service(definition("a..b/in"))


def test_bucket_list_names_are_checked() -> None:
    with pytest.raises(InvalidService, match=r"^bucket_list: bucket '\.\.'"):
        parse_service({**definition("plants/in"), "bucket_list": [".."]})


def test_deeply_nested_service_json_is_a_400() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(InvalidService, match=r"^service: not valid JSON \(nested too deeply\)"):
        parse_service_json(body)


def test_the_folder_store_refuses_anything_outside_its_root(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "storage")
    before = sorted(tmp_path.iterdir())
    for bucket, folder in [("..", ""), ("a..b", ""), ("abc", "../../out"), ("abc", "x/../../y"),
                           ("abc", "/abs"), ("abc", "a\\..\\b")]:
        with pytest.raises(ValueError):
            store.ensure_path(bucket, folder)
    for bucket in ("..", ".", "../storage", "Upper"):
        with pytest.raises(ValueError):
            store.create_bucket(bucket)
        with pytest.raises(ValueError):
            store.bucket_exists(bucket)
    with pytest.raises(ValueError):
        store.list_objects("abc", "../../")
    assert sorted(tmp_path.iterdir()) == before


def test_a_link_out_of_the_folder_store_is_not_followed(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "storage")
    outside = tmp_path / "outside"
    outside.mkdir()
    store.ensure_path("abc", "in")
    os.symlink(outside, store.root / "abc" / "link")
    os.symlink(outside, store.root / "linked")
    with pytest.raises(ValueError, match="outside the storage folder"):
        store.ensure_path("abc", "link/made")
    with pytest.raises(ValueError, match="is a symbolic link"):  # no bucket, wherever it goes
        store.ensure_path("linked", "")
    with pytest.raises(ValueError, match="outside the storage folder"):
        store.list_objects("abc", "link/")
    assert list(outside.iterdir()) == []
    store.ensure_path("abc", "in/deeper")  # and what is inside still works
    assert (store.root / "abc" / "in" / "deeper").is_dir()
