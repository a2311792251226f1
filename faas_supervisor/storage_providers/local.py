"""A folder as a store: `<path>/<bucket>/<key>`. For tests and the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import stat
import threading
import uuid
from pathlib import Path

from faas_supervisor.config import ProviderConfig
from faas_supervisor.controller.names import folder_key_problem
from faas_supervisor.errors import NO_SPACE, BadEvent, StorageError, local_write_error, printable
from faas_supervisor.storage_providers import partial_path, stoppable_copy

# An upload copies in pieces of this size, so that a cancelled one stops within a piece
# (milliseconds) rather than at the end of the file (seconds for gigabytes).
PIECE = 8 << 20
# sendfile refused for this pair of files: the copy goes through read and write.
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV)


class LocalProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.root = Path(config.get("path")).resolve()

    def _object_path(self, bucket: str, key: str) -> Path:
        """Where the object is, links resolved: inside its bucket's folder, itself inside
        the store (a link in one bucket must not reach another bucket's objects)."""
        folder = (self.root / bucket).resolve()
        path = (folder / key).resolve()
        if "\x00" in key or not (folder.is_relative_to(self.root) and path.is_relative_to(folder)):
            raise BadEvent(f"object {bucket}/{printable(key)} is outside its bucket in the "
                           f"store {self.name}")
        return path

    def _no_such_bucket(self, bucket: str) -> bool:
        """No folder `bucket` at the top of the store (a name starting with '.' is one
        the store keeps for itself, never a bucket): the S3 endpoint answers NoSuchBucket,
        and so do the provider's transfers, in the words of the S3 provider's."""
        if not bucket or bucket.startswith("."):
            return True
        try:
            return not (self.root / bucket).is_dir()
        except OSError:  # cannot tell (EACCES, ENAMETOOLONG): the transfer then says why
            return False

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        src = self._object_path(bucket, key)
        try:
            await asyncio.to_thread(_download, src, dest)
        except OSError as exc:
            if exc.errno in NO_SPACE:  # our disk, not the store
                raise local_write_error(
                    exc, f"the download of {bucket}/{printable(key)} ({self.name})"
                ) from None
            reason = "no such bucket" if self._no_such_bucket(bucket) else exc.strerror
            raise StorageError(
                f"{self.name}: cannot read {bucket}/{printable(key)}: {reason}"
            ) from None

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        # The folder store's own rules (the embedded default's S3 endpoint refuses the same
        # keys): a name starting with '.' is one it keeps for itself (partial files, as
        # below), which its listings and its S3 endpoint never show.
        problem = folder_key_problem(key)
        if problem is not None:
            raise StorageError(
                f"{self.name}: cannot write {bucket}/{printable(key)}: the key {problem}"
            )
        dest = self._object_path(bucket, key)
        # As over S3, an upload makes no bucket: a bucket that is not there (deleted, or
        # never made: its name never checked against S3's rules) is a storage failure.
        if self._no_such_bucket(bucket):
            raise StorageError(f"{self.name}: cannot write {bucket}/{printable(key)}: "
                               "no such bucket")
        # A partial file of its own: jobs of one service may write one key at once.
        partial = partial_path(dest, f".{uuid.uuid4().hex}.partial")
        folders = (self.root / bucket, key.split("/")[:-1])
        try:
            await stoppable_copy(functools.partial(_copy, src, partial, dest, folders), partial)
        except OSError as exc:
            # The bucket deleted since the check above: its folders were not made again.
            reason = "no such bucket" if self._no_such_bucket(bucket) else exc.strerror
            raise StorageError(
                f"{self.name}: cannot write {bucket}/{printable(key)}: {reason}"
            ) from None


def _download(src: Path, dest: Path) -> None:
    """The object's bytes into `dest`; an OSError saying so when it is not a regular file
    (a FIFO would block the copy for ever, a device never end it)."""
    # O_NONBLOCK: a FIFO opens without waiting for a writer (regular files ignore it).
    with open(os.open(src, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0) as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise OSError(0, "not a regular file")
        with open(dest, "wb", buffering=0) as target:
            _copy_pieces(source.fileno(), target.fileno(), threading.Event())


def _copy(src: Path, partial: Path, dest: Path, folders: tuple[Path, list[str]],
          stop: threading.Event) -> bool:
    """`src` to `partial`, renamed `dest` once whole (readers never see half an object);
    nothing written if `stop` is set before the copy ends (False). `folders`: the bucket's
    folder and the names of those below it on the way to `dest`, made as needed."""
    if stop.is_set():
        return False
    _make_folders(*folders)
    try:
        with open(src, "rb", buffering=0) as source, \
                open(partial, "xb", buffering=0) as target:
            whole = _copy_pieces(source.fileno(), target.fileno(), stop)
        if whole:
            os.replace(partial, dest)
        return whole
    finally:
        partial.unlink(missing_ok=True)


def _make_folders(bucket: Path, names: list[str]) -> None:
    """The folders `names` below `bucket`, one in another, made where missing; `bucket`
    itself never is: one deleted meanwhile stays so (FileNotFoundError)."""
    folder = bucket
    for name in names:
        folder /= name
        with contextlib.suppress(FileExistsError):
            folder.mkdir()


def _copy_pieces(source: int, target: int, stop: threading.Event) -> bool:
    """All of `source` to `target`, a piece at a time (sendfile: no copy through Python),
    checking `stop` between pieces; False when it stopped first."""
    offset = 0
    kernel = True
    while not stop.is_set():
        if kernel:
            try:
                sent = os.sendfile(target, source, offset, PIECE)
            except OSError as exc:
                if offset or exc.errno not in _NO_SENDFILE:
                    raise
                kernel = False
                continue
        else:
            piece = os.pread(source, PIECE, offset)
            view = memoryview(piece)
            while view:
                view = view[os.write(target, view):]
            sent = len(piece)
        if sent == 0:
            return True
        offset += sent
    return False
