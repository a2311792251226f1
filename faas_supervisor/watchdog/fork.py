"""Fork mode: one request, one run of the user's script (SPEC 4.1).

Reads the body to disk as it arrives, runs the Invocation, and streams the response from
disk. Limits on time (read, write) are applied here; the server applies the others.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from faas_supervisor.config import WatchdogSettings
from faas_supervisor.errors import FaasError, RequestTimeout, unreadable_body
from faas_supervisor.http_timeouts import request_started
from faas_supervisor.invocation import Invocation
from faas_supervisor.logs import get_logger, get_unfiltered_logger
from faas_supervisor.responses import Body, failure_body, success_body
from faas_supervisor.watchdog.metrics import Metrics

READ_CHUNK = 256 * 1024
DEBUG_BYTES = 512
logger = get_logger(component="watchdog")
# write_debug's lines: asked for by that setting, they show at any log_level (SPEC 4.3).
debug_logger = get_unfiltered_logger(component="watchdog")


def request_environment(request: web.Request) -> dict[str, str]:
    """The classic watchdog's request variables: Http_Method, Http_<Header_Name>... A
    header sent more than once gives its first value, as there."""
    env: dict[str, str] = {}
    for name, value in request.headers.items():
        variable = _variable_name(name)
        if variable is not None and variable not in env:
            env[variable] = value
    env["Http_Method"] = request.method
    env["Http_Path"] = request.path
    # As sent (`%20` stays `%20`), like the classic watchdog's RawQuery: decoding would
    # make `a=1%26b=2` and `a=1&b=2` the same.
    env["Http_Query"] = request.rel_url.raw_query_string
    env["Http_Content_Type"] = request.headers.get("Content-Type", "")
    env["Http_Content_Length"] = request.headers.get("Content-Length", "")
    return env


@functools.lru_cache(maxsize=256)  # the few names clients send, made once (not unbounded)
def _variable_name(header: str) -> str | None:
    """`Http_Content_Type` for `content-type`: the classic watchdog's canonical form;
    None for Authorization (credentials never reach the script)."""
    if header.lower() == "authorization":
        return None
    return "Http_" + "_".join(part.capitalize() for part in header.split("-"))


class ForkRunner:
    def __init__(self, settings: WatchdogSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

    async def invoke(self, request: web.Request, invocation: Invocation) -> web.StreamResponse:
        outcome = invocation.outcome
        # Until the answer is sent, a shutdown cuts whatever step this is in (its answer:
        # 503); once the answer is under way, it is let finish.
        with invocation.abortable():
            try:
                limit = self.settings.read_timeout
                reading = invocation.read_event(
                    self._body_chunks(request),
                    request.headers.get("Content-Type", ""),
                    self.settings.max_body_size,
                )
                try:
                    if not limit or request.content.is_eof():
                        # No limit, or the whole body has come with the head (most
                        # requests): nothing to wait for, and no timer to set and cancel.
                        event = await reading
                    else:
                        # From the request's first byte: its head counts (http_timeouts.py).
                        async with asyncio.timeout_at(request_started(request) + limit):
                            event = await reading
                except TimeoutError:
                    raise RequestTimeout(
                        f"request not received within read_timeout ({limit:g} s)"
                    ) from None
            except FaasError as exc:
                invocation.fail(exc)
            else:
                await invocation.execute(event, request_environment(request))

        if outcome.error is not None:
            body = failure_body(invocation, outcome.error)
            status = outcome.error.http_status
        else:
            # Every Accept header: a client may send the list in several (RFC 9110, 5.3).
            body = success_body(invocation, ",".join(request.headers.getall("Accept", ())))
            status = 200
        return await self._send(request, invocation, status, body)

    async def _body_chunks(self, request: web.Request) -> AsyncIterator[bytes]:
        try:
            async for chunk in request.content.iter_chunked(READ_CHUNK):
                self.metrics.bytes_in.inc(len(chunk))
                yield chunk
        except (web.RequestPayloadError, HttpProcessingError) as exc:  # a bad gzip, chunk...
            request.content.feed_eof()  # nothing left to drain (aiohttp would log it)
            raise unreadable_body(exc) from None

    async def _send(
        self, request: web.Request, invocation: Invocation, status: int, body: Body
    ) -> web.StreamResponse:
        outcome = invocation.outcome
        headers = {
            "Content-Type": body.content_type,
            "X-Duration-Seconds": f"{outcome.duration:.6f}",
            "X-Invocation-Id": invocation.id,
        }
        if outcome.exit_code is not None:
            headers["X-Exit-Code"] = str(outcome.exit_code)
        # An early answer (413, 400) while the body still comes: the rest is not wanted.
        # (or one that broke: where the next request would start is unknown).
        unread = status >= 400 and (
            not request.content.at_eof() or request.content.exception() is not None
        )
        if body.data is not None:
            # Most answers are small: one write for headers and body, no chunk loop.
            data = body.data
            self.metrics.bytes_out.inc(len(data))
            if self.settings.write_debug:
                debug_logger.info("response body", id=invocation.id, data=data[:DEBUG_BYTES])
            small = web.Response(status=status, headers=headers, body=data)
            if unread:
                small.force_close()
            # Sent now, not when the handler returns: the client has its answer while
            # the invocation's folder is being removed.
            await small.prepare(request)
            await small.write_eof()
            return small
        response = web.StreamResponse(status=status, headers=headers)
        if body.length is not None:
            response.content_length = body.length
        if unread:
            response.force_close()
        await response.prepare(request)
        sent = 0
        try:
            async with asyncio.timeout(self.settings.write_timeout or None):
                async for chunk in body.stream:
                    if self.settings.write_debug and sent < DEBUG_BYTES:
                        debug_logger.info("response body", id=invocation.id,
                                           data=chunk[: DEBUG_BYTES - sent])
                    sent += len(chunk)
                    await response.write(chunk)
                if body.length is not None and sent < body.length:
                    # Less than announced (a log truncated by a process the script left
                    # behind): the client must see the body end short, not wait for the
                    # rest or read the next answer as its end.
                    logger.warning("response ended short", id=invocation.id,
                                   announced=body.length, sent=sent)
                    response.force_close()
                await response.write_eof()
        except TimeoutError:
            logger.warning("response not sent within write_timeout", id=invocation.id)
            # Aborted, not closed: a close waits for the unsent answer to drain, which a
            # client that does not read never lets happen (its socket and the buffered
            # answer were held for as long as it stayed connected).
            response.force_close()
            if request.transport is not None:
                request.transport.abort()
        finally:
            self.metrics.bytes_out.inc(sent)
        return response
