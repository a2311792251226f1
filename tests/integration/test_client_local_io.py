"""The `service` client's own side: its local writes (stdout, `--output`, get-file's LOCAL),
the special files it writes into, a malformed answer, and a signal while it reads an idle
stdin. Real CLI subprocesses against a real controller on loopback (its default store
moto's S3 server), or against a small misbehaving aiohttp server.

A local write that fails is one line: exit 4 for a full disk (`/dev/full`), 2 for any
other (a file past `ulimit -f`), as a bad local file. (They were Python tracebacks, or a
result silently cut short with exit 0, or exit 3, a storage failure, for get-file.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.conftest import S3Server, faas_command, served
from tests.integration.controller_fixture import (
    ControllerFactory,
    ControllerProcess,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ECHO = '#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"\n'  # the input, as result
FSIZE_LIMIT = 100  # `ulimit -f` blocks: at most 100 KiB in any file the client writes
BIG = 2 << 20  # past that limit
STOP_DEADLINE = 20  # seconds a stopped client has to exit (it took as long as stdin stayed open)


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory,
               moto_server: S3Server) -> Iterator[ControllerProcess]:
    factory = ControllerFactory(tmp_path_factory.mktemp("controller"))
    try:
        ctl = factory(args=[
            "--minio-endpoint", moto_server.endpoint,
            "--minio-access-key", moto_server.access_key,
            "--minio-secret-key", moto_server.secret_key,
            "--minio-region", moto_server.region,
        ])
        ctl.create({"name": "echo", "script": ECHO})
        s3 = moto_server.client()  # type: ignore[no-untyped-call]
        s3.create_bucket(Bucket="echo")
        s3.put_object(Bucket="echo", Key="big.bin", Body=os.urandom(BIG))
        yield ctl
    finally:
        factory.close()


def command(*args: str, limited: bool = False) -> list[str]:
    """The client's command line; `limited`: under `ulimit -f` (EFBIG past it)."""
    full = [*faas_command(), "service", *args]
    return ["sh", "-c", f'ulimit -f {FSIZE_LIMIT} && exec "$@"', "sh", *full] if limited else full


def env_for(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAAS_", "AWS_"))}
    env.update({"FAAS_ENDPOINT": endpoint, "FAAS_USER": "admin",
                "FAAS_PASSWORD": "controller-test-password",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"})
    return env


def client(endpoint: str, *args: str, stdout: Any = subprocess.PIPE, limited: bool = False,
           stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command(*args, limited=limited), input=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, env=env_for(endpoint), timeout=120,
                          check=False)


def one_line(result: subprocess.CompletedProcess[bytes], status: int) -> str:
    """The one error line of a command that must exit `status`."""
    err = result.stderr.decode()
    assert result.returncode == status, (result.returncode, err)
    assert err.startswith("faas-supervisor: error: ") and err.count("\n") == 1, err
    return err


# 1 and 5: a local write that fails


def test_a_full_stdout_is_one_line_exit_4(controller: ControllerProcess) -> None:
    for args in (["run", "echo", "--text-input", "hello"], ["list"], ["get", "echo"],
                 ["logs", "echo"], ["list-files", "echo", "minio", "echo"],
                 ["get-file", "echo", "minio", "echo/big.bin"]):
        with open("/dev/full", "wb") as full:
            result = client(controller.url, *args, stdout=full)
        line = one_line(result, 4)
        assert line == "faas-supervisor: error: no space left on device writing standard output\n"


def test_a_file_past_its_size_limit_is_one_line_exit_2(controller: ControllerProcess,
                                                        tmp_path: Path) -> None:
    data = os.urandom(BIG)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    target = tmp_path / "out.bin"
    line = one_line(client(controller.url, "run", "echo", "--input", str(source),
                           "--output", str(target), limited=True), 2)
    assert line == f"faas-supervisor: error: cannot write --output {target}: File too large\n"
    assert list(tmp_path.iterdir()) == [source]  # no temporary file left

    # To stdout, a file: not a result silently cut short at the limit, with exit 0.
    for args in (["run", "echo", "--input", str(source)],
                 ["get-file", "echo", "minio", "echo/big.bin"]):
        with target.open("wb") as out:
            result = client(controller.url, *args, stdout=out, limited=True)
        line = one_line(result, 2)
        assert line == "faas-supervisor: error: cannot write standard output: File too large\n"

    # get-file's LOCAL: the local file's failure, not the store's (it was exit 3).
    local = tmp_path / "got.bin"
    line = one_line(client(controller.url, "get-file", "echo", "minio", "echo/big.bin",
                           str(local), limited=True), 2)
    assert line == f"faas-supervisor: error: cannot write {local}: File too large\n"


# 2: --output into what is not a regular file


def test_output_writes_through_a_symlink_and_into_a_fifo(controller: ControllerProcess,
                                                          tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("before")
    link = tmp_path / "link.txt"
    link.symlink_to("real.txt")
    result = client(controller.url, "run", "echo", "--text-input", "through the link",
                    "--output", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and real.read_text() == "through the link"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "real.txt"]

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    try:
        result = client(controller.url, "run", "echo", "--text-input", "into the fifo",
                        "--output", str(fifo))
    finally:
        if reader.is_alive() and not got:  # the client never opened it: end the read
            with open(fifo, "wb"):
                pass
        reader.join(30)
    assert result.returncode == 0, result.stderr
    assert got == [b"into the fifo"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_output_dev_stdout_writes_into_what_stdout_is(controller: ControllerProcess,
                                                      tmp_path: Path) -> None:
    """`--output /dev/stdout` as a shell's `> /dev/stdout`: into the pipe (its link into
    /proc names `pipe:[N]`, which is no path: it was exit 2), and into the file stdout is
    open on, opened again as `>` opens it (truncated), not replaced by a new file."""
    result = client(controller.url, "run", "echo", "--text-input", "hello",
                    "--output", "/dev/stdout")
    assert (result.returncode, result.stdout) == (0, b"hello"), result.stderr
    log = tmp_path / "log.txt"
    log.write_bytes(b"earlier\n")
    inode = log.stat().st_ino
    with open(log, "ab") as appended:
        result = client(controller.url, "run", "echo", "--text-input", "hello",
                        "--output", "/dev/stdout", stdout=appended)
    assert result.returncode == 0, result.stderr
    assert (log.read_bytes(), log.stat().st_ino) == (b"hello", inode)
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_output_writes_into_a_device(controller: ControllerProcess, tmp_path: Path) -> None:
    device = tmp_path / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        reason = "making a device node needs CAP_MKNOD"
        print(reason)
        pytest.skip(reason)
    result = client(controller.url, "run", "echo", "--text-input", "gone",
                    "--output", str(device))
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(device.lstat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["null"]


# 3: an answer that is not UTF-8


@pytest.fixture
async def latin1_server() -> AsyncIterator[str]:
    """A controller whose JSON answers are Latin-1, not UTF-8."""
    async def service(request: web.Request) -> web.Response:
        return web.Response(body=b'{"name": "caf\xe9", "token": "t"}',
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/system/services", service)
    app.router.add_get("/system/services/{name}", service)
    async with served(app) as url:
        yield url


async def test_an_answer_that_is_not_utf8_is_one_line(latin1_server: str) -> None:
    for args, path in ((["get", "cafe"], "/system/services/cafe"),
                       (["list"], "/system/services"),
                       (["run", "cafe", "--text-input", "x"], "/system/services/cafe")):
        # In a thread: the server answers from this test's event loop meanwhile.
        result = await asyncio.to_thread(client, latin1_server, *args)
        line = one_line(result, 1)
        assert line.startswith(f"faas-supervisor: error: GET {path}: the answer is not "
                               "UTF-8 JSON (byte "), line


# 4: a signal while stdin is open and idle


def started(endpoint: str, read_end: int, *args: str) -> subprocess.Popen[bytes]:
    """The client, its stdin the pipe's read end, which it then holds alone: the test
    keeps only the write end, open."""
    try:
        return subprocess.Popen(command(*args), stdin=read_end, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env_for(endpoint))
    finally:
        os.close(read_end)


def stopped(process: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """SIGTERM, then the exit awaited for STOP_DEADLINE seconds; killed if it is late."""
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the client did not exit within {STOP_DEADLINE} s of SIGTERM "
                    "while its stdin stayed open")
    return process.returncode, err


def test_sigterm_stops_run_reading_an_idle_stdin(controller: ControllerProcess) -> None:
    read_end, write_end = os.pipe()
    try:
        process = started(controller.url, read_end, "run", "echo", "--input", "-")
        try:
            # Written whole only once the client has read all but a pipe's buffer of it:
            # it is running, its signal handlers set, and it waits for more.
            os.write(write_end, os.urandom(1 << 20))
            status, err = stopped(process)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    finally:
        os.close(write_end)
    assert status == 143, err
    assert err == b"faas-supervisor: error: stopped by SIGTERM\n"


def test_sigterm_stops_put_file_reading_an_idle_stdin(controller: ControllerProcess,
                                                      moto_server: S3Server) -> None:
    """Its multipart upload (started: stdin gave more than 8 MiB) is aborted, too."""
    s3 = moto_server.client()  # type: ignore[no-untyped-call]
    s3.create_bucket(Bucket="idle")

    def uploads() -> list[Any]:
        return list(s3.list_multipart_uploads(Bucket="idle").get("Uploads", []))

    read_end, write_end = os.pipe()
    try:
        process = started(controller.url, read_end, "put-file", "echo", "minio",
                          "idle/up.bin")
        try:
            # In a thread: the write returns once the client has read (nearly) all of it.
            writer = threading.Thread(target=os.write, args=(write_end, os.urandom(9 << 20)),
                                      daemon=True)
            writer.start()
            wait_until(uploads, 60, "the multipart upload to start", controller)
            status, err = stopped(process)
            writer.join(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    finally:
        os.close(write_end)
    assert status == 143, err
    assert err == b"faas-supervisor: error: stopped by SIGTERM\n"
    assert uploads() == []
    assert "Contents" not in s3.list_objects_v2(Bucket="idle")
