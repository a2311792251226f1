"""A folder as a store: `<path>/<bucket>/<key>`. For tests and the embedded default."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

from faas_supervisor.config import ProviderConfig
from faas_supervisor.errors import NO_SPACE, BadEvent, StorageError, local_write_error
from faas_supervisor.storage_providers import partial_path


class LocalProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.root = Path(config.get("path")).resolve()

    def _object_path(self, bucket: str, key: str) -> Path:
        path = (self.root / bucket / key).resolve()
        if not path.is_relative_to(self.root) or "\x00" in key:
            raise BadEvent(f"object {bucket}/{key} is outside the store {self.name}")
        return path

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        src = self._object_path(bucket, key)
        try:
            await asyncio.to_thread(shutil.copyfile, src, dest)
        except OSError as exc:
            if exc.errno in NO_SPACE:  # our disk, not the store
                raise local_write_error(
                    exc, f"the download of {bucket}/{key} ({self.name})"
                ) from None
            raise StorageError(f"{self.name}: cannot read {bucket}/{key}: {exc.strerror}") from None

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        dest = self._object_path(bucket, key)

        def copy() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # A partial file of its own: jobs of one service may write one key at once.
            partial = partial_path(dest, f".{uuid.uuid4().hex}.partial")
            try:
                shutil.copyfile(src, partial)
                os.replace(partial, dest)  # readers never see half an object
            finally:
                partial.unlink(missing_ok=True)

        try:
            await asyncio.to_thread(copy)
        except OSError as exc:
            raise StorageError(
                f"{self.name}: cannot write {bucket}/{key}: {exc.strerror}"
            ) from None
