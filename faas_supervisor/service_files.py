"""`faas-supervisor service put-file|get-file|list-files`: a service's files, through S3.

As `oscar-cli service ...` does: the client reads the service's definition from the
controller and, for `minio` (`minio.default`), the controller's `/system/config`, whose
`minio_provider` gives the default store's S3 endpoint and keys (the embedded default's
own S3 endpoint, or the `--minio-endpoint` server); another `minio.ID` or `s3.ID` comes
from the service's `storage_providers`. Then it talks to that S3 server itself, through
the runtime's own S3 provider (boto3's s3transfer: multipart, retries, a download
renamed into place only when whole), with a progress bar on a terminal.

A REMOTE_PATH is `BUCKET/KEY` (a service's `input` path plus a file name puts a file in
as a new input: the service's job starts as for any object stored there).

Exit statuses, as the other `service` commands: 1 when the controller said no, 2 for a
bad argument or local file (one that cannot be written too), 4 for a full local disk, 3
when the storage server failed or refused (unreachable, no such object or bucket, access
denied), as `run` says for a storage failure.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from faas_supervisor.client import local_write_failure
from faas_supervisor.config import (
    ProviderConfig,
    Secret,
    normalize_provider_name,
    utf8_encodable,
)
from faas_supervisor.errors import ConfigError, FaasError, RequestFailed, StorageError

if TYPE_CHECKING:
    from faas_supervisor.api_client import ControllerClient
    from faas_supervisor.storage_providers.s3 import S3Provider

S3_TYPES = ("minio", "s3")
HIDDEN = "hidden"  # a key the controller (as OSCAR's manager) shows in place of its value
STANDARD = "-"  # LOCAL: standard input (put-file) or output (get-file)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# What only a write to a local file fails with, never a socket: the provider's StorageError
# that was one of these is our file's failure (a full disk is told apart by the provider).
LOCAL_ONLY = (errno.EFBIG, errno.EROFS, errno.EISDIR)


@dataclass(frozen=True)
class RemotePath:
    bucket: str
    key: str  # "" for a bucket's top
    folder: bool  # written with a trailing `/`: a file's own name goes under it

    @classmethod
    def parse(cls, text: str) -> RemotePath:
        # A bucket or key must be UTF-8 (S3 sends it so): an argument's bytes that are not
        # come decoded with surrogates, a bad argument (exit 2) said before any request.
        if not utf8_encodable(text):
            raise ConfigError(f"REMOTE_PATH {text!r}: is not UTF-8, as an object's name must be")
        stripped = text.strip().strip("/")
        bucket, _, key = stripped.partition("/")
        if not bucket:
            raise ConfigError(f"REMOTE_PATH {text!r}: must be BUCKET/KEY")
        return cls(bucket, key, folder=text.strip().endswith("/") or not key)

    def __str__(self) -> str:
        return f"{self.bucket}/{self.key}" if self.key else self.bucket


async def provider_for(client: ControllerClient, service: str, name: str) -> S3Provider:
    """The S3 provider `name` (`minio`, `minio.default`, `minio.ID`, `s3.ID`) of `service`,
    with its endpoint and keys as the controller hands them out."""
    from faas_supervisor.storage_providers.s3 import S3Provider

    full = normalize_provider_name(name.strip())
    ptype, _, pid = full.partition(".")
    if ptype not in S3_TYPES or not pid:
        raise ConfigError(f"storage provider {name!r}: put-file, get-file and list-files "
                          f"reach minio and s3 providers (minio, minio.ID, s3.ID)")
    definition = await client.get_service(service)  # the service exists: else a 404 here
    if full == "minio.default":
        config = await client.json("GET", "/system/config")
        settings = config.get("minio_provider") if isinstance(config, dict) else None
        if not isinstance(settings, dict) or not settings.get("endpoint"):
            raise StorageError("minio.default: the controller hands out no S3 endpoint for "
                               "its storage (/system/config's minio_provider is empty)")
    else:
        providers = definition.get("storage_providers")
        by_id = providers.get(ptype) if isinstance(providers, dict) else None
        settings = by_id.get(pid) if isinstance(by_id, dict) else None
        if not isinstance(settings, dict):
            raise ConfigError(f"service {service} defines no storage provider {full}")
    return S3Provider(ProviderConfig(ptype, pid, _settings(full, settings)))


def _settings(name: str, given: Mapping[str, Any]) -> dict[str, str | bool | Secret]:
    """The provider's settings as the runtime reads them; keys shown as `hidden` (or not
    at all) are left out, so that boto3's own credentials (environment, ~/.aws) apply."""
    settings: dict[str, str | bool | Secret] = {}
    for key in ("endpoint", "region"):
        if given.get(key):
            if not isinstance(given[key], str):  # the controller's answer, of another shape
                raise RequestFailed(f"storage provider {name}: its {key} in the "
                                    "controller's answer is not text")
            settings[key] = given[key]
    if isinstance(given.get("verify"), bool):
        settings["verify"] = given["verify"]
    for key in ("access_key", "secret_key"):
        value = given.get(key)
        if value and value != HIDDEN:
            settings[key] = Secret(str(value))
    return settings


async def put_file(provider: S3Provider, remote: RemotePath, local: str) -> None:
    from faas_supervisor.progress import Progress
    from faas_supervisor.transfer import StdinReader, stdin_source

    if local == STANDARD:
        if remote.folder:
            raise ConfigError(f"REMOTE_PATH {remote}: name the object (BUCKET/KEY) when the "
                              "file comes from standard input")
        source: BinaryIO | StdinReader = stdin_source()
        size: int | None = None
        key = remote.key
    else:
        path = Path(local)
        # Anything readable is streamed, as `run --input` reads it: a pipe (`<(cmd)`,
        # /dev/fd/N) or a device as well as a file.
        if path.is_dir():
            raise ConfigError(f"{local}: is a folder, not a file")
        if remote.folder and not utf8_encodable(path.name):  # the object is named after it
            raise ConfigError(f"LOCAL {local!r}: its file name, the object's under REMOTE_PATH "
                              f"{remote}/, is not UTF-8: name the object in REMOTE_PATH")
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed below, after the transfer
        except FileNotFoundError:
            raise ConfigError(f"{local}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"{local}: {exc.strerror}") from None
        found = os.fstat(source.fileno())
        size = found.st_size if stat.S_ISREG(found.st_mode) else None  # a pipe's is unknown
        key = f"{remote.key}/{path.name}".lstrip("/") if remote.folder else remote.key
    progress = Progress("uploading", size)
    try:
        with source:
            upload = asyncio.ensure_future(provider.upload(
                source, remote.bucket, key, progress.update))  # type: ignore[arg-type]
            try:
                await asyncio.shield(upload)
            except asyncio.CancelledError:
                # Stopped (a signal): s3transfer's thread may be waiting on an idle stdin
                # pipe, and the upload's cleanup (the multipart upload aborted) waits for
                # it. Closed first, the read stops, and the cleanup runs at once.
                upload.cancel()
                if isinstance(source, StdinReader):
                    source.close()
                await asyncio.wait((upload,))
                if not upload.cancelled():
                    upload.exception()  # retrieved: the stop is what is said, not this
                raise
    finally:
        progress.close()


def local_target(remote: RemotePath, local: str) -> Path | None:
    """The file get-file writes (None: stdout), found before any request: a bad one is
    the user's to fix (exit 2), not a storage failure after the whole download."""
    if remote.folder:
        raise ConfigError(f"REMOTE_PATH {remote}: names a folder, not an object")
    if local == STANDARD:
        return None
    target = Path(local)
    if target.is_dir():
        # Into a folder, under the key's base name: one that names no file there (`..`
        # would be the folder's parent) is refused rather than written elsewhere.
        name = remote.key.rsplit("/", 1)[-1]
        if name in ("", ".", ".."):
            raise ConfigError(f"REMOTE_PATH {remote}: its base name {name!r} cannot name a "
                              f"file in {local}: give LOCAL a file name")
        target = target / name
        if target.is_dir():
            raise ConfigError(f"{target}: is a folder, not a file")
    if not (target.parent if str(target.parent) else Path(".")).is_dir():
        raise ConfigError(f"{local}: not a file in an existing folder")
    return target


async def get_file(provider: S3Provider, remote: RemotePath, target: Path | None) -> None:
    """Into `target` (local_target's), else to stdout."""
    from faas_supervisor.progress import Progress

    size = await provider.size(remote.bucket, remote.key)  # its absence said before any write
    progress = Progress("downloading", size)
    try:
        if target is None:
            out = _InOrder(sys.stdout.buffer)
            try:
                await provider.download(remote.bucket, remote.key,
                                        out,  # type: ignore[arg-type]
                                        progress.update)
            except FaasError:
                # Not the store's failure: `| head` (141), or stdout's own, which client.py
                # says as it says any failed write to stdout.
                if out.failed is not None:
                    raise out.failed from None
                raise
            sys.stdout.buffer.flush()
        else:
            # s3transfer writes beside it and renames: never a partial file at `target`.
            try:
                await provider.download(remote.bucket, remote.key, target, progress.update)
            except StorageError as exc:
                # The provider says every failure as the store's; the OSError it was
                # (kept as the context) tells our file's own.
                cause = exc.__context__
                if isinstance(cause, OSError) and cause.errno in LOCAL_ONLY:
                    raise local_write_failure(cause, str(target)) from None
                raise
    finally:
        progress.close()


async def list_files(provider: S3Provider, remote: RemotePath) -> list[list[str]]:
    """Rows of NAME (relative to the folder), SIZE, LAST MODIFIED; folder markers left out."""
    prefix = f"{remote.key}/" if remote.key else ""
    rows = []
    for item in await provider.list_objects(remote.bucket, prefix):
        name = str(item["Key"])[len(prefix):]
        if not name or name.endswith("/"):
            continue
        modified = item.get("LastModified")
        when = (modified.astimezone(UTC).strftime(TIME_FORMAT)
                if isinstance(modified, datetime) else "")
        rows.append([name, str(item.get("Size", "")), when])
    return sorted(rows)


class _InOrder:
    """Standard output as s3transfer must write it: in order. Redirected to a file it
    would seem seekable, and s3transfer would write each part at its offset: over what
    the file held before (`{ echo head; get-file ...; } > f`), or, appended (`>>`), in
    the order the parts arrive."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        # s3transfer's thread writes, and turns a failed write into the download's
        # failure: this tells stdout's own (a reader gone, `| head`; a full disk) from
        # the store's fault.
        self.failed: OSError | None = None

    def write(self, data: bytes) -> int:
        from faas_supervisor.transfer import write_all

        try:
            write_all(self._out, data)
            return len(data)
        except OSError as exc:
            self.failed = exc
            raise

    def seekable(self) -> bool:
        return False
