"""service_files.py: which S3 provider a name means, and what a REMOTE_PATH is."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from faas_supervisor.errors import ConfigError, StorageError
from faas_supervisor.service_files import RemotePath, provider_for

MINIO = {"endpoint": "http://s3.example:9000", "verify": False, "access_key": "AKDEFAULT",
         "secret_key": "SKDEFAULT", "region": "eu-1"}


class _Client:
    """The two calls provider_for makes, answered as a controller would."""

    def __init__(self, config: dict[str, Any], service: dict[str, Any]) -> None:
        self.config = config
        self.service = service
        self.calls: list[str] = []

    async def get_service(self, name: str) -> dict[str, Any]:
        self.calls.append(f"service {name}")
        return self.service

    async def json(self, method: str, path: str) -> Any:
        self.calls.append(f"{method} {path}")
        return self.config


def resolve(name: str, config: dict[str, Any] | None = None,
            service: dict[str, Any] | None = None) -> Any:
    client = _Client({"minio_provider": MINIO} if config is None else config, service or {})
    return asyncio.run(provider_for(client, "svc", name))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["minio", "minio.default", " minio "])
def test_minio_is_the_controllers_own_store(name: str) -> None:
    provider = resolve(name)
    assert provider.name == "minio.default"
    settings = provider._make.args[0]
    assert settings.get("endpoint") == MINIO["endpoint"]
    assert settings.get("access_key") == "AKDEFAULT" and settings.get("region") == "eu-1"
    assert settings.flag("verify", True) is False


def test_a_store_without_an_s3_endpoint_is_a_storage_error() -> None:
    empty = {"minio_provider": {**MINIO, "endpoint": "", "access_key": ""}}
    with pytest.raises(StorageError, match="no S3 endpoint"):
        resolve("minio", empty)


def test_a_services_own_provider_with_its_hidden_keys_left_out() -> None:
    service = {"storage_providers": {"s3": {"aws": {
        "access_key": "hidden", "secret_key": "hidden", "region": "eu-west-1"}}}}
    settings = resolve("s3.aws", service=service)._make.args[0]
    assert settings.get("region") == "eu-west-1"
    assert settings.get("access_key") == "" and settings.get("secret_key") == ""


@pytest.mark.parametrize(
    ("name", "message"),
    [("minio.other", "defines no storage provider minio.other"),
     ("webdav.dcache", "minio and s3 providers"), ("onedata", "minio and s3 providers"),
     ("s3.", "minio and s3 providers")],
)
def test_unknown_or_unsupported_providers_are_bad_arguments(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(name, service={"storage_providers": {"minio": {"x": MINIO}}})


@pytest.mark.parametrize(
    ("text", "bucket", "key", "folder"),
    [("b/k.txt", "b", "k.txt", False), ("/b/in/k.txt", "b", "in/k.txt", False),
     ("b/in/", "b", "in", True), ("b", "b", "", True), (" b/x ", "b", "x", False)],
)
def test_remote_paths(text: str, bucket: str, key: str, folder: bool) -> None:
    assert RemotePath.parse(text) == RemotePath(bucket, key, folder)


@pytest.mark.parametrize("text", ["", "/", "  "])
def test_a_remote_path_needs_a_bucket(text: str) -> None:
    with pytest.raises(ConfigError, match="BUCKET/KEY"):
        RemotePath.parse(text)
