"""AWS Signature Version 4's canonical forms and keys, for both sides of a request.

The controller's S3 endpoint checks signatures with them (controller/s3/sigv4.py); the S3
provider's direct requests make them (storage_providers/s3_direct.py, `authorization`).
Pure functions of strings: nothing here reads a clock, a key store or the network.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def uri_encode(text: str, slash: bool = True) -> str:
    """S3's URI encoding: everything but A-Z a-z 0-9 - _ . ~ (and `/` in paths)."""
    return quote(text, safe="/~" if slash else "~")


def canonical_uri(raw_path: str) -> str:
    """The path as S3 canonicalizes it: decoded once, encoded once, never normalized."""
    return uri_encode(unquote(raw_path)) or "/"


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """The query's pairs, each decoded once (`+` is a plus: clients encode spaces)."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    encoded = sorted((uri_encode(k, False), uri_encode(v, False)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_request(
    method: str,
    raw_path: str,
    pairs: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: list[str],
    payload: str,
) -> str:
    lines = [f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers]
    return "\n".join([
        method,
        canonical_uri(raw_path),
        canonical_query(pairs),
        "".join(lines),
        ";".join(signed_headers),
        payload,
    ])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def string_to_sign(amz_date: str, scope: str, request: str) -> str:
    # surrogateescape: a header value that came as bytes not UTF-8 (aiohttp keeps them as
    # surrogates) is hashed as those bytes, and simply does not match; never an error.
    digest = hashlib.sha256(request.encode("utf-8", "surrogateescape")).hexdigest()
    return "\n".join([ALGORITHM, amz_date, scope, digest])


def hmac_hex(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def scope(date: str, region: str, service: str = "s3") -> str:
    """The credential scope of a signature made on `date` (YYYYMMDD)."""
    return f"{date}/{region}/{service}/aws4_request"


def authorization(
    access_key: str,
    secret_key: str,
    region: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    amz_date: str,
    query: Iterable[tuple[str, str]] = (),
) -> str:
    """The `Authorization` header of a request signed in its headers (service s3).

    `path` is already percent-encoded as sent; `headers` maps lower-case names to the
    values sent, every one of them signed, and must hold `host`, `x-amz-date` (the
    `amz_date` given) and `x-amz-content-sha256` (the payload's hash or UNSIGNED-PAYLOAD).
    """
    names = sorted(headers)
    request = canonical_request(method, path, query, headers, names,
                                headers["x-amz-content-sha256"])
    where = scope(amz_date[:8], region)
    key = signing_key(secret_key, amz_date[:8], region, "s3")
    signature = hmac_hex(key, string_to_sign(amz_date, where, request))
    return (f"{ALGORITHM} Credential={access_key}/{where}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")
