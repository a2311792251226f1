"""responses.py: base64 and ZIP built on the fly must equal what the whole would give."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import threading
import zipfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faas_supervisor.base64_stream import encode_chunks as base64_chunks
from faas_supervisor.config import FunctionConfig
from faas_supervisor.errors import ScriptFailed
from faas_supervisor.invocation import Invocation, OutputFile, Runtime
from faas_supervisor.logs import InvocationLog
from faas_supervisor.responses import (
    CHUNK,
    TEXT,
    failure_body,
    success_body,
    zip_chunks,
)

LOG = InvocationLog("INFO", "test")


async def _source(pieces: Sequence[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def collect(stream: AsyncIterator[bytes]) -> bytes:
    return asyncio.run(_collect(stream))


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.binary(max_size=50), max_size=20))
def test_base64_chunks_equals_base64_of_the_whole(pieces: list[bytes]) -> None:
    encoded = collect(base64_chunks(_source(pieces)))
    assert encoded == base64.b64encode(b"".join(pieces))


def test_base64_chunks_of_large_uneven_pieces() -> None:
    data = os.urandom(3 * CHUNK + 17)
    pieces = [data[i : i + 100_001] for i in range(0, len(data), 100_001)]
    chunks = asyncio.run(_list(base64_chunks(_source(pieces))))
    assert b"".join(chunks) == base64.b64encode(data)
    assert all(b"\n" not in c and b"=" not in c for c in chunks[:-1])


async def _list(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


def make_outputs(root: Path, files: dict[str, bytes]) -> list[OutputFile]:
    outputs = []
    for relative, data in sorted(files.items()):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        outputs.append(OutputFile(path, relative))
    return outputs


def test_zip_chunks_is_a_valid_zip_with_relative_paths(tmp_path: Path) -> None:
    files = {
        "summary.txt": b"3 lines\n",
        "lines/1.txt": b"one\n",
        "lines/deeper/2.txt": b"two\n",
        "empty": b"",
        "big.bin": os.urandom(3 * CHUNK + 5),  # several chunks, through the bounded queue
        "caf\u00e9.txt": "\u00e9t\u00e9".encode(),
    }
    outputs = make_outputs(tmp_path / "output", files)
    archive = zipfile.ZipFile(io.BytesIO(collect(zip_chunks(outputs, LOG))))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == sorted(files)
    for name, data in files.items():
        assert archive.read(name) == data
    for info in archive.infolist():
        assert not info.filename.startswith("/")
        assert ".." not in info.filename.split("/")
        assert str(tmp_path) not in info.filename


def test_zip_chunks_in_base64(tmp_path: Path) -> None:
    outputs = make_outputs(tmp_path, {"a.txt": b"A" * 1000, "b/b.txt": b"B"})
    raw = base64.b64decode(collect(base64_chunks(zip_chunks(outputs, LOG))), validate=True)
    archive = zipfile.ZipFile(io.BytesIO(raw))
    assert {n: archive.read(n) for n in archive.namelist()} == {"a.txt": b"A" * 1000,
                                                               "b/b.txt": b"B"}


@pytest.mark.timeout(60)
def test_zip_stream_abandoned_early_stops_the_worker(tmp_path: Path) -> None:
    """A client that leaves mid-archive: the worker thread stops, neither blocked on a full
    queue nor building the rest of an archive no one reads (asyncio.run waits for it)."""
    outputs = make_outputs(tmp_path, {"small.bin": os.urandom(2 * CHUNK)})
    for i in range(2):  # 2 x 16 GiB of zeros, sparse: minutes to compress, no disk used
        path = tmp_path / f"huge{i}.bin"
        with open(path, "wb") as f:
            f.truncate(16 << 30)
        outputs.append(OutputFile(path, path.name))

    async def leave_after_one_chunk() -> None:
        stream = zip_chunks(outputs, LOG)
        assert await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(asyncio.wait_for(leave_after_one_chunk(), 20))


# ---- which body for which outcome ------------------------------------------------------


@pytest.fixture
def invocation(tmp_path: Path) -> Invocation:
    script = tmp_path / "script.sh"
    script.write_text("true\n")
    runtime = Runtime(config=FunctionConfig(log_level="INFO"), script=script, base_env={},
                      tmp_dir=tmp_path)
    return Invocation(runtime)


def _outputs(invocation: Invocation, files: dict[str, bytes]) -> None:
    make_outputs(invocation.output_dir, files)
    invocation.collect_outputs()


def test_one_file_is_base64_or_raw(invocation: Invocation) -> None:
    data = os.urandom(1000)
    _outputs(invocation, {"result.bin": data})
    body = success_body(invocation, "")
    assert (body.content_type, body.kind) == (TEXT, "file")
    encoded = collect(body.stream)
    assert encoded == base64.b64encode(data)
    assert body.length == len(encoded)
    raw = success_body(invocation, "text/html, application/octet-stream;q=0.9")
    assert raw.content_type == "application/octet-stream"
    assert collect(raw.stream) == data
    assert raw.length == len(data)


def test_several_files_are_a_zip_base64_or_raw(invocation: Invocation) -> None:
    _outputs(invocation, {"a.txt": b"a", "sub/b.txt": b"b"})
    body = success_body(invocation, "application/octet-stream")  # not for several files
    assert (body.content_type, body.kind) == (TEXT, "zip")
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(collect(body.stream), validate=True)))
    assert sorted(archive.namelist()) == ["a.txt", "sub/b.txt"]
    raw = success_body(invocation, "application/zip")
    assert raw.content_type == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(collect(raw.stream))).read("sub/b.txt") == b"b"


def test_no_file_is_the_logs_and_a_failure_starts_with_its_reason(invocation: Invocation) -> None:
    assert invocation.script_log is not None
    os.write(invocation.script_log, b"script says hi\n")
    invocation.log.warning("a warning line")
    invocation.log.debug("a debug line")  # below INFO: not in the response
    invocation.collect_outputs()
    body = collect(success_body(invocation, "").stream).decode()
    assert body.endswith("script says hi\n")
    assert "WARNING a warning line" in body
    assert "a debug line" not in body
    failed = collect(failure_body(invocation, ScriptFailed("script exited with status 3", 3))
                     .stream).decode()
    assert failed.splitlines()[0] == "script exited with status 3"
    assert failed.endswith("script says hi\n")


def test_a_log_over_the_small_size_is_streamed_whole_and_no_more(invocation: Invocation) -> None:
    """Read back from the unnamed log by offset: what was there when the script ended,
    not what a straggler wrote after the length was announced."""
    assert invocation.script_log is not None
    data = os.urandom(300 * 1024)
    os.write(invocation.script_log, data)
    invocation.collect_outputs()
    body = success_body(invocation, "")
    os.write(invocation.script_log, b"a straggler's line\n")
    assert body.length is not None and body.data is None
    sent = collect(body.stream)
    assert len(sent) == body.length and sent.endswith(data)


def _swapped_after_listing(invocation: Invocation, outside: Path) -> None:
    """Three outputs listed, then changed as a process the script left could change them
    before the response reads them: the folder `a` a link to `outside` (which holds an
    `f.txt` of its own), `fifo` a FIFO, `big` (streamed) a link to a file outside."""
    (outside / "f.txt").write_text("outside\n")
    _outputs(invocation, {"a/f.txt": b"mine\n", "fifo": b"x", "ok": b"ok\n"})
    out = invocation.output_dir
    (out / "a").rename(out / "a-moved")
    (out / "a").symlink_to(outside, target_is_directory=True)
    (out / "fifo").unlink()
    os.mkfifo(out / "fifo")


def test_a_zip_reads_each_output_as_listed_never_a_swapped_in_link_or_fifo(
    invocation: Invocation, tmp_path: Path
) -> None:
    """A review found a folder replaced by a link after the listing read a file outside
    the invocation's folders into the ZIP (O_NOFOLLOW guards the last name only), and a
    FIFO put in a file's place blocked the ZIP's worker thread for ever (six such held
    every later ZIP and SIGTERM). Each output is opened as listed (its inode, a regular
    file, O_NONBLOCK); what changed is left out of the archive, with a warning."""
    outside = tmp_path / "outside"
    outside.mkdir()
    _swapped_after_listing(invocation, outside)
    # A reader blocked on the FIFO is let go after 10 s (a writer comes and goes), so that
    # the test fails rather than hangs where the ZIP waits on it.
    release = threading.Timer(10, _open_and_close, (invocation.output_dir / "fifo",))
    release.start()
    try:
        archive = zipfile.ZipFile(io.BytesIO(collect(
            success_body(invocation, "application/zip").stream)))
    finally:
        release.cancel()
    assert archive.namelist() == ["ok"]
    assert archive.read("ok") == b"ok\n"
    said = "".join(invocation.log.lines)  # the invocation's own lines: a job's log, say
    assert "WARNING output a/f.txt skipped from the response: not the file listed" in said
    assert "WARNING output fifo skipped from the response: a special file" in said


def _open_and_close(fifo: Path) -> None:
    with contextlib.suppress(OSError):  # no reader waiting: nothing to release
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_one_output_swapped_for_a_link_or_a_fifo_is_not_read(
    invocation: Invocation, tmp_path: Path
) -> None:
    """The same for the one-file answer, small (read whole) and streamed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_bytes(b"outside" * 20_000)  # over SMALL: streamed
    _outputs(invocation, {"a/f.txt": b"mine" * 20_000})
    out = invocation.output_dir
    (out / "a").rename(out / "a-moved")
    (out / "a").symlink_to(outside, target_is_directory=True)
    body = success_body(invocation, "application/octet-stream")
    assert b"outside" not in collect(body.stream)
    _outputs(invocation, {"one": b"x"})  # a fresh listing: `one` alone
    (out / "a").unlink()
    (out / "a-moved" / "f.txt").unlink()
    (out / "a-moved").rmdir()
    invocation.collect_outputs()
    (out / "one").unlink()
    os.mkfifo(out / "one")
    body = success_body(invocation, "application/octet-stream")
    assert asyncio.run(asyncio.wait_for(_collect(body.stream), 10)) == b""
