"""The S3 app's own contract with the controller: extra middlewares (CORS) run before
its signature check, and its errors are S3's XML. In-process: no controller, no backend."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from faas_supervisor.controller.s3.app import Handler, s3_app
from faas_supervisor.controller.s3.sigv4 import STREAMING, UNSIGNED, Keys


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


class _Signer(S3SigV4Auth):
    """botocore's signer declaring the payload hash given (it computes its own over HTTP)."""

    def __init__(self, payload: str) -> None:
        super().__init__(Credentials("AK", "SKSKSKSK"), "s3", "us-east-1")
        self.declared = payload

    def payload(self, request: AWSRequest) -> str:
        return self.declared


async def test_an_xml_body_must_be_the_one_signed(tmp_path: Path) -> None:
    """DeleteObjects signed over one body and sent with another deletes nothing."""
    (tmp_path / "bkt").mkdir()
    for name in ("keep.txt", "junk.txt"):
        (tmp_path / "bkt" / name).write_bytes(b"x")
    server = TestServer(s3_app(tmp_path, Keys("AK", "SKSKSKSK")))
    async with TestClient(server) as client:
        url = f"http://127.0.0.1:{server.port}/bkt?delete="

        def signed(body: bytes, payload: str, **extra: str) -> dict[str, str]:
            request = AWSRequest("POST", url, data=body, headers=extra)
            _Signer(payload).add_auth(request)
            return {k: v for k, v in request.headers.items() if k != "Content-Length"}

        junk = b"<Delete><Object><Key>junk.txt</Key></Object></Delete>"
        keep = b"<Delete><Object><Key>keep.txt</Key></Object></Delete>"
        swapped = await client.session.post(
            url, data=keep, headers=signed(junk, hashlib.sha256(junk).hexdigest()))
        assert swapped.status == 400
        assert "<Code>XAmzContentSHA256Mismatch</Code>" in await swapped.text()
        md5 = base64.b64encode(hashlib.md5(junk).digest()).decode()
        unsigned = await client.session.post(
            url, data=keep, headers=signed(junk, UNSIGNED, **{"Content-MD5": md5}))
        assert unsigned.status == 400 and "<Code>BadDigest</Code>" in await unsigned.text()
        chunked = await client.session.post(url, data=keep, headers=signed(keep, STREAMING[0]))
        assert chunked.status == 400 and "<Code>InvalidRequest</Code>" in await chunked.text()
        assert sorted(p.name for p in (tmp_path / "bkt").iterdir()) == ["junk.txt", "keep.txt"]
        done = await client.session.post(
            url, data=junk, headers=signed(junk, hashlib.sha256(junk).hexdigest()))
        assert done.status == 200 and "<Deleted><Key>junk.txt</Key></Deleted>" in await done.text()
        assert sorted(p.name for p in (tmp_path / "bkt").iterdir()) == ["keep.txt"]
