"""S3-family events: MinIO (`minio:s3`), Amazon S3 (`aws:s3`) and Ceph RGW (`ceph:s3`).

Each server writes the object key its own way (SPEC 6.1): MinIO and Amazon S3 URL-encode
it (`+` is a space, MinIO also encodes `/`), Ceph RGW sends it as it is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from faas_supervisor.parsers.event import StorageObject, require

# eventSource -> (provider type, whether the key is URL-encoded)
SOURCES = {"minio:s3": ("minio", True), "aws:s3": ("s3", True), "ceph:s3": ("minio", False)}


def recognise(value: Any, provider_id: str = "default") -> StorageObject | None:
    if not isinstance(value, dict):
        return None
    records = value.get("Records")
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        return None
    source = records[0].get("eventSource")
    if source not in SOURCES:
        return None
    provider_type, encoded = SOURCES[source]
    bucket = require(value, "Records", 0, "s3", "bucket", "name")
    key = require(value, "Records", 0, "s3", "object", "key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        return None
    return StorageObject(
        provider=f"{provider_type}.{provider_id}",
        bucket=bucket,
        key=unquote_plus(key) if encoded else key,
        event_time=str(records[0].get("eventTime", "")),
    )
