"""API-gateway envelopes (anything with `httpMethod`, as AWS API Gateway sends).

The request the gateway received is in `body`, base64-encoded when `isBase64Encoded`;
it is read again as a request body would be, with the gateway request's own
Content-Type, so an octet-stream upload stays raw bytes (SPEC 6.1).
"""

from __future__ import annotations

import binascii
from typing import Any

from faas_supervisor.errors import BadEvent
from faas_supervisor.parsers.event import GatewayBody


def recognise(value: Any) -> GatewayBody | None:
    if not isinstance(value, dict) or "httpMethod" not in value:
        return None
    body = value.get("body")
    if body is None:  # a GET, say: no body
        return GatewayBody(b"", _content_type(value.get("headers")))
    if not isinstance(body, str):
        raise BadEvent("event field body is not a string")
    encoded = value.get("isBase64Encoded", False)
    if not isinstance(encoded, bool):
        raise BadEvent("event field isBase64Encoded is not true or false")
    try:
        data = body.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON allows
        raise BadEvent("event field body is not valid Unicode") from None
    if encoded:
        try:
            data = binascii.a2b_base64(b"".join(data.split()), strict_mode=True)
        except binascii.Error:
            raise BadEvent("event field body is not base64 (isBase64Encoded is true)") from None
    return GatewayBody(data, _content_type(value.get("headers")))


def _content_type(headers: Any) -> str:
    """Header names are case-insensitive, and gateways send them in any case."""
    if not isinstance(headers, dict):
        return ""
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == "content-type" and isinstance(value, str):
            return value
    return ""
