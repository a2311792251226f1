"""A running job's log cut down to its end: how both backends keep a job's log bounded
while the job runs (the store keeps only a log's end anyway), so that a job printing
without end does not fill the data folder's disk.

The local backend's `run` cuts the log it writes (job_runner._CappedLog); the Docker
backend's controller cuts the log it writes from the engine's stream (`LogWriter`). A
cut puts the log's last `keep` bytes, after the store's line saying what was cut, into a
new file that takes the log's name (`rotate`): a reader that opened the log before reads
the old file to its end, one that opens it after reads the new one. Where the disk has no
room for that copy, the end is copied to the log's start instead (`cut_in_place`), and
readers may see the seam.

The store's line (`store.cut_note`) is imported at a first cut only: a job's runner
imports this module, and most logs are never cut.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from faas_supervisor.logs import get_logger

CUT_CHUNK = 1 << 20  # bytes of a log copied at a time where the kernel cannot copy them
logger = get_logger(component="log")


def rotate(fd: int, path: Path, size: int, keep: int, note: bytes) -> int:
    """The last `keep` of the log's first `size` bytes (read through `fd`), after `note`,
    in a new file with the log's mode, which takes the log's name unless that name is no
    longer the log's (its job deleted: the log was removed). Its descriptor, read-write and
    appending, as the log's writers have it. Raises OSError, leaving nothing behind."""
    new_path = path.with_name(f"{path.stem}.cut{path.suffix}")  # a stray the jobs remove
    new_path.unlink(missing_ok=True)  # one a SIGKILL left halfway
    new = os.open(new_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        old = os.fstat(fd)
        os.fchmod(new, old.st_mode & 0o7777)
        write_all(new, note)
        _copy_tail(fd, size, keep, new)
        # Appending only now: copy_file_range refuses a file opened O_APPEND.
        fcntl.fcntl(new, fcntl.F_SETFL, fcntl.fcntl(new, fcntl.F_GETFL) | os.O_APPEND)
        try:
            named = same_file(os.stat(path), old)
        except FileNotFoundError:
            named = False
        if named:
            os.replace(new_path, path)
        else:
            new_path.unlink()
    except BaseException:
        os.close(new)
        new_path.unlink(missing_ok=True)
        raise
    return new


def cut_in_place(fd: int, size: int, keep: int, note: bytes) -> None:
    """The last `keep` of the log's first `size` bytes copied to its start after `note`,
    and the rest cut off: it needs no room. Its writers append (O_APPEND), so they go on
    after it."""
    out = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)  # not appending: pwrite
    try:
        at = 0
        # Forward, each chunk read before it is written: the end is further on.
        for chunk in itertools.chain((note,), _tail(fd, size, size - keep)):
            while chunk:
                written = os.pwrite(out, chunk, at)
                chunk, at = chunk[written:], at + written
        os.ftruncate(out, at)
    finally:
        os.close(out)


def _tail(fd: int, size: int, offset: int) -> Iterator[bytes]:
    """The log's bytes from `offset` to `size`, a chunk at a time."""
    while offset < size:
        chunk = os.pread(fd, min(CUT_CHUNK, size - offset), offset)
        if not chunk:
            raise OSError(errno.EIO, "the log is shorter than it was")
        offset += len(chunk)
        yield chunk


def _copy_tail(fd: int, size: int, keep: int, out: int) -> None:
    """The last `keep` of the log's first `size` bytes to the end of `out`: in the kernel,
    or, where it cannot, a chunk at a time through here."""
    offset, left = size - keep, keep
    try:
        while left > 0:
            copied = os.copy_file_range(fd, out, left, offset)
            if copied == 0:
                raise OSError(errno.EIO, "the log is shorter than it was")
            offset, left = offset + copied, left - copied
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        for chunk in _tail(fd, size, offset):
            write_all(out, chunk)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class LogWriter:
    """A job's log written by its one writer (the Docker backend's controller, from the
    engine's stream of the job's output), appended to and kept under about twice `cap`
    bytes as it is written: past that, and once more at its close past `cap`, only its
    last `keep` are kept, after the store's line counting all it was given (the local
    backend's `run` cuts its own log so, job_runner._CappedLog). A cut that fails (the
    disk full) is logged, and tried again once the log has grown by `cap`."""

    def __init__(self, path: Path, cap: int, keep: int) -> None:
        self.path = path
        self.cap = cap
        self.keep = keep  # cap less the room of the line saying what was cut
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        self.size = os.fstat(self.fd).st_size  # what it holds (an earlier attempt's lines)
        self.total = self.size  # what it was given, what was cut from it too
        self.limit = 2 * cap

    def write(self, data: bytes) -> None:
        write_all(self.fd, data)
        self.size += len(data)
        self.total += len(data)
        if self.size > self.limit:
            self._cut()

    def close(self) -> None:
        try:
            if self.size > self.cap:
                self._cut()
        finally:
            os.close(self.fd)

    def _cut(self) -> None:
        from faas_supervisor.controller.store import cut_note

        note = cut_note(self.total, self.keep)
        try:
            try:
                new = rotate(self.fd, self.path, self.size, self.keep, note)
            except OSError:
                cut_in_place(self.fd, self.size, self.keep, note)
            else:
                os.close(self.fd)
                self.fd = new
        except OSError as exc:
            self.limit = self.size + self.cap
            logger.warning("a job's log could not be cut", log=self.path.name, error=str(exc))
            return
        self.size = len(note) + self.keep
        self.limit = 2 * self.cap
