"""AWS Signature Version 4, as S3 checks it: the header and presigned-query forms.

`verify` takes what the request carries (method, raw path and query, headers) and
answers the `Signed` facts a handler needs to check the body afterwards: the payload's
declared hash (a hex SHA-256, `UNSIGNED-PAYLOAD` or one of the `STREAMING-*` forms) and,
for signed chunks, the key and seed signature the chunks are chained to (checked in body.py).
`presign` makes a query-signed URL with the same canonical forms.

Every comparison of a signature is constant-time; no key or signature is ever logged.
"""

from __future__ import annotations

import calendar
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from faas_supervisor.aws_sigv4 import ALGORITHM as ALGORITHM
from faas_supervisor.aws_sigv4 import EMPTY_SHA256 as EMPTY_SHA256
from faas_supervisor.aws_sigv4 import UNSIGNED as UNSIGNED
from faas_supervisor.aws_sigv4 import canonical_query as canonical_query
from faas_supervisor.aws_sigv4 import canonical_request as canonical_request
from faas_supervisor.aws_sigv4 import canonical_uri as canonical_uri
from faas_supervisor.aws_sigv4 import hmac_hex as hmac_hex
from faas_supervisor.aws_sigv4 import query_pairs as query_pairs
from faas_supervisor.aws_sigv4 import signing_key as signing_key
from faas_supervisor.aws_sigv4 import string_to_sign as string_to_sign
from faas_supervisor.aws_sigv4 import uri_encode as uri_encode
from faas_supervisor.controller.s3.errors import S3Error

STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING = (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
MAX_SKEW = 15 * 60  # seconds a signed request's time may differ from ours (S3's)
MAX_EXPIRES = 7 * 24 * 3600  # a presigned URL's longest life (S3's)
# What a presigned request may send unsigned (S3 takes it; the query's hash is the one used).
PRESIGNED_UNSIGNED = ("x-amz-content-sha256",)


@dataclass(frozen=True)
class Keys:
    access_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class Signed:
    """What a verified request declared about its body."""

    payload: str  # a hex SHA-256, UNSIGNED-PAYLOAD, or a STREAMING-* form
    amz_date: str = ""
    scope: str = ""
    signature: str = ""  # the seed of signed chunks
    signing_key: bytes = field(default=b"", repr=False)


def same(given: str, expected: str) -> bool:
    """Whether `given` is `expected`, in constant time; never an error.

    aiohttp decodes bytes that are not UTF-8 as surrogates, which surrogateescape gives
    back; a string no bytes decode to (JSON's lone "\\ud800") cannot be sent, so it
    matches nothing rather than raising (a 5xx where a 401/403 belongs).
    """
    try:
        given_bytes = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given_bytes, expected.encode())


@dataclass(frozen=True)
class _Credential:
    access_key: str
    date: str
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def _credential(text: str) -> _Credential:
    parts = text.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise S3Error("AuthorizationHeaderMalformed", "the credential is malformed")
    if parts[3] != "s3":
        raise S3Error("AuthorizationHeaderMalformed", f"the service {parts[3]!r} is not s3")
    return _Credential(*parts[:4])


def _epoch(amz_date: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise S3Error("AccessDenied", "X-Amz-Date is not an ISO 8601 basic time") from None


def verify(
    keys: Keys,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    now: float | None = None,
) -> Signed:
    """The request's signature checked; what it declared about its body. Raises S3Error.

    `headers` maps lower-case names to their values (several joined by `,`).
    """
    now = time.time() if now is None else now
    pairs = query_pairs(raw_query)
    query = dict(pairs)
    authorization = headers.get("authorization", "")
    if "X-Amz-Signature" in query or "X-Amz-Credential" in query:
        return _verify_query(keys, method, raw_path, pairs, query, headers, now)
    if not authorization:
        raise S3Error("AccessDenied", "anonymous access is not allowed")
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error("InvalidRequest", f"only {ALGORITHM} signatures are supported")
    fields = {}
    for item in rest.split(","):
        name, _, value = item.strip().partition("=")
        fields[name] = value
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        raise S3Error("AuthorizationHeaderMalformed", "the Authorization header is incomplete")
    credential = _credential(fields["Credential"])
    amz_date = headers.get("x-amz-date", "")
    if not amz_date:
        raise S3Error("AccessDenied", "X-Amz-Date is missing")
    if not amz_date.startswith(credential.date):
        raise S3Error("AuthorizationHeaderMalformed", "the credential's date is not X-Amz-Date's")
    signed_headers = fields["SignedHeaders"].split(";")
    _check_signed_headers(signed_headers, headers, ())
    _check_access_key(keys, credential)
    when = _epoch(amz_date)
    if abs(now - when) > MAX_SKEW:
        raise S3Error(
            "RequestTimeTooSkewed", "the difference between the request time and ours is too large"
        )
    payload = headers.get("x-amz-content-sha256", "")
    if not payload:
        raise S3Error("InvalidRequest", "x-amz-content-sha256 is missing")
    if payload not in (UNSIGNED, *STREAMING) and not _is_sha256(payload):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 is neither a hash nor a known form")
    request = canonical_request(method, raw_path, pairs, headers, signed_headers, payload)
    return _signed(keys, credential, amz_date, request, payload, fields["Signature"])


def _verify_query(
    keys: Keys,
    method: str,
    raw_path: str,
    pairs: list[tuple[str, str]],
    query: Mapping[str, str],
    headers: Mapping[str, str],
    now: float,
) -> Signed:
    needed = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
              "X-Amz-SignedHeaders", "X-Amz-Signature")
    missing = [name for name in needed if name not in query]
    if missing:
        raise S3Error("AuthorizationQueryParametersError", f"{missing[0]} is missing")
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise S3Error("AuthorizationQueryParametersError", f"only {ALGORITHM} is supported")
    credential = _credential(query["X-Amz-Credential"])
    amz_date = query["X-Amz-Date"]
    if not amz_date.startswith(credential.date):
        raise S3Error(
            "AuthorizationQueryParametersError", "the credential's date is not X-Amz-Date's"
        )
    try:
        expires = int(query["X-Amz-Expires"])
    except ValueError:
        expires = -1
    if not 0 < expires <= MAX_EXPIRES:
        raise S3Error("AuthorizationQueryParametersError",
                      f"X-Amz-Expires must be 1 to {MAX_EXPIRES} seconds")
    _check_access_key(keys, credential)
    signed_headers = query["X-Amz-SignedHeaders"].split(";")
    _check_signed_headers(signed_headers, headers, PRESIGNED_UNSIGNED)
    when = _epoch(amz_date)
    if now < when - MAX_SKEW:
        raise S3Error("AccessDenied", "Request is not valid yet")
    if now > when + expires:
        raise S3Error("AccessDenied", "Request has expired")
    payload = query.get("X-Amz-Content-Sha256", UNSIGNED)
    request = canonical_request(
        method,
        raw_path,
        [(k, v) for k, v in pairs if k != "X-Amz-Signature"],
        headers,
        signed_headers,
        payload,
    )
    return _signed(keys, credential, amz_date, request, payload, query["X-Amz-Signature"])


def _signed(
    keys: Keys, credential: _Credential, amz_date: str, request: str, payload: str, given: str
) -> Signed:
    """The request's signature checked against the one the keys make (in constant time)."""
    key = signing_key(keys.secret_key, credential.date, credential.region, credential.service)
    expected = hmac_hex(key, string_to_sign(amz_date, credential.scope, request))
    if not same(given, expected):
        raise S3Error("SignatureDoesNotMatch", "the request signature we calculated does not "
                      "match the signature you provided; check your key and signing method")
    return Signed(payload, amz_date, credential.scope, expected, key)

def _check_signed_headers(
    signed_headers: list[str], headers: Mapping[str, str], exempt: Iterable[str]
) -> None:
    """Host and every `x-amz-*` header sent must be signed, as S3 requires: an unsigned
    one (a copy source, metadata) would change what a signed request does."""
    if "host" not in signed_headers:
        raise S3Error("AccessDenied", "the Host header must be signed")
    unsigned = [
        name for name in headers
        if name.startswith("x-amz-") and name not in signed_headers and name not in exempt
    ]
    if unsigned:
        raise S3Error("AccessDenied", "There were headers present in the request which were "
                      f"not signed: {', '.join(sorted(unsigned))}")


def _check_access_key(keys: Keys, credential: _Credential) -> None:
    if not same(credential.access_key, keys.access_key):
        raise S3Error("InvalidAccessKeyId", "the access key you provided does not exist")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def presign(
    keys: Keys,
    method: str,
    url: str,
    expires: int,
    region: str = "us-east-1",
    headers: Mapping[str, str] | None = None,
    query: Iterable[tuple[str, str]] = (),
    now: float | None = None,
) -> str:
    """`url` (its path already percent-encoded) signed in the query, for `expires` seconds.

    `headers` (besides Host) are signed too: the request must send them as given.
    """
    parts = urlsplit(url)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    credential = _Credential(keys.access_key, stamp[:8], region, "s3")
    signed = {"host": parts.netloc, **{k.lower(): v for k, v in (headers or {}).items()}}
    names = sorted(signed)
    pairs = [
        *query,
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{keys.access_key}/{credential.scope}"),
        ("X-Amz-Date", stamp),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", ";".join(names)),
    ]
    request = canonical_request(method, parts.path or "/", pairs, signed, names, UNSIGNED)
    key = signing_key(keys.secret_key, credential.date, region, "s3")
    signature = hmac_hex(key, string_to_sign(stamp, credential.scope, request))
    pairs.append(("X-Amz-Signature", signature))
    return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}?{canonical_query(pairs)}"
