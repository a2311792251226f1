"""The job runner's frames: messages cut anywhere by the stream come out whole, and the
descriptors that travel with them are taken in order (a real Unix socket pair)."""

from __future__ import annotations

import os
import socket

import pytest

from faas_supervisor.cli import build_parser
from faas_supervisor.job_runner import Frames, frame


def test_frames_cut_anywhere_come_out_whole() -> None:
    messages = [{"op": "run", "job": f"j{i}", "env": {"EVENT": "x" * i * 1000}} for i in range(5)]
    data = b"".join(frame(m) for m in messages)
    for step in (1, 7, 4096, len(data)):
        frames, out = Frames(), []
        for start in range(0, len(data), step):
            frames.feed(data[start:start + step], ())
            while (message := frames.pop()) is not None:
                out.append(message)
        assert out == messages


def test_descriptors_are_taken_in_the_order_their_frames_were_sent() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pipes = [os.pipe() for _ in range(3)]
    try:
        for i, (read_end, _write_end) in enumerate(pipes):
            socket.send_fds(ours, [frame({"job": i, "fds": 1})], [read_end])
        ours.close()
        frames, got = Frames(), []
        while True:
            data, fds, _flags, _addr = socket.recv_fds(theirs, 5, 8)  # small reads
            if not data:
                break
            frames.feed(data, fds)
            while (message := frames.pop()) is not None:
                got.append((message["job"], frames.take(message["fds"])))
        for i, (_read_end, write_end) in enumerate(pipes):
            os.write(write_end, str(i).encode())
        assert [(job, os.read(fds[0], 10)) for job, fds in got] == [
            (i, str(i).encode()) for i in range(3)
        ]
        for _job, fds in got:
            os.close(fds[0])
    finally:
        theirs.close()
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)


def test_the_warm_up_leaves_the_runner_single_threaded() -> None:
    """The runner forks: no thread (Python's or a library's native one) may be alive."""
    import subprocess
    import sys

    code = ("import os, threading; from faas_supervisor.job_runner import warm_up; warm_up(); "
            "print(threading.active_count(), len(os.listdir('/proc/self/task')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.split() == ["1", "1"], result.stderr


def test_a_warm_up_that_cannot_read_the_s3_models_still_serves_other_jobs() -> None:
    """AWS_PROFILE naming no profile makes boto3's session fail: a job that uses S3 must
    fail and say why, as a fresh `run` would; the runner, and its other jobs, go on."""
    import subprocess
    import sys

    code = "from faas_supervisor import job_runner; job_runner.warm_up(); print('warm')"
    env = {**os.environ, "AWS_PROFILE": "no-such-profile-here"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "warm\n"
    assert result.stderr.startswith("job-runner: S3 models not preloaded:"), result.stderr
    assert result.stderr.count("\n") == 1


def test_the_internal_command_is_found_but_not_offered(capsys: pytest.CaptureFixture[str]) -> None:
    """`faas-supervisor bogus` named the local backend's internal `job-runner` among the
    commands to choose from (argparse's message; left alone in an earlier note). It names
    the user's commands only; `job-runner` still parses."""
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("invalid choice: 'bogus' (choose from 'watchdog', 'run', 'service', "
                        "'controller', 'manifests')\n"), err
    assert parser.parse_args(["job-runner", "folder"]).folder == "folder"
