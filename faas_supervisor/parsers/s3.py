"""S3-family events: MinIO (`minio:s3`), Amazon S3 (`aws:s3`) and Ceph RGW (`ceph:s3`).

Each server writes the object key its own way (SPEC 6.1): MinIO and Amazon S3 URL-encode
it (`+` is a space, MinIO also encodes `/`), Ceph RGW sends it as it is (seen with Ceph
16.2: `input/p%2Fq é.txt` arrives literally). Only the first record is read, as OSCAR
does: each of these servers sends one record per event.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from faas_supervisor.errors import BadEvent
from faas_supervisor.parsers.event import (
    StorageObject,
    field_name,
    first_record,
    require_text,
    shown,
)

# eventSource -> (provider type, whether the key is URL-encoded)
SOURCES = {"minio:s3": ("minio", True), "aws:s3": ("s3", True), "ceph:s3": ("minio", False)}


def recognise(value: Any) -> StorageObject | None:
    record = first_record(value)
    if record is None:
        return None
    source = record.get("eventSource")
    if not isinstance(source, str) or source not in SOURCES:
        return None
    provider_type, encoded = SOURCES[source]
    bucket = require_text(value, "Records", 0, "s3", "bucket", "name")
    key = require_text(value, "Records", 0, "s3", "object", "key")
    if encoded:
        try:
            # Strict: a `%FF` replaced by U+FFFD would name another object than the event's.
            key = unquote_plus(key, errors="strict")
        except UnicodeDecodeError:
            field = field_name(("Records", 0, "s3", "object", "key"))
            raise BadEvent(f"event field {field} {shown(key)} is not URL-encoded UTF-8") from None
    event_time = record.get("eventTime")
    return StorageObject(
        provider=f"{provider_type}.default",
        bucket=bucket,
        key=key,
        event_time=event_time if isinstance(event_time, str) else "",
    )
