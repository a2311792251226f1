"""The client's local streams: writes that fail or fall short, stdin reads a signal can
stop, the exit status of a failed local write, and a JSON answer that is not UTF-8."""

from __future__ import annotations

import errno
import io
import os
import threading
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faas_supervisor.api_client import Connection, ControllerClient
from faas_supervisor.client import local_write_failure, writing_locally
from faas_supervisor.errors import ConfigError, FaasError, InsufficientStorage, RequestFailed
from faas_supervisor.transfer import StdinReader, StdinStopped, write_all


class ShortWrites(io.RawIOBase):
    """A file that takes at most `room` bytes in all, `step` at a time: past its room it
    fails as a file at `ulimit -f` does (EFBIG)."""

    def __init__(self, room: int, step: int) -> None:
        self.room, self.step = room, step
        self.got = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(self.got) >= self.room:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        taken = bytes(data[: min(self.step, self.room - len(self.got))])
        self.got += taken
        return len(taken)


def test_write_all_writes_again_what_a_short_write_left() -> None:
    sink = ShortWrites(room=1000, step=7)
    write_all(sink, b"x" * 1000)  # type: ignore[arg-type]
    assert sink.got == b"x" * 1000


def test_write_all_raises_what_stopped_the_rest() -> None:
    """stdout's buffered file can answer the short count of a large write and drop the
    error (a file reaching `ulimit -f`): the result was cut short without a word, exit 0."""
    sink = ShortWrites(room=100, step=60)
    with pytest.raises(OSError) as caught:
        write_all(sink, b"y" * 300)  # type: ignore[arg-type]
    assert caught.value.errno == errno.EFBIG
    assert sink.got == b"y" * 100


def test_a_failed_local_write_is_exit_4_when_the_disk_is_full_else_2() -> None:
    full = local_write_failure(OSError(errno.ENOSPC, "No space left on device"), "stdout")
    assert isinstance(full, InsufficientStorage) and full.exit_status == 4
    assert full.message == "no space left on device writing stdout"
    big = local_write_failure(OSError(errno.EFBIG, "File too large"), "--output f")
    assert isinstance(big, ConfigError) and big.exit_status == 2
    assert big.message == "cannot write --output f: File too large"

    with pytest.raises(ConfigError), writing_locally("--output f"):
        raise OSError(errno.EIO, "Input/output error")
    # A peer's failure is not a local write's: it is said by who met it.
    with pytest.raises(BrokenPipeError), writing_locally("--output f"):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


@pytest.fixture
def pipe() -> Any:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_read_answers_whole_chunks_as_a_buffered_file_does() -> None:
    """Not what one os.read gives: s3transfer takes a short read for the input's end."""
    read_end, write_end = os.pipe()
    try:
        with StdinReader(read_end) as reader:
            writer = threading.Thread(target=lambda: [os.write(write_end, b"ab")
                                                      for _ in range(5)])
            writer.start()
            assert reader.read(10) == b"ab" * 5
            writer.join()
            os.write(write_end, b"end")
            os.close(write_end)
            assert reader.read(10) == b"end"
            assert reader.read(10) == b""
    finally:
        os.close(read_end)


def test_close_stops_a_read_waiting_on_an_idle_pipe(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    before = open_fds()
    reader = StdinReader(read_end)
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(reader.read(10))
        except StdinStopped as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    os.write(write_end, b"some")  # then nothing, the pipe kept open
    reader.close()  # as a signal's cleanup does, the read waiting or about to
    thread.join(10)
    assert not thread.is_alive(), "the read did not stop"
    assert len(outcome) == 1 and isinstance(outcome[0], StdinStopped)
    with pytest.raises(StdinStopped):
        reader.read(1)
    assert open_fds() == before  # its wake-up pipe freed, by whichever thread was last


async def test_a_json_answer_that_is_not_utf8_is_one_request_failed() -> None:
    async def latin1(request: web.Request) -> web.Response:
        return web.Response(body=b'{"name": "caf\xe9"}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/system/services/{name}", latin1)
    async with TestServer(app, host="127.0.0.1") as server:
        url = f"http://127.0.0.1:{server.port}"
        async with ControllerClient(Connection(url, None, None)) as client:
            with pytest.raises(RequestFailed) as caught:
                await client.get_service("cafe")
    assert isinstance(caught.value, FaasError) and caught.value.exit_status == 1
    assert caught.value.message == ('GET /system/services/cafe: the answer is not UTF-8 JSON '
                                    '(byte 13): {"name": "caf\ufffd"}')
