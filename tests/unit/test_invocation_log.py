"""The runtime's own lines of an invocation (logs.InvocationLog, invocation.py): what a
logs response starts with at each `log_level`, and what `run` writes to its log stream."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.config import FunctionConfig
from faas_supervisor.invocation import Invocation, Runtime
from faas_supervisor.responses import failure_body, success_body

pytestmark = pytest.mark.timeout(60)  # real child processes

SECRET = "hunter2-token-in-the-body"
BODY = f'{{"token": "{SECRET}"}}'.encode()
SCRIPT = 'echo "out line"\necho "err line" >&2\n'
OUTPUT = b"out line\nerr line\n"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def invoke(tmp_path: Path, level: str, script: str = SCRIPT,
           echo: list[str] | None = None) -> tuple[bytes, Invocation]:
    """One invocation of `script` with BODY; its response body, read whole."""
    path = tmp_path / "script.sh"
    path.write_text(script)
    runtime = Runtime(config=FunctionConfig(log_level=level), script=path,
                      base_env={"PATH": os.environ["PATH"]}, tmp_dir=tmp_path)
    invocation = Invocation(runtime, "inv-1", echo.append if echo is not None else None)

    async def go() -> bytes:
        event = await invocation.read_event(_chunks(BODY), "", 1 << 20)
        outcome = await invocation.execute(event, {})
        body = (failure_body(invocation, outcome.error) if outcome.error is not None
                else success_body(invocation, ""))
        return b"".join([chunk async for chunk in body.stream])

    try:
        return asyncio.run(go()), invocation
    finally:
        invocation.close()


def test_at_info_the_logs_start_with_the_input_the_exit_status_and_the_duration(
    tmp_path: Path,
) -> None:
    body, _ = invoke(tmp_path, "INFO")
    assert body.endswith(OUTPUT)
    runtime = body[: -len(OUTPUT)].decode()
    assert re.fullmatch(
        rf"{STAMP} INFO event received kind=json bytes={len(BODY)}\n"
        rf"{STAMP} INFO script exited status=0 seconds=\d+\.\d{{3}}\n",
        runtime,
    ), runtime
    assert SECRET not in runtime  # the body is described, never shown


def test_a_failed_script_s_status_is_in_the_runtime_lines(tmp_path: Path) -> None:
    body, invocation = invoke(tmp_path, "INFO", SCRIPT + "exit 3\n")
    assert invocation.outcome.exit_code == 3
    text = body.decode()
    assert text.startswith("script exited with status 3\n")  # the reason, first
    assert re.search(rf"{STAMP} INFO script exited status=3 seconds=", text)
    assert text.endswith(OUTPUT.decode())


@pytest.mark.parametrize("level", ["WARNING", "ERROR", "CRITICAL"])
def test_above_info_the_logs_are_the_script_s_output_alone(tmp_path: Path, level: str) -> None:
    body, _ = invoke(tmp_path, level)
    assert body == OUTPUT


def test_at_debug_the_info_lines_are_there_too(tmp_path: Path) -> None:
    body, _ = invoke(tmp_path, "DEBUG")
    text = body.decode()
    assert " DEBUG running script" in text
    assert " INFO event received kind=json" in text and " INFO script exited status=0" in text


def test_echo_gets_each_line_as_kept_and_as_it_comes(tmp_path: Path) -> None:
    """`run` writes them to its log stream with an echo: the same lines as a response."""
    echoed: list[str] = []
    body, invocation = invoke(tmp_path, "INFO", echo=echoed)
    assert echoed == invocation.log.lines
    assert len(echoed) == 2
    assert "".join(echoed).encode() + OUTPUT == body


def test_echo_at_critical_writes_nothing(tmp_path: Path) -> None:
    echoed: list[str] = []
    invoke(tmp_path, "CRITICAL", echo=echoed)
    assert echoed == []


class _Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda message, **fields: self.lines.append((level, message))


@pytest.mark.parametrize("process_level", ["INFO", "DEBUG"])
def test_the_watchdogs_own_log_gets_the_summary_lines_at_debug_only(
    monkeypatch: pytest.MonkeyPatch, process_level: str
) -> None:
    """A line per request at the default level, each costing a tenth of an `echo`
    invocation's CPU through structlog: the process log has them at DEBUG."""
    from faas_supervisor import logs

    recorder = _Recorder()
    monkeypatch.setattr(logs, "_threshold", logs.LEVELS[process_level])
    monkeypatch.setattr(logs, "get_logger", lambda **bound: recorder)
    log = logs.InvocationLog("INFO", "inv-2")
    log.summary("script exited", status="0")
    log.info("uploading", key="k")
    assert len(log.lines) == 2  # both kept for the response
    expected = [("info", "uploading")]
    if process_level == "DEBUG":
        expected.insert(0, ("debug", "script exited"))
    assert recorder.lines == expected


def test_a_key_or_a_name_from_outside_cannot_start_a_line_of_its_own() -> None:
    """An S3 event's key (URL-decoded: `%0A` is a newline) once wrote a line of its own in
    `run`'s log and the logs response, `ERROR` and all: what does not print is escaped."""
    from faas_supervisor.logs import InvocationLog

    echoed: list[str] = []
    log = InvocationLog("INFO", "inv-1", echoed.append)
    forged = "in/a\n2026-12-01T00:00:00Z ERROR forged line\rb\x1b[2J"
    log.info("downloading", provider="minio.default", bucket="b", key=forged)
    log.warning(f"output {forged} skipped: a fifo")
    assert len(echoed) == 2 and all(line.count("\n") == 1 for line in echoed)
    assert "\r" not in "".join(echoed) and "\x1b" not in "".join(echoed)
    assert echoed[0].endswith(
        r" key=in/a\n2026-12-01T00:00:00Z ERROR forged line\rb\x1b[2J" + "\n")
    assert echoed[1].endswith(
        r"WARNING output in/a\n2026-12-01T00:00:00Z ERROR forged line\rb\x1b[2J skipped: "
        "a fifo\n")
    assert log.text().decode() == "".join(echoed)


def test_an_event_too_large_for_the_environment_is_a_bad_event(tmp_path: Path) -> None:
    """A variable of over 128 KiB (an S3 key with `file_stage_in: false` goes whole into
    STORAGE_OBJECT_KEY; here a request's variable): the kernel refuses the script's start
    (E2BIG). It once left `run` with a traceback and exit status 1."""
    path = tmp_path / "script.sh"
    path.write_text("echo never\n")
    runtime = Runtime(config=FunctionConfig(log_level="INFO"), script=path,
                      base_env={"PATH": os.environ["PATH"]}, tmp_dir=tmp_path)
    invocation = Invocation(runtime, "inv-1")

    async def go() -> None:
        event = await invocation.read_event(_chunks(b"{}"), "", 1 << 20)
        await invocation.execute(event, {"Http_X_Key": "k" * (200 << 10)})

    try:
        asyncio.run(go())
    finally:
        invocation.close()
    error = invocation.outcome.error
    assert error is not None and (error.exit_status, error.http_status) == (2, 400)
    assert error.message == ("the script cannot start: its environment is too large (a "
                             "variable of over 128 KiB, or all of them past the system's "
                             "limit)")


def test_an_output_folder_that_cannot_be_read_is_named_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its files cannot be uploaded: a warning says so (they were dropped without a word).
    As root here, a `chmod 000` folder can be read: the listing is made to fail."""
    scandir = os.scandir

    def refusing(path: Any) -> Any:
        if str(path).endswith("/res"):
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    body, _ = invoke(tmp_path, "INFO",
                     'mkdir "$TMP_OUTPUT_DIR/res"\necho x > "$TMP_OUTPUT_DIR/res/r.txt"\n')
    assert re.search(STAMP + r" WARNING outputs in res/ skipped: the folder cannot be read "
                     r"\(Permission denied\)\n", body.decode()), body
