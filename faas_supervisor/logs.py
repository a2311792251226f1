"""Logging: structlog for the process, and the per-invocation capture used in responses.

The watchdog logs each line once to stderr through structlog. An invocation also keeps its
own lines (at or above the function's `log_level`) so that a response made of logs can
start with them, as the FaaS Supervisor's responses do.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_REDACTED_KEYS = frozenset({"access_key", "secret_key", "password", "token", "authorization"})


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A second line of defence: values of credential-named keys never reach a log line."""
    for key in event.keys() & _REDACTED_KEYS:
        event[key] = "***"
    return event


# The lowest level structlog prints, once configure() has run (before: all of them).
_printed_from = 0


def configure(level: str, stream: TextIO | None = None) -> None:
    """Set up structlog once per process; lines go to stderr, one per event."""
    global _printed_from
    _printed_from = LEVELS[level]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (boto3, aiohttp) log through the standard library: keep them quiet.
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=stream or sys.stderr)


def get_logger(**bound: Any) -> Any:
    # Lazy: a module-level logger made before configure() still uses its settings.
    return structlog.get_logger(**bound)


class InvocationLog:
    """One invocation's runtime log lines: forwarded to structlog and kept for the response."""

    def __init__(self, level: str, invocation_id: str) -> None:
        self.threshold = LEVELS[level]
        self.lines: list[str] = []
        self.invocation_id = invocation_id
        self._logger: Any = None  # bound at the first line printed: most invocations print none

    def _log(self, level: str, message: str, **fields: Any) -> None:
        number = LEVELS[level]
        # A line below both levels costs nothing more (a debug line at INFO, say).
        if number >= _printed_from:
            if self._logger is None:
                self._logger = get_logger(invocation=self.invocation_id)
            getattr(self._logger, level.lower())(message, **fields)
        if number >= self.threshold:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            extra = "".join(
                f" {k}={'***' if k in _REDACTED_KEYS else v}" for k, v in fields.items()
            )
            self.lines.append(f"{stamp} {level} {message}{extra}\n")

    def debug(self, message: str, **fields: Any) -> None:
        self._log("DEBUG", message, **fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log("INFO", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._log("WARNING", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self._log("ERROR", message, **fields)

    def text(self) -> bytes:
        """The kept lines; with CRITICAL the response is the script's output alone."""
        if self.threshold >= LEVELS["CRITICAL"]:
            return b""
        return "".join(self.lines).encode()
