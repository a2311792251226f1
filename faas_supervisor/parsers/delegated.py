"""Delegated events: `{"event": {...}, "storage_provider": "minio.x"}` (SPEC 6.1).

OSCAR wraps a storage event this way when the object lives on another provider than the
service's default (a replica, another cluster). The inner event is read as any storage
event would be, and the provider named here is the one that holds its object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

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
    event = require(value, "event")
    for recogniser in inner:
        found = recogniser(event)
        if isinstance(found, StorageObject):
            return dataclasses.replace(
                found, provider=normalize_provider_name(provider), delegated=True
            )
    raise BadEvent("event field event is not a storage event")
