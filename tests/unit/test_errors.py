"""The mapping of a failed local write (a full disk above all) to a status, in one place."""

from __future__ import annotations

import errno
import importlib
import pkgutil
from pathlib import Path

import pytest

import faas_supervisor
from faas_supervisor.config import ProviderConfig, Secret
from faas_supervisor.errors import (
    FaasError,
    InsufficientStorage,
    StorageError,
    local_write_error,
    storage_failure,
    writing,
)
from faas_supervisor.invocation import _storage_errors
from faas_supervisor.storage_providers.http import HttpFailure
from faas_supervisor.storage_providers.local import LocalProvider
from faas_supervisor.storage_providers.s3 import S3Provider
from faas_supervisor.storage_providers.webdav import WebDavProvider


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_is_507_exit_4(code: int) -> None:
    error = local_write_error(OSError(code, "full"), "the input")
    assert isinstance(error, InsufficientStorage)
    assert (error.http_status, error.exit_status) == (507, 4)
    assert error.message == "no space left on device writing the input"


def test_other_write_errors_are_a_500_naming_the_write() -> None:
    error = local_write_error(OSError(errno.EIO, "Input/output error"), "the input")
    assert type(error) is FaasError
    assert (error.http_status, error.message) == (500, "cannot write the input: Input/output error")


def test_writing_maps_os_errors_and_lets_the_rest_pass() -> None:
    with pytest.raises(InsufficientStorage), writing("the script's log"):
        raise OSError(errno.ENOSPC, "No space left on device")
    # A peer gone while its body is read is not a local write.
    with pytest.raises(ConnectionResetError), writing("the input"):
        raise ConnectionResetError(errno.ECONNRESET, "reset")
    with pytest.raises(StorageError), writing("the input"):
        raise StorageError("minio.default: cannot download b/k")


class _Provider:
    name = "webdav.dcache"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        raise self.error

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        raise self.error


async def test_a_download_that_fills_the_disk_is_507_naming_the_object() -> None:
    provider = _Provider(OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(InsufficientStorage) as failure:
        async with _storage_errors(provider, "download", "bucket", "in/a.bin"):
            await provider.download("bucket", "in/a.bin", Path("/nowhere"))
    assert failure.value.message == (
        "no space left on device writing the download of bucket/in/a.bin (webdav.dcache)"
    )
    other = _Provider(OSError(errno.EIO, "Input/output error"))
    with pytest.raises(StorageError):
        async with _storage_errors(other, "download", "bucket", "in/a.bin"):
            await other.download("bucket", "in/a.bin", Path("/nowhere"))


SECRET_MESSAGE = "Could not connect to http://AKIAKEY:s3cr3t@minio.internal:9000/bucket"


def test_a_storage_failure_shows_what_failed_and_the_type_never_the_sdks_message() -> None:
    refused = ConnectionError(SECRET_MESSAGE)
    error = storage_failure("minio.default", "listing of the buckets", refused)
    assert isinstance(error, StorageError)
    assert (error.http_status, error.exit_status) == (502, 3)
    assert error.message == "minio.default: listing of the buckets failed (ConnectionError)"
    full = storage_failure("minio.default", "download of b/k", OSError(errno.ENOSPC, "full"))
    assert isinstance(full, InsufficientStorage)
    assert full.message == "no space left on device writing the download of b/k (minio.default)"


async def test_the_runtime_hides_an_sdks_message_as_the_controller_does() -> None:
    provider = _Provider(RuntimeError(SECRET_MESSAGE))
    with pytest.raises(StorageError) as failure:
        async with _storage_errors(provider, "upload", "bucket", "out/a.bin"):
            await provider.upload(Path("/nowhere"), "bucket", "out/a.bin")
    assert failure.value.message == (
        "webdav.dcache: upload of bucket/out/a.bin failed (RuntimeError)"
    )


# ---- one line, each character of a key as it is ----------------------------------------


def test_a_message_keeps_its_spaces_and_escapes_the_blanks_that_do_not_print() -> None:
    """Only a line break is made a space: a run of spaces, a tab, an NBSP, an em space
    may be part of the object key the message names, which must not become another."""
    message = FaasError("minio.default: cannot read b/in/a  b\tc\xa0d\u2003e.txt ").message
    assert message == "minio.default: cannot read b/in/a  b\\tc\\xa0d\\u2003e.txt "


def test_a_librarys_text_over_several_lines_reads_as_one_line() -> None:
    text = ("bad YAML: while parsing a block mapping\n  in \"<unicode string>\", line 1\r\n"
            "expected <block end>, but found '-'\n\n  in \"<unicode string>\", line 2\n")
    assert FaasError(f"\n  {text}").message == (
        "bad YAML: while parsing a block mapping in \"<unicode string>\", line 1 expected "
        "<block end>, but found '-' in \"<unicode string>\", line 2")


# A key and how a message shows it: each character, a line break escaped too.
KEYS = {
    "in/a  b.txt": "in/a  b.txt",
    "in/tab\tx.txt": "in/tab\\tx.txt",
    "in/nl\nx.txt": "in/nl\\nx.txt",
    "in/crlf\r\n x.txt": "in/crlf\\r\\n x.txt",
    "in/nb\xa0sp.txt": "in/nb\\xa0sp.txt",
    "in/trail.txt ": "in/trail.txt ",
}


@pytest.mark.parametrize("key", KEYS)
async def test_a_storage_message_names_the_key_it_was_given(tmp_path: Path, key: str) -> None:
    shown = f"b/{KEYS[key]}"
    local = LocalProvider(ProviderConfig("minio", "default", {"path": str(tmp_path)}))
    (tmp_path / "b").mkdir()  # the bucket is there, not the object
    with pytest.raises(StorageError) as missing:
        await local.download("b", key, tmp_path / "dest")
    assert missing.value.message == (
        f"minio.default: cannot read {shown}: No such file or directory")

    provider = _Provider(RuntimeError(SECRET_MESSAGE))
    with pytest.raises(StorageError) as failed:
        async with _storage_errors(provider, "download", "b", key):
            await provider.download("b", key, tmp_path / "dest")
    assert failed.value.message == f"webdav.dcache: download of {shown} failed (RuntimeError)"

    s3 = S3Provider(ProviderConfig("minio", "x", {
        "endpoint": "http://127.0.0.1:9", "access_key": Secret("AK"), "secret_key": Secret("SK")}))
    assert s3._error("upload", "b", key, OSError(errno.ENOSPC, "full")).message == (
        f"no space left on device writing the upload of {shown} (minio.x)")
    dav = WebDavProvider(ProviderConfig("webdav", "x", {
        "hostname": "http://127.0.0.1:9", "login": "u", "password": Secret("pw")}))
    assert dav._error("upload", "b", key, HttpFailure("HTTP 507", False)).message == (
        f"webdav.x: cannot upload {shown}: HTTP 507")


def _error_types() -> list[type[FaasError]]:
    """Every FaasError subclass of the package, each of its modules imported first."""
    for module in pkgutil.walk_packages(faas_supervisor.__path__, "faas_supervisor."):
        if not module.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(module.name)
    found: list[type[FaasError]] = []
    todo: list[type[FaasError]] = [FaasError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", _error_types(), ids=lambda cls: cls.__name__)
def test_every_error_type_is_in_errors_py_with_its_statuses(cls: type[FaasError]) -> None:
    assert cls.__module__ == "faas_supervisor.errors"
    assert 400 <= cls.http_status < 600
    assert isinstance(cls.exit_status, int)
