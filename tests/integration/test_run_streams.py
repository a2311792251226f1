"""`faas-supervisor run`'s standard streams as whoever starts it may leave them: standard
input a non-blocking pipe whose writer is behind, standard output closed. Real processes,
real pipes (SPEC 5; README, `run`)."""

from __future__ import annotations

import array
import base64
import fcntl
import os
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.integration.conftest import faas_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

COPY = '#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"\n'


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID", "EXEC_TIMEOUT",
                        "LOG_LEVEL")}
    env["TMPDIR"] = str(tmp)
    return env


def _unread(pipe: int) -> int:
    """How many bytes `pipe` (either end) holds that its reader has not taken yet."""
    count = array.array("i", [0])
    fcntl.ioctl(pipe, termios.FIONREAD, count)
    return count[0]


def test_a_non_blocking_stdin_whose_writer_is_behind_gives_the_whole_event(
    tmp_path: Path,
) -> None:
    """Standard input a non-blocking pipe (O_NONBLOCK, set by whoever shares it: some
    container runtimes do) its writer fills more slowly than `run` reads: a read that found
    it empty (EAGAIN) was taken for its end, and the script ran on the part of the event
    come so far (none at all when it came late), exit 0. The script gets the whole event.

    Each piece is written once `run` has taken all before it, so each of its reads in
    between finds the pipe empty. A pipe tells its writer nothing when that happens: its
    content is polled (every millisecond), as test_run.stopped polls its `ready`."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(COPY)
    event = b'{"message": "%s"}' % (b"x" * 20_000)
    pieces = [event[i:i + 1000] for i in range(0, len(event), 1000)]
    reader, writer = os.pipe()
    try:
        os.set_blocking(reader, False)  # on the open file: `run`'s standard input shares it
        with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err, \
                subprocess.Popen([*faas_command(), "run", "--script", str(script)],
                                 env=_env(tmp), stdin=reader, stdout=out, stderr=err
                                 ) as process:
            os.close(reader)
            reader = -1
            for piece in pieces:
                # Until `run` has taken the piece before, or has ended without it.
                while _unread(writer) and process.poll() is None:
                    time.sleep(0.001)
                if process.poll() is not None:
                    break  # it ended the event early: the assertions below say how
                os.write(writer, piece)
            os.close(writer)
            writer = -1
            status = process.wait(timeout=30)
    finally:
        for end in (reader, writer):
            if end != -1:
                os.close(end)
    stderr = (tmp_path / "stderr").read_bytes()
    assert status == 0, stderr
    # One output file: the response is its bytes in base64, the event as the script got it.
    got = base64.b64decode((tmp_path / "stdout").read_bytes(), validate=True)
    assert (len(got), got) == (len(event), event), stderr
    assert list(tmp.iterdir()) == []


def test_a_closed_stdout_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    """`run ... >&-`: Python has no sys.stdout at all; the response's write once ended in
    an AttributeError traceback. It fails as a write to a reader gone does (EPIPE): one
    line naming what could not be written, exit 1, the folders gone."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(COPY)
    result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *faas_command(), "run",
                             "--script", str(script)],
                            input=b"{}", env=_env(tmp), stderr=subprocess.PIPE, timeout=30)
    assert result.returncode == 1, result.stderr
    assert result.stderr.endswith(b"faas-supervisor: error: cannot write the response to "
                                  b"standard output: Bad file descriptor\n"), result.stderr
    assert b"Traceback" not in result.stderr and b"Exception ignored" not in result.stderr
    assert list(tmp.iterdir()) == []



def _blocked_reading(pid: int, pipe: int) -> bool:
    """Whether a thread of `pid` is blocked in read(2) on `pipe` (any descriptor of it)."""
    wanted = f"pipe:[{os.fstat(pipe).st_ino}]"
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "syscall").read_text().split()
            # read's number on x86-64; its first argument, the descriptor
            if fields[0] == "0" and os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}") == wanted:
                return True
        except OSError:  # the thread, or the descriptor, went meanwhile
            continue
    return False


@pytest.mark.parametrize("source", ["stdin", "--event-file"])
def test_sigterm_while_the_event_s_writer_sends_nothing_stops_run(
    tmp_path: Path, source: str
) -> None:
    """The event's writer holds its end of a blocking pipe open and sends nothing (a job
    deleted before its event came, Ctrl-C at a terminal). SIGTERM was ignored: the
    cancelled read's file was closed while its thread still read it, and the close waited
    for that read's lock for ever (until SIGKILL). `run` ends at once, 143, one line saying
    why, its folders gone."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(COPY)
    command = [*faas_command(), "run", "--script", str(script)]
    reader, writer = os.pipe()
    if source == "--event-file":  # the same pipe, opened by its name by `run` itself
        command += ["--event-file", f"/proc/{os.getpid()}/fd/{reader}"]
    try:
        with subprocess.Popen(command, env=_env(tmp),
                              stdin=reader if source == "stdin" else subprocess.DEVNULL,
                              stderr=subprocess.PIPE) as process:
            # Until it waits in read(2) for the event: another process's state, polled.
            while not _blocked_reading(process.pid, reader):
                assert process.poll() is None
                time.sleep(0.001)
            process.send_signal(signal.SIGTERM)
            try:
                _, stderr = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()  # it would wait for ever: the test fails now, not at its timeout
                raise
    finally:
        os.close(reader)
        os.close(writer)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.endswith(b"faas-supervisor: error: stopped by SIGTERM\n"), stderr
    assert list(tmp.iterdir()) == []
