"""Delegated events: `{"event": {...}, "storage_provider": "minio.x"}` (SPEC 6.1).

OSCAR wraps a storage event this way when the object lives on another provider than the
service's default (a replica, another cluster). The inner event is read as any storage
event would be, and the provider named here is the one that holds its object. The OSCAR
manager sends it as the JSON text of the event (its DelegatedEvent's `event` is a
string), as the FaaS Supervisor reads it; the SPEC's example nests the object: both are
read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from faas_supervisor import strict_json
from faas_supervisor.config import normalize_provider_name
from faas_supervisor.errors import BadEvent
from faas_supervisor.parsers.event import Recogniser, StorageObject, require, require_text


def recognise(value: Any, inner: Sequence[Recogniser]) -> StorageObject | None:
    """`inner`: the recognisers of storage events (no envelopes: one level of wrapping)."""
    if not isinstance(value, dict) or "storage_provider" not in value or "event" not in value:
        return None
    provider = require_text(value, "storage_provider")
    if not provider or provider.startswith(".") or provider.endswith("."):
        raise BadEvent("event field storage_provider is not a provider name (TYPE.ID)")
    event = inner_event(value)
    for recogniser in inner:
        found = recogniser(event)
        if isinstance(found, StorageObject):
            return dataclasses.replace(
                found, provider=normalize_provider_name(provider), delegated=True
            )
    raise BadEvent("event field event is not a storage event")


def inner_event(value: dict[str, Any]) -> Any:
    """The event a delegated envelope wraps: its `event`, decoded when it is JSON text."""
    event = require(value, "event")
    if not isinstance(event, str):
        return event
    try:
        return strict_json.loads(event)
    except strict_json.NotJson:
        raise BadEvent("event field event is not a storage event") from None
