"""S3's XML: the answers (built as text, S3's element names and order) and the two request
bodies it takes (CompleteMultipartUpload, Delete), parsed with bounded size."""

from __future__ import annotations

import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from email.utils import formatdate
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web

from faas_supervisor.controller.s3.digits import decimal
from faas_supervisor.controller.s3.errors import S3Error
from faas_supervisor.controller.s3.objects import MAX_PARTS

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
OWNER = "<Owner><ID>faas-supervisor</ID><DisplayName>faas-supervisor</DisplayName></Owner>"
# What XML 1.0 cannot hold, escaped or not: C0 controls but tab, LF and CR, lone
# surrogates (a file name's undecodable bytes), U+FFFE and U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def element(name: str, value: object) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{xml_text(str(value))}</{name}>"


def xml_text(text: str) -> str:
    """`text` as XML 1.0 character data, always well-formed. A key may hold any character
    (S3's rule); those XML 1.0 cannot hold become U+FFFD, as MinIO's answers (Go's
    xml.EscapeText) have them. AWS writes `&#x1;`, which XML 1.0 forbids: parsers
    (botocore's) refuse the whole answer, and an error's code is lost. Such a key is exact
    only with `encoding-type=url` (botocore asks it of listings). CR is a reference, else
    parsers read it as LF."""
    return _NOT_XML.sub("\ufffd", escape(text, {"\r": "&#13;"}))


def document(root: str, parts: Iterable[str], namespace: bool = True) -> str:
    xmlns = f' xmlns="{NAMESPACE}"' if namespace else ""
    return f"{HEAD}<{root}{xmlns}>{''.join(parts)}</{root}>"


def xml_response(text: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=text.encode(),
        content_type="application/xml",
        headers={"x-amz-request-id": request_id()},
    )


def request_id() -> str:
    return secrets.token_hex(8).upper()


def error_response(error: S3Error, method: str) -> web.Response:
    headers = {"x-amz-request-id": request_id()}
    if method == "HEAD":  # HEAD answers carry no body: the status and code say it all
        headers["x-amz-error-code"] = error.code
        return web.Response(status=error.status, headers=headers)
    text = document(
        "Error",
        [
            element("Code", error.code),
            element("Message", error.message),
            element("Resource", error.resource),
            element("RequestId", headers["x-amz-request-id"]),
        ],
        namespace=False,
    )
    return web.Response(
        status=error.status, body=text.encode(), content_type="application/xml", headers=headers
    )


def iso_time(seconds: float) -> str:
    """S3's time in XML: ISO 8601 with milliseconds, UTC."""
    millis = int(seconds * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def http_time(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


def url_encoded(text: str, encode: bool) -> str:
    """A key or prefix as `encoding-type=url` asks (clients decode it back)."""
    return quote(text, safe="/") if encode else text


# ---- request bodies ------------------------------------------------------------------


def parse(body: bytes) -> ET.Element:
    """An XML body; namespaces dropped from the names (clients send S3's or none)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                      "validate against our published schema.") from None
    for node in root.iter():
        if isinstance(node.tag, str) and "}" in node.tag:
            node.tag = node.tag.split("}", 1)[1]
    return root


def completed_parts(body: bytes) -> list[tuple[int, str]]:
    root = parse(body)
    if root.tag != "CompleteMultipartUpload":
        raise S3Error("MalformedXML", "Expected CompleteMultipartUpload")
    parts = []
    for part in root.findall("Part"):
        number, etag = (part.findtext("PartNumber") or "").strip(), part.findtext("ETag")
        if decimal(number, MAX_PARTS) is None or etag is None:  # no number: not S3's schema
            raise S3Error("MalformedXML", "A Part needs a PartNumber and an ETag")
        parts.append((part_number(number), etag.strip()))
    return parts


def part_number(text: str) -> int:
    """A part's number (UploadPart's `partNumber`, a CompleteMultipartUpload's
    `PartNumber`): 1 to MAX_PARTS, else InvalidArgument."""
    number = decimal(text, MAX_PARTS + 1)
    if number is None or not 1 <= number <= MAX_PARTS:
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                      f"{MAX_PARTS}, inclusive")
    return number


def location_constraint(body: bytes) -> str:
    """A CreateBucket's region: its CreateBucketConfiguration's LocationConstraint; ""
    for none (no body, or an empty constraint)."""
    if not body.strip():
        return ""
    root = parse(body)
    if root.tag != "CreateBucketConfiguration":
        raise S3Error("MalformedXML", "Expected CreateBucketConfiguration")
    return (root.findtext("LocationConstraint") or "").strip()


def deleted_keys(body: bytes) -> tuple[list[str], bool]:
    root = parse(body)
    if root.tag != "Delete":
        raise S3Error("MalformedXML", "Expected Delete")
    keys = [o.findtext("Key") or "" for o in root.findall("Object")]
    if not keys or len(keys) > 1000:
        raise S3Error("MalformedXML", "Delete takes 1 to 1000 objects")
    return keys, (root.findtext("Quiet") or "").strip().lower() == "true"
