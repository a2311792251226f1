"""The process's log lines: logs._ConsoleLines writes the common line itself, and must
write exactly what structlog's ConsoleRenderer (the configured look) would, its values
that do not print escaped; one record is one line whatever its values hold."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from faas_supervisor import logs

STAMP = "2026-11-30T20:56:09.027278Z"

CASES: list[dict[str, Any]] = [
    # The watchdog's line per invocation, as written.
    {"event": "invocation", "component": "watchdog", "id": "23a663ac-5798-42b3",
     "path": "/", "exit_code": 0, "error": None, "seconds": 0.0012},
    {"event": "watchdog ready", "component": "watchdog", "port": 8080, "mode": "fork"},
    {"event": "no fields"},
    {"event": "types", "t": True, "f": 1.5, "b": b"\x00bytes", "l": [1, "a b"],
     "d": {"k": "v"}, "empty": "", "neg": -3},
    # Values ConsoleRenderer quotes (written here as it would), and everything with a
    # layout of its own: delegated, but the output must still be the same.
    {"event": "quoted", "a": "two words", "b": "x=y", "c": "tab\there", "d": "it's",
     "e": 'say "hi"', "f": "line\nbreak", "g": "trailing "},
    {"event": "error with", "error": "could not remove: [Errno 39] Directory not empty"},
    {"event": "ends with a space ", "x": 1},
    {"event": "ends with a space "},
    {"event": "", "x": 1},
    {"event": "logger", "logger": "aiohttp", "logger_name": "x"},
    {"event": "stack", "stack": "a stack"},
    {"event": "exc", "exception": "Traceback ...\nValueError"},
    {"event": "exc none", "exc_info": None, "x": "1"},
    {"event": "unicode", "name": "caf\u00e9", "s": "\udcff"},
    {"event": "redacted", "token": "***", "component": "controller"},
    # Text that does not print: shown quoted and escaped, never as is.
    {"event": "controls", "path": "/x\x0c\x1b[1A\x1b[2K\x0b2026-12-01T00:00:00Z",
     "nel": "a\x85b", "ls": "a\u2028b", "ps": "a\u2029b", "nbsp": "a\xa0b",
     "bidi": "a\u202eb", "del": "a\x7fb", "plain": "/ok"},
    {"event": "event\x1b[2K\u2028forged", "x": 1},
    {"event": "logger too", "logger": "aio\nhttp", "path": "/x\x0cy"},
]
# What a client can put in a request path, a storage key or a file name to forge or
# erase a line: a line break for some reader, a terminal's escape sequence, a look-alike.
HOSTILE = ["\n", "\r", "\x0b", "\x0c", "\x1b[1A\x1b[2K", "\x1c", "\x85", "\u2028", "\u2029",
           "\xa0", "\u3000", "\u200b", "\u202e", "\x00", "\udcff"]


class _Text(str):
    pass


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "critical",
                                   "exception", "weird"])
@pytest.mark.parametrize("case", [*CASES, {"event": _Text("sub"), "v": _Text("x")},
                                  {"event": "sub", "v": _Text("a b")}, {"event": 42, "v": 1}])
def test_lines_are_console_renderers(level: str, case: dict[str, Any]) -> None:
    """ConsoleRenderer's text, once what does not print is escaped (logs._escaped)."""
    full = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    fast = logs._ConsoleLines(structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0))
    for stamp in (STAMP, "", None):
        event = {**case, "level": level}
        if stamp is not None:
            event["timestamp"] = stamp
        assert fast(None, level, dict(event)) == full(None, level, logs._escaped(event)), event


@pytest.mark.parametrize("layout", [{}, {"logger": "aiohttp"}, {"stack": "x"}, {"v": _Text("x")}])
@pytest.mark.parametrize("where", ["value", "event", "logger"])
def test_a_record_is_one_printable_line_whatever_its_values_hold(
    layout: dict[str, Any], where: str,
) -> None:
    """A request's path, a storage key, an output's name reach the process log as values:
    written as is, a form feed or a NEL or U+2028 started a line of its own (a forged
    record, to some readers), an escape sequence erased one on a terminal (a review
    found it). Through the written-here line and through ConsoleRenderer alike."""
    fast = logs._ConsoleLines(structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0))
    for bad in HOSTILE:
        text = f"/a{bad}forged"  # no blank: a value with one was shown quoted already
        event: dict[str, Any] = {"timestamp": STAMP, "level": "info", "event": "invocation",
                                 "id": "23a663ac", **layout}
        if where == "event":
            event["event"] = text
        else:
            event["path" if where == "value" else "logger"] = text
        line = fast(None, "info", event)
        first = line.split("\n")[0] if "stack" in layout else line  # a stack is lines
        assert first.isprintable(), (bad, line)
        assert "\\" in first, (bad, line)  # escaped, not dropped


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[io.StringIO], None]]:
    """logs.configure() with a stream of the test's, the chain made at once; structlog's
    and logs' settings as they were afterwards."""
    saved = structlog.get_config()
    monkeypatch.setattr(logs, "_threshold", logs._threshold)
    monkeypatch.setattr(logs, "_pending", logs._pending)

    def configure(out: io.StringIO) -> None:
        logs.configure("INFO", out)
        logs._structlog()

    yield configure
    structlog.configure(**saved)


def test_an_exception_is_still_rendered_whole(
    configured: Callable[[io.StringIO], None],
) -> None:
    """The configured chain, end to end: a logged exception keeps its traceback."""
    out = io.StringIO()
    configured(out)
    try:
        raise ValueError("boom")
    except ValueError:
        logs.get_logger(component="test").exception("failed", id="x")
    logs.get_logger(component="test").info("plain", n=1)
    lines = out.getvalue()
    assert "[error    ] failed component=test id=x\n" in lines
    assert "ValueError: boom" in lines
    assert lines.rstrip("\n").endswith("[info     ] plain component=test n=1")


def test_a_logged_exception_never_shows_the_frames_local_variables(
    configured: Callable[[io.StringIO], None],
) -> None:
    """structlog's default look of an exception, with `rich` installed (this venv has it,
    through schemathesis), prints every frame's locals: a provider's settings, keys and
    all (a review found it). The plain traceback is configured instead."""
    import importlib.util

    assert importlib.util.find_spec("rich") is not None, "the case this guards against"
    out = io.StringIO()
    configured(out)

    def failing(settings: dict[str, str]) -> None:
        raise RuntimeError("boom")

    secret = "-".join(["s3cr3t", "in", "a", "local"])  # not in the source the trace shows
    try:
        failing({"secret_key": secret})
    except RuntimeError:
        logs.get_logger(component="test").exception("failed")
    assert "RuntimeError: boom" in out.getvalue()
    assert secret not in out.getvalue()


class _Writes(io.StringIO):
    """A stream that keeps each write() apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_line_is_one_write_with_its_newline(
    configured: Callable[[io.StringIO], None],
) -> None:
    """A line and its newline go out in one write: a second writer on the same stream
    (another thread's line, a script's output mirrored by `run`) cannot come between."""
    out = _Writes()
    configured(out)
    logs.get_logger(component="test").info("one", n=1)
    logs.get_logger(component="test").warning("two")
    assert len(out.writes) == 2
    assert out.writes[0].endswith("[info     ] one component=test n=1\n")
    assert out.writes[1].endswith("[warning  ] two component=test\n")


class _Failing(io.StringIO):
    """A stream whose writes raise `error` while it is set."""

    error: Exception | None = None

    def write(self, text: str) -> int:
        if self.error is not None:
            raise self.error
        return super().write(text)


@pytest.mark.parametrize("error", [
    BrokenPipeError(32, "Broken pipe"),  # stderr a pipe whose reader has gone
    OSError(28, "No space left on device"),
    ValueError("I/O operation on closed file."),
])
def test_a_line_that_cannot_be_written_is_dropped_not_raised(
    configured: Callable[[io.StringIO], None], error: Exception,
) -> None:
    """A log line never fails the code that logs it: the controller's stop logged its
    first line into a closed pipe and ended there, its watchdogs left running (a review
    found it). That line is lost; the next ones are written once the stream takes them."""
    out = _Failing()
    configured(out)
    log = logs.get_logger(component="test")
    out.error = error
    log.info("lost", n=1)
    log.warning("lost too")
    out.error = None
    log.info("kept", n=2)
    assert out.getvalue().endswith("[info     ] kept component=test n=2\n")
    assert "lost" not in out.getvalue()


def test_no_stderr_at_all_drops_every_line(
    configured: Callable[[io.StringIO], None], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process started with stderr closed (`2>&-`: sys.stderr is None) logs into
    nothing: its first line no longer ends it (AttributeError on None's write, found by a
    review of the lines dropped when they cannot be written)."""
    monkeypatch.setattr(sys, "stderr", None)
    logs.configure("INFO")
    logs._structlog()
    log = logs.get_logger(component="test")
    log.info("nowhere", n=1)
    log.error("nowhere either")


def test_aiohttps_log_of_a_malformed_request_is_one_line_without_it(
    configured: Callable[[io.StringIO], None], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiohttp logs a request it cannot parse with a traceback quoting the offending line:
    an Authorization header, a token in the URL, in the log (a review found it). One
    line naming the error instead; other records of aiohttp's are left as they are."""
    from aiohttp.http_exceptions import BadHttpMessage

    server = logging.getLogger("aiohttp.server")
    monkeypatch.setattr(server, "filters", [])  # as they were, afterwards
    configured(io.StringIO())
    assert logs._without_the_request in server.filters
    secret = "-".join(["Bearer", "s3cr3t"])
    try:
        raise BadHttpMessage(f"Invalid header value char:\n\n  b'Authorization: {secret}\\x01'")
    except BadHttpMessage as exc:
        record = server.makeRecord(server.name, logging.ERROR, "x", 1, "Error handling request "
                                   "from %s", ("127.0.0.1",), (type(exc), exc, exc.__traceback__))
    assert logs._without_the_request(record)
    line = logging.Formatter(logging.BASIC_FORMAT).format(record)
    assert line == ("ERROR:aiohttp.server:Error handling request from 127.0.0.1: a malformed "
                    "request (BadHttpMessage, 400); its text is not logged")

    try:
        raise ValueError("a bug of ours")
    except ValueError as exc:
        record = server.makeRecord(server.name, logging.ERROR, "x", 1, "Unhandled exception",
                                   (), (type(exc), exc, exc.__traceback__))
    assert logs._without_the_request(record)
    assert "ValueError: a bug of ours" in logging.Formatter().format(record)
