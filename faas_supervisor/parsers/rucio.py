"""Rucio events: the messages of Rucio's Hermes daemon (SPEC 6.1).

Rucio records a message in its `messages` table when a DID changes state (`CLOSE` for a
dataset, `RULE_OK` once a rule's replicas are in place, `transfer-done`...), and Hermes
sends each to its brokers and webhooks as
`{"event_type": <type, lower case>, "payload": {...}, "created_at": <time>}`. Every
message about a DID names it in `payload.scope` and `payload.name`; which kind of DID it
is (file, dataset, container) is the provider's to find out at stage-in.

The scope is the object's bucket and the name its key; the provider is `rucio.default`
(a delegated envelope names another).
"""

from __future__ import annotations

from typing import Any

from faas_supervisor.parsers.event import StorageObject, require_text

PROVIDER = "rucio.default"


def recognise(value: Any) -> StorageObject | None:
    # SPEC 6.1 knows a Hermes message by `event_type` and `payload.scope`: any other JSON
    # with those two names (a webhook's `{"event_type": "push", "payload": {...}}`) is the
    # user's own body, saved as it came.
    if not isinstance(value, dict) or "event_type" not in value:
        return None
    payload = value.get("payload")
    if not isinstance(payload, dict) or "scope" not in payload:
        return None
    scope = require_text(value, "payload", "scope")
    name = require_text(value, "payload", "name")
    created = value.get("created_at")
    return StorageObject(
        provider=PROVIDER,
        bucket=scope,
        key=name,
        event_time=created if isinstance(created, str) else "",
    )
