"""Rucio's upload cancelled while its copy onto the RSE runs (storage_providers/rucio.py):
nothing is left in the RSE's folder. Found by a review: the cancelled await returned at
once while the copying thread went on, and `run` (SIGTERM) or the watchdog (shut down)
then ended with os._exit, which left the `.rucio.upload` temporary file on the RSE for
good; or, had the copy ended first, a file no DID names (its registration never came).

Real files; the catalogue is left out: the DID's metadata (none: a new DID) and its path
on the RSE are given, and so are the checksums (they would read the FIFO)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import struct
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.config import ProviderConfig
from faas_supervisor.errors import StorageError
from faas_supervisor.storage_providers import STOP_GRACE, rucio
from faas_supervisor.storage_providers.rucio import RucioProvider

Copy = tuple[RucioProvider, Path, threading.Event, threading.Event]


@pytest.fixture
def copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Copy]:
    """A provider whose upload of a new DID goes to `rse/test/a1/b2/out.bin`; the copy's
    `placed` event is set once `place` has returned, its thread then waiting for `go`."""
    target = tmp_path / "rse" / "test" / "a1" / "b2" / "out.bin"
    provider = RucioProvider(ProviderConfig("rucio", "default", {
        "host": "http://127.0.0.1:9", "account": "root", "rse": "RSE",
        "username": "u", "password": "p"}))

    async def no_meta(*_args: Any) -> None:
        return None

    async def new_path(*_args: Any) -> Path:
        return target

    monkeypatch.setattr(provider, "_meta", no_meta)
    monkeypatch.setattr(provider, "_new_path", new_path)
    monkeypatch.setattr(rucio, "checksums", lambda _src: (0, "00000001", ""))
    placed, go = threading.Event(), threading.Event()
    real = rucio.place

    def spied(*args: Any) -> Any:
        try:
            return real(*args)
        finally:
            placed.set()
            go.wait(30)

    monkeypatch.setattr(rucio, "place", spied)
    yield provider, target, placed, go
    go.set()  # whatever happened, no thread is left waiting


def unread(fd: int) -> int:
    """Bytes written to the pipe `fd` and not read yet."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def left_on_rse(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "rse").rglob("*")
                  if not p.is_dir())


async def test_a_cancelled_upload_stuck_mid_file_leaves_no_temporary_file(
    copy: Copy, tmp_path: Path
) -> None:
    """The source is a FIFO whose writer is held open: the copy blocks mid-file, where no
    stop is seen. The cancellation waits at most STOP_GRACE, removes the temporary file
    by name, and the copy, once unblocked, renames nothing."""
    provider, target, placed, go = copy
    src = tmp_path / "fifo"
    os.mkfifo(src)
    writer = os.open(src, os.O_RDWR)  # held open: the copy's read waits for more
    try:
        os.write(writer, b"half a file")
        upload = asyncio.ensure_future(provider.upload(src, "test", "out.bin"))
        deadline = time.monotonic() + 30
        # No event says the copy started: its temporary file's name is looked for.
        # And what was written is read: the copy's next read waits for more.
        while not (target.parent.is_dir() and any(
                p.name.endswith(".rucio.upload") for p in target.parent.iterdir())
                and unread(writer) == 0):
            assert not upload.done(), "the upload ended before its copy was seen"
            assert time.monotonic() < deadline, "no temporary file in 30 s"
            await asyncio.sleep(0.001)
        upload.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await upload
        assert time.monotonic() - started < STOP_GRACE + 1.0
        # Nothing is left: the copy, blocked in its read, had its file removed by name (on
        # a loaded machine its thread may instead be between two reads, see the stop
        # there and return having placed nothing: the same outcome, which is checked).
        assert left_on_rse(tmp_path) == []
    finally:
        os.close(writer)  # the copy reads the end of the file, and sees the stop
    go.set()
    assert await asyncio.to_thread(placed.wait, 30)
    assert left_on_rse(tmp_path) == []  # not renamed into place once stopped


async def test_a_copy_renamed_before_it_saw_the_stop_is_removed(
    copy: Copy, tmp_path: Path
) -> None:
    """The copy has renamed its file to the target when the upload is cancelled: no DID
    will name that file (the registration comes after the copy), so it goes too."""
    provider, target, placed, go = copy
    src = tmp_path / "out.bin"
    src.write_bytes(b"a whole file\n")
    upload = asyncio.ensure_future(provider.upload(src, "test", "out.bin"))
    assert await asyncio.to_thread(placed.wait, 30)
    assert target.read_bytes() == b"a whole file\n"  # in place, its thread not yet done
    upload.cancel()
    go.set()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert time.monotonic() - started < STOP_GRACE + 1.0
    assert left_on_rse(tmp_path) == []


async def test_an_upload_not_cancelled_places_the_whole_file(
    copy: Copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy, now chunk by chunk, still writes every byte (a few chunks and a bit)
    before the registration (its requests recorded here) is sent."""
    provider, target, _placed, go = copy
    go.set()
    data = os.urandom(2 * rucio.CHUNK + 12345)
    src = tmp_path / "big"
    src.write_bytes(data)
    seen: list[bytes] = []

    async def register(*_args: Any, **_kwargs: Any) -> None:
        seen.append(target.read_bytes())

    monkeypatch.setattr(provider, "_call", register)
    await provider.upload(src, "test", "out.bin")
    assert seen[0] == data
    assert left_on_rse(tmp_path) == ["rse/test/a1/b2/out.bin"]


async def test_a_file_put_in_place_meanwhile_is_never_replaced(
    copy: Copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of one DID at once: both looked, found the path free, and the second
    replaced the first's file, registered under the first's checksums (a review found
    the window). The other's file here is made to appear after any look could be made."""
    provider, target, _placed, go = copy
    go.set()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the other upload's file\n")
    monkeypatch.setattr(Path, "exists", lambda self: False if self == target else
                        os.path.exists(self))
    src = tmp_path / "out.bin"
    src.write_bytes(b"ours\n")
    with pytest.raises(StorageError, match="exists on the RSE but no DID names it"):
        await provider.upload(src, "test", "out.bin")
    assert target.read_bytes() == b"the other upload's file\n"
    assert left_on_rse(tmp_path) == ["rse/test/a1/b2/out.bin"]


async def test_a_file_system_without_hard_links_still_gets_the_file(
    copy: Copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.link refused as some FUSE and network mounts refuse it: the file is renamed
    into place instead, still never over an existing one."""
    provider, target, _placed, go = copy
    go.set()

    def no_links(_src: Any, _dst: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)

    async def registered(*_args: Any, **_kwargs: Any) -> None:
        return None

    monkeypatch.setattr(provider, "_call", registered)
    src = tmp_path / "out.bin"
    src.write_bytes(b"ours\n")
    await provider.upload(src, "test", "out.bin")
    assert target.read_bytes() == b"ours\n"
    assert left_on_rse(tmp_path) == ["rse/test/a1/b2/out.bin"]
