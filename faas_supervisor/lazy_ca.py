"""aiohttp imported without loading the system's CA certificates at import time.

`import aiohttp.web` runs `aiohttp/__init__`, which imports its client, whose connector
module builds two TLS client contexts at import (one verifying, one not) and loads the
system's default CA paths into both (`SSLContext.set_default_verify_paths`): about 20 ms
each with OpenSSL 3, a fifth of the watchdog's start, for contexts the watchdog itself
never uses (its only client, http mode's proxy, talks plain HTTP on loopback). Only the
storage providers built on aiohttp's client (webdav, onedata, rucio, http) use them, and
only once they open a TLS connection.

`import_aiohttp()` imports aiohttp with `set_default_verify_paths` recorded rather than
done, then makes every context that asked for it load its CA paths at its first use: the
first TLS handshake (`wrap_bio`, which asyncio calls, or `wrap_socket`), or a look at its
CA store. Nothing is weakened: a context is never used without the CAs it asked for, and
one nobody uses never reads them. The first TLS connection of such a provider pays the
load once (about 20 ms), on the thread that opens it.

This is a patch of the standard library's `ssl.SSLContext` for the duration of one
import, on the single thread of a start-up: fragile if aiohttp changes how it makes its
contexts, so it fails safe. Contexts made in another way are left alone (the load is
paid as before); a marked context left as it was would have no CAs (it would refuse every
server, not accept any), so every marked one is converted, whoever made it;
`tests/integration/test_startup.py` checks that aiohttp's two
contexts are deferred, still verify against the default CA paths once used, and refuse an
unknown certificate (docs/ARCHITECTURE.md, "What is imported when").
"""

from __future__ import annotations

import ssl
import sys
import threading
from typing import Any

_PENDING = "_faas_default_verify_paths_pending"
_load_lock = threading.Lock()


class CAsOnFirstUse(ssl.SSLContext):
    """A context whose `set_default_verify_paths` is done just before its first use."""

    def _load_default_paths(self) -> None:
        with _load_lock:
            if self.__dict__.pop(_PENDING, False):
                ssl.SSLContext.set_default_verify_paths(self)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_default_paths()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_default_paths()
        return super().wrap_socket(*args, **kwargs)

    def get_ca_certs(self, *args: Any, **kwargs: Any) -> Any:
        self._load_default_paths()
        return super().get_ca_certs(*args, **kwargs)

    def cert_store_stats(self) -> dict[str, int]:
        self._load_default_paths()
        return super().cert_store_stats()

    def set_default_verify_paths(self) -> None:
        with _load_lock:  # asked for by its user: done now, as a plain context does
            self.__dict__.pop(_PENDING, None)
            super().set_default_verify_paths()

    def loaded(self) -> bool:
        return _PENDING not in self.__dict__


def _record(context: ssl.SSLContext) -> None:
    context.__dict__[_PENDING] = True
    _recorded.append(context)


_recorded: list[ssl.SSLContext] = []


def import_aiohttp() -> None:
    """Import aiohttp (and its web server) with its contexts' CA loads deferred.

    Call it before anything else imports aiohttp; once aiohttp is imported, it does
    nothing. Not thread-safe: for a start-up, before other threads run."""
    if "aiohttp" in sys.modules:
        return
    own = ssl.SSLContext.__dict__.get("set_default_verify_paths")  # None: _ssl's C method
    ssl.SSLContext.set_default_verify_paths = _record  # type: ignore[method-assign,assignment]
    try:
        import aiohttp.web  # noqa: F401 - the import is the point
    finally:
        if own is None:
            del ssl.SSLContext.set_default_verify_paths
        else:
            ssl.SSLContext.set_default_verify_paths = own  # type: ignore[method-assign]
        for context in _recorded:
            # Same memory layout (no slots of its own): only the class's methods change.
            context.__class__ = CAsOnFirstUse
        _recorded.clear()
