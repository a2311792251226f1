"""cors.py on an aiohttp app of its own, as another app of the controller (the S3 endpoint)
would use it: preflights before that app's own authentication, headers on every answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from faas_supervisor.controller.cors import cors_middleware, setup_cors
from faas_supervisor.controller.routes.answers import Handler

ALLOWED = "https://dashboard.example"


@web.middleware
async def needs_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.headers.get("Authorization") != "key":
        raise web.HTTPForbidden(text="AccessDenied")
    return await handler(request)


async def streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)  # started by the handler: no middleware can add to it
    await response.write(b"bytes")
    return response


async def client_for(origins: tuple[str, ...]) -> TestClient[web.Request, web.Application]:
    app = web.Application(middlewares=[needs_key])
    app.router.add_get("/object", streamed)
    setup_cors(app, origins)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = await client_for((ALLOWED,))
    yield client
    await client.close()


async def test_a_preflight_never_reaches_the_apps_authentication(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.options("/object", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "x-amz-date, x-amz-content-sha256"})
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    allowed = response.headers["Access-Control-Allow-Headers"]
    assert allowed == "Authorization, Content-Type, x-amz-date, x-amz-content-sha256"
    assert "Access-Control-Expose-Headers" not in response.headers  # not on a preflight


async def test_refusals_and_streamed_answers_name_the_origin(
    client: TestClient[web.Request, web.Application],
) -> None:
    refused = await client.get("/object", headers={"Origin": ALLOWED})
    served = await client.get("/object", headers={"Origin": ALLOWED, "Authorization": "key"})
    assert (refused.status, served.status, await served.read()) == (403, 200, b"bytes")
    for response in (refused, served):
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "ETag" in response.headers["Access-Control-Expose-Headers"]
        assert response.headers["Vary"] == "Origin"


async def test_other_origins_and_no_origins_get_nothing() -> None:
    for origins, origin in (((ALLOWED,), "https://evil.example"), ((), ALLOWED)):
        client = await client_for(origins)
        try:
            response = await client.options("/object", headers={
                "Origin": origin, "Access-Control-Request-Method": "GET"})
            assert response.status == 403  # on to the app, as without cors.py
            assert not [h for h in response.headers if h.lower().startswith("access-control")]
        finally:
            await client.close()


async def test_a_star_allows_any_origin_without_credentials() -> None:
    """With `*`, a page of any origin (`null` included) may call with the Authorization
    header it sets itself, but never with the credentials the browser keeps: otherwise
    any page could read /system/config's keys as the user who once logged in."""
    client = await client_for(("*", ALLOWED))
    try:
        for origin in ("http://a.example:8080", "null"):
            response = await client.get("/object", headers={"Origin": origin})
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "Access-Control-Allow-Credentials" not in response.headers
            preflight = await client.options("/object", headers={
                "Origin": origin, "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization"})
            assert preflight.status == 204
            assert preflight.headers["Access-Control-Allow-Origin"] == "*"
            assert "Access-Control-Allow-Credentials" not in preflight.headers
        named = await client.get("/object", headers={"Origin": ALLOWED})
        assert named.headers["Access-Control-Allow-Origin"] == ALLOWED  # named: as before
        assert named.headers["Access-Control-Allow-Credentials"] == "true"
    finally:
        await client.close()


async def test_the_middleware_alone_serves_an_app_that_never_streams() -> None:
    async def text(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[cors_middleware([ALLOWED]), needs_key])
    app.router.add_get("/text", text)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        for path, status in (("/text", 200), ("/nowhere", 404)):
            response = await client.get(path, headers={"Origin": ALLOWED, "Authorization": "key"})
            assert response.status == status
            assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        refused = await client.get("/text", headers={"Origin": ALLOWED})  # HTTPForbidden raised
        assert refused.status == 403
        assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED
    finally:
        await client.close()
