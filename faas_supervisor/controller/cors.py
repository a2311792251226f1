"""Cross-origin browsers: the `Access-Control-*` answers for the origins `--cors-origin` allows.

A web app served from another origin (OSCAR's dashboard) sends a preflight `OPTIONS`
before each request that carries `Authorization` or JSON, and the browser hands an answer
to the app only if it names the app's origin. So, for an allowed origin:

* a preflight is answered here, before any authentication (a browser never sends
  credentials with one), with the methods, the headers asked for and a max age;
* every other answer (errors and 401s included, streamed ones too) names the origin,
  allows credentials (basic auth) and exposes the headers an app may read.

A named origin is echoed and allowed credentials (browsers refuse `*` together with
them); `--cors-origin '*'` answers other origins `*` without credentials, so no page can
ride on the basic-auth credentials a browser keeps for the controller. A request
from an origin not allowed gets no `Access-Control-*` header (only `Vary: Origin`), and
its `OPTIONS` goes on to the routes as it would without this module.

`setup_cors` fits any aiohttp application (the API's, the S3 endpoint's): a middleware
first in the chain (preflights; headers on the answers it sees) and a response hook (a
middleware cannot add headers to an answer its handler has already started). The
middleware alone serves an app whose handlers never stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

ANY_ORIGIN = "*"
ALLOW_METHODS = "GET, POST, PUT, DELETE, HEAD, PATCH, OPTIONS"
# Always allowed, whatever a preflight asks for: what the dashboard and S3 clients send.
ALLOW_HEADERS = ("Authorization", "Content-Type")
# What an app may read of an answer beyond the safelisted headers.
EXPOSE_HEADERS = ("Content-Disposition", "Content-Length", "WWW-Authenticate", "ETag")
MAX_AGE = 600  # seconds a browser may keep a preflight's answer
_ASKS_PRIVATE_NETWORK = "Access-Control-Request-Private-Network"
_ALLOWS_PRIVATE_NETWORK = "Access-Control-Allow-Private-Network"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def allowed_origin(origins: frozenset[str], request: web.BaseRequest) -> str | None:
    """What `Access-Control-Allow-Origin` says to the request: its origin when that is
    named, `*` when only `*` covers it, else None (nothing allowed)."""
    origin = request.headers.get(hdrs.ORIGIN)
    if not origin or not origins:
        return None
    if origin in origins:
        return origin
    return ANY_ORIGIN if ANY_ORIGIN in origins else None


def _is_preflight(request: web.BaseRequest) -> bool:
    return (request.method == hdrs.METH_OPTIONS
            and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers)


class _Policy:
    """The allowed origins and what an answer to them carries."""

    def __init__(self, origins: Iterable[str], expose: Iterable[str]) -> None:
        self.allowed = frozenset(origins)
        self.exposed = ", ".join(expose)

    def add_headers(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """The origin's headers on an answer not started yet (setting them twice is harmless)."""
        if not self.allowed or hdrs.ORIGIN not in request.headers:
            return
        vary = response.headers.get(hdrs.VARY, "")
        if "origin" not in vary.lower():  # the answer depends on the origin: caches must know
            response.headers[hdrs.VARY] = f"{vary}, Origin" if vary else "Origin"
        origin = allowed_origin(self.allowed, request)
        if origin is None:
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        if origin != ANY_ORIGIN:
            # Only for an origin named: with `*`, any page could make a browser send the
            # basic-auth credentials it keeps for the controller and read the answers.
            # The dashboard sets `Authorization` itself, which `*` allows.
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        if not _is_preflight(request):
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = self.exposed

    def preflight(self, request: web.BaseRequest) -> web.Response:
        asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
        headers = list(ALLOW_HEADERS)
        for name in (h.strip() for h in asked.split(",")):
            if name and name.lower() not in {h.lower() for h in headers}:
                headers.append(name)
        answer = web.Response(status=HTTPStatus.NO_CONTENT)
        answer.headers.update({
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOW_METHODS,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join(headers),
            hdrs.ACCESS_CONTROL_MAX_AGE: str(MAX_AGE),
        })
        if request.headers.get(_ASKS_PRIVATE_NETWORK) == "true":
            # Chromium asks before a public page (OSCAR's dashboard) calls a loopback or
            # private address: allowed as the origin is.
            answer.headers[_ALLOWS_PRIVATE_NETWORK] = "true"
        self.add_headers(request, answer)
        return answer


def cors_middleware(origins: Iterable[str], expose: Iterable[str] = EXPOSE_HEADERS) -> Middleware:
    """Preflights from allowed origins answered before the middlewares after it (put it
    first); the origin's headers on the answers it sees before they start (errors raised
    as aiohttp's exceptions included). Answers a handler streams need the response hook."""
    policy = _Policy(origins, expose)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_preflight(request) and allowed_origin(policy.allowed, request) is not None:
            return policy.preflight(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own answers: a 404, a 405, a 413
            policy.add_headers(request, exc)
            raise
        if not response.prepared:
            policy.add_headers(request, response)
        return response

    return cors


def cors_response_hook(
    origins: Iterable[str], expose: Iterable[str] = EXPOSE_HEADERS
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An `on_response_prepare` handler: the origin's headers on every answer as it starts."""
    policy = _Policy(origins, expose)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        policy.add_headers(request, response)

    return add_headers


def setup_cors(
    app: web.Application, origins: Iterable[str], expose: Iterable[str] = EXPOSE_HEADERS
) -> None:
    """CORS for `origins` on `app` (nothing when there are none): call before it starts."""
    allowed = frozenset(origins)
    if not allowed:
        return
    app.middlewares.insert(0, cors_middleware(allowed, expose))  # before authentication
    app.on_response_prepare.append(cors_response_hook(allowed, expose))
