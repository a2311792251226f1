"""Which provider the intake's failures name, for a service's own MinIO providers: a
server whose store cannot be made is named by its provider (not the default one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from faas_supervisor.controller.api import Api
from faas_supervisor.controller.buckets import FolderStore, S3Access, S3Store, provider_access
from faas_supervisor.controller.routes import services as services_routes
from faas_supervisor.controller.servers import ServerFailed, ServerStores
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
            "endpoint": "http://ext.invalid", "access_key": "AK", "secret_key": "SK"}}},
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
