"""The S3 API (path-style) over the folder store: the aiohttp app and its handlers.

Every request is checked by sigv4 against the endpoint's one pair of keys before
anything is read or touched; failures are S3's XML errors (answers.py), in one
middleware. Blocking file work runs in threads (objects.py); bodies stream to disk
(body.py) and files stream out with sendfile, so memory stays flat whatever the size.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from faas_supervisor.controller.s3 import answers, body, sigv2, sigv4
from faas_supervisor.controller.s3.answers import element, iso_time
from faas_supervisor.controller.s3.digits import decimal
from faas_supervisor.controller.s3.errors import S3Error
from faas_supervisor.controller.s3.objects import (
    DEFAULT_TYPE,
    ObjectInfo,
    Objects,
    WriteCheck,
    no_such_bucket,
    no_such_upload,
)
from faas_supervisor.http_headers import has_control
from faas_supervisor.http_timeouts import BodyLate, bounded_body
from faas_supervisor.logs import get_logger

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
MAX_XML = 2 << 20  # a Delete of 1000 keys, a Complete of 10000 parts
MAX_KEYS = 1000  # and parts, and uploads: the most one page of a listing holds
MAX_COUNT = 2**31 - 1  # the largest count or marker S3 takes (max-keys, part-number-marker)
# The most bytes of `x-amz-meta-*` headers (names with their prefix, and values) an object
# keeps: S3's limit of user metadata, counted as MinIO counts it.
MAX_METADATA = 2 << 10
EXPIRY_PERIOD = 3600  # seconds between two sweeps of expired multipart uploads
# A body (an object's, a part's, an XML request's) during which the client sends nothing
# this long is S3's RequestTimeout, and the connection is closed. Not a limit on the
# whole body: an object takes up to 5 GiB, and a slow link takes its time.
BODY_IDLE_TIMEOUT = 60.0
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
# Sub-resources this server does not keep (ACLs, tags, policies...): 501, not a listing.
_UNSUPPORTED = {
    "acl", "tagging", "policy", "cors", "lifecycle", "versions", "versioning", "website",
    "encryption", "replication", "notification", "object-lock", "retention", "legal-hold",
    "logging", "ownershipControls", "publicAccessBlock", "requestPayment", "accelerate",
    "analytics", "inventory", "metrics", "intelligent-tiering", "torrent", "restore",
    "select", "attributes", "policyStatus",
}

logger = get_logger(component="s3")


def s3_app(
    store: Objects | Path,
    keys: sigv4.Keys,
    region: str = "us-east-1",
    middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """The app over `store`: the controller's `Objects` (its bucket API's too: a bucket
    deleted there takes the lock the puts here take), or a folder, served alone.
    `middlewares` (CORS, say) run before S3's own error answers."""
    # Made, stale temporary files and expired uploads are removed.
    objects = store if isinstance(store, Objects) else Objects(store)
    server = S3Server(objects, keys, region)
    app = web.Application(
        middlewares=[*middlewares, _errors, _bounded_body]  # type: ignore[list-item]
    )
    # Every path, a key's newline (`%0A`, decoded before routes match) too: `.` alone
    # stops at it. The handlers read the raw path, not the route's match.
    app.router.add_route("*", "/{tail:(?s:.*)}", server.dispatch)
    app.cleanup_ctx.append(lambda _: _expiring(objects))
    return app


async def _expiring(objects: Objects) -> AsyncIterator[None]:
    """Stale multipart uploads expired every EXPIRY_PERIOD while the endpoint serves."""

    async def expire() -> None:
        while True:
            await asyncio.sleep(EXPIRY_PERIOD)  # a period, not a wait for an event
            try:
                await asyncio.to_thread(objects.expire_uploads)
            except OSError:
                logger.exception("expiring multipart uploads failed")

    task = asyncio.ensure_future(expire())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except S3Error as error:
        return answers.error_response(error, request.method)
    except BodyLate:
        logger.info("S3 request body stalled", method=request.method, path=request.path)
        late = S3Error("RequestTimeout", "Your socket connection to the server was not read "
                       "from or written to within the timeout period. Idle connections will "
                       "be closed.")
        answer = answers.error_response(late, request.method)
        answer.force_close()  # the rest of the body, if it comes, is not read
        return answer
    except (web.HTTPException, asyncio.CancelledError):
        raise
    except ConnectionError:
        # The client went away (a body cut short, a download's socket closed): no one to
        # answer. Raised on, aiohttp would log it with its traceback as a server's error;
        # the answer here reaches no one, and aiohttp drops the connection quietly.
        logger.info("S3 client went away", method=request.method, path=request.path)
        return web.Response(status=400)
    except Exception:
        logger.exception("S3 request failed", method=request.method, path=request.path)
        internal = S3Error("InternalError", "We encountered an internal error. Please try again.")
        return answers.error_response(internal, request.method)


@web.middleware
async def _bounded_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every body read here stalls BODY_IDLE_TIMEOUT at most (`_errors` answers it)."""
    with bounded_body(request, idle=BODY_IDLE_TIMEOUT):
        return await handler(request)


class _Request:
    """What every handler needs from a request: its bucket, key and query, decoded once."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        raw_path, _, self.raw_query = request.raw_path.partition("?")
        self.raw_path = raw_path
        path = unquote(raw_path).lstrip("/")
        self.bucket, _, self.key = path.partition("/")
        self.query = dict(sigv4.query_pairs(self.raw_query))
        self.headers: dict[str, str] = {}
        for name in request.headers:
            lower = name.lower()
            if lower not in self.headers:
                self.headers[lower] = ",".join(request.headers.getall(name))

    def metadata(self) -> dict[str, str]:
        """The `x-amz-meta-*` headers, by their names without the prefix. Over
        MAX_METADATA, MetadataTooLarge: asked before anything is stored, so an object
        answered 200 keeps them (its file's attribute holds them whole)."""
        given = {name: value for name, value in self.headers.items()
                 if name.startswith("x-amz-meta-")}
        size = sum(len((name + value).encode("utf-8", "surrogatepass"))
                   for name, value in given.items())
        if size > MAX_METADATA:
            raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum "
                          f"allowed metadata size ({MAX_METADATA} bytes).")
        return {name.removeprefix("x-amz-meta-"): value for name, value in given.items()}


class S3Server:
    def __init__(self, objects: Objects, keys: sigv4.Keys, region: str) -> None:
        self.objects = objects
        self.keys = keys
        self.region = region

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        r = _Request(request)
        if sigv2.is_v2(r.query, r.headers):
            pairs = sigv4.query_pairs(r.raw_query)
            signed = sigv2.verify(self.keys, request.method, r.raw_path, pairs, r.headers)
        else:
            signed = sigv4.verify(self.keys, request.method, r.raw_path, r.raw_query, r.headers)
        unsupported = _UNSUPPORTED & r.query.keys()
        if unsupported:
            raise S3Error("NotImplemented", f"?{min(unsupported)} is not implemented here")
        method, q = request.method, r.query
        if not r.bucket:
            if method == "GET":
                return await self.list_buckets()
        elif not r.key:
            if method == "PUT":
                return await self.create_bucket(r, signed)
            if method == "HEAD":
                await self._thread(self.objects.bucket, r.bucket)
                return web.Response(headers={"x-amz-bucket-region": self.region})
            if method == "DELETE":
                await self._thread(self.objects.delete_bucket, r.bucket)
                return web.Response(status=204)
            if method == "GET":
                if "location" in q:
                    await self._thread(self.objects.bucket, r.bucket)
                    # S3's us-east-1 is the empty constraint; any other region is named.
                    region = [] if self.region == "us-east-1" else [answers.xml_text(self.region)]
                    return answers.xml_response(answers.document("LocationConstraint", region))
                if "uploads" in q:
                    return await self.list_uploads(r)
                return await self.list_objects(r)
            if method == "POST" and "delete" in q:
                return await self.delete_objects(r, signed)
        else:
            if method == "PUT":
                if "uploadId" in q:
                    return await self.upload_part(r, signed)
                if "x-amz-copy-source" in r.headers:
                    return await self.copy_object(r)
                return await self.put_object(r, signed)
            if method in ("GET", "HEAD"):
                if "uploadId" in q and method == "GET":
                    return await self.list_parts(r)
                return await self.get_object(r, method == "HEAD")
            if method == "DELETE":
                if "uploadId" in q:
                    await self._thread(self.objects.abort, r.bucket, r.key, q["uploadId"])
                else:
                    await self._thread(self.objects.delete, r.bucket, r.key)
                return web.Response(status=204)
            if method == "POST":
                if "uploads" in q:
                    return await self.create_upload(r)
                if "uploadId" in q:
                    return await self.complete_upload(r, signed)
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this "
                      "resource.")

    @staticmethod
    async def _thread(call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(call, *args)

    # ---- buckets ---------------------------------------------------------------------

    async def list_buckets(self) -> web.Response:
        found = await self._thread(self.objects.buckets)
        items = "".join(
            f"<Bucket>{element('Name', name)}{element('CreationDate', iso_time(made))}</Bucket>"
            for name, made in found
        )
        return answers.xml_response(answers.document(
            "ListAllMyBucketsResult", [answers.OWNER, f"<Buckets>{items}</Buckets>"]
        ))

    async def create_bucket(self, r: _Request, signed: sigv4.Signed) -> web.Response:
        # One region here: a bucket asked in another is refused, as MinIO refuses it,
        # not made where its client does not expect it.
        region = answers.location_constraint(await _read_xml(r, signed)) or self.region
        if region != self.region:
            raise S3Error("InvalidRegion", f"Region does not match: this endpoint's is "
                          f"{self.region}.", f"/{r.bucket}")
        await self._thread(self.objects.create_bucket, r.bucket)
        return web.Response(headers={"Location": f"/{r.bucket}"})

    async def list_objects(self, r: _Request) -> web.Response:
        q = r.query
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        encode = q.get("encoding-type") == "url"
        max_keys = min(_count(q, "max-keys", MAX_KEYS), MAX_KEYS)
        if v2 and "continuation-token" in q:
            after = _token_after(q["continuation-token"])
        else:
            after = q.get("start-after", "") if v2 else q.get("marker", "")
        page = await self._thread(
            self.objects.list_page, r.bucket, prefix, delimiter, after, max_keys
        )

        def key(text: str) -> str:
            return answers.url_encoded(text, encode)

        parts = [element("Name", r.bucket), element("Prefix", key(prefix))]
        if v2:
            if "continuation-token" in q:
                parts.append(element("ContinuationToken", q["continuation-token"]))
            if page.truncated:
                parts.append(element("NextContinuationToken", _token(page.next_after)))
            if "start-after" in q:
                parts.append(element("StartAfter", key(q["start-after"])))
            parts.append(element("KeyCount", len(page.objects) + len(page.prefixes)))
        else:
            parts.append(element("Marker", key(q.get("marker", ""))))
            if page.truncated:
                parts.append(element("NextMarker", key(page.next_after)))
        parts.append(element("MaxKeys", max_keys))
        if delimiter:
            parts.append(element("Delimiter", key(delimiter)))
        if encode:
            parts.append(element("EncodingType", "url"))
        parts.append(element("IsTruncated", page.truncated))
        owner = answers.OWNER if (not v2 or q.get("fetch-owner") == "true") else ""
        for obj in page.objects:
            parts.append(
                "<Contents>"
                + element("Key", key(obj.key))
                + element("LastModified", iso_time(obj.modified))
                + element("ETag", f'"{obj.etag}"')
                + element("Size", obj.size)
                + owner
                + element("StorageClass", "STANDARD")
                + "</Contents>"
            )
        for common in page.prefixes:
            parts.append(f"<CommonPrefixes>{element('Prefix', key(common))}</CommonPrefixes>")
        return answers.xml_response(answers.document("ListBucketResult", parts))

    async def delete_objects(self, r: _Request, signed: sigv4.Signed) -> web.Response:
        await self._thread(self.objects.bucket, r.bucket)
        keys, quiet = answers.deleted_keys(await _read_xml(r, signed))
        parts = []
        for key in keys:
            try:
                await self._thread(self.objects.delete, r.bucket, key)
            except S3Error as error:
                parts.append(
                    f"<Error>{element('Key', key)}{element('Code', error.code)}"
                    f"{element('Message', error.message)}</Error>"
                )
                continue
            if not quiet:
                parts.append(f"<Deleted>{element('Key', key)}</Deleted>")
        return answers.xml_response(answers.document("DeleteResult", parts))

    # ---- objects ---------------------------------------------------------------------

    async def put_object(self, r: _Request, signed: sigv4.Signed) -> web.Response:
        content_type = r.headers.get("content-type") or DEFAULT_TYPE
        metadata = r.metadata()  # refused too large before the body is read
        if r.key.endswith("/"):
            temp = None
            # A folder marker: its body is read and checked as any object's (signature,
            # digests), and must be empty: a folder holds no bytes of its own.
            received = await body.receive(r.request.content, r.headers, signed, Path(os.devnull))
            if received.size:
                raise S3Error("InvalidArgument", "A folder key takes no content",
                              f"/{r.bucket}/{r.key}")
            if (check := _write_check(r.headers, r.bucket, r.key)) is not None:
                check(await self._thread(self.objects.current, r.bucket, r.key))
            info = await self._thread(self.objects.make_folder, r.bucket, r.key)
        else:
            check = _write_check(r.headers, r.bucket, r.key)
            if check is not None:  # refused before the body is read; commit checks again
                check(await self._thread(self.objects.current, r.bucket, r.key))
            temp = await self._thread(self.objects.temporary, r.bucket, r.key)
            try:
                received = await body.receive(r.request.content, r.headers, signed, temp)
            except FileNotFoundError:
                # Its `.s3-tmp/` went with the bucket, deleted before the body's first byte.
                raise no_such_bucket(r.bucket) from None
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            info = await self._thread(
                self.objects.commit, temp, r.bucket, r.key, received.md5, content_type,
                metadata, check,
            )
        return web.Response(headers={"ETag": f'"{info.etag}"'})

    async def copy_object(self, r: _Request) -> web.Response:
        source = _copy_source(r.headers["x-amz-copy-source"])
        replace = r.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE"
        if source == (r.bucket, r.key) and not replace:
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying "
                          "to copy an object to itself without changing the object's metadata.")
        info = await self._thread(
            self.objects.copy,
            source,
            r.bucket,
            r.key,
            (r.headers.get("content-type") or DEFAULT_TYPE) if replace else None,
            r.metadata() if replace else None,
            _source_check(r.headers),
            _write_check(r.headers, r.bucket, r.key),
        )
        return answers.xml_response(answers.document("CopyObjectResult", [
            element("LastModified", iso_time(info.modified)), element("ETag", f'"{info.etag}"'),
        ]))

    async def get_object(self, r: _Request, head: bool) -> web.StreamResponse:
        if head:
            info: ObjectInfo = await self._thread(self.objects.info, r.bucket, r.key)
            file = None
        else:
            info, file = await self._thread(self.objects.open, r.bucket, r.key)
        try:
            status = _preconditions(r.headers, info)
            headers = _object_headers(info)
            for name, header in RESPONSE_OVERRIDES.items():
                if name in r.query:
                    headers[header] = _override(name, r.query[name])
            start, length = 0, info.size
            wanted = _range(r.headers.get("range", ""), info.size) if status == 200 else None
            if wanted is not None:
                start, length = wanted
                status = 206
                headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{info.size}"
            if status == 304:
                return web.Response(status=304, headers={"ETag": headers["ETag"]})
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = length
            await response.prepare(r.request)
            if file is not None and length:
                await _send(r.request, response, file, start, length)
            await response.write_eof()
            return response
        finally:
            if file is not None:
                await self._thread(file.close)

    # ---- multipart uploads -----------------------------------------------------------

    async def create_upload(self, r: _Request) -> web.Response:
        metadata = r.metadata()  # refused now, not at completion after every part
        await self._thread(self.objects.bucket, r.bucket)
        upload_id = await self._thread(
            self.objects.create_upload,
            r.bucket,
            r.key,
            r.headers.get("content-type") or DEFAULT_TYPE,
            metadata,
        )
        return answers.xml_response(answers.document("InitiateMultipartUploadResult", [
            element("Bucket", r.bucket), element("Key", r.key), element("UploadId", upload_id),
        ]))

    async def upload_part(self, r: _Request, signed: sigv4.Signed) -> web.Response:
        number = answers.part_number(r.query.get("partNumber", ""))
        upload = await self._thread(self.objects.upload, r.bucket, r.key, r.query["uploadId"])
        temp = await self._thread(self.objects.part_temporary, upload)
        copying = "x-amz-copy-source" in r.headers
        try:
            if copying:
                source = _copy_source(r.headers["x-amz-copy-source"])
                md5 = await self._thread(
                    self.objects.copy_range, source, r.headers.get("x-amz-copy-source-range", ""),
                    temp, _source_check(r.headers),
                )
            else:
                md5 = (await body.receive(r.request.content, r.headers, signed, temp)).md5
            part = await self._thread(self.objects.commit_part, upload, number, temp, md5)
        except FileNotFoundError:
            # The upload's folder went (aborted, or with its bucket) before the part's bytes.
            raise no_such_upload(r.bucket, r.key) from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if copying:
            return answers.xml_response(answers.document("CopyPartResult", [
                element("LastModified", iso_time(part.modified)),
                element("ETag", f'"{part.etag}"'),
            ]))
        return web.Response(headers={"ETag": f'"{part.etag}"'})

    async def complete_upload(self, r: _Request, signed: sigv4.Signed) -> web.Response:
        upload = await self._thread(self.objects.upload, r.bucket, r.key, r.query["uploadId"])
        # Its x-amz-checksum-* headers are the assembled object's (full or composite):
        # taken unchecked, as crc32c's are (README).
        wanted = answers.completed_parts(await _read_xml(r, signed, checksums=False))
        info = await self._thread(self.objects.complete, upload, wanted,
                                  _write_check(r.headers, r.bucket, r.key))
        host = r.headers.get("host", "")
        return answers.xml_response(answers.document("CompleteMultipartUploadResult", [
            element("Location", f"http://{host}/{r.bucket}/{r.key}"),
            element("Bucket", r.bucket),
            element("Key", r.key),
            element("ETag", f'"{info.etag}"'),
        ]))

    async def list_parts(self, r: _Request) -> web.Response:
        marker = _count(r.query, "part-number-marker", 0)
        max_parts = min(_count(r.query, "max-parts", MAX_KEYS), MAX_KEYS)
        upload = await self._thread(self.objects.upload, r.bucket, r.key, r.query["uploadId"])
        parts = await self._thread(self.objects.parts, upload)
        after = [p for p in parts if p.number > marker]
        # max-parts=0, as max-keys=0: an empty page, and no next one to ask for.
        shown, truncated = after[:max_parts], 0 < max_parts < len(after)
        items = [
            element("Bucket", r.bucket),
            element("Key", r.key),
            element("UploadId", upload.upload_id),
            element("PartNumberMarker", marker),
            element("NextPartNumberMarker", shown[-1].number if shown else 0),
            element("MaxParts", max_parts),
            element("IsTruncated", truncated),
            *(
                "<Part>"
                + element("PartNumber", p.number)
                + element("LastModified", iso_time(p.modified))
                + element("ETag", f'"{p.etag}"')
                + element("Size", p.size)
                + "</Part>"
                for p in shown
            ),
            element("StorageClass", "STANDARD"),
        ]
        return answers.xml_response(answers.document("ListPartsResult", items))

    async def list_uploads(self, r: _Request) -> web.Response:
        q = r.query
        max_uploads = min(_count(q, "max-uploads", MAX_KEYS), MAX_KEYS)
        await self._thread(self.objects.bucket, r.bucket)
        prefix = q.get("prefix", "")
        key_marker = q.get("key-marker", "")
        # An upload-id-marker counts only with its key-marker, as in S3.
        id_marker = q.get("upload-id-marker", "") if key_marker else ""
        uploads = await self._thread(self.objects.list_uploads, r.bucket, prefix)
        if id_marker:  # the marker's key's later uploads (ids sort as made), then keys after
            after = [u for u in uploads if (u.key, u.upload_id) > (key_marker, id_marker)]
        else:
            after = [u for u in uploads if u.key > key_marker]
        shown, truncated = after[:max_uploads], 0 < max_uploads < len(after)
        encode = q.get("encoding-type") == "url"

        def key(text: str) -> str:  # as S3 encodes KeyMarker, NextKeyMarker, Prefix, Key
            return answers.url_encoded(text, encode)

        items = [
            element("Bucket", r.bucket),
            element("KeyMarker", key(key_marker)),
            element("UploadIdMarker", id_marker),
        ]
        if truncated:
            items += [element("NextKeyMarker", key(shown[-1].key)),
                      element("NextUploadIdMarker", shown[-1].upload_id)]
        items += [
            element("Prefix", key(prefix)),
            element("MaxUploads", max_uploads),
            element("IsTruncated", truncated),
            *(
                "<Upload>"
                + element("Key", key(u.key))
                + element("UploadId", u.upload_id)
                + element("Initiated", iso_time(u.initiated))
                + element("StorageClass", "STANDARD")
                + "</Upload>"
                for u in shown
            ),
        ]
        if encode:
            items.append(element("EncodingType", "url"))
        return answers.xml_response(answers.document("ListMultipartUploadsResult", items))


async def _read_xml(r: _Request, signed: sigv4.Signed, checksums: bool = True) -> bytes:
    """The XML body, read whole and checked against what the signature declared of it
    (`checksums`: see body.check_whole)."""
    data = b""
    while piece := await r.request.content.read(MAX_XML + 1 - len(data)):
        data += piece  # read(n) answers what has come, up to n: the whole body is wanted
        if len(data) > MAX_XML:
            raise S3Error("MalformedXML", "The XML body is too large")
    body.check_whole(data, r.headers, signed, checksums)
    return data


def _count(query: Mapping[str, str], name: str, default: int) -> int:
    """A listing's count or marker (max-keys, max-parts, part-number-marker, max-uploads):
    digits, 0 to MAX_COUNT, as S3 takes them; `default` when not given."""
    text = query.get(name)
    if text is None:
        return default
    number = decimal(text, MAX_COUNT + 1)
    if number is None or number > MAX_COUNT:
        raise S3Error("InvalidArgument", f"Argument {name} must be an integer between 0 and "
                      f"{MAX_COUNT}")
    return number


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode("utf-8", "surrogatepass")).decode()


def _token_after(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect") \
            from None


def _copy_source(header: str) -> tuple[str, str]:
    raw = header.partition("?")[0]  # a versionId: this store keeps one version
    bucket, _, key = unquote(raw).lstrip("/").partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                      "sourcebucket/sourcekey")
    return bucket, key


def _object_headers(info: ObjectInfo) -> dict[str, str]:
    headers = {
        "ETag": f'"{info.etag}"',
        "Last-Modified": answers.http_time(info.modified),
        "Content-Type": info.content_type,
        "Accept-Ranges": "bytes",
        "x-amz-request-id": answers.request_id(),
    }
    for name, value in info.metadata.items():
        headers[f"x-amz-meta-{name}"] = value
    return headers


def _etags(value: str) -> Iterable[str]:
    return (v.strip().removeprefix("W/").strip('"') for v in value.split(","))


def _write_check(headers: Mapping[str, str], bucket: str, key: str) -> WriteCheck | None:
    """A conditional write's test (PutObject, CompleteMultipartUpload), as S3's: If-Match
    needs the object there with one of the ETags (else NoSuchKey, or PreconditionFailed);
    If-None-Match (`*`, or ETags) refuses a write over an object it matches."""
    if_match, if_none_match = headers.get("if-match"), headers.get("if-none-match")
    if if_match is None and if_none_match is None:
        return None

    def check(current: ObjectInfo | None) -> None:
        failed = S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                         "specified did not hold", f"/{bucket}/{key}")
        if if_match is not None:
            if current is None:
                raise S3Error("NoSuchKey", "The specified key does not exist.",
                              f"/{bucket}/{key}")
            if not any(t in ("*", current.etag) for t in _etags(if_match)):
                raise failed
        if if_none_match is not None and current is not None and any(
            t in ("*", current.etag) for t in _etags(if_none_match)
        ):
            raise failed

    return check


def _source_check(headers: Mapping[str, str]) -> WriteCheck | None:
    """A copy's conditions on its source (`x-amz-copy-source-if-match`, `-none-match`,
    `-modified-since`, `-unmodified-since`): GetObject's, but any that fails is a 412."""
    prefix = "x-amz-copy-source-"
    conditions = {name.removeprefix(prefix): value for name, value in headers.items()
                  if name.startswith(prefix + "if-")}
    if not conditions:
        return None

    def check(source: ObjectInfo | None) -> None:
        if source is not None and _preconditions(conditions, source) != 200:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                          "specified did not hold")

    return check


def _preconditions(headers: Mapping[str, str], info: ObjectInfo) -> int:
    """200, or 304 (not modified); PreconditionFailed raised: RFC 9110's order."""
    from email.utils import parsedate_to_datetime

    def when(name: str) -> float | None:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            return parsedate_to_datetime(headers[name]).timestamp()
        return None

    modified = int(info.modified)
    if "if-match" in headers:
        if not any(t in ("*", info.etag) for t in _etags(headers["if-match"])):
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                          "specified did not hold")
    elif "if-unmodified-since" in headers and (t := when("if-unmodified-since")) is not None \
            and modified > t:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified "
                      "did not hold")
    if "if-none-match" in headers:
        if any(t in ("*", info.etag) for t in _etags(headers["if-none-match"])):
            return 304
    elif "if-modified-since" in headers and (t := when("if-modified-since")) is not None \
            and modified <= t:
        return 304
    return 200


def _override(name: str, value: str) -> str:
    """A `response-*` parameter's value as its header's: one holding a line break or
    another control character would be a second header (aiohttp refuses to send it: a
    500), so it is the client's error."""
    if has_control(value):
        raise S3Error("InvalidArgument", f"{name} holds a control character")
    return value


def _range(header: str, size: int) -> tuple[int, int] | None:
    """(start, length) of a single byte range; None for none (or one S3 ignores: not
    `bytes=` and ASCII digits). A bound past the object reads as its size (the numbers
    are saturated there): a last byte past the end is the end, as S3 clamps it; a
    first one is past it, a 416."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    start, end = decimal(first, size), decimal(last, size)
    if not dash or (first and start is None) or (last and end is None):
        return None
    if start is None:
        if end is None:
            return None  # `bytes=-`
        if end == 0:  # the last 0 bytes: none to send
            raise _invalid_range(size)
        return size - end, end
    if start >= size:
        raise _invalid_range(size)
    end = size - 1 if end is None else min(end, size - 1)
    if end < start:
        return None
    return start, end - start + 1


def _invalid_range(size: int) -> S3Error:
    error = S3Error("InvalidRange", "The requested range is not satisfiable")
    error.resource = ""
    return error


async def _send(
    request: web.Request, response: web.StreamResponse, file: Any, start: int, length: int
) -> None:
    """The file's bytes by sendfile (the kernel copies them); by reads where it cannot."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    loop = asyncio.get_running_loop()
    try:
        await loop.sendfile(transport, file, start, length)
        return
    except NotImplementedError:
        pass
    except TimeoutError:  # ETIMEDOUT: the kernel gave up on a client taking nothing
        raise ConnectionResetError("the client took nothing for the send timeout") from None
    file.seek(start)
    while length > 0:
        data = await asyncio.to_thread(file.read, min(length, body.PIECE))
        if not data:
            break
        await response.write(data)
        length -= len(data)
