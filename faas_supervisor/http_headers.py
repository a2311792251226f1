"""Which headers a proxy passes on, and which it refuses: what the watchdog's http mode and
the controller share."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

# What aiohttp refuses to write in a header or a status line (a header injection, to it):
# control characters but tab. It raises from prepare(), a traceback and a 500.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

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


def has_control(text: str) -> bool:
    """Whether the text holds a control character other than tab: what no header value
    may hold (aiohttp refuses to write it)."""
    return _CONTROL.search(text) is not None


def with_control(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> str | None:
    """The first header whose value holds a control character other than tab (an ESC
    of a coloured log line, a DEL): aiohttp refuses to write it, so a proxy refuses the
    message instead."""
    for name, value in headers.items():
        if has_control(value):
            return name
    return None


def sendable_reason(reason: str | None) -> str | None:
    """The next hop's reason phrase if it can be sent as it came (UTF-8, no control
    character but tab); else None, for which aiohttp sends the status's standard phrase.
    A client takes nothing but the status from it: the standard phrase beats one sent
    altered (a Latin-1 `Tr\\xe8s` as `Trs`) or a 500 (aiohttp refusing to write it)."""
    if reason is None or has_control(reason):
        return None
    try:
        reason.encode()
    except UnicodeEncodeError:
        return None
    return reason


class PassedOnResponse(web.StreamResponse):
    """A streamed response passed on from the next hop, with no Content-Type when it
    had none: aiohttp gives a non-empty body without one `application/octet-stream`,
    a type the server never stated (an HTML page would be offered as a download).
    RFC 9110 8.3 leaves an untyped body to the recipient."""

    async def _prepare_headers(self) -> None:
        await _untyped_as_sent(self, super()._prepare_headers)


class PassedOnWhole(web.Response):
    """PassedOnResponse's rule for an answer passed on whole (headers and body in one
    write): no Content-Type added where the next hop sent none."""

    async def _prepare_headers(self) -> None:
        await _untyped_as_sent(self, super()._prepare_headers)


async def _untyped_as_sent(
    response: web.StreamResponse, prepare: Callable[[], Awaitable[None]]
) -> None:
    """aiohttp's `prepare` of the headers, the Content-Type it adds taken off again."""
    typed = hdrs.CONTENT_TYPE in response.headers
    await prepare()
    if not typed:
        response.headers.popall(hdrs.CONTENT_TYPE, None)
