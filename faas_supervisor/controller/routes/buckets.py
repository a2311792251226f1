"""`/system/buckets`: the buckets of the default storage provider (MinIO's, or a folder).

What a failing storage server shows is `storage_failure`'s: the operation and the
exception's type, never the SDK's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from faas_supervisor import strict_json
from faas_supervisor.config import DEFAULT_PROVIDER, utf8_encodable
from faas_supervisor.controller.names import bucket_problem
from faas_supervisor.controller.routes import Routes
from faas_supervisor.controller.routes.answers import json_response
from faas_supervisor.controller.s3 import sigv4
from faas_supervisor.errors import Conflict, InvalidService, NotFound, storage_failure
from faas_supervisor.http_headers import has_control

PRESIGN_DEFAULT = 900  # seconds: the manager's defaults and bounds
PRESIGN_MAX = 7 * 24 * 3600
# RFC 9110 5.6.2: a header's name is a token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class BucketRoutes(Routes):
    async def list_buckets(self, _request: web.Request) -> web.Response:
        names = await self._storage("listing of the buckets", self.api.buckets.list_buckets)
        return json_response([_bucket_json(name) for name in names])

    async def create_bucket(self, request: web.Request) -> web.Response:
        buckets = self.api.buckets
        name, folder = await _bucket_body(request, buckets.key_problem)
        if not await self._storage(f"creation of bucket {name}", buckets.create_bucket, name):
            raise Conflict(f"The bucket '{name}' already exists")
        if folder:
            try:
                await self._storage(f"creation of {name}/{folder}", buckets.ensure_path, name,
                                    folder)
            except Exception:
                # Not left half made (a retry would be a 409); only while it holds nothing
                # but folders: an object put there meanwhile keeps it.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(buckets.remove_if_empty, name)
                raise
        return web.Response(status=HTTPStatus.CREATED)

    async def update_bucket(self, request: web.Request) -> web.Response:
        name, _ = await _bucket_body(request, self.api.buckets.key_problem)
        await self._existing(name)
        # Visibility and members are MinIO policies, which one admin does not need here.
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def read_bucket(self, request: web.Request) -> web.Response:
        name = await self._existing(_check_bucket(request.match_info["bucket"]))
        objects = await self._storage(
            f"listing of bucket {name}", self.api.buckets.list_objects, name
        )
        if not objects:  # or deleted while listed (a folder store lists it as empty): 404
            await self._existing(name)
        listing = [
            {
                "object_name": o.key,
                "size_bytes": o.size,
                "last_modified": time.strftime(
                    "%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(o.modified)
                ),
            }
            for o in objects
        ]
        return json_response(
            {
                **_bucket_json(name),
                "objects": listing,
                "is_truncated": False,
                "returned_items": len(listing),
            }
        )

    async def delete_bucket(self, request: web.Request) -> web.Response:
        name = await self._existing(_check_bucket(request.match_info["bucket"]))
        await self._storage(f"deletion of bucket {name}", self.api.buckets.delete_bucket, name)
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def presign(self, request: web.Request) -> web.Response:
        """A presigned URL for an object of the bucket, on the default provider's S3
        endpoint (ours, or --minio-endpoint's), as the manager's presign handler answers."""
        name = await self._existing(_check_bucket(request.match_info["bucket"]))
        asked = _presign_body(await request.read(), self.api.buckets.key_problem)
        public = self.api.buckets.public_settings()
        if not public.get("endpoint"):
            raise Conflict("No S3 endpoint serves the storage (--s3-port 0)")
        url = presigned_url(public, name, asked)
        expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + asked.expires))
        answer: dict[str, Any] = {
            "object_key": asked.key,
            "operation": asked.operation,
            "method": asked.method,
            "url": url,
            "expires_at": expires_at,
        }
        if asked.headers:
            answer["headers"] = asked.headers
        return json_response(answer)

    async def _existing(self, name: str) -> str:
        """The bucket's name, once the store has it (else a 404)."""
        if not await self._storage(f"lookup of bucket {name}", self.api.buckets.bucket_exists,
                                   name):
            raise NotFound(f"The bucket '{name}' does not exist")
        return name

    async def _storage(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)` in a thread, its failures as the client may see them."""
        try:
            return await asyncio.to_thread(call, *args)
        except ValueError as exc:  # a name or path the store refuses (see FolderStore)
            raise InvalidService(f"bucket_name: {exc}") from None
        except Exception as exc:
            raise storage_failure(DEFAULT_PROVIDER, what, exc) from None


async def _bucket_body(
    request: web.Request, key_problem: Callable[[str], str | None]
) -> tuple[str, str]:
    """The bucket and the folder in it that `bucket_name` names (`photos/2024`), the folder
    one the store can hold (`key_problem`, the store's)."""
    try:
        data = strict_json.loads(await request.read())
    except strict_json.NotJson as exc:  # worded as a service's body is (parse_service_json)
        raise InvalidService(f"bucket: not valid JSON ({exc})") from None
    _check_bucket_fields(data)
    if not isinstance(data, dict) or not isinstance(data.get("bucket_name"), str):
        raise InvalidService("bucket_name: missing")
    name, _, folder = data["bucket_name"].strip(" /").partition("/")
    _check_bucket(name)
    problem = key_problem(f"{folder}/") if folder else None
    if problem is not None:
        raise InvalidService(f"bucket_name: folder {folder!r} {problem}")
    return name, folder


@dataclass(frozen=True)
class PresignRequest:
    key: str
    operation: str  # upload | download
    expires: int  # seconds
    content_type: str
    headers: dict[str, str]  # signed: the request must send them

    @property
    def method(self) -> str:
        return "PUT" if self.operation == "upload" else "GET"


def _presign_body(raw: bytes, key_problem: Callable[[str], str | None]) -> PresignRequest:
    """The manager's PresignRequest: `object_key` and `operation` required; the key one
    the store can hold (`key_problem`, the store's)."""
    try:
        data = strict_json.loads(raw)
    except strict_json.NotJson:
        data = None
    if not isinstance(data, dict):
        raise InvalidService("Invalid presign request: the body must be a JSON object")
    for field in ("object_key", "operation", "content_type"):
        if data.get(field) is not None and not isinstance(data[field], str):
            raise InvalidService(f"{field}: must be a string")
    key = (data.get("object_key") or "").strip().strip("/")
    if not key:
        raise InvalidService("object_key: Object key cannot be empty")
    problem = key_problem(key)
    if problem is not None:
        raise InvalidService(f"object_key: {key!r} {problem}")
    operation = (data.get("operation") or "").strip().lower()
    if operation not in ("upload", "download"):
        raise InvalidService(
            f"operation: {data.get('operation')!r} is not 'upload' or 'download'"
        )
    expires = data.get("expires_in") or PRESIGN_DEFAULT
    if isinstance(expires, bool) or not isinstance(expires, int) or not (
        1 <= expires <= PRESIGN_MAX
    ):
        raise InvalidService(f"expires_in: must be 1 to {PRESIGN_MAX} seconds")
    extra = data.get("extra_headers") or {}
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise InvalidService("extra_headers: must be a mapping of strings")
    content_type = data.get("content_type") or ""
    # Each is signed (UTF-8) and sent as a header (Content-Type, or the download's
    # response-content-type echoed back): refused here, not a 500 when signing.
    _check_header_value("content_type", content_type)
    for header, value in extra.items():
        if not _TOKEN.fullmatch(header):
            raise InvalidService(f"extra_headers: {header!r} is not a header name "
                                 "(an HTTP token: ASCII letters, digits and !#$%&'*+-.^_`|~)")
        _check_header_value(f"extra_headers.{header}", value)
    headers: dict[str, str] = {}
    if operation == "upload" and content_type:
        headers["Content-Type"] = content_type
    for header, value in extra.items():
        headers["-".join(w.capitalize() for w in header.split("-"))] = value
    return PresignRequest(key, operation, expires, content_type, headers)


def _check_header_value(field: str, value: str) -> None:
    if not utf8_encodable(value):
        raise InvalidService(f"{field}: not UTF-8 text (it holds a lone surrogate such as \\udc80)")
    if has_control(value):
        raise InvalidService(f"{field}: holds a control character (CR, LF, ...), which a "
                             "header's value cannot")


def presigned_url(public: dict[str, Any], bucket: str, asked: PresignRequest) -> str:
    """The object's URL on the S3 endpoint of `public` (minio_provider's shape), signed."""
    query = []
    if asked.operation == "download" and asked.content_type:
        query.append(("response-content-type", asked.content_type))
    return sigv4.presign(
        sigv4.Keys(public["access_key"], public["secret_key"]),
        asked.method,
        f"{public['endpoint'].rstrip('/')}/{bucket}/{sigv4.uri_encode(asked.key)}",
        asked.expires,
        public.get("region") or "us-east-1",
        asked.headers,
        query,
    )


def _check_bucket(name: str) -> str:
    problem = bucket_problem(name)
    if problem is not None:
        raise InvalidService(f"bucket_name: {name!r} {problem}")
    return name


def _check_bucket_fields(data: Any) -> None:
    """The other fields of a bucket body have the manager's types (null: absent), as Go's
    decoder would have them, though they are not kept: a wrong one is a mistake to report."""
    if not isinstance(data, dict):
        return
    for key in ("visibility", "owner"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InvalidService(f"{key}: must be a string")
    users = data.get("allowed_users")
    if users is not None and not (
        isinstance(users, list) and all(isinstance(u, str) for u in users)
    ):
        raise InvalidService("allowed_users: must be a list of strings")
    metadata = data.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidService("metadata: must be a mapping of strings")


def _bucket_json(name: str) -> dict[str, Any]:
    return {
        "bucket_name": name,
        "visibility": "private",
        "allowed_users": [],
        "owner": "cluster_admin",
        "metadata": {},
    }
