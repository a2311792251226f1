"""Storage providers: one module per type, built once at start-up from the config.

A provider moves one object between a local file and its store, streaming both ways.
Blocking SDKs run in a thread pool; retries and multipart are the provider's business.
Failures after retries raise StorageError naming the provider and the object.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from faas_supervisor.config import FunctionConfig, ProviderConfig, is_folder_store
from faas_supervisor.errors import ConfigError


def scrub(text: str, secrets: Iterable[str]) -> str:
    """A second line of defence: no credential ever leaves in a message, neither one of
    the provider's own nor a URL's `user:password@` (an SDK's message may quote the
    endpoint as configured); at most 300 characters."""
    text = _USERINFO.sub(r"\1***@", text)
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text[:300]


_USERINFO = re.compile(r"(\w+://)[^\s/?#@]*@")


class StorageProvider(Protocol):
    name: str  # `TYPE.ID`

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        """Write the object to `dest` (a new file)."""

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        """Store `src` as the object; on failure leave no partial object."""


@runtime_checkable
class CollectionProvider(StorageProvider, Protocol):
    """A store whose objects may be collections (a Rucio dataset or container)."""

    async def download_all(self, bucket: str, key: str, folder: Path) -> list[Path]:
        """Every file the object holds into `folder`, under unique names; their paths."""


# The most bytes of a file name (Linux and its file systems): an object's base name may
# have that many (parsers/event.py), and the temporary name beside it must fit too.
NAME_MAX = 255


def partial_path(dest: Path, suffix: str, prefix: str = ".") -> Path:
    """The name beside `dest` where its content is written until whole (then renamed):
    `prefix`, dest's name, `suffix`, that name cut short so all of it fits in NAME_MAX
    bytes (cut between bytes: a name is bytes to the file system)."""
    head, tail = os.fsencode(prefix), os.fsencode(suffix)
    name = os.fsencode(dest.name)[: NAME_MAX - len(head) - len(tail)]
    return dest.with_name(os.fsdecode(head + name + tail))


def build_provider(config: ProviderConfig) -> StorageProvider:
    # Explicit imports, no plugin discovery: the bundled runtime must find every module.
    if is_folder_store(config.type, config.settings):
        from faas_supervisor.storage_providers.local import LocalProvider

        return LocalProvider(config)
    if config.type in ("minio", "s3"):
        from faas_supervisor.storage_providers.s3 import S3Provider

        return S3Provider(config)
    if config.type == "webdav":
        from faas_supervisor.storage_providers.webdav import WebDavProvider

        return WebDavProvider(config)
    if config.type == "onedata":
        from faas_supervisor.storage_providers.onedata import OnedataProvider

        return OnedataProvider(config)
    if config.type == "rucio":
        from faas_supervisor.storage_providers.rucio import RucioProvider

        return RucioProvider(config)
    raise ConfigError(f"storage provider {config.name}: unknown type {config.type!r}")


def build_providers(config: FunctionConfig) -> Mapping[str, StorageProvider]:
    return {name: build_provider(provider) for name, provider in config.providers.items()}
