"""What the controller's routes answer: JSON as Go writes it, one-line text, and the one
table turning an exception into an answer.

Route handlers never write a status code for a failure: they raise a typed error of
`faas_supervisor.errors`, which carries its status, and `ERRORS` (read by the one
middleware, as Starlette's exception handlers are) answers it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from faas_supervisor.controller.fdl import go_json
from faas_supervisor.controller.store import is_busy
from faas_supervisor.errors import FaasError, Unauthorized, UnreadableBody, unreadable_body
from faas_supervisor.http_timeouts import BodyLate
from faas_supervisor.logs import get_logger

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorAnswer = Callable[[web.Request, Any], web.StreamResponse]
logger = get_logger(component="api")


def json_response(value: Any, status: int = HTTPStatus.OK) -> web.Response:
    return web.Response(
        status=status, body=go_json(value), content_type="application/json", charset="utf-8"
    )


def text_response(text: str, status: int = HTTPStatus.OK) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8")


def rfc3339(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _failure(_request: web.Request, exc: FaasError) -> web.Response:
    return text_response(exc.message, exc.http_status)


def _unauthorized(_request: web.Request, exc: Unauthorized) -> web.Response:
    answer = _failure(_request, exc)
    if exc.challenge:
        answer.headers["WWW-Authenticate"] = 'Basic realm="Authorization Required"'
    return answer


def _unreadable(request: web.Request, exc: UnreadableBody) -> web.Response:
    """The 400 for a body that broke while it was read (a bad chunk, a bad encoding)."""
    answer = _failure(request, exc)
    answer.force_close()  # where the next request would start is unknown
    request.content.feed_eof()  # nothing left to drain (aiohttp would log it again)
    return answer


def _undecodable(request: web.Request, exc: Exception) -> web.Response:
    # aiohttp's own errors for a body it could not decode (while a handler read it).
    return _unreadable(request, unreadable_body(exc))


def _late(request: web.Request, exc: BodyLate) -> web.Response:
    """The 408 for a body that did not come in time (api.py bounds it): the client's
    fault, one line in the log; the connection is closed, what is left of the body unread."""
    logger.info("request body too slow", method=request.method, path=request.path,
                error=str(exc))
    answer = text_response("the request body was not received in time",
                           HTTPStatus.REQUEST_TIMEOUT)
    answer.force_close()
    return answer


def _too_deep(_request: web.Request, _exc: RecursionError) -> web.Response:
    # Input nested deeper than Python recurses, wherever it is walked.
    return text_response("the request is nested too deeply", HTTPStatus.BAD_REQUEST)


def _store_failed(request: web.Request, exc: sqlite3.Error) -> web.Response:
    """The state database locked by another process past SQLite's wait: a 503 saying so,
    one line in the log; any other failure of it is ours (`_internal`)."""
    if not is_busy(exc):
        return _internal(request, exc)
    logger.warning("request refused: the store is busy", method=request.method,
                   path=request.path, error=str(exc))
    return text_response("the controller's state database is busy (locked by another "
                         "process); try again later", HTTPStatus.SERVICE_UNAVAILABLE)


def _internal(request: web.Request, _exc: Exception) -> web.Response:
    # A fault of ours, not of the request: logged whole, answered in one line.
    logger.exception("request failed", method=request.method, path=request.path)
    return text_response("internal error (see the controller's log)",
                         HTTPStatus.INTERNAL_SERVER_ERROR)


# The request's fault is a 4xx, never a 5xx. The answer for an exception is that of the
# first of its classes (in method resolution order) found here.
ERRORS: Mapping[type[BaseException], ErrorAnswer] = {
    UnreadableBody: _unreadable,
    BodyLate: _late,
    Unauthorized: _unauthorized,
    FaasError: _failure,
    web.RequestPayloadError: _undecodable,
    HttpProcessingError: _undecodable,
    RecursionError: _too_deep,
    sqlite3.Error: _store_failed,
    Exception: _internal,
}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Failures as one-line answers, by the `ERRORS` table."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # answers aiohttp makes itself (an unknown route's 404, a 405, a 413)
    except Exception as exc:
        answer = next(ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS)
        return answer(request, exc)
