"""The process's log lines: logs._ConsoleLines writes the common line itself, and must
write exactly what structlog's ConsoleRenderer (the configured look) would."""

from __future__ import annotations

import io
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
    # Values ConsoleRenderer quotes, and everything with a layout of its own: delegated,
    # but the output must still be the same.
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
]


class _Text(str):
    pass


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "critical",
                                   "exception", "weird"])
@pytest.mark.parametrize("case", [*CASES, {"event": _Text("sub"), "v": _Text("x")},
                                  {"event": "sub", "v": _Text("a b")}, {"event": 42, "v": 1}])
def test_lines_are_console_renderers(level: str, case: dict[str, Any]) -> None:
    full = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    fast = logs._ConsoleLines(structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0))
    for stamp in (STAMP, "", None):
        event = {**case, "level": level}
        if stamp is not None:
            event["timestamp"] = stamp
        assert fast(None, level, dict(event)) == full(None, level, dict(event)), event


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
