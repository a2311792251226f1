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


def recognise(value: Any) -> StorageObject | None:
    if not isinstance(value, dict) or "event" not in value or "subscription" not in value:
        return None
    name = require_text(value, "event", "name")
    if "/" in name:
        # inotify names one entry of the watched folder, never a path.
        raise BadEvent(f"event field event.name {shown(name)} is not a file name")
    return StorageObject(provider=PROVIDER, bucket="", key=name, under_input_path=True)
