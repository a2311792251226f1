"""The one exception hierarchy: each failure carries its HTTP status and exit status.

The watchdog answers `http_status`; `faas-supervisor run` exits with `exit_status`.
Messages are one line and never hold a secret.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


class FaasError(Exception):
    """Base of every failure the runtime reports on purpose."""

    http_status = 500
    exit_status = 1

    def __init__(self, message: str) -> None:
        # One line, always: the message is the first line of a response body.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(FaasError):
    """A bad or missing configuration or script: found at start-up."""

    exit_status = 2


class BadEvent(FaasError):
    """A request body or job event that cannot be read."""

    http_status = 400
    exit_status = 2


class Forbidden(FaasError):
    """An event naming an object outside the service's `input` paths: not its data."""

    http_status = 403
    exit_status = 2


def unreadable_body(exc: BaseException) -> BadEvent:
    """A body the HTTP server could not decode (its Content-Encoding, its chunks) as a 400.

    aiohttp raises its own exception with the parser's as the cause; the cause has the words.
    """
    cause = exc.__cause__ or exc
    reason = getattr(cause, "message", None) or str(cause) or type(cause).__name__
    return BadEvent(f"request body cannot be read: {reason}")


class PayloadTooLarge(FaasError):
    http_status = 413
    exit_status = 2


class TooManyRequests(FaasError):
    http_status = 429


class ShuttingDown(FaasError):
    http_status = 503


class RequestTimeout(FaasError):
    """The client took longer than `read_timeout` to send the body."""

    http_status = 408
    exit_status = 2


class StorageError(FaasError):
    """A download or upload that failed after its retries."""

    http_status = 502
    exit_status = 3


class InsufficientStorage(FaasError):
    """No space left (ENOSPC, or a quota: EDQUOT) for the invocation's or the store's files.

    507, as WebDAV defines it: the server cannot store what the request needs. `run`
    exits 4, the next free status after 3 (storage): the job may succeed once space is
    freed, so it is told apart from a bad event (2) and a script's own failure.
    """

    http_status = 507
    exit_status = 4


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def local_write_error(exc: OSError, what: str) -> FaasError:
    """The one mapping of a failed local write: 507 when the disk is full, else a 500 that
    names what could not be written (never a traceback, never aiohttp's generic page)."""
    if exc.errno in NO_SPACE:
        return InsufficientStorage(f"no space left on device writing {what}")
    return FaasError(f"cannot write {what}: {exc.strerror or type(exc).__name__}")


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Local writes inside become `local_write_error(exc, what)`; FaasErrors pass."""
    try:
        yield
    except (ConnectionError, TimeoutError):
        raise  # a peer gone or too slow while we read from it: not a local write
    except OSError as exc:
        raise local_write_error(exc, what) from exc


class ScriptFailed(FaasError):
    """The user's script exited non-zero; the exit status is passed on."""

    http_status = 500

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_status = exit_code


class ScriptTimeout(FaasError):
    http_status = 504
    exit_status = 124
