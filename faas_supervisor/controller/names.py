"""Which bucket names and storage paths the controller accepts: one answer for the API.

Bucket names follow Amazon S3's rules for general purpose buckets (what MinIO enforces
too), so that a service defined here works on any S3 server, and so that a name is always
one plain folder name in the embedded folder store. A path in a bucket is checked segment
by segment: nothing in it may climb out of the bucket or mean another folder than the
one written. An object key (a folder's ends in `/`) is such a path that S3 can carry:
UTF-8, at most 1024 bytes; the embedded folder store asks more of it (`folder_key_problem`).
"""

from __future__ import annotations

import ipaddress
import re

# Re-exported: one answer for the controller's paths and the runtime's config alike.
from faas_supervisor.config import path_problem as path_problem

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Kubernetes' name of one DNS label (RFC 1123): a service's name, a namespace's. Its
# length bound is each use's own.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Reserved by AWS for its own bucket kinds (access points, directory buckets, ...).
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
MAX_KEY_BYTES = 1024  # S3's longest key
NAME_MAX = 255  # bytes in one file name (Linux's file systems)


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


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an object key on any S3 server (a folder's ends in `/`), or None."""
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        return "must be UTF-8 (it holds a lone surrogate)"
    if size > MAX_KEY_BYTES:
        return f"must be at most {MAX_KEY_BYTES} bytes"
    return path_problem(key.removesuffix("/"))


def folder_key_problem(key: str) -> str | None:
    """`key_problem`'s, and what the folder store asks more: each segment is a file name
    there (NAME_MAX bytes at most), and one starting with '.' names what the store keeps
    for itself (bodies being received, multipart uploads), which it never lists."""
    problem = key_problem(key)
    if problem is not None:
        return problem
    segments = key.removesuffix("/").split("/")
    if any(len(s.encode()) > NAME_MAX for s in segments):
        return f"must not have a segment over {NAME_MAX} bytes"
    if any(s.startswith(".") for s in segments):
        return "must not have a segment starting with '.' (kept for partial uploads)"
    return None
