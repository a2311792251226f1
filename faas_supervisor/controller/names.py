"""Which bucket names and storage paths the controller accepts: one answer for the API.

Bucket names follow Amazon S3's rules for general purpose buckets (what MinIO enforces
too), so that a service defined here works on any S3 server, and so that a name is always
one plain folder name in the embedded folder store. A path in a bucket is checked segment
by segment: nothing in it may climb out of the bucket or mean another folder than the
one written.
"""

from __future__ import annotations

import ipaddress
import re

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Reserved by AWS for its own bucket kinds (access points, directory buckets, ...).
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def bucket_problem(name: str) -> str | None:
    """Why `name` is not a bucket name, or None when it is one."""
    if not _BUCKET.fullmatch(name):
        return (
            "must be 3 to 63 lower-case letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    if ".." in name:
        return "must not hold two adjacent periods"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return "must not be an IP address"
    if name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        return "uses a prefix or suffix that S3 reserves"
    return None


def path_problem(path: str) -> str | None:
    """Why a `/`-separated path in a bucket is unsafe, or None when it is fine."""
    if "\x00" in path:
        return "must not hold a NUL character"
    if "\\" in path:
        return "must not hold a backslash"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return "must not have an empty, '.' or '..' segment"
    return None
