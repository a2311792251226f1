"""Which headers a proxy passes on, and which it refuses: what the watchdog's http mode and
the controller share."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. `Expect` too: our
# own server already answered `100 Continue`; the next hop gets the body straight away.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)


def forwarded_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """The end-to-end headers: hop-by-hop ones, those `Connection` names, and `drop`
    (lower-case names) removed; repeated headers (`Set-Cookie`) kept."""
    removed = HOP_BY_HOP | set(drop) | {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    return CIMultiDict((name, value) for name, value in headers.items()
                       if name.lower() not in removed)


def not_utf8(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> str | None:
    """The first header whose value is not UTF-8. aiohttp reads such bytes as lone
    surrogates and writes headers as UTF-8, dropping them: the header would arrive
    altered (`caf\\xe9` as `caf`), so a proxy refuses the message instead."""
    for name, value in headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return name
    return None
