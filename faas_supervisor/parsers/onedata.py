"""Onedata events, as OneTrigger sends them (`Records[0].eventSource == "OneTrigger"`).

`Key` is the file's path from the root of Onedata, `/<space>/<path in the space>`, not
URL-encoded. The event names a space, not a provider: the provider is `onedata.*`, and
stage-in picks the `onedata` provider whose `space` is this one (SPEC 6.1).
"""

from __future__ import annotations

from typing import Any

from faas_supervisor.errors import BadEvent
from faas_supervisor.parsers.event import ANY_ID, StorageObject, first_record, require_text, shown

SOURCE = "OneTrigger"


def recognise(value: Any) -> StorageObject | None:
    record = first_record(value)
    if record is None:
        return None
    if record.get("eventSource") != SOURCE:
        return None
    path = require_text(value, "Key")
    space, _, key = path.lstrip("/").partition("/")
    if not space or not key:
        raise BadEvent(f"event field Key {shown(path)} is not /<space>/<path of the file>")
    event_time = record.get("eventTime")
    return StorageObject(
        provider=f"onedata.{ANY_ID}",
        bucket=space,
        key=key,
        event_time=event_time if isinstance(event_time, str) else "",
    )
