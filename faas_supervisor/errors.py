"""The one exception hierarchy: each failure carries its HTTP status and exit status.

The watchdog and the controller answer `http_status` (each app has one middleware that
turns these into answers); `faas-supervisor run` and the CLI exit with `exit_status`.
Messages are one printable line and never hold a secret. Every error type of the package
is here; the only other exceptions are control flow private to one module (a worker told
to stop, one failed HTTP attempt that is retried), never shown to a client.
"""

from __future__ import annotations

import errno
import re
from types import TracebackType


class FaasError(Exception):
    """Base of every failure the runtime reports on purpose."""

    http_status = 500
    exit_status = 1

    def __init__(self, message: str) -> None:
        # One line, always, that prints as it reads: the message is the first line of a
        # response body and `run`'s error line, and it quotes text from outside (an
        # object key, a store's answer) that may hold an escape sequence.
        super().__init__(printable(one_line(message)))

    @property
    def message(self) -> str:
        return str(self)


# A line break with the indentation around it: where a library's text (a YAML error, a
# parser's) goes on to its next line.
_LINE_BREAK = re.compile(r"[ \t]*(?:(?:\r\n|\r|\n)[ \t]*)+")


def one_line(message: str) -> str:
    """`message` with each line break (and the indentation around it) one space, none at
    either end. Nothing else is touched, since it may be part of an object key the message
    names: a run of spaces stays, a tab or a space that does not print (NBSP) is escaped by
    `printable`. A key's own line break is escaped (`printable`) before it goes in."""
    if "\n" not in message and "\r" not in message:
        return message
    end = len(message)
    return _LINE_BREAK.sub(lambda m: "" if m.start() == 0 or m.end() == end else " ", message)


def printable(text: str) -> str:
    """`text`, each character that does not print (str.isprintable: a control character
    such as ESC, DEL, a C1 control, a lone surrogate) escaped as repr shows it (`\\x1b`),
    as the log lines show one (logs.py)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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


class UnreadableBody(BadEvent):
    """A body that broke while it was read: where the next request starts is unknown, so
    the answer closes the connection."""


def unreadable_body(exc: BaseException) -> UnreadableBody:
    """A body the HTTP server could not decode (its Content-Encoding, its chunks) as a 400.

    aiohttp raises its own exception with the parser's as the cause; the cause has the words.
    """
    cause = exc.__cause__ or exc
    reason = getattr(cause, "message", None) or str(cause) or type(cause).__name__
    return UnreadableBody(f"request body cannot be read: {reason}")


class NotJson(BadEvent, ValueError):
    """Text that is not RFC 8259 JSON; the message is one line, without the text.

    Callers usually say what was not JSON (a service's definition, an event) with an
    error of their own; one that escapes is still the request's fault, a 400. Also a
    ValueError, as `json`'s own error is.
    """


class NotBase64(BadEvent, ValueError):
    """The text is not strict, padded base64 (blanks and newlines aside)."""


class InvalidService(FaasError):
    """A definition (of a service, a bucket) that cannot be; the message starts with the
    field."""

    http_status = 400
    exit_status = 2


class Unauthorized(FaasError):
    """No credentials, or not the right ones. `challenge`: the answer asks for basic auth
    (the admin's routes), as the OSCAR manager's does."""

    http_status = 401
    exit_status = 2

    def __init__(self, message: str = "401: Unauthorized", *, challenge: bool = False) -> None:
        super().__init__(message)
        self.challenge = challenge


class NotFound(FaasError):
    """No such service, job or bucket. The default text is aiohttp's own 404's."""

    http_status = 404
    exit_status = 2

    def __init__(self, message: str = "404: Not Found") -> None:
        super().__init__(message)


class Conflict(FaasError):
    """The thing to create exists already."""

    http_status = 409
    exit_status = 2


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
    """A download or upload that failed after its retries; a storage server that failed
    a bucket operation of the controller."""

    http_status = 502
    exit_status = 3


class StorageConflict(StorageError):
    """An upload whose object exists with other content and cannot be replaced (a Rucio
    DID is immutable): 409, and exit status 3 as every storage failure."""

    http_status = 409


class UpstreamFailed(FaasError):
    """A service's watchdog, or the engine a backend drives (Docker, the Kubernetes API
    server), refused or failed a request; the message says which and why."""

    http_status = 502


class DockerError(UpstreamFailed):
    """The Docker engine refused or failed a request."""


class KubernetesError(UpstreamFailed):
    """The Kubernetes API server refused or failed a request."""

    status: int | None = None  # the API's status code, when it answered


class ServiceUnavailable(FaasError):
    """The service's runtime is not answering (starting, or failing to start)."""

    http_status = 503


class RequestFailed(FaasError):
    """Client side (`faas-supervisor service ...`): the controller could not be reached or
    answered with an error status. Never answered over HTTP (the http_status is unused);
    the CLI exits 1 with its one line."""

    exit_status = 1


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


def storage_failure(provider: str, what: str, exc: BaseException) -> FaasError:
    """The one policy for what a storage server's failure shows to a client: the provider,
    what failed and the exception's type, never the SDK's message (it can carry endpoints
    with credentials). Our own full disk is a 507 naming the same."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return local_write_error(exc, f"the {what} ({provider})")
    return StorageError(f"{provider}: {what} failed ({type(exc).__name__})")


class writing:  # lower case: used as a function, `with writing("the input"):`
    """Local writes inside become `local_write_error(exc, what)`; FaasErrors pass.

    A class rather than a contextlib.contextmanager: an invocation enters several, and
    a generator-based one costs a few Python calls more each time."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A peer gone or too slow while we read from it is not a local write.
        if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
            raise local_write_error(exc, self.what) from exc


class ScriptFailed(FaasError):
    """The user's script exited non-zero; the exit status is passed on."""

    http_status = 500

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_status = exit_code


class ScriptTimeout(FaasError):
    http_status = 504
    exit_status = 124
