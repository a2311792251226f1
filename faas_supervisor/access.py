"""Whether a storage event names the service's own data (SPEC 6.1, last paragraph).

A service's token lets anyone who holds it send the service events, and an event names
any bucket and key it likes: without this check the service would download and return
another service's objects with its own credentials. An event is served only when its
object falls under one of the service's `input` paths:

* on that input's provider; a delegated event (a replica's, the provider named by the
  envelope) may be on any defined provider, but its bucket and key must still fall under
  an input path;
* in that input's bucket, or, with `isolation_level: USER`, a bucket of `bucket_list`
  (the users' buckets, laid out as the service's: the key is still under the folder);
* with its key under the input's folder segment by segment: `in` holds `in/x` and
  `in/sub/x`, not `input2/x` nor `in` itself.

A service with no `input` paths serves no storage event. This is decided once, here, for
every kind of event and both front ends, before anything is read.
"""

from __future__ import annotations

from faas_supervisor.config import FunctionConfig, StoragePath
from faas_supervisor.errors import Forbidden
from faas_supervisor.parsers.event import StorageObject, shown


def authorize(config: FunctionConfig, obj: StorageObject) -> None:
    """Return when `obj` (provider, bucket and key made concrete) is the service's; else
    raise Forbidden with a one-line reason."""
    where = f"{obj.provider} object {shown(f'{obj.bucket}/{obj.key}')}"
    if not config.inputs:
        raise Forbidden(f"{where}: this service has no input paths, so it serves no storage "
                        "events")
    buckets = config.bucket_list if config.isolation_level == "USER" else ()
    for path in config.inputs:
        if not obj.delegated and path.provider != obj.provider:
            continue
        bucket, folder = event_scope(config, path)
        if (obj.bucket == bucket or obj.bucket in buckets) and key_under(folder, obj.key):
            return
    raise Forbidden(f"{where} is not under an input path of this service")


def key_under(folder: str, key: str) -> bool:
    """Whether `key` names an object inside `folder` ("" is the whole bucket), compared
    segment by segment; a key with `.` or `..` segments is never inside anything, since a
    server or proxy that resolves them would serve another object."""
    parts = key.split("/")
    if any(part in (".", "..") for part in parts):
        return False
    inside = folder.split("/") if folder else []
    # `in/` is the folder's own marker, not an object in it.
    return len(parts) > len(inside) and parts[: len(inside)] == inside and parts[-1] != ""


def event_scope(config: FunctionConfig, path: StoragePath) -> tuple[str, str]:
    """An input path as events name its objects: (bucket, folder).

    Onedata events name the space as the bucket and the path in the space as the key,
    while an input path is relative to its provider's space (or starts with the space
    itself, which the provider then does not repeat: storage_providers/onedata.py).
    """
    provider = config.providers.get(path.provider)
    if provider is None or provider.type != "onedata":
        return path.bucket, path.folder
    space = provider.get("space").strip("/")
    if path.bucket == space:
        return space, path.folder
    return space, path.path
