"""Request bodies and job events -> Event.

`body.read_body` streams a body to disk and classifies it (SPEC 4.1). A JSON body is then
offered to the recognisers below, one module per event kind (SPEC 6.1), in order: the
first that claims it wins. A recogniser returns None when the value is not its kind, and
raises BadEvent when it is its kind but lacks a field it needs.
"""

from __future__ import annotations

import functools
from typing import Any

from faas_supervisor.parsers import apigateway, dcache, delegated, onedata, rucio, s3
from faas_supervisor.parsers.event import Recognised, Recogniser

# The events that name an object; a delegated envelope wraps exactly one of these.
STORAGE_RECOGNISERS: list[Recogniser] = [
    rucio.recognise, s3.recognise, onedata.recognise, dcache.recognise,
]

# Envelopes first: a delegated event's `event` field would otherwise look like dCache's,
# and OSCAR reads an API-gateway envelope before looking for storage records. A Rucio
# message (`event_type` and `payload`) goes before the delegated envelope: it has neither
# of the envelope's fields, and whatever else it carries must not make it one.
RECOGNISERS: list[Recogniser] = [
    apigateway.recognise,
    rucio.recognise,
    functools.partial(delegated.recognise, inner=STORAGE_RECOGNISERS),
    s3.recognise,
    onedata.recognise,
    dcache.recognise,
]


def recognise(value: Any) -> Recognised | None:
    """The storage event or envelope in a JSON value, or None for plain JSON."""
    for recogniser in RECOGNISERS:
        found = recogniser(value)
        if found is not None:
            return found
    return None
