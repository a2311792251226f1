"""Which stored object an event names: the one place where that is decided.

Every intake path (the `/job/{name}` webhook, the events queue, the folder watch, a Ceph
RGW push, reconciliation) records, with the job it starts, the identity of the object
the job is for: provider, bucket, key and version. An event naming an object that has a
job already starts none, so a redelivered or reconciled event runs once.

The version is the object's ETag, which S3-family servers put both in their events
(`s3.object.eTag`) and in their listings, so an event and a listing of one object agree.
Without an ETag, the event's `versionId` is used; an event with neither is not
deduplicated (a second event for the same key may be a new object: running it twice is
safer than never). On the folder store, the ETag is the file's size and modification
time in nanoseconds (buckets.py): rewriting a file makes it a new object. Its S3
endpoint serves another ETag (the MD5), which a MinIO-shaped event for one of its
objects carries: such an event's version is the one its listing gives the object now
(`stored_id`), so the watcher's event and that one agree.

An S3-family event whose object the runtime refuses to read (a key with a `.` or `..`
segment, a base name over 255 bytes) still names that object: its job fails, saying
why, and its identity keeps the object to that one job (else each listing of the input
path, finding the object without one, would start another, for ever).

An object on a MinIO provider the service defines (`minio.ID`) is named by a delegated
event (`{"event": ..., "storage_provider": "minio.ID"}`, SPEC 6.1), the watcher's for it
(watcher.input_event) as one pushed to `/job/{name}`: its provider is the envelope's, so
both give it one identity, apart from an object of the same bucket and key elsewhere.
Two of the service's providers on one server with one key name one object twice
(`on_peers`): the job one of its names has is the object's (jobs.py, servers.input_peers).

Bodies that name no stored object (plain JSON, base64, an API-gateway envelope) have no
identity: each is a job of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_plus

from faas_supervisor import strict_json
from faas_supervisor.config import DEFAULT_PROVIDER, normalize_provider_name
from faas_supervisor.controller.buckets import StoredObject
from faas_supervisor.errors import BadEvent
from faas_supervisor.parsers import recognise
from faas_supervisor.parsers.delegated import inner_event
from faas_supervisor.parsers.event import StorageObject, check_text, first_record, require_text
from faas_supervisor.parsers.s3 import SOURCES

EVENT_MAX = 1 << 20  # storage events are small; a larger body is a job's data, not one


@dataclass(frozen=True)
class ObjectId:
    provider: str  # `TYPE.ID`, as the event's parser names it
    bucket: str
    key: str
    version: str  # the ETag (quotes dropped), else the version id


def object_id(body: bytes) -> ObjectId | None:
    """The object a job's event names, or None when it names none (or no version)."""
    if len(body) > EVENT_MAX:
        return None
    try:
        value = strict_json.loads(body)
    except strict_json.NotJson:
        return None  # not an event: not deduplicated
    try:
        found = recognise(value)
    except BadEvent:
        return _refused_object(value)
    if not isinstance(found, StorageObject):
        return None
    version = _version(_unwrapped(value))
    if not version:
        return None
    return ObjectId(found.provider, found.bucket, found.key, version)


def listed_id(bucket: str, obj: StoredObject, provider: str = DEFAULT_PROVIDER) -> ObjectId:
    """The identity of an object seen in a listing of an input path on `provider` (the
    default one, or a `minio.ID` of the service's): the one its event gives (the watcher's
    event for it, watcher.input_event, carries its ETag, and names that provider)."""
    return ObjectId(provider, bucket, obj.key, _etag(obj.etag))


def on_peers(found: ObjectId, peers: Mapping[str, Collection[str]]) -> list[ObjectId]:
    """The identities the object has on the providers `peers` gives as on its provider's
    server (servers.input_peers): the same bucket, key and version there."""
    return [replace(found, provider=peer) for peer in sorted(peers.get(found.provider, ()))]


def stored_id(
    found: ObjectId | None, version: Callable[[str, str], str | None]
) -> ObjectId | None:
    """An event's identity with, for an object of the default provider, the version
    `version(bucket, key)` (the folder store's listing) gives it now; the event's own
    version when the store has no such object (deleted since, a key it refuses)."""
    if found is None or found.provider != DEFAULT_PROVIDER:
        return found
    listed = _etag(version(found.bucket, found.key) or "")
    return replace(found, version=listed) if listed else found


def _refused_object(value: Any) -> ObjectId | None:
    """The object an S3-family event names (delegated or not), read as the runtime reads
    it (parsers/s3.py, parsers/delegated.py) but without refusing its key; None when the
    event names no object even so (a field missing, a key not URL-encoded UTF-8)."""
    provider = ""
    if isinstance(value, dict) and "storage_provider" in value and "event" in value:
        named = value["storage_provider"]
        if not isinstance(named, str) or not named:
            return None
        try:
            provider, value = normalize_provider_name(named), inner_event(value)
        except BadEvent:
            return None
    record = first_record(value)
    source = record.get("eventSource") if record else None
    if not isinstance(source, str) or source not in SOURCES:
        return None
    provider_type, encoded = SOURCES[source]
    try:
        bucket = require_text(value, "Records", 0, "s3", "bucket", "name")
        key = require_text(value, "Records", 0, "s3", "object", "key")
        if encoded:
            key = unquote_plus(key, errors="strict")
        for text in (provider, bucket, key):
            check_text(text, "")  # text the store can keep (no lone surrogate)
    except (BadEvent, UnicodeDecodeError):
        return None
    version = _version(value)
    if not version:
        return None
    return ObjectId(provider or f"{provider_type}.default", bucket, key, version)


def _unwrapped(value: Any) -> Any:
    """The event a delegated envelope wraps (JSON text decoded), else the value itself."""
    if isinstance(value, dict) and "storage_provider" in value:
        with contextlib.suppress(BadEvent):
            return inner_event(value)
    return value


def _version(event: Any) -> str:
    record = first_record(event)
    s3 = record.get("s3") if record else None
    obj = s3.get("object") if isinstance(s3, dict) else None
    if not isinstance(obj, dict):
        return ""
    for field in ("eTag", "versionId"):
        value = obj.get(field)
        if isinstance(value, str) and _etag(value):
            return _etag(value)
    return ""


def _etag(value: str) -> str:
    return value.strip().strip('"')
