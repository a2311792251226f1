"""`faas-supervisor run` at its edges: stopped in the middle of an upload, run by a user that
is not root, its log stream's reader gone or behind, a script whose output ends mid-line,
outputs the folder store cannot hold. Real processes, real folders (SPEC 5; README, `run`)."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.integration.conftest import RUNTIME_LINE, faas_command
from tests.integration.test_run import run, stopped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

OUTPUT = '#!/bin/sh\necho result > "$TMP_OUTPUT_DIR/r.txt"\necho "to the log"\n'
UID = 1000  # an image's `USER 1000`


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID", "EXEC_TIMEOUT",
                        "LOG_LEVEL")}
    env.update({"TMPDIR": str(tmp), **extra})
    return env


def _store_config(tmp_path: Path, store: Path, ptype: str = "local", pid: str = "files",
                  extra: str = "") -> Path:
    """Outputs to `results/out` in the folder `store`: a `local` provider, or `minio` with a
    path (the embedded default's, as the controller gives it to its services)."""
    config = tmp_path / "store.yaml"
    config.write_text(f"storage_providers:\n  {ptype}:\n    {pid}: {{path: {store}}}\n"
                      f"output:\n  - {{storage_provider: {ptype}.{pid}, path: results/out}}\n"
                      + extra)
    return config


def _files(folder: Path) -> list[str]:
    """Every file under `folder`, hidden ones included, relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


# ---- stopped while an output is copied into a folder store --------------------------------


def test_a_job_stopped_during_an_upload_to_a_folder_store_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    """SIGTERM while a large output is copied into a `local` provider's folder: `run` ends
    with os._exit, which killed the copying thread before it removed its
    `.<name>.<hex>.partial` file: that file stayed in the store for good."""
    store = tmp_path / "store"
    (store / "results").mkdir(parents=True)  # its bucket
    config = _store_config(tmp_path, store)
    script = tmp_path / "script.sh"
    # Sparse: made at once, copied at the page cache's speed (a second or so).
    script.write_text('#!/bin/sh\ntruncate -s 4G "$TMP_OUTPUT_DIR/big.bin"\n')
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    folder = store / "results" / "out"

    def copying() -> bool:
        return folder.is_dir() and any(p.name.endswith(".partial") for p in folder.iterdir())

    status, stderr = stopped(["run", "--config", str(config), "--script", str(script)],
                             _env(tmp, EVENT="{}"), copying, "the copy's partial file",
                             pause=0.005)
    assert status == 128 + signal.SIGTERM, stderr
    assert b"Traceback" not in stderr
    assert _files(store) == []
    assert list(tmp.iterdir()) == []


# ---- a user that is not root --------------------------------------------------------------


def _skip(reason: str) -> NoReturn:
    print(f"skipped: {reason}")  # shown with -s, and in the report's captured output
    pytest.skip(reason)


@pytest.fixture
def unprivileged() -> Iterator[tuple[Path, list[str]]]:
    """A folder of uid 1000's (pytest's own is root's alone), and the command's prefix that
    runs a process as that user: as root, setpriv; as another user already, none."""
    if os.geteuid() != 0:
        base = Path(tempfile.mkdtemp(prefix="faas-nonroot-"))
        yield base, []
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base)
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        _skip("setpriv (util-linux) is not installed: cannot run `run` as a user not root")
    as_user = [setpriv, f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
    probe = subprocess.run([*as_user, *faas_command(), "--version"], capture_output=True)
    if probe.returncode != 0:
        _skip(f"uid {UID} cannot run faas-supervisor here: {probe.stderr[-200:]!r}")
    base = Path(tempfile.mkdtemp(prefix="faas-nonroot-"))
    try:
        os.chown(base, UID, UID)
        yield base, as_user
    finally:
        shutil.rmtree(base)  # root: whatever the modes


@pytest.mark.parametrize("script", [
    'echo x > "$TMP_OUTPUT_DIR/f"; chmod 000 "$TMP_OUTPUT_DIR"',
    'mkdir "$TMP_OUTPUT_DIR/d"; echo x > "$TMP_OUTPUT_DIR/d/f"; chmod 000 "$TMP_OUTPUT_DIR/d"',
    'echo x > "$TMP_INPUT_DIR/f"; chmod 500 "$TMP_INPUT_DIR"',
    'mkdir -p "$TMP_INPUT_DIR/d/e"; echo x > "$TMP_INPUT_DIR/d/e/f"\n'
    'chmod 500 "$TMP_INPUT_DIR/d/e"; chmod 000 "$TMP_INPUT_DIR/d" "$TMP_INPUT_DIR"',
], ids=["output-000", "output-subfolder-000", "input-500", "nested"])
def test_a_non_root_job_whose_script_locks_its_folders_leaves_none(
    unprivileged: tuple[Path, list[str]], script: str
) -> None:
    """As a user that is not root, a folder without its owner's rights cannot be listed
    or emptied: rmtree(ignore_errors=True) left the invocation's folders in TMPDIR, where
    the README says they go whatever happened."""
    base, as_user = unprivileged
    (base / "script.sh").write_text(f"#!/bin/sh\n{script}\n")
    tmp = base / "tmp"
    tmp.mkdir()
    if as_user:
        os.chown(tmp, UID, UID)
    result = subprocess.run([*as_user, *faas_command(), "run", "--script", str(base / "script.sh")],
                            env=_env(tmp, EVENT="{}"), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert list(tmp.iterdir()) == [], result.stderr


# ---- the log stream's reader gone ---------------------------------------------------------


@pytest.mark.parametrize("event", ["{}", "storage"])
def test_a_log_stream_nobody_reads_does_not_fail_the_job(tmp_path: Path, event: str) -> None:
    """Standard error a pipe whose reader left (`2>&1 | head -n 1`): the runtime's first
    line raised BrokenPipeError, `run` exited 1 with a traceback and the outputs of a
    script that succeeded were not uploaded. The job goes on; its status is the script's."""
    store = tmp_path / "store"
    (store / "results" / "in").mkdir(parents=True)
    (store / "results" / "in" / "x").write_text("x")
    config = _store_config(tmp_path, store, "minio", "default",
                           "input:\n  - {storage_provider: minio, path: results/in}\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(OUTPUT)
    args = [*faas_command(), "run", "--config", str(config), "--script", str(script)]
    if event == "storage":  # nothing on stdout: the whole `2>&1 | head -n 1` case
        event = ('{"Records": [{"eventSource": "minio:s3", "s3": {"bucket": {"name": '
                 '"results"}, "object": {"key": "in/x"}}}]}')
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(args, env=_env(tmp, EVENT=event), stdout=subprocess.PIPE,
                                stderr=writer, timeout=30)
    finally:
        os.close(writer)
    assert result.returncode == 0
    assert (store / "results" / "out" / "r.txt").read_text() == "result\n"
    assert b"faas-supervisor" not in result.stdout  # no line of the log's lands there
    assert list(tmp.iterdir()) == []


def test_a_logs_response_into_a_log_stream_nobody_reads_is_the_scripts_status(
    tmp_path: Path,
) -> None:
    """`run ... 2>&1 | head -n 1` of a script with no output file (a logs response): once
    the log stream was found gone, fd 2 went to /dev/null, stdout (the same dead pipe)
    no longer looked like the log, the logs were written there again: EPIPE, exit 1."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nfor i in 1 2 3 4 5; do echo line $i; done\n")
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run([*faas_command(), "run", "--script", str(script)],
                                env=_env(tmp, EVENT='{"a": 1}'), stdout=writer,
                                stderr=writer, timeout=30)
    finally:
        os.close(writer)
    assert result.returncode == 0
    assert list(tmp.iterdir()) == []


def test_a_closed_log_stream_does_not_fail_the_job(tmp_path: Path) -> None:
    """`run ... 2>&-`: sys.stderr is None; the first runtime line raised (exit 1), and the
    outputs were not uploaded. The response still goes to standard output, alone."""
    store = tmp_path / "store"
    (store / "results").mkdir(parents=True)  # its bucket
    config = _store_config(tmp_path, store)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(OUTPUT)
    command = shlex.join([*faas_command(), "run", "--config", str(config), "--script",
                          str(script)])
    result = subprocess.run(["sh", "-c", f"exec {command} 2>&-"], env=_env(tmp, EVENT="{}"),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout
    assert result.stdout == b"cmVzdWx0Cg=="  # base64 of the one output, and nothing else
    assert (store / "results" / "out" / "r.txt").read_text() == "result\n"
    assert list(tmp.iterdir()) == []


def test_a_job_stopped_with_its_log_stream_closed_writes_nothing_to_stdout(
    tmp_path: Path,
) -> None:
    """`run ... 2>&-` stopped by SIGTERM: `stopped by SIGTERM` went to standard output
    (print's fallback when sys.stderr is None), into the response's place."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ready = tmp_path / "ready"
    script = tmp_path / "script.sh"
    script.write_text(f"#!/bin/sh\ntouch {ready}\nsleep 1000\n")
    command = shlex.join([*faas_command(), "run", "--script", str(script)])
    process = subprocess.Popen(["sh", "-c", f"exec {command} 2>&-"], env=_env(tmp, EVENT="{}"),
                               stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():  # a file: no event to await
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the script did not start in 60 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, stdout) == (128 + signal.SIGTERM, b"")
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_non_blocking_log_stream_whose_reader_is_behind_gets_the_whole_log(
    tmp_path: Path, unbuffered: str,
) -> None:
    """Standard error a non-blocking pipe (O_NONBLOCK, set by whoever shares it: some
    container runtimes do) its reader empties more slowly than the script prints: the first
    write that found it full failed with EAGAIN, taken for a reader gone, and the rest of
    the log went to /dev/null; unbuffered (PYTHONUNBUFFERED), a short write's rest was
    dropped. The log arrives whole, the runtime's last line after the script's output."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    printed = b"".join(b"%07d\n" % i for i in range(500_000))  # 4 MB, every line its own
    (tmp_path / "printed").write_bytes(printed)
    script = tmp_path / "script.sh"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'printed'}\nexit 3\n")
    reader, writer = os.pipe()
    try:
        # A pipe of one page, behind whatever reads it: each of the script's chunks (up to
        # 64 KiB at a time through `run`) overflows it, as a slow reader's pipe overflows.
        fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(writer, False)
        with subprocess.Popen(
            [*faas_command(), "run", "--script", str(script)],
            env=_env(tmp, EVENT="{}", LOG_LEVEL="CRITICAL", PYTHONUNBUFFERED=unbuffered),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=writer,
        ) as process:
            os.close(writer)
            writer = -1
            with open(reader, "rb", closefd=False) as log:
                received = log.read()  # to its end: every writer has closed it
            status = process.wait(timeout=30)
    finally:
        os.close(reader)
        if writer != -1:
            os.close(writer)
    expected = printed + b"faas-supervisor: error: script exited with status 3\n"
    got, whole = len(received), len(expected)  # sizes: a diff of megabytes says less
    assert (status, got) == (3, whole), received[-100:]
    assert received == expected
    assert list(tmp.iterdir()) == []


def _behind_a_one_page_pipe(args: list[str], env: dict[str, str], fd: int,
                            other: Path) -> tuple[int, bytes]:
    """`faas-supervisor *args` with its descriptor `fd` (1 or 2) a non-blocking pipe of one
    page, the other of the two the file `other`: (its exit status, all the pipe carried).
    Read as fast as it comes, the pipe still overflows: each write larger than a page
    takes one page at most (unbuffered, the rest is the writer's), or finds it full
    (EAGAIN), as a slow reader's pipe does."""
    reader, writer = os.pipe()
    try:
        fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(writer, False)
        with open(other, "wb") as other_file, subprocess.Popen(
            [*faas_command(), *args], env=env, stdin=subprocess.DEVNULL,
            stdout=writer if fd == 1 else other_file, stderr=writer if fd == 2 else other_file,
        ) as process:
            os.close(writer)
            writer = -1
            with open(reader, "rb", closefd=False) as pipe:
                received = pipe.read()  # to its end: every writer has closed it
            return process.wait(timeout=30), received
    finally:
        os.close(reader)
        if writer != -1:
            os.close(writer)


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_non_blocking_stdout_whose_reader_is_behind_gets_the_whole_response(
    tmp_path: Path, unbuffered: str,
) -> None:
    """Standard output a non-blocking pipe its reader empties more slowly than the response
    comes: the first write that found it full failed with EAGAIN, taken for a reader gone
    (exit 1, `cannot write the response`, 8 KiB sent); unbuffered (PYTHONUNBUFFERED), each
    short write's rest was dropped and `run` exited 0 with a response cut to pieces."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    output = b"".join(b"%07d\n" % i for i in range(375_000))  # 3 MB, every line its own
    (tmp_path / "output").write_bytes(output)
    script = tmp_path / "script.sh"
    script.write_text(f'#!/bin/sh\ncp {tmp_path / "output"} "$TMP_OUTPUT_DIR/big"\n')
    status, received = _behind_a_one_page_pipe(
        ["run", "--script", str(script)],
        _env(tmp, EVENT="{}", LOG_LEVEL="CRITICAL", PYTHONUNBUFFERED=unbuffered),
        1, tmp_path / "stderr")
    expected = base64.b64encode(output)  # one output: the response is its bytes, base64
    got, whole = len(received), len(expected)  # sizes: a diff of megabytes says less
    assert (status, got) == (0, whole), (tmp_path / "stderr").read_bytes()[-300:]
    assert received == expected
    assert (tmp_path / "stderr").read_bytes() == b""
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_non_blocking_stderr_whose_reader_is_behind_gets_the_whole_start_up_error(
    tmp_path: Path, unbuffered: str,
) -> None:
    """A failure before the invocation starts (a bad config) is one line on standard
    error, there a non-blocking pipe its reader is behind on (a line of many pages here;
    as well, one page that another writer left full): print's write raised EAGAIN, so
    exit 1 or 120 (a traceback, the interpreter's flush at exit failing) and a few pages
    of the line; unbuffered, the short write's rest was dropped (4 097 bytes, exit 2)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    value = "x" * 1_000_000
    config = tmp_path / "config.yaml"
    config.write_text(f"file_stage_in: {value}\n")
    status, received = _behind_a_one_page_pipe(
        ["run", "--config", str(config), "--script", "/bin/true"],
        _env(tmp, EVENT="{}", PYTHONUNBUFFERED=unbuffered), 2, tmp_path / "stdout")
    expected = f"faas-supervisor: error: file_stage_in: {value!r} is not true or false\n"
    expected = expected.encode()
    got, whole = len(received), len(expected)
    assert (status, got) == (2, whole), received[-100:]
    assert received == expected
    assert (tmp_path / "stdout").read_bytes() == b""
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_start_up_error_whose_reader_is_gone_keeps_its_exit_status(
    tmp_path: Path, unbuffered: str,
) -> None:
    """A bad config with standard error a pipe nobody reads any more: its line cannot be
    written, and the exit status still says what failed (2), as with `2>&-`. It was 120
    (the error line's EPIPE out of main's handler, the interpreter's flush at exit
    failing), or 1 unbuffered."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text("file_stage_in: maybe\n")
    read, write = os.pipe()
    os.close(read)  # the reader gone before the first byte
    try:
        done = subprocess.run(
            [*faas_command(), "run", "--config", str(config), "--script", "/bin/true"],
            env=_env(tmp, EVENT="{}", PYTHONUNBUFFERED=unbuffered), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=write, timeout=60)
    finally:
        os.close(write)
    assert (done.returncode, done.stdout) == (2, b"")
    assert list(tmp.iterdir()) == []


# ---- a script whose output ends mid-line --------------------------------------------------


def test_a_runtime_line_after_output_without_a_newline_starts_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    """`printf 'no newline'`: the next runtime line was glued to it on the log stream
    (`no newline2026-...Z INFO script exited ...`), and so was a failed script's reason,
    which the README says is the last line."""
    done = run(tmp_path, "#!/bin/sh\nprintf 'no newline'\n", env={"EVENT": "{}"})
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(RUNTIME_LINE + rb"no newline\n" + RUNTIME_LINE, done.stderr), \
        done.stderr
    failed = run(tmp_path, "#!/bin/sh\nprintf 'no newline'\nexit 3\n",
                 env={"EVENT": "{}", "LOG_LEVEL": "CRITICAL"})
    assert failed.returncode == 3
    assert failed.stderr == b"no newline\nfaas-supervisor: error: script exited with status 3\n"
    # No runtime line after it: the script's bytes as it wrote them, nothing added.
    quiet = run(tmp_path, "#!/bin/sh\nprintf 'no newline'\n",
                env={"EVENT": "{}", "LOG_LEVEL": "CRITICAL", "JOB_UUID": "j"})
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == b"no newline"


def test_a_job_stopped_after_output_without_a_newline_says_so_on_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ready = tmp_path / "ready"
    script = tmp_path / "script.sh"
    script.write_text(f"#!/bin/sh\nprintf 'half a line'\ntouch {ready}\nsleep 1000\n")
    status, stderr = stopped(["run", "--script", str(script)],
                             _env(tmp, EVENT="{}", LOG_LEVEL="CRITICAL"), ready.exists,
                             "the script's output")
    assert status == 128 + signal.SIGTERM, stderr
    assert stderr == b"half a line\nfaas-supervisor: error: stopped by SIGTERM\n"
    assert list(tmp.iterdir()) == []


# ---- outputs the folder store cannot hold --------------------------------------------------


@pytest.mark.parametrize("name", [".meta.json", ".cache/c.txt"])
def test_an_output_named_as_the_folder_stores_own_is_refused(tmp_path: Path, name: str) -> None:
    """An output whose path has a segment starting with '.' was written into the folder
    store, which keeps such names for itself: its listings and its S3 endpoint never show
    them (exit 0, the file invisible). It is refused as over S3 (exit 3), naming the key,
    and nothing is written."""
    store = tmp_path / "store"
    store.mkdir()
    config = _store_config(tmp_path, store, "minio", "default")  # the embedded default's
    script = f'#!/bin/sh\nmkdir -p "$(dirname "$TMP_OUTPUT_DIR/{name}")"\n' \
             f'echo m > "$TMP_OUTPUT_DIR/{name}"\n'
    result = run(tmp_path, script, "--config", str(config), env={"EVENT": "{}"})
    assert result.returncode == 3, result.stderr
    last = result.stderr.splitlines()[-1].decode()
    assert last.startswith(f"faas-supervisor: error: minio.default: cannot write "
                           f"results/out/{name}: the key must not have a segment starting "
                           "with '.'"), last
    assert _files(store) == []
