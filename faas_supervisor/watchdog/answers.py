"""The watchdog's one answer for a request it refuses or could not carry through.

A failed invocation answers its reason and then its logs (`responses.failure_body`); a
request refused before any invocation (shutting down, at max_inflight, too large), or
one the http mode's server did not answer, answers only the reason's line, here.
"""

from __future__ import annotations

from aiohttp import web

from faas_supervisor.errors import FaasError, PayloadTooLarge

# The reason of a 503 the watchdog answers once it is stopping (SIGTERM): a request it
# refuses so, before anything of it ran, the controller sends once more to the service's
# current watchdog (controller/routes/invocations.py). Here, where the controller can
# import it cheaply.
STOPPED = "the watchdog is shutting down"


def refusal(error: FaasError, *, close: bool = False) -> web.Response:
    """The error's status and its line. `close`: where the next request would start is
    unknown (a body left unread, or broken), so the connection is not kept; an early 413
    always is such a case."""
    close = close or isinstance(error, PayloadTooLarge)
    return web.Response(
        status=error.http_status,
        text=error.message + "\n",
        headers={"Connection": "close"} if close else None,
    )
