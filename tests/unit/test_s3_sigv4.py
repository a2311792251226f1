"""The S3 endpoint's signature checks against the examples AWS publishes for SigV4 (the
`examplebucket` requests of the S3 API reference, their keys and time), and the chunked
bodies' signatures (the reference's 66560-byte `chunkObject.txt`)."""

from __future__ import annotations

import asyncio
import calendar
import time
from pathlib import Path

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from faas_supervisor.controller.s3 import body, sigv2, sigv4
from faas_supervisor.controller.s3.errors import S3Error

KEYS = sigv4.Keys("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
WHEN = float(calendar.timegm(time.strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ")))
SCOPE = "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"


def _authorization(signed_headers: str, signature: str) -> str:
    return (f"AWS4-HMAC-SHA256 Credential={SCOPE},SignedHeaders={signed_headers},"
            f"Signature={signature}")


GET_HEADERS = {
    "host": "examplebucket.s3.amazonaws.com",
    "range": "bytes=0-9",
    "x-amz-content-sha256": sigv4.EMPTY_SHA256,
    "x-amz-date": "20130524T000000Z",
    "authorization": _authorization(
        "host;range;x-amz-content-sha256;x-amz-date",
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    ),
}


def test_get_object_example_verifies() -> None:
    signed = sigv4.verify(KEYS, "GET", "/test.txt", "", GET_HEADERS, now=WHEN)
    assert signed.payload == sigv4.EMPTY_SHA256


def test_a_changed_header_is_a_signature_mismatch() -> None:
    headers = {**GET_HEADERS, "range": "bytes=0-10"}
    with pytest.raises(S3Error) as caught:
        sigv4.verify(KEYS, "GET", "/test.txt", "", headers, now=WHEN)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_another_secret_is_a_signature_mismatch() -> None:
    keys = sigv4.Keys(KEYS.access_key, "another-secret")
    with pytest.raises(S3Error) as caught:
        sigv4.verify(keys, "GET", "/test.txt", "", GET_HEADERS, now=WHEN)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_another_access_key_is_refused_before_the_signature() -> None:
    keys = sigv4.Keys("AKIAOTHER", KEYS.secret_key)
    with pytest.raises(S3Error) as caught:
        sigv4.verify(keys, "GET", "/test.txt", "", GET_HEADERS, now=WHEN)
    assert caught.value.code == "InvalidAccessKeyId"
    assert caught.value.status == 403


def test_a_request_too_far_from_our_clock_is_refused() -> None:
    with pytest.raises(S3Error) as caught:
        sigv4.verify(KEYS, "GET", "/test.txt", "", GET_HEADERS, now=WHEN + 16 * 60)
    assert caught.value.code == "RequestTimeTooSkewed"


def test_no_credentials_is_access_denied() -> None:
    headers = {k: v for k, v in GET_HEADERS.items() if k != "authorization"}
    with pytest.raises(S3Error) as caught:
        sigv4.verify(KEYS, "GET", "/test.txt", "", headers, now=WHEN)
    assert caught.value.code == "AccessDenied"


PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def test_presigned_example_verifies_until_it_expires() -> None:
    headers = {"host": "examplebucket.s3.amazonaws.com"}
    signed = sigv4.verify(KEYS, "GET", "/test.txt", PRESIGNED_QUERY, headers, now=WHEN + 3600)
    assert signed.payload == sigv4.UNSIGNED
    with pytest.raises(S3Error) as caught:
        sigv4.verify(KEYS, "GET", "/test.txt", PRESIGNED_QUERY, headers, now=WHEN + 86401)
    assert (caught.value.code, caught.value.message) == ("AccessDenied", "Request has expired")


def test_presign_makes_the_published_example() -> None:
    url = sigv4.presign(
        KEYS, "GET", "https://examplebucket.s3.amazonaws.com/test.txt", 86400, now=WHEN
    )
    assert (
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404&"
        in url
    )


def test_presign_signs_the_headers_it_is_given() -> None:
    url = sigv4.presign(KEYS, "PUT", "http://127.0.0.1:9000/bkt/a%20b.txt", 60,
                        headers={"Content-Type": "text/plain"}, now=WHEN)
    path, _, query = url.removeprefix("http://127.0.0.1:9000").partition("?")
    headers = {"host": "127.0.0.1:9000", "content-type": "text/plain"}
    sigv4.verify(KEYS, "PUT", path, query, headers, now=WHEN + 1)
    with pytest.raises(S3Error):
        sigv4.verify(KEYS, "PUT", path, query, {**headers, "content-type": "x/y"}, now=WHEN + 1)


def test_an_unsigned_amz_header_is_refused_in_both_forms() -> None:
    """A copy source (or any x-amz-* header) not in SignedHeaders would change what the
    signed request does: S3 refuses it, whatever the signature."""
    copy = {"x-amz-copy-source": "secretb/private.txt"}
    with pytest.raises(S3Error) as caught:
        sigv4.verify(KEYS, "GET", "/test.txt", "", {**GET_HEADERS, **copy}, now=WHEN)
    assert caught.value.code == "AccessDenied"
    assert caught.value.message.startswith("There were headers present in the request which "
                                           "were not signed")
    presigned = {"host": "examplebucket.s3.amazonaws.com"}
    with pytest.raises(S3Error) as caught:
        sigv4.verify(KEYS, "GET", "/test.txt", PRESIGNED_QUERY, {**presigned, **copy},
                     now=WHEN + 1)
    assert caught.value.code == "AccessDenied"
    # What a presigned request may send unsigned, as S3 takes it.
    sigv4.verify(KEYS, "GET", "/test.txt", PRESIGNED_QUERY,
                 {**presigned, "x-amz-content-sha256": sigv4.UNSIGNED}, now=WHEN + 1)


def test_signature_v2_signs_every_amz_header() -> None:
    pairs = [("AWSAccessKeyId", "AKIAIOSFODNN7EXAMPLE"), ("Expires", "1175139620"),
             ("Signature", "NpgCjnDzrM+WFzoENXmpNDUsSn8=")]
    with pytest.raises(S3Error) as caught:
        sigv2.verify(KEYS, "GET", "/johnsmith/photos/puppy.jpg", pairs,
                     {"x-amz-copy-source": "secretb/private.txt"}, now=1175139620 - 10)
    assert caught.value.code == "SignatureDoesNotMatch"


# The reference's chunked PutObject: 65536 + 1024 bytes of `a`, in two signed chunks.
CHUNKED_HEADERS = {
    "host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "x-amz-content-sha256": sigv4.STREAMING_SIGNED,
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "content-length": "66824",
    "authorization": _authorization(
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class",
        "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
    ),
}
CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)


def _chunked_body(signatures: tuple[str, ...] = CHUNK_SIGNATURES) -> bytes:
    out = b""
    for size, signature in zip((65536, 1024, 0), signatures, strict=True):
        out += f"{size:x};chunk-signature={signature}\r\n".encode() + b"a" * size + b"\r\n"
    return out


async def _receive(data: bytes, headers: dict[str, str], signed: sigv4.Signed,
                   path: Path) -> body.Received:
    reader = StreamReader(BaseProtocol(asyncio.get_running_loop()), 1 << 16,
                          loop=asyncio.get_running_loop())
    reader.feed_data(data)
    reader.feed_eof()
    return await body.receive(reader, headers, signed, path)


async def test_chunked_example_is_received_and_checked(tmp_path: Path) -> None:
    path = "/examplebucket/chunkObject.txt"
    signed = sigv4.verify(KEYS, "PUT", path, "", CHUNKED_HEADERS, now=WHEN)
    assert signed.signature == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    data = _chunked_body()
    assert len(data) == 66824
    received = await _receive(data, CHUNKED_HEADERS, signed, tmp_path / "object")
    assert received.size == 66560
    assert (tmp_path / "object").read_bytes() == b"a" * 66560


async def test_a_chunk_with_a_wrong_signature_is_refused(tmp_path: Path) -> None:
    signed = sigv4.verify(KEYS, "PUT", "/examplebucket/chunkObject.txt", "", CHUNKED_HEADERS,
                          now=WHEN)
    wrong = (CHUNK_SIGNATURES[0], CHUNK_SIGNATURES[0], CHUNK_SIGNATURES[2])
    with pytest.raises(S3Error) as caught:
        await _receive(_chunked_body(wrong), CHUNKED_HEADERS, signed, tmp_path / "object")
    assert caught.value.code == "SignatureDoesNotMatch"


async def test_unsigned_chunks_with_a_trailing_checksum(tmp_path: Path) -> None:
    import base64
    import zlib

    data = b"hello world" * 1000
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    headers = {"x-amz-trailer": "x-amz-checksum-crc32",
               "x-amz-decoded-content-length": str(len(data))}
    signed = sigv4.Signed(sigv4.STREAMING_UNSIGNED_TRAILER)

    def encoded(checksum: str) -> bytes:
        return (f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n"
                + f"x-amz-checksum-crc32:{checksum}\r\n\r\n".encode())

    received = await _receive(encoded(crc), headers, signed, tmp_path / "good")
    assert received.size == len(data)
    with pytest.raises(S3Error) as caught:
        await _receive(encoded("AAAAAA=="), headers, signed, tmp_path / "bad")
    assert caught.value.code == "BadDigest"


async def test_a_signed_payload_hash_must_match(tmp_path: Path) -> None:
    signed = sigv4.Signed("0" * 64)
    with pytest.raises(S3Error) as caught:
        await _receive(b"data", {}, signed, tmp_path / "object")
    assert caught.value.code == "XAmzContentSHA256Mismatch"


def test_signature_v2_presigned_url() -> None:
    # The S3 developer guide's SigV2 query example (its keys, Expires 1175139620).
    pairs = [("AWSAccessKeyId", "AKIAIOSFODNN7EXAMPLE"), ("Expires", "1175139620"),
             ("Signature", "NpgCjnDzrM+WFzoENXmpNDUsSn8=")]
    signed = sigv2.verify(KEYS, "GET", "/johnsmith/photos/puppy.jpg", pairs, {},
                          now=1175139620 - 10)
    assert signed.payload == sigv4.UNSIGNED
    with pytest.raises(S3Error) as caught:
        sigv2.verify(KEYS, "GET", "/johnsmith/photos/puppy.jpg", pairs, {}, now=1175139621)
    assert caught.value.message == "Request has expired"
