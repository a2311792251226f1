"""What a body or job event is, once read: the types every parser returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from faas_supervisor.errors import BadEvent

# Linux refuses longer file names (bytes, not characters).
NAME_MAX = 255
# A provider name ending in this means "the provider of that type that serves the
# bucket": an Onedata event names only its space, and the config says which provider
# holds it (resolved at stage-in, where the config is known).
ANY_ID = "*"


@dataclass(frozen=True)
class StorageObject:
    """The object a storage event names: where to download it from.

    Constructing one checks that its key names a file that can live in the input
    folder, so a bad key is refused while parsing, before anything is downloaded.
    """

    provider: str  # `TYPE.ID`, as in the config's storage_providers, or `TYPE.*`
    bucket: str  # the bucket (or Onedata space, or WebDAV folder)
    key: str  # the object key as the server means it (already decoded)
    event_time: str = ""
    # dCache sends only a file name: the key is relative to the config's `input` path
    # for this provider, which stage-in joins in front of it.
    under_input_path: bool = False
    # Wrapped by OSCAR in a delegated envelope: the provider was named by the envelope, so
    # any input path's bucket and folder may hold it, whichever its provider (SPEC 6.1).
    delegated: bool = False

    def __post_init__(self) -> None:
        for label, value in (("object key", self.key), ("bucket", self.bucket),
                             ("event time", self.event_time), ("provider", self.provider)):
            check_text(value, label)
        name = self.name
        if name in ("", ".", ".."):
            raise BadEvent(f"object key {shown(self.key)} does not name a file")
        if any(segment in (".", "..") for segment in self.key.split("/")):
            # A server or proxy may resolve them: the object would not be the one named.
            raise BadEvent(f"object key {shown(self.key)} has a '.' or '..' segment")
        if len(name.encode()) > NAME_MAX:
            raise BadEvent(f"object key {shown(self.key)}: its base name is over {NAME_MAX} bytes")

    @property
    def name(self) -> str:
        """The input file's name: the key's base name (none for `dir/`, a folder marker)."""
        return self.key.rsplit("/", 1)[-1]

    @property
    def provider_type(self) -> str:
        return self.provider.split(".", 1)[0]


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


def field_name(path: tuple[str | int, ...]) -> str:
    """`Records[0].s3.object.key`, as a user reads it in the event."""
    name = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path)
    return name.replace(".[", "[")


def require(mapping: Any, *path: str | int) -> Any:
    """mapping[path[0]][path[1]]..., or BadEvent naming the missing field."""
    current = mapping
    for i, part in enumerate(path):
        try:
            current = current[part]
        except (KeyError, IndexError, TypeError):
            raise BadEvent(f"event has no {field_name(path[: i + 1])}") from None
    return current


def require_text(mapping: Any, *path: str | int) -> str:
    """A field that must be a string: missing or of another type is BadEvent naming it."""
    value = require(mapping, *path)
    if not isinstance(value, str):
        raise BadEvent(f"event field {field_name(path)} is not a string")
    return value


def check_text(value: str, label: str) -> None:
    """Text that goes into a file name or the script's environment.

    NUL cannot be in either, and JSON can carry lone surrogates (`"\\ud800"`), which
    cannot be encoded for the file system or `execve`.
    """
    if "\x00" in value:
        raise BadEvent(f"{label} {shown(value)} contains NUL")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadEvent(f"{label} {shown(value)} is not valid Unicode") from None


def shown(value: str, limit: int = 200) -> str:
    """A value quoted for a one-line message, cut short: events come from anyone."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...'"


def first_record(value: Any) -> dict[str, Any] | None:
    """`value["Records"][0]` when the value has the S3-notification shape, else None:
    the events that share it (S3 family, Onedata) are told apart by its eventSource."""
    if not isinstance(value, dict):
        return None
    records = value.get("Records")
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        return None
    return records[0]
