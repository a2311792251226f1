"""Which provider the intake's failures and choices name, for a service's own MinIO
providers: a server whose store cannot be made is named by its provider (not the default
one), and the provider that takes a path two of them share (servers.own_inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from faas_supervisor.config import DEFAULT_PROVIDER, StoragePath
from faas_supervisor.controller.api import Api
from faas_supervisor.controller.buckets import FolderStore, S3Access, S3Store, provider_access
from faas_supervisor.controller.fdl import Service, parse_service
from faas_supervisor.controller.routes import services as services_routes
from faas_supervisor.controller.servers import ServerFailed, ServerStores, own_inputs
from tests.unit.test_api_services import AUTH, FakeBackend, serving

ONE = {"endpoint": "http://one.invalid:9000", "access_key": "AK", "secret_key": "SK"}
TWO = {"endpoint": "http://two.invalid:9000", "access_key": "AK", "secret_key": "SK"}


def refusing(access: S3Access) -> S3Store:
    raise ValueError(f"Invalid endpoint: {access.endpoint}")  # as botocore words it


async def test_a_server_whose_store_cannot_be_made_is_a_502_naming_its_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intake cannot make a client of `minio.ext`'s server (what botocore refuses,
    which the bucket creates let through here): the answer names `minio.ext`, not the
    default provider, and what failed, never the message (it quotes the endpoint)."""
    ext = FolderStore(tmp_path / "ext")  # the buckets' creates go through
    monkeypatch.setattr(services_routes, "provider_store", lambda settings: ext)
    async with serving(tmp_path, FakeBackend()) as (client, the_api):
        the_api.intake.servers = ServerStores(refusing)
        answer = await _create(client, the_api)
    assert answer == (
        502, "minio.ext: set-up of the input paths of service e failed (ValueError)")


async def _create(client: TestClient, the_api: Api) -> tuple[int, str]:
    service = {
        "name": "e", "image": "ok", "script": "echo\n",
        "input": [{"storage_provider": "minio", "path": "din/input"},
                  {"storage_provider": "minio.ext", "path": "ein/input"}],
        "storage_providers": {"minio": {"ext": {
            "endpoint": "http://user:pw@ext.invalid", "access_key": "AK", "secret_key": "SK"}}},
    }
    answer = await client.post("/system/services", json=service, headers=AUTH)
    assert the_api.store.service("e") is None
    return answer.status, await answer.text()


async def test_server_stores_name_the_provider_of_the_server_that_fails() -> None:
    stores = ServerStores(refusing)
    one, two = provider_access(ONE), provider_access(TWO)
    with pytest.raises(ServerFailed) as failed:
        await stores.hold("svc", {one: "minio.one", two: "minio.two"})
    assert failed.value.provider == "minio.one"
    assert isinstance(failed.value.__cause__, ValueError)


def service(inputs: list[tuple[str, str]], **providers: dict[str, Any]) -> Service:
    return parse_service({
        "name": "svc", "script": "true",
        "input": [{"storage_provider": p, "path": path} for p, path in inputs],
        "storage_providers": {"minio": providers},
    })


def taken(inputs: list[tuple[str, str]], default: S3Access | None = None,
          **providers: dict[str, Any]) -> list[tuple[str, str]]:
    """Each own input path (`bucket/folder`) with the provider that takes it."""
    return [(path.path, path.provider)
            for path in own_inputs(service(inputs, **providers), default)]


def test_one_server_and_path_of_two_providers_is_taken_by_the_first() -> None:
    assert taken([("minio.b", "inb/x"), ("minio.a", "inb/x")], a=ONE, b=ONE) == [
        ("inb/x", "minio.b")]
    found = own_inputs(service([("minio.a", "inb/x"), ("minio.b", "inb/x")], a=ONE, b=ONE))
    assert found == {StoragePath("minio.a", "inb/x"): provider_access(ONE)}


def test_overlapping_paths_are_taken_by_the_first_of_all_they_join() -> None:
    """`c`'s path holds `a`'s and `b`'s, which do not overlap: all three are `a`'s. A
    folder that only starts like another (`x2`) is not in it; other buckets and other
    servers keep their provider."""
    assert taken(
        [("minio.a", "inb/x/p"), ("minio.b", "inb/x/q"), ("minio.c", "inb/x"),
         ("minio.b", "inb/x2"), ("minio.b", "outb/x"), ("minio.d", "inb/x")],
        a=ONE, b=ONE, c=ONE, d=TWO,
    ) == [("inb/x/p", "minio.a"), ("inb/x/q", "minio.a"), ("inb/x2", "minio.b"),
          ("outb/x", "minio.b"), ("inb/x", "minio.a"), ("inb/x", "minio.d")]


def test_a_path_the_default_provider_shares_is_taken_by_it() -> None:
    """On the default provider's server (same endpoint, access key and region; the
    endpoint's user and password aside), whatever the order: listed through the
    controller's store (None)."""
    default = provider_access(ONE)
    inputs = [("minio.a", "inb/x"), ("minio", "inb/x/sub"), ("minio.a", "outb/y")]
    found = own_inputs(service(inputs, a={**ONE, "endpoint": "http://u:p@one.invalid:9000"}),
                       default)
    assert found == {StoragePath(DEFAULT_PROVIDER, "inb/x"): None,
                     StoragePath("minio.a", "outb/y"): provider_access(
                         {**ONE, "endpoint": "http://u:p@one.invalid:9000"})}
    # Without the default server's settings (a folder store with no S3 endpoint): kept.
    assert taken(inputs, a=ONE) == [("inb/x", "minio.a"), ("outb/y", "minio.a")]
