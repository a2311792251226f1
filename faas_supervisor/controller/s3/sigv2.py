"""AWS Signature Version 2, which S3 still takes and boto3 still makes by default for
presigned URLs (`AWSAccessKeyId`, `Expires`, `Signature` in the query) without a
`signature_version='s3v4'`; MinIO takes it too. Checked like sigv4: constant-time, the
expiry (query) or the clock skew (header) first; the body is not signed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

from faas_supervisor.controller.s3 import sigv4
from faas_supervisor.controller.s3.errors import S3Error

# The sub-resources and response overrides part of the signed resource (S3's list).
SIGNED_QUERY = frozenset({
    "accelerate", "acl", "cors", "defaultObjectAcl", "delete", "inventory", "lifecycle",
    "location", "logging", "metrics", "notification", "object-lock", "partNumber", "policy",
    "replication", "requestPayment", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "response-content-language", "response-content-type",
    "response-expires", "restore", "select", "select-type", "storageClass", "tagging",
    "torrent", "uploadId", "uploads", "versionId", "versioning", "versions", "website",
    "analytics",
})


def is_v2(query: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    return "AWSAccessKeyId" in query or headers.get("authorization", "").startswith("AWS ")


def verify(
    keys: sigv4.Keys,
    method: str,
    raw_path: str,
    pairs: list[tuple[str, str]],
    headers: Mapping[str, str],
    now: float | None = None,
) -> sigv4.Signed:
    now = time.time() if now is None else now
    query = dict(pairs)
    if "AWSAccessKeyId" in query:
        access_key, signature = query["AWSAccessKeyId"], query.get("Signature", "")
        expires = query.get("Expires", "")
        # ASCII digits only, and few: str.isdigit() takes "²", and int() refuses more
        # than 4300 digits; either would be a 500 where a refusal belongs.
        if not re.fullmatch(r"[0-9]{1,20}", expires):
            raise S3Error("AccessDenied", "Query-string authentication requires the Expires "
                          "parameter")
        if now > int(expires):
            raise S3Error("AccessDenied", "Request has expired")
        date = expires
    else:
        credential, _, signature = headers["authorization"][4:].strip().rpartition(":")
        access_key = credential
        if "x-amz-date" in headers:
            stamp, date = headers["x-amz-date"], ""
        else:
            stamp = date = headers.get("date", "")
        try:
            parsed = parsedate_to_datetime(stamp)
        except (TypeError, ValueError, IndexError):
            raise S3Error("AccessDenied", "AWS authentication requires a valid Date or "
                          "x-amz-date header") from None
        # A "-0000" zone (or none) parses as naive, which .timestamp() would take for our
        # local time: HTTP dates are UTC whatever TZ the controller runs in.
        when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        if abs(now - when) > sigv4.MAX_SKEW:
            raise S3Error("RequestTimeTooSkewed", "the difference between the request time "
                          "and ours is too large")
    if not sigv4.same(access_key, keys.access_key):
        raise S3Error("InvalidAccessKeyId", "the access key you provided does not exist")
    amz = sorted(
        (name, " ".join(value.split()))
        for name, value in headers.items()
        if name.startswith("x-amz-")
    )
    signed_query = sorted((k, v) for k, v in pairs if k in SIGNED_QUERY)
    sub_resources = (
        "?" + "&".join(f"{k}={v}" if v else k for k, v in signed_query) if signed_query else ""
    )
    head = "\n".join([
        method,
        headers.get("content-md5", ""),
        headers.get("content-type", ""),
        date,
        *(f"{name}:{value}" for name, value in amz),
        "",
    ])
    # surrogateescape: see aws_sigv4.string_to_sign. Every form is checked (no
    # short-circuit), so the time taken does not tell which one was close.
    matches = [
        sigv4.same(signature, _signature(keys, head + path + sub_resources))
        for path in _resource_paths(raw_path)
    ]
    if not any(matches):
        raise S3Error("SignatureDoesNotMatch", "the request signature we calculated does not "
                      "match the signature you provided; check your key and signing method")
    return sigv4.Signed(sigv4.UNSIGNED)


def _resource_paths(raw_path: str) -> tuple[str, ...]:
    """The CanonicalizedResource paths a correct signer may have signed for `raw_path`.

    S3's rule gives a path-style request's un-decoded path as is, and a bucket alone
    (virtual-hosted `GET /` of bucket b) as "/b/". Signers disagree on a path-style bucket
    alone, sent as "/b": botocore signs "/b/" (its auth_path: S3 wants the slash, it
    says), aws-sdk-js v2 signs the path it sends, "/b"; S3 takes both. Both name the same
    request here ("/b" and "/b/" are the bucket b, no key), so taking either is no weaker:
    a signature still covers the method, the bucket and the signed sub-resources. Any
    other path is signed as sent, one form only.
    """
    # Decoded, as the server splits it: `/b%2Fk` is the object k of bucket b, no bucket.
    if unquote(raw_path).count("/") == 1 and len(raw_path) > 1:
        return raw_path, raw_path + "/"
    return (raw_path,)


def _signature(keys: sigv4.Keys, text: str) -> str:
    digest = hmac.new(keys.secret_key.encode(), text.encode("utf-8", "surrogateescape"),
                      hashlib.sha1).digest()
    return base64.b64encode(digest).decode()
