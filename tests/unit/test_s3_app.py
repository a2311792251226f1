"""The S3 app's own contract with the controller: extra middlewares (CORS) run before
its signature check, and its errors are S3's XML. In-process: no controller, no backend."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from faas_supervisor.controller.s3.app import Handler, s3_app
from faas_supervisor.controller.s3.sigv4 import Keys


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A stand-in for the CORS middleware: answers preflights, marks every answer."""
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={"Access-Control-Allow-Origin": "*"})
    response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


async def test_extra_middlewares_run_before_the_signature_check(tmp_path: Path) -> None:
    app = s3_app(tmp_path, Keys("AK", "SK"), middlewares=[preflight])
    async with TestClient(TestServer(app)) as client:
        answer = await client.options("/bucket/key")
        assert answer.status == 204
        refused = await client.get("/bucket/key")
        assert refused.status == 403
        assert refused.headers["Access-Control-Allow-Origin"] == "*"
        body = await refused.text()
        assert "<Code>AccessDenied</Code>" in body


async def test_without_middlewares_a_preflight_is_refused(tmp_path: Path) -> None:
    async with TestClient(TestServer(s3_app(tmp_path, Keys("AK", "SK")))) as client:
        answer = await client.options("/bucket/key")
        assert answer.status == 403
        assert answer.headers["Content-Type"] == "application/xml"
