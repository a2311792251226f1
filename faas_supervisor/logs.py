"""Logging: structlog for the process, and the per-invocation capture used in responses.

The watchdog logs each line once to stderr through structlog. An invocation also keeps its
own lines (at or above the function's `log_level`) so that a response made of logs can
start with them, as the FaaS Supervisor's responses do.

structlog is imported, and configured, with the first line at or above the level: a
`faas-supervisor run` that logs nothing at its level never pays for the import (about
15 ms of a start that is mostly imports). The lines are structlog's, as they always were.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

# A key, a file name or a message from outside never starts a line of its own in a log.
from faas_supervisor.errors import printable as _printable

if TYPE_CHECKING:
    from types import ModuleType

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_REDACTED_KEYS = frozenset({"access_key", "secret_key", "password", "token", "authorization"})


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A second line of defence: values of credential-named keys never reach a log line."""
    for key in event.keys() & _REDACTED_KEYS:
        event[key] = "***"
    return event


# configure()'s level (None before it: structlog's defaults, every line) and the settings
# structlog has yet to be given (None once given).
_threshold: int | None = None
_pending: tuple[int, TextIO] | None = None


def configure(level: str, stream: TextIO | None = None) -> None:
    """Set up logging once per process; lines go to stderr, one per event."""
    global _threshold, _pending
    _threshold = LEVELS[level]
    _pending = (LEVELS[level], stream or sys.stderr)
    if "structlog" in sys.modules:  # already in use: apply now, as before
        _structlog()
    # Libraries (boto3, aiohttp) log through the standard library: keep them quiet.
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=stream or sys.stderr)
    # Added once however often configure() runs: addFilter skips a filter it has.
    logging.getLogger("aiohttp.server").addFilter(_without_the_request)


def _without_the_request(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot parse (it answers 400) with a traceback whose
    message quotes the offending line: an Authorization header, a token in the URL.
    That record becomes one line naming the error alone."""
    exc = record.exc_info[1] if record.exc_info else None
    # aiohttp's exceptions, if aiohttp is loaded: without it there is no such record.
    errors = sys.modules.get("aiohttp.http_exceptions")
    if errors is not None and isinstance(exc, errors.HttpProcessingError):
        record.msg = (f"{record.getMessage()}: a malformed request ({type(exc).__name__}, "
                      f"{exc.code}); its text is not logged")
        record.args = ()
        record.exc_info = record.exc_text = None
    return True


def _structlog() -> ModuleType:
    """structlog, configured with the last configure()'s settings."""
    global _pending
    import structlog

    if _pending is not None:
        level, stream = _pending
        _pending = None
        structlog.configure(
            processors=[
                # No merge_contextvars: nothing here binds context variables, and it would
                # copy the context for every line.
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _redact,
                _ConsoleLines(structlog.dev.ConsoleRenderer(
                    colors=False, pad_event_to=0,
                    # Not the default: with `rich` installed that is rich's, which prints
                    # each frame's local variables, credentials among them.
                    exception_formatter=structlog.dev.plain_traceback)),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            # One for every logger: their lines take turns on the stream.
            logger_factory=_Lines(stream).made,
            cache_logger_on_first_use=True,
        )
    return structlog


class _Lines:
    """structlog's output: each line written to the stream and flushed, as structlog's
    WriteLogger writes it (a line and its newline in one write: print() makes two system
    calls), except that a line that cannot be written is dropped: a log line never raises
    into the code that logs it. A controller whose stderr reader has gone (a pipe closed,
    its supervisor restarted) would otherwise fail in the middle of its own stop, leaving
    its services' watchdogs running."""

    __slots__ = ("_flush", "_lock", "_write")

    def __init__(self, stream: TextIO | None) -> None:
        # None: stderr closed (`2>&-`): every line is one that cannot be written.
        self._write: Callable[[str], object] = _nowhere if stream is None else stream.write
        self._flush: Callable[[], object] = _nowhere if stream is None else stream.flush
        self._lock = threading.Lock()  # the lines of the loop's thread and of others

    def made(self, *_args: Any) -> _Lines:
        """structlog's logger_factory."""
        return self

    def msg(self, message: str) -> None:
        with self._lock:
            try:
                self._write(message + "\n")
                self._flush()
            # Its reader gone (EPIPE), a full disk, a closed stream: the line is lost, the
            # work goes on (and the interpreter's flush at exit does not fail on it: the
            # controller so stopped exits 0, tests/integration/test_controller_exit.py).
            except (OSError, ValueError):
                pass

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _nowhere(*_args: object) -> None:
    """A stream's write and flush when there is no stream."""


# What _ConsoleLines writes itself; anything else goes to structlog's ConsoleRenderer.
_PLAIN_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
_LEVEL_WIDTH = len("exception")  # ConsoleRenderer pads levels to its longest known name
_COLUMN_KEYS = frozenset({"timestamp", "level", "event"})
_OWN_LAYOUT_KEYS = frozenset({"stack", "exception", "exc_info", "logger", "logger_name"})
# The columns ConsoleRenderer writes as text, unquoted; "stack" and "exception" are
# tracebacks, lines by design.
_TEXT_COLUMNS = frozenset({"timestamp", "level", "event", "logger", "logger_name"})


class _ConsoleLines:
    """ConsoleRenderer(colors=False, pad_event_to=0)'s line, the same text, written
    directly in the common case: a timestamp, a level, an event, plain values. The
    watchdog writes one such line per invocation, and ConsoleRenderer's column machinery
    costs about 20 us of it. Lines with an exception, a stack or a logger name go to it
    (tests/unit/test_log_lines.py compares the two).

    One record is one line, whatever its values hold: a text value that does not print
    whole (str.isprintable: no control character, escape sequence, line or paragraph
    separator, NEL, no-break or other space but ASCII's) is shown as ConsoleRenderer
    shows one with a space, quoted and escaped (its repr). ConsoleRenderer alone would
    write it as is, and a request's path could start a forged line of its own."""

    def __init__(self, full: Callable[[Any, str, Any], str]) -> None:
        self._full = full

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        stamp = event_dict.get("timestamp")
        level = event_dict.get("level")
        event = event_dict.get("event")
        if (type(stamp) is not str or not stamp or level not in _PLAIN_LEVELS
                or type(event) is not str or not event or not event.isprintable()
                or not _OWN_LAYOUT_KEYS.isdisjoint(event_dict.keys())):
            return self._full(logger, name, _escaped(event_dict))
        parts = [f"{stamp} [{level:<{_LEVEL_WIDTH}}] {event}"]
        for key in sorted(event_dict.keys() - _COLUMN_KEYS):
            value = event_dict[key]
            if type(value) is str:
                # ConsoleRenderer quotes one with a blank, `=` or a quote (\t\r\n do
                # not print); `in`, not a set: the common value is a short plain one.
                if (value.isprintable() and " " not in value and "=" not in value
                        and '"' not in value and "'" not in value):
                    parts.append(f"{key}={value}")
                else:
                    parts.append(f"{key}={value!r}")
            elif isinstance(value, str):  # a subclass: ConsoleRenderer's own rules
                return self._full(logger, name, _escaped(event_dict))
            else:
                parts.append(f"{key}={value!r}")
        return " ".join(parts).rstrip(" ")


class _Quoted:
    """Text ConsoleRenderer shows as its repr, as it shows text with a space: it writes
    any other str as is, and a value is not a str once wrapped."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return str.__repr__(self.text)


def _escaped(event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """`event_dict` for ConsoleRenderer, its text that does not print escaped: values
    quoted (see _ConsoleLines), the columns it writes as text (the event...) escaped in
    place, as the invocation log escapes a message."""
    shown = dict(event_dict)
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isprintable():
            if key in _TEXT_COLUMNS:
                shown[key] = _printable(value)
            elif key not in ("stack", "exception"):
                shown[key] = _Quoted(value)
    return shown


def get_logger(**bound: Any) -> Logger:
    # Lazy: a module-level logger made before configure() still uses its settings.
    return Logger(bound)


def get_unfiltered_logger(**bound: Any) -> Logger:
    """A logger whose lines show at any configured level, each at its own level: for
    output asked for by a setting of its own (write_debug), not by the log level."""
    return Logger(bound, filtered=False)


class Logger:
    """A structlog logger made on the first line that passes the configured level (any
    line, unfiltered)."""

    __slots__ = ("_bound", "_filtered", "_logger")

    def __init__(self, bound: dict[str, Any], filtered: bool = True) -> None:
        self._bound = bound
        self._logger: Any = None
        self._filtered = filtered

    def _log(self, level: int, method: str, event: str, args: tuple[Any, ...],
             fields: dict[str, Any]) -> None:
        if self._filtered and _threshold is not None and level < _threshold:
            return  # structlog's filtering logger would drop it too
        if self._logger is None:
            structlog = _structlog()
            if self._filtered:
                self._logger = structlog.get_logger(**self._bound)
            else:  # the configured processors and output, with no level to pass
                self._logger = structlog.wrap_logger(
                    None, wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
                    **self._bound)
        getattr(self._logger, method)(event, *args, **fields)

    def bind(self, **fields: Any) -> Logger:
        return Logger({**self._bound, **fields}, self._filtered)

    def debug(self, event: str, *args: Any, **fields: Any) -> None:
        self._log(10, "debug", event, args, fields)

    def info(self, event: str, *args: Any, **fields: Any) -> None:
        self._log(20, "info", event, args, fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> None:
        self._log(30, "warning", event, args, fields)

    def error(self, event: str, *args: Any, **fields: Any) -> None:
        self._log(40, "error", event, args, fields)

    def exception(self, event: str, *args: Any, **fields: Any) -> None:
        self._log(40, "exception", event, args, fields)

    def critical(self, event: str, *args: Any, **fields: Any) -> None:
        self._log(50, "critical", event, args, fields)


_stamps: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def _stamp() -> str:
    """The time as the lines show it, formatted once per second (strftime is not free)."""
    global _stamps
    now = int(time.time())
    if _stamps[0] != now:
        _stamps = (now, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    return _stamps[1]


class InvocationLog:
    """One invocation's runtime log lines: kept for the response, and written to the
    process's log too: through structlog (the watchdog's log, each line naming its
    invocation), or as kept, by `echo` (`run`, whose log is the job's: the same lines as
    a logs response, and no structlog to import for them)."""

    def __init__(self, level: str, invocation_id: str,
                 echo: Callable[[str], None] | None = None) -> None:
        self.threshold = LEVELS[level]
        self.lines: list[str] = []
        self.invocation_id = invocation_id
        self.echo = echo
        self._logger: Logger | None = None  # made at the first line printed: most print none

    def _log(self, level: str, message: str, process_level: str | None = None,
             **fields: Any) -> None:
        """`process_level`: the level of the line in the process's log, when not `level`."""
        number = LEVELS[level]
        shown = process_level or level
        to_process = self.echo is None and (_threshold is None or LEVELS[shown] >= _threshold)
        # A line below both levels costs nothing more (a debug line at INFO, say).
        if not to_process and number < self.threshold:
            return
        message = _printable(message)
        if to_process:
            if self._logger is None:
                self._logger = get_logger(invocation=self.invocation_id)
            getattr(self._logger, shown.lower())(message, **fields)
        if number >= self.threshold:
            extra = "".join(
                f" {k}={'***' if k in _REDACTED_KEYS else _printable(str(v))}"
                for k, v in fields.items()
            )
            line = f"{_stamp()} {level} {message}{extra}\n"
            self.lines.append(line)
            if self.echo is not None:
                self.echo(line)

    def summary(self, message: str, **fields: Any) -> None:
        """An INFO line of the invocation's own log (the logs response, `run`'s log
        stream) that the watchdog's process log gets at DEBUG only: there it would be a
        line per request at the default level, and a structlog line costs about a tenth
        of the CPU of a whole `echo` invocation."""
        self._log("INFO", message, "DEBUG", **fields)

    def debug(self, message: str, **fields: Any) -> None:
        self._log("DEBUG", message, None, **fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log("INFO", message, None, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._log("WARNING", message, None, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self._log("ERROR", message, None, **fields)

    def text(self) -> bytes:
        """The kept lines; with CRITICAL the response is the script's output alone."""
        if self.threshold >= LEVELS["CRITICAL"]:
            return b""
        return "".join(self.lines).encode()
