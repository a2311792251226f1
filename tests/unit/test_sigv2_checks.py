"""SigV2's own checks (controller/s3/sigv2.py): the query's `Expires` and the header's `Date`.

`Expires` was checked with str.isdigit(), which takes "²" and numbers past int()'s
4300-digit limit: int() then raised, a 500 InternalError where S3 answers 403. A `Date`
in the "-0000" zone (or in none) parsed as a naive datetime read as local time, so a
controller whose TZ is not UTC refused fresh signatures as skewed and took stale ones.
A bucket alone sent path-style as "/b" was checked against "/b" only, while botocore signs
"/b/" (S3's form): every bucket-level request of boto3's SigV2 was SignatureDoesNotMatch.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import time
from collections.abc import Iterator

import pytest

from faas_supervisor.controller.s3 import sigv2, sigv4
from faas_supervisor.controller.s3.errors import S3Error

# The S3 developer guide's SigV2 example: its keys, object, date and signature.
KEYS = sigv4.Keys("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
PATH = "/johnsmith/photos/puppy.jpg"
WHEN = float(calendar.timegm((2007, 3, 27, 19, 36, 42, 0, 0, 0)))
GUIDE_DATE, GUIDE_SIGNATURE = "Tue, 27 Mar 2007 19:36:42 +0000", "bWq2s1WEIj+Ydj0vQ697zp+IXMU="


def _signature(date: str) -> str:
    """The guide's GET signed for another Date (its string to sign, that date in it)."""
    text = f"GET\n\n\n{date}\n{PATH}"
    digest = hmac.new(KEYS.secret_key.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _verify(date: str, now: float) -> sigv4.Signed:
    headers = {"authorization": f"AWS {KEYS.access_key}:{_signature(date)}", "date": date}
    return sigv2.verify(KEYS, "GET", PATH, [], headers, now=now)


@pytest.fixture
def five_hours_west(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time at UTC-5 (a POSIX TZ: no time zone database needed)."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    assert time.timezone == 5 * 3600
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_signature_helper_makes_the_guides_signature() -> None:
    assert _signature(GUIDE_DATE) == GUIDE_SIGNATURE
    assert _verify(GUIDE_DATE, WHEN).payload == sigv4.UNSIGNED


@pytest.mark.parametrize(
    "expires", ["²", "١٢٣", "9" * 5000, "9" * 21, "", "abc", "+1", " 1", "1.5"]
)
def test_an_expires_not_of_a_few_ascii_digits_is_access_denied(expires: str) -> None:
    pairs = [("AWSAccessKeyId", KEYS.access_key), ("Expires", expires), ("Signature", "x")]
    with pytest.raises(S3Error) as caught:
        sigv2.verify(KEYS, "GET", PATH, pairs, {}, now=WHEN)
    assert (caught.value.code, caught.value.status) == ("AccessDenied", 403)
    assert "Expires" in caught.value.message


def test_a_far_expires_of_twenty_digits_goes_on_to_the_signature() -> None:
    pairs = [("AWSAccessKeyId", KEYS.access_key), ("Expires", "9" * 20), ("Signature", "x")]
    with pytest.raises(S3Error) as caught:
        sigv2.verify(KEYS, "GET", PATH, pairs, {}, now=WHEN)
    assert caught.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("zone", [" -0000", " GMT", " +0000", ""])
@pytest.mark.usefixtures("five_hours_west")
def test_a_fresh_utc_date_verifies_whatever_our_time_zone(zone: str) -> None:
    assert _verify("Tue, 27 Mar 2007 19:36:42" + zone, WHEN).payload == sigv4.UNSIGNED


@pytest.mark.parametrize("zone", [" -0000", ""])
@pytest.mark.usefixtures("five_hours_west")
def test_a_stale_utc_date_is_skewed_whatever_our_time_zone(zone: str) -> None:
    # Five hours old: read as local time (UTC-5), it would have looked like now.
    with pytest.raises(S3Error) as caught:
        _verify("Tue, 27 Mar 2007 14:36:42" + zone, WHEN)
    assert caught.value.code == "RequestTimeTooSkewed"


def _signed_v2(method: str, resource: str, date: str) -> str:
    text = f"{method}\n\n\n{date}\n{resource}"
    digest = hmac.new(KEYS.secret_key.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _authorized(resource: str) -> dict[str, str]:
    """The headers of a GET signed for `resource` at the guide's date."""
    signature = _signed_v2("GET", resource, GUIDE_DATE)
    return {"authorization": f"AWS {KEYS.access_key}:{signature}", "date": GUIDE_DATE}


@pytest.mark.parametrize(("raw_path", "query", "resource"), [
    ("/johnsmith", [], "/johnsmith/"),  # botocore, path-style
    ("/johnsmith", [], "/johnsmith"),  # aws-sdk-js v2, path-style: the path as sent
    ("/johnsmith", [("uploads", ""), ("max-uploads", "5")], "/johnsmith/?uploads"),
    ("/johnsmith/", [], "/johnsmith/"),  # s3cmd sends (and signs) the slash
])
def test_a_bucket_alone_verifies_signed_with_or_without_its_slash(
    raw_path: str, query: list[tuple[str, str]], resource: str
) -> None:
    headers = _authorized(resource)
    assert sigv2.verify(KEYS, "GET", raw_path, query, headers, now=WHEN).payload == sigv4.UNSIGNED
    # The same signature as a presigned URL's (its Expires in the Date's place).
    expires = str(int(WHEN) + 60)
    pairs = [*query, ("AWSAccessKeyId", KEYS.access_key), ("Expires", expires),
             ("Signature", _signed_v2("GET", resource, expires))]
    assert sigv2.verify(KEYS, "GET", raw_path, pairs, {}, now=WHEN).payload == sigv4.UNSIGNED


@pytest.mark.parametrize(("raw_path", "resource"), [
    ("/johnsmith/photos", "/johnsmith/photos/"),  # an object: signed as sent, one form only
    ("/johnsmith/", "/johnsmith"),  # sent with the slash: signed with it
    ("/johnsmith", "/johnsmith//"),
    ("/johnsmith", "/johnsmit/"),
    ("/", "//"),  # the bucket list
    # An encoded `/`: the object `mk` of bucket johnsmith, whose folder marker `mk/` was
    # signed; it was taken for this other object.
    ("/johnsmith%2Fmk", "/johnsmith%2Fmk/"),
])
def test_any_other_resource_is_a_mismatch(raw_path: str, resource: str) -> None:
    headers = _authorized(resource)
    with pytest.raises(S3Error) as caught:
        sigv2.verify(KEYS, "GET", raw_path, [], headers, now=WHEN)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_a_bucket_signature_is_for_its_method() -> None:
    headers = _authorized("/johnsmith/")
    with pytest.raises(S3Error) as caught:
        sigv2.verify(KEYS, "DELETE", "/johnsmith", [], headers, now=WHEN)
    assert caught.value.code == "SignatureDoesNotMatch"
