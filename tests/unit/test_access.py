"""access.py: which storage events a service serves (SPEC 6.1, last paragraph)."""

from __future__ import annotations

from typing import Any

import pytest

from faas_supervisor.access import authorize, key_under
from faas_supervisor.config import FunctionConfig, ProviderConfig, StoragePath
from faas_supervisor.errors import BadEvent, Forbidden
from faas_supervisor.parsers.event import StorageObject


@pytest.mark.parametrize(
    ("folder", "key", "inside"),
    [
        ("in", "in/x.txt", True),
        ("in", "in/sub/deeper/x.txt", True),
        ("a/b", "a/b/c.txt", True),
        ("", "anything/at/all.txt", True),  # an input path that is a bucket alone
        ("in", "input2/x.txt", False),  # a prefix of a segment is not the segment
        ("in", "inx", False),
        ("in", "in", False),  # the folder itself is not in it
        ("in", "in/", False),  # nor is its folder marker
        ("a/b", "a/bc/x.txt", False),
        ("a/b", "a/x.txt", False),
        ("in", "other/in/x.txt", False),
        ("in", "/in/x.txt", False),
        ("in", "in/../secret/x.txt", False),  # resolves out of the folder
        ("in", "in/./x.txt", False),
        ("in", "in/sub/../../x.txt", False),
        ("", "../x.txt", False),
        ("in", "IN/x.txt", False),  # keys are case-sensitive
    ],
)
def test_key_under_compares_segment_by_segment(folder: str, key: str, inside: bool) -> None:
    assert key_under(folder, key) is inside


def minio(pid: str = "default") -> ProviderConfig:
    return ProviderConfig("minio", pid, {"endpoint": "http://x", "access_key": "a",
                                         "secret_key": "s"})


def onedata(pid: str, space: str) -> ProviderConfig:
    return ProviderConfig("onedata", pid, {"oneprovider_host": "h", "token": "t",
                                           "space": space})


def config(*inputs: tuple[str, str], **extra: Any) -> FunctionConfig:
    providers = {p.name: p for p in (minio(), minio("replica"), onedata("od", "space-a"),
                                      ProviderConfig("s3", "default", {}))}
    return FunctionConfig(inputs=tuple(StoragePath(p, path) for p, path in inputs),
                          providers=providers, **extra)


SERVICE = config(("minio.default", "plants/in"), ("s3.default", "photos"))


@pytest.mark.parametrize(
    ("obj", "config_"),
    [
        (StorageObject("minio.default", "plants", "in/a.txt"), SERVICE),
        (StorageObject("minio.default", "plants", "in/sub/a.txt"), SERVICE),
        (StorageObject("s3.default", "photos", "any/where.jpg"), SERVICE),
        # Delegated: another defined provider, the object under an input path.
        (StorageObject("minio.replica", "plants", "in/a.txt", delegated=True), SERVICE),
        (StorageObject("minio.replica", "photos", "x.jpg", delegated=True), SERVICE),
        # USER: a bucket of bucket_list stands for the input's bucket, same folder.
        (StorageObject("minio.default", "alice", "in/a.txt"),
         config(("minio.default", "plants/in"), isolation_level="USER", bucket_list=("alice",))),
        # Onedata: an input path relative to the space, or starting with the space.
        (StorageObject("onedata.od", "space-a", "files/x.txt"),
         config(("onedata.od", "files"))),
        (StorageObject("onedata.od", "space-a", "files/x.txt"),
         config(("onedata.od", "space-a/files"))),
    ],
)
def test_objects_under_an_input_path_are_served(obj: StorageObject,
                                                config_: FunctionConfig) -> None:
    authorize(config_, obj)


@pytest.mark.parametrize(
    ("obj", "config_"),
    [
        (StorageObject("minio.default", "other-service", "in/a.txt"), SERVICE),
        (StorageObject("minio.default", "plants", "out/a.txt"), SERVICE),
        (StorageObject("minio.default", "plants", "input2/a.txt"), SERVICE),
        (StorageObject("minio.default", "plants", "a.txt"), SERVICE),
        # The right bucket and key, on a provider no input path uses.
        (StorageObject("minio.replica", "plants", "in/a.txt"), SERVICE),
        (StorageObject("minio.default", "photos", "x.jpg"), SERVICE),
        # Delegated, but not under any input path.
        (StorageObject("minio.replica", "secrets", "in/a.txt", delegated=True), SERVICE),
        (StorageObject("minio.replica", "plants", "out/a.txt", delegated=True), SERVICE),
        # USER: the key must still be under the input's folder; SERVICE ignores bucket_list.
        (StorageObject("minio.default", "alice", "out/a.txt"),
         config(("minio.default", "plants/in"), isolation_level="USER", bucket_list=("alice",))),
        (StorageObject("minio.default", "mallory", "in/a.txt"),
         config(("minio.default", "plants/in"), isolation_level="USER", bucket_list=("alice",))),
        (StorageObject("minio.default", "alice", "in/a.txt"),
         config(("minio.default", "plants/in"), bucket_list=("alice",))),
        # Onedata: another folder of the space, or another space.
        (StorageObject("onedata.od", "space-a", "private/x.txt"), config(("onedata.od", "files"))),
        (StorageObject("onedata.od", "space-b", "files/x.txt"), config(("onedata.od", "files"))),
        # No input paths at all: no storage event is the service's.
        (StorageObject("minio.default", "plants", "in/a.txt"), config()),
    ],
)
def test_objects_elsewhere_are_forbidden(obj: StorageObject, config_: FunctionConfig) -> None:
    with pytest.raises(Forbidden) as caught:
        authorize(config_, obj)
    error = caught.value
    assert (error.http_status, error.exit_status) == (403, 2)
    assert "\n" not in error.message
    assert f"{obj.bucket}/{obj.key}" in error.message
    assert obj.provider in error.message


def test_a_key_with_dot_segments_is_refused_when_parsed() -> None:
    """Before any rule: `in/../x` is no key of an object in `in`, whatever reads it."""
    for key in ("in/../secret/x.txt", "in/./x.txt", "../x.txt"):
        with pytest.raises(BadEvent, match=r"'\.' or '\.\.' segment"):
            StorageObject("minio.default", "plants", key)
