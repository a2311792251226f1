"""One object of a service's input paths on one server is one job, however many of its
MinIO providers name that server (servers.input_peers, identity.on_peers, Store.add_job)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.controller.buckets import FolderStore, S3Store
from faas_supervisor.controller.fdl import Service, parse_service
from faas_supervisor.controller.identity import ObjectId, on_peers
from faas_supervisor.controller.servers import default_server, input_peers, server_view
from faas_supervisor.controller.store import ListedPath, Store


def service(inputs: list[tuple[str, str]], keys: dict[str, str] | None = None,
            **endpoints: str) -> Service:
    """A service with these (provider, path) inputs, its own MinIO providers at `endpoints`
    (by id), each with the access key `keys` gives it (else AK), a secret key and a region
    of its own."""
    providers: dict[str, Any] = {
        pid: {"endpoint": endpoint, "access_key": (keys or {}).get(pid, "AK"),
              "secret_key": f"SK{pid}", "region": f"region-{pid}"}
        for pid, endpoint in endpoints.items()
    }
    return parse_service({
        "name": "svc",
        "script": "true",
        "input": [{"storage_provider": p, "path": path} for p, path in inputs],
        "storage_providers": {"minio": providers},
    # An endpoint with a `user:password@` is refused in a new definition (fdl.py); one
    # stored before that is read back, and must still be a peer of its server.
    }, stored=any("@" in endpoint for endpoint in endpoints.values()))


def test_providers_with_one_access_key_on_one_server_are_each_others_peers() -> None:
    svc = service([("minio.a", "box/in"), ("minio.b", "box/in/sub"), ("minio.c", "box/in"),
                   ("minio.d", "box/in")], {"d": "AKother"},
                  a="http://s3.example:9000", b="http://u:p@S3.example:9000/",
                  c="http://other.example:9000", d="http://s3.example:9000")
    assert input_peers(svc) == {"minio.a": {"minio.b"}, "minio.b": {"minio.a"}}


def test_the_default_provider_is_a_peer_only_on_an_s3_server() -> None:
    svc = service([("minio", "box/in/sub"), ("minio.x", "box/in")], x="s3.example:9000")
    # An endpoint without a scheme is HTTP (storage_providers/s3.py).
    assert input_peers(svc, server_view("http://s3.example:9000", "AK")) == {
        "minio.default": {"minio.x"}, "minio.x": {"minio.default"}}
    assert input_peers(svc, server_view("https://s3.example:9000", "AK")) == {}
    assert input_peers(svc, server_view("http://s3.example:9000", "AKother")) == {}
    assert input_peers(svc) == {}  # the folder store: its versions are its own


def test_a_provider_only_named_by_output_paths_is_no_peer() -> None:
    svc = parse_service({
        "name": "svc", "script": "true",
        "input": [{"storage_provider": "minio.a", "path": "box/in"}],
        "output": [{"storage_provider": "minio.b", "path": "box/in"}],
        "storage_providers": {"minio": {
            pid: {"endpoint": "http://s3.example:9000", "access_key": "AK", "secret_key": "SK"}
            for pid in ("a", "b")}},
    })
    assert input_peers(svc) == {}


@pytest.mark.parametrize(("one", "other", "same"), [
    ("http://h:9000", "http://h:9000/", True),
    ("http://h:9000", "HTTP://H:9000", True),
    ("http://h:9000", "http://user:secret@h:9000", True),
    ("http://h:9000", "https://h:9000", False),
    ("http://h:9000", "http://h:9001", False),
    ("http://localhost:9000", "http://127.0.0.1:9000", False),
    ("http://h:80", "http://h", True),
    ("https://h:443/", "HTTPS://H", True),
    ("http://h:443", "http://h", False),
    ("https://h:80", "https://h", False),
])
def test_server_view(one: str, other: str, same: bool) -> None:
    assert (server_view(one, "AK") == server_view(other, "AK")) is same
    assert "secret" not in str(server_view(other, "AK"))


def test_an_object_with_a_job_on_a_peer_provider_gets_that_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    on_a = ObjectId("minio.a", "b", "in/x", "e1")
    on_b = ObjectId("minio.b", "b", "in/x", "e1")
    assert store.add_job("svc-1", "svc", on_a, [on_b]) is None
    assert store.add_job("svc-2", "svc", on_b, [on_a]) == "svc-1"
    assert store.has_object("svc", on_b)  # recorded as b's too: b's listings pass it by
    assert store.add_job("svc-3", "svc", on_b) == "svc-1"
    assert [j.name for j in store.jobs("svc")] == ["svc-1"]
    # Another version, or another service's object of that name: jobs of their own.
    assert store.add_job("svc-4", "svc", ObjectId("minio.b", "b", "in/x", "e2"), [
        ObjectId("minio.a", "b", "in/x", "e2")]) is None
    assert store.add_job("other-1", "other", on_b, [on_a]) is None


def test_a_peers_baseline_is_not_a_job(tmp_path: Path) -> None:
    """A provider's path added later took the object as old (it was there first): for the
    provider that watched it before, it is still new, and gets its job."""
    store = Store(tmp_path / "s.sqlite3")
    on_a = ObjectId("minio.a", "b", "in/x", "e1")
    on_b = ObjectId("minio.b", "b", "in/x", "e1")
    store.record_baseline("svc", ListedPath("minio.b", "server", "b", "in/"), [on_b])
    assert store.add_job("svc-1", "svc", on_a, [on_b]) is None
    assert store.add_job("svc-2", "svc", on_b, [on_a]) == "svc-1"  # its baseline's row gets it


def test_on_peers_names_the_object_on_each_peer() -> None:
    obj = ObjectId("minio.a", "b", "in/x", "e1")
    peers = {"minio.a": frozenset({"minio.c", "minio.b"}), "minio.b": frozenset({"minio.a"})}
    assert on_peers(obj, peers) == [ObjectId("minio.b", "b", "in/x", "e1"),
                                    ObjectId("minio.c", "b", "in/x", "e1")]
    assert on_peers(ObjectId("minio.z", "b", "in/x", "e1"), peers) == []


def test_the_default_server_is_its_endpoint_whatever_its_keys(tmp_path: Path) -> None:
    """What the store records of --minio-endpoint's server (Store.use_default_server): the
    same for one endpoint however written, whatever the keys (rotated: the same objects);
    another endpoint, or the folder store, is another server."""
    def on(endpoint: str, key: str = "AK") -> str:
        return default_server(S3Store(endpoint, key, "SK", "us-east-1"))

    assert on("http://s3.example") == on("HTTP://S3.example:80/", "AKrotated")
    assert on("http://s3.example") != on("http://s3.example:9000")
    assert default_server(FolderStore(tmp_path / "storage")) == ""
    assert "s3.example" not in on("http://s3.example")
