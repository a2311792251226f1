"""dCache events: what its inotify-style SSE channels send (`event` and `subscription`).

The event gives only the file's name (`event.name`). Where the file is comes from the
config: the `input` path of the `webdav.dcache` provider, which stage-in joins in front
of the name (SPEC 6.1); the parser cannot know it, so it marks the key as relative.
"""

from __future__ import annotations

from typing import Any

from faas_supervisor.errors import BadEvent
from faas_supervisor.parsers.event import StorageObject, require_text, shown

PROVIDER = "webdav.dcache"
# inotify's flag for "the entry is a folder" (sent with IN_CREATE, IN_MOVED_TO...): a
# folder is not a file to stage in, and GET on it gives a listing or an error, not data.
FOLDER_FLAG = "IN_ISDIR"


def recognise(value: Any) -> StorageObject | None:
    if not isinstance(value, dict) or "event" not in value or "subscription" not in value:
        return None
    name = require_text(value, "event", "name")
    if "/" in name:
        # inotify names one entry of the watched folder, never a path.
        raise BadEvent(f"event field event.name {shown(name)} is not a file name")
    if FOLDER_FLAG in mask(value):
        raise BadEvent(f"event names the folder {shown(name)} (event.mask has {FOLDER_FLAG}): "
                       "only a file can be staged in")
    return StorageObject(provider=PROVIDER, bucket="", key=name, under_input_path=True)


def mask(value: dict[str, Any]) -> list[str]:
    """`event.mask`: dCache sends inotify's flags by name, in a list. Without one (as
    hand-written events often are) the event is read as a file's, as before."""
    flags = value["event"].get("mask", [])  # a dict: event.name was read from it
    if not isinstance(flags, list) or not all(isinstance(flag, str) for flag in flags):
        raise BadEvent("event field event.mask is not a list of flag names")
    return flags
