"""`faas-supervisor service put-file|get-file|list-files` against a real controller whose
default store is an S3 server (moto's, given with --minio-endpoint), both as subprocesses.

The client finds the store's endpoint and keys through the controller (`/system/config`'s
`minio_provider`, or the service's own `storage_providers`) and talks S3 to it itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import S3Server, faas_command, free_port
from tests.integration.controller_fixture import (
    ControllerFactory,
    ControllerProcess,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

COPY = '#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/copy"\n'


@pytest.fixture
def controller(tmp_path: Path, moto_server: S3Server) -> Iterator[ControllerProcess]:
    factory = ControllerFactory(tmp_path)
    try:
        yield factory(args=[
            "--minio-endpoint", moto_server.endpoint,
            "--minio-access-key", moto_server.access_key,
            "--minio-secret-key", moto_server.secret_key,
            "--minio-region", moto_server.region,
        ])
    finally:
        factory.close()


def client_env(controller: ControllerProcess, env: dict[str, str] | None = None
               ) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("FAAS_", "AWS_"))}
    user, password = controller.auth
    full.update({"FAAS_ENDPOINT": controller.url, "FAAS_USER": user,
                 "FAAS_PASSWORD": password,
                 # No credentials of this machine's: only what the controller hands out.
                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                 "AWS_CONFIG_FILE": "/nonexistent"})
    full.update(env or {})
    return full


def client(controller: ControllerProcess, *args: str, stdin: bytes = b"",
           env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE,
           pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*faas_command(), "service", *args], input=stdin,
                          env=client_env(controller, env), stdout=stdout,
                          stderr=subprocess.PIPE, pass_fds=pass_fds, timeout=120, check=False)


@contextmanager
def running(controller: ControllerProcess, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """The client started, its stdout and stderr pipes; killed if a test leaves it running."""
    process = subprocess.Popen([*faas_command(), "service", *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=client_env(controller))
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def ok(controller: ControllerProcess, *args: str, **kwargs: Any) -> bytes:
    result = client(controller, *args, **kwargs)
    assert result.returncode == 0, (
        f"service {' '.join(args)} exited {result.returncode}: {result.stderr!r}\n"
        f"{controller.log_text()}")
    return result.stdout


def refused(controller: ControllerProcess, status: int, *args: str, **kwargs: Any) -> str:
    """The one error line of a command that must fail with `status`."""
    result = client(controller, *args, **kwargs)
    assert result.returncode == status, (result.returncode, result.stderr)
    assert result.stdout == b""
    line = result.stderr.decode()
    assert line.startswith("faas-supervisor: error: ") and line.count("\n") == 1, line
    assert "Traceback" not in line
    return line


def test_put_list_and_get_a_services_files(controller: ControllerProcess, tmp_path: Path,
                                           moto_server: S3Server) -> None:
    controller.create({
        "name": "files", "script": COPY,
        "input": [{"storage_provider": "minio", "path": "files/input"}],
        "output": [{"storage_provider": "minio.default", "path": "files/output"}],
    })
    data = os.urandom(9 << 20)  # over the multipart threshold (8 MiB)
    local = tmp_path / "photo.bin"
    local.write_bytes(data)

    # Into the input path: it is a new input, and starts the service's job, one.
    assert ok(controller, "put-file", "files", "minio", "files/input/", str(local)) == b""
    (job,) = controller.wait_jobs("files", 1, timeout=120).values()
    assert job["status"] == "Succeeded", controller.log_text()
    s3 = moto_server.client()
    assert s3.get_object(Bucket="files", Key="output/copy")["Body"].read() == data
    assert len(controller.jobs("files")) == 1

    listing = ok(controller, "list-files", "files", "minio.default", "files/input").decode()
    header, *rows = listing.splitlines()
    assert header.split() == ["NAME", "SIZE", "LAST", "MODIFIED"]
    assert [row.split()[:2] for row in rows] == [["photo.bin", str(len(data))]]
    assert ok(controller, "list-files", "files", "minio", "files/nothing-here") == (
        b'There are no files in "files/nothing-here"\n')
    # A key's characters that do not print are shown escaped: a terminal's commands (ESC)
    # do not reach the terminal, and a tab does not make one column seem two.
    s3.put_object(Bucket="files", Key="output/a\x1b[2Jb\tc", Body=b"x")
    listing = ok(controller, "list-files", "files", "minio", "files/output").decode()
    assert listing.splitlines()[1].split()[:2] == ["a\\x1b[2Jb\\tc", "1"], listing
    assert "\x1b" not in listing

    back = tmp_path / "back.bin"
    assert ok(controller, "get-file", "files", "minio", "files/output/copy", str(back)) == b""
    assert back.read_bytes() == data
    folder = tmp_path / "into"
    folder.mkdir()
    ok(controller, "get-file", "files", "minio", "/files/input/photo.bin", str(folder))
    assert (folder / "photo.bin").read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == ["photo.bin"]  # nothing partial left

    # To standard output, a file already holding a line: after it, in order (s3transfer
    # would write each ranged part at its offset in a file it can seek).
    appended = tmp_path / "appended"
    with appended.open("wb") as sink:
        sink.write(b"head\n")
        sink.flush()
        done = client(controller, "get-file", "files", "minio", "files/output/copy",
                      stdout=sink)
    assert done.returncode == 0, done.stderr
    assert appended.read_bytes() == b"head\n" + data

    # Without LOCAL: standard input and standard output (outside the input path: no job).
    ok(controller, "put-file", "files", "minio", "files/notes/a b.txt", stdin=b"from stdin\n")
    assert ok(controller, "get-file", "files", "minio", "files/notes/a b.txt") == (
        b"from stdin\n")
    assert len(controller.jobs("files")) == 1


def test_a_services_own_provider_and_its_hidden_keys(controller: ControllerProcess,
                                                     tmp_path: Path,
                                                     moto_server: S3Server) -> None:
    """`minio.ID`: the service's own provider. The controller hides its keys (as OSCAR's
    manager hides the default's): boto3's own credentials are used then, else it fails."""
    controller.create({
        "name": "own", "script": COPY,
        "storage_providers": {"minio": {"moto": {
            "endpoint": moto_server.endpoint, "access_key": "AKOWN", "secret_key": "SKOWNKEY",
            "region": moto_server.region, "verify": False}}},
    })
    moto_server.client().create_bucket(Bucket="own-bucket")
    local = tmp_path / "x.txt"
    local.write_bytes(b"own provider")
    keys = {"AWS_ACCESS_KEY_ID": "AKFROMENV", "AWS_SECRET_ACCESS_KEY": "SKFROMENV"}
    ok(controller, "put-file", "own", "minio.moto", "own-bucket/x.txt", str(local), env=keys)
    assert ok(controller, "get-file", "own", "minio.moto", "own-bucket/x.txt", "-",
              env=keys) == b"own provider"
    line = refused(controller, 3, "get-file", "own", "minio.moto", "own-bucket/x.txt", "-")
    assert "minio.moto" in line and "credentials" in line


def test_errors_are_one_line_with_their_exit_status(controller: ControllerProcess,
                                                    tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    controller.create({
        "name": "errs", "script": COPY,
        "input": [{"storage_provider": "minio", "path": "errs/input"}],
        "storage_providers": {"minio": {"dead": {
            "endpoint": dead, "access_key": "AKDEAD", "secret_key": "SKDEADKEY"}}},
    })
    local = tmp_path / "f.txt"
    local.write_bytes(b"x")
    out = tmp_path / "out.txt"

    # Arguments and local files: 2.
    line = refused(controller, 2, "put-file", "errs", "minio.nope", "errs/input/f", str(local))
    assert "defines no storage provider minio.nope" in line
    line = refused(controller, 2, "get-file", "errs", "webdav.dcache", "errs/input/f")
    assert "minio and s3 providers" in line
    line = refused(controller, 2, "put-file", "errs", "minio", "errs/input/",
                   str(tmp_path / "missing.txt"))
    assert "missing.txt: no such file" in line
    refused(controller, 2, "get-file", "errs", "minio", "errs/input/",
            str(out))  # a folder, not an object
    refused(controller, 2, "put-file", "errs", "minio", "/", str(local))  # no bucket
    refused(controller, 2, "get-file", "errs", "minio", "errs/input/f.txt",
            str(tmp_path / "no" / "such" / "folder" / "f"))
    # Into a folder, under a name that cannot be a file there: said before any request
    # (a service that does not exist is not even asked for), not after the download.
    into = tmp_path / "into"
    (into / "f.txt").mkdir(parents=True)
    for service in ("errs", "nope"):
        line = refused(controller, 2, "get-file", service, "minio", "errs/input/f.txt",
                       str(into))
        assert f"{into / 'f.txt'}: is a folder, not a file" in line
        for key in ("errs/input/..", "errs/input/."):
            line = refused(controller, 2, "get-file", service, "minio", key, str(into))
            assert "give LOCAL a file name" in line
    assert [p.name for p in into.iterdir()] == ["f.txt"]
    assert list((into / "f.txt").iterdir()) == []
    line = refused(controller, 2, "put-file", "errs", "minio", "errs/input/", str(into))
    assert "into: is a folder, not a file" in line

    # The storage server: 3, and no file written.
    line = refused(controller, 3, "get-file", "errs", "minio", "errs/input/none.txt", str(out))
    assert "minio.default" in line and "no such object" in line
    assert not out.exists()
    line = refused(controller, 3, "list-files", "errs", "minio", "no-such-bucket")
    assert "no such bucket" in line
    line = refused(controller, 3, "put-file", "errs", "minio.dead", "b/f.txt", str(local))
    assert "minio.dead" in line and "cannot upload b/f.txt" in line
    assert "AKDEAD" not in line and "SKDEADKEY" not in line

    # The controller: 1.
    line = refused(controller, 1, "put-file", "nope", "minio", "errs/input/f", str(local))
    assert "GET /system/services/nope: 404" in line
    assert len(controller.jobs("errs")) == 0  # nothing was put in the input path


def test_a_name_that_is_not_utf8_is_a_bad_argument(controller: ControllerProcess,
                                                   tmp_path: Path,
                                                   moto_server: S3Server) -> None:
    """A REMOTE_PATH (or the LOCAL file name put under a folder) whose bytes are not UTF-8
    cannot be an S3 key: exit 2 before anything reaches the store, not a storage failure
    quoting Python's codec."""
    controller.create({
        "name": "bytes", "script": COPY,
        "input": [{"storage_provider": "minio", "path": "bytes/input"}],
    })
    local = tmp_path / "f.txt"
    local.write_bytes(b"x")
    bad = os.fsdecode(b"bytes/input/\xffx")  # as the OS hands such an argument to Python
    for args in (("put-file", "bytes", "minio", bad, str(local)),
                 ("get-file", "bytes", "minio", bad, "-"),
                 ("list-files", "bytes", "minio", os.fsdecode(b"bytes/\xff"))):
        line = refused(controller, 2, *args)
        assert "REMOTE_PATH 'bytes/" in line and "is not UTF-8" in line, line
        assert "codec" not in line
    named = tmp_path / os.fsdecode(b"\xffy.txt")
    named.write_bytes(b"y")
    line = refused(controller, 2, "put-file", "bytes", "minio", "bytes/input/", str(named))
    assert "is not UTF-8" in line and "codec" not in line
    listed = moto_server.client().list_objects_v2(Bucket="bytes").get("Contents", [])
    assert [o["Key"] for o in listed] == ["input/"]  # the controller's folder marker alone
    assert len(controller.jobs("bytes")) == 0


def test_the_embedded_defaults_own_s3_endpoint(tmp_path: Path) -> None:
    """No --minio-endpoint: `minio` is the controller's folder store, reached through the
    S3 endpoint it serves on --s3-port, with the keys /system/config hands out."""
    factory = ControllerFactory(tmp_path)
    try:
        embedded = factory()
        embedded.create({
            "name": "local", "script": COPY,
            "input": [{"storage_provider": "minio", "path": "local/input"}],
            "output": [{"storage_provider": "minio", "path": "local/output"}],
        })
        data = os.urandom(9 << 20)  # multipart through the endpoint too
        local = tmp_path / "in.bin"
        local.write_bytes(data)
        ok(embedded, "put-file", "local", "minio", "local/input/in.bin", str(local))
        (job,) = embedded.wait_jobs("local", 1, timeout=120).values()
        assert job["status"] == "Succeeded", embedded.log_text()
        assert (embedded.storage / "local" / "output" / "copy").read_bytes() == data

        rows = ok(embedded, "list-files", "local", "minio", "local/input").decode()
        assert [row.split()[:2] for row in rows.splitlines()[1:]] == [
            ["in.bin", str(len(data))]]
        back = tmp_path / "back.bin"
        ok(embedded, "get-file", "local", "minio", "local/output/copy", str(back))
        assert back.read_bytes() == data
        assert len(embedded.jobs("local")) == 1
    finally:
        factory.close()


def test_put_file_reads_a_pipe(controller: ControllerProcess, moto_server: S3Server) -> None:
    """LOCAL may be any readable path, as `run --input`'s: `<(cmd)` is /dev/fd/N, a pipe."""
    controller.create({"name": "piped", "script": COPY})
    moto_server.client().create_bucket(Bucket="piped")
    data = os.urandom(48 << 10)  # within a pipe's buffer: written before the client starts
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        os.close(write_end)
        ok(controller, "put-file", "piped", "minio", "piped/in/", f"/dev/fd/{read_end}",
           pass_fds=(read_end,))
    finally:
        os.close(read_end)
    got = moto_server.client().get_object(Bucket="piped", Key=f"in/{read_end}")
    assert got["Body"].read() == data


def test_a_reader_that_stops_early_ends_get_file_quietly(controller: ControllerProcess,
                                                         moto_server: S3Server) -> None:
    """`get-file ... | head -c 10`: status 141 (a SIGPIPE's), nothing said: not a storage
    failure (it was exit 3, `cannot download ...: Broken pipe`)."""
    controller.create({"name": "head", "script": COPY})
    s3 = moto_server.client()
    s3.create_bucket(Bucket="head")
    s3.put_object(Bucket="head", Key="big", Body=os.urandom(4 << 20))  # past a pipe's buffer
    with running(controller, "get-file", "head", "minio", "head/big") as process:
        assert process.stdout is not None and process.stderr is not None
        assert len(process.stdout.read(10)) == 10
        process.stdout.close()
        err = process.stderr.read()
        assert process.wait(60) == 141, err
        assert err == b""


BIG = 256 << 20  # a transfer that takes seconds on loopback: long enough to stop midway


def test_sigterm_stops_a_transfer_and_leaves_nothing(controller: ControllerProcess,
                                                     tmp_path: Path,
                                                     moto_server: S3Server) -> None:
    """SIGTERM (`kill`, `timeout`) stops put-file and get-file as Ctrl-C does: their
    cleanup runs, exit 143 (130 for Ctrl-C). (It ended them at once: a download's `.part`
    file left, a multipart upload left open in the store.)"""
    controller.create({"name": "big", "script": COPY})
    s3 = moto_server.client()
    s3.create_bucket(Bucket="big")
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(BIG)  # zeros, sparse: made at once
    s3.upload_file(str(big), "big", "stored.bin")

    def uploads() -> list[Any]:
        return list(s3.list_multipart_uploads(Bucket="big").get("Uploads", []))

    with running(controller, "put-file", "big", "minio", "big/up.bin", str(big)) as process:
        wait_until(uploads, 60, "the multipart upload to start", controller)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 143, err
        assert err == b"faas-supervisor: error: stopped by SIGTERM\n"
    assert uploads() == []
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="big")["Contents"]] == ["stored.bin"]

    folder = tmp_path / "down"
    folder.mkdir()
    for sig in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C's, taken the same way
        with running(controller, "get-file", "big", "minio", "big/stored.bin",
                     str(folder)) as process:
            wait_until(lambda: any(folder.iterdir()), 60, "the download to start", controller)
            process.send_signal(sig)
            _, err = process.communicate(timeout=60)
            assert process.returncode == 128 + sig, err
        assert list(folder.iterdir()) == []
