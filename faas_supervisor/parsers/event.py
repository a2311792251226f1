"""What a body or job event is, once read: the types every parser returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from faas_supervisor.errors import BadEvent


@dataclass(frozen=True)
class StorageObject:
    """The object a storage event names: where to download it from."""

    provider: str  # `TYPE.ID`, as in the config's storage_providers
    bucket: str  # the bucket (or Onedata space, or WebDAV folder)
    key: str  # the object key as the server means it (already decoded)
    event_time: str = ""

    @property
    def name(self) -> str:
        """The input file's name: the key's base name."""
        return self.key.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class GatewayBody:
    """An API-gateway envelope: its body is read again as a request body."""

    body: bytes
    content_type: str = ""


Recognised = StorageObject | GatewayBody
Recogniser = Callable[[Any], Recognised | None]

EventKind = Literal["empty", "json", "base64", "raw", "storage"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    input_file: Path | None = None  # the body's bytes on disk (not for storage events)
    storage: StorageObject | None = None  # what to download (storage events)
    text: str | None = None  # the raw event text, for EVENT, when small enough


def require(mapping: Any, *path: str | int) -> Any:
    """mapping[path[0]][path[1]]..., or BadEvent naming the missing field."""
    current = mapping
    for i, part in enumerate(path):
        try:
            current = current[part]
        except (KeyError, IndexError, TypeError):
            name = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path[: i + 1])
            raise BadEvent(f"event has no {name.replace('.[', '[')}") from None
    return current
