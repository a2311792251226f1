"""Storage providers: one module per type, built once at start-up from the config.

A provider moves one object between a local file and its store, streaming both ways.
Blocking SDKs run in a thread pool; retries and multipart are the provider's business.
Failures after retries raise StorageError naming the provider and the object.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from faas_supervisor.config import FunctionConfig, ProviderConfig, is_folder_store
from faas_supervisor.errors import ConfigError


def scrub(text: str, secrets: Iterable[str]) -> str:
    """A second line of defence: no credential ever leaves in a message, neither one of
    the provider's own (by value: whatever shape the message quotes it in) nor a URL's
    `user:password@` (an SDK's message may quote the endpoint as configured); at most
    300 characters."""
    # Longest first: a secret that holds a shorter one is removed whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return _without_userinfo(text)[:300]


def url_secrets(url: str) -> list[str]:
    """What a configured URL's userinfo holds that is a credential (the password, or a
    user name alone: a token), for scrub to remove by value: as written, percent-decoded
    and percent-encoded (an SDK may quote the URL either way).

    An unencoded `/`, `?`, `#` or `@` in a password makes the URL ambiguous: in
    `http://user:2024/pw@host` the authority reads as `user:2024`, a host and its port,
    and the rest as a path, which botocore quotes (`/pw%40host`) where no URL shape
    shows a password. So what either reading calls the password is given (the userinfo
    ends at the authority's last `@`, or at the URL's): more text hidden, never less."""
    rest = url.partition("://")[2] or url
    found: list[str] = []
    for at in {_AUTHORITY_END.split(rest, 1)[0].rfind("@"), rest.rfind("@")} - {-1}:
        user, colon, password = rest[:at].partition(":")
        if colon:
            secret = password
        elif not _AUTHORITY_END.search(user):
            secret = user
        else:
            continue  # `host/path@...`: an `@` in the path, no credential
        found += [secret, unquote(secret), quote(secret, safe="/"), quote(secret, safe=""),
                  # Its pieces too: a client that reads the URL otherwise quotes it cut
                  # (`user:2024`, a host and its port).
                  *_URL_DELIMITERS.split(secret)]
    return [s for s in dict.fromkeys(found) if s]


def _without_userinfo(text: str) -> str:
    """`text`, the userinfo of each URL in it (`scheme://user:password@`) replaced by `***`.

    The userinfo ends at the authority's last `@` (a password may hold an unencoded `@`);
    an `@` after the authority (`http://host/bucket/a@b.txt`) is the path's, shown. An
    authority that is no `host[:port]` (`http://u:pa/ss@host`) means a password holding
    `/`, `?` or `#`: everything up to the URL's last `@` goes."""
    kept: list[str] = []
    done = 0
    for scheme in _SCHEME.finditer(text):
        start = scheme.end()
        if start <= done:  # inside the userinfo just removed
            continue
        url = _BLANK.split(text[start:], 1)[0]
        authority = _AUTHORITY_END.split(url, 1)[0]
        if "@" in authority:
            at = authority.rfind("@")
        elif _HOST.fullmatch(authority):
            continue
        else:
            at = url.rfind("@")
            if at < 0:
                continue
        kept += [text[done:start], "***"]
        done = start + at
    kept.append(text[done:])
    return "".join(kept)


_SCHEME = re.compile(r"\w+://")
_BLANK = re.compile(r"\s")
_AUTHORITY_END = re.compile(r"[/?#]")
_URL_DELIMITERS = re.compile(r"[/?#@]")
_HOST = re.compile(r"(?:\[[^\]]*\]|[^\[\]:@]*)(?::\d*)?")  # name, IPv4 or [IPv6]; a port


class StorageProvider(Protocol):
    name: str  # `TYPE.ID`

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        """Write the object to `dest` (a new file)."""

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        """Store `src` as the object; on failure leave no partial object."""


@runtime_checkable
class CollectionProvider(StorageProvider, Protocol):
    """A store whose objects may be collections (a Rucio dataset or container)."""

    async def download_all(self, bucket: str, key: str, folder: Path) -> list[Path]:
        """Every file the object holds into `folder`, under unique names; their paths."""


# The most bytes of a file name (Linux and its file systems): an object's base name may
# have that many (parsers/event.py), and the temporary name beside it must fit too.
NAME_MAX = 255


def partial_path(dest: Path, suffix: str, prefix: str = ".") -> Path:
    """The name beside `dest` where its content is written until whole (then renamed):
    `prefix`, dest's name, `suffix`, that name cut short so all of it fits in NAME_MAX
    bytes (cut between bytes: a name is bytes to the file system)."""
    head, tail = os.fsencode(prefix), os.fsencode(suffix)
    name = os.fsencode(dest.name)[: NAME_MAX - len(head) - len(tail)]
    return dest.with_name(os.fsdecode(head + name + tail))


# How long a cancelled copy into a store's folder is waited for to stop: a copy blocked on
# a stalled disk must not hold up `run`'s exit past the 10 s a backend gives after SIGTERM,
# nor the watchdog's ABORT_GRACE (5 s) on its way out.
STOP_GRACE = 2.0


async def stoppable_copy(copy: Callable[[threading.Event], bool], partial: Path,
                         placed: Path | None = None) -> None:
    """`copy(stop)` in a thread: it writes `partial`, then gives it its final name and
    returns True, or returns False having placed nothing if `stop` is set first.

    Cancelled (`run` stopped by SIGTERM, the watchdog shut down mid-invocation), the copy
    is not left running: both end with os._exit, which would kill the thread before it
    removes `partial`, there for good. `stop` is set, the copy waited for at most
    STOP_GRACE, `partial` removed whatever it did, and `placed` too if given and the copy
    placed it anyway (a file nothing would name: Rucio registers a replica after)."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(copy, stop))
    task.add_done_callback(_retrieved)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()  # the copy stops at its next piece, and renames nothing
        try:
            await asyncio.wait([task], timeout=STOP_GRACE)
        finally:
            partial.unlink(missing_ok=True)  # the copy is stuck: its name goes anyway
            if placed is not None and task.done() and not task.cancelled() \
                    and task.exception() is None and task.result():
                placed.unlink(missing_ok=True)
        raise


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Marks a copy's failure as seen when nobody awaits it any more (cancelled)."""
    if not task.cancelled():
        task.exception()


def build_provider(config: ProviderConfig) -> StorageProvider:
    # Explicit imports, no plugin discovery: the bundled runtime must find every module.
    if is_folder_store(config.type, config.settings):
        from faas_supervisor.storage_providers.local import LocalProvider

        return LocalProvider(config)
    if config.type in ("minio", "s3"):
        from faas_supervisor.storage_providers.s3 import S3Provider

        return S3Provider(config)
    if config.type == "webdav":
        from faas_supervisor.storage_providers.webdav import WebDavProvider

        return WebDavProvider(config)
    if config.type == "onedata":
        from faas_supervisor.storage_providers.onedata import OnedataProvider

        return OnedataProvider(config)
    if config.type == "rucio":
        from faas_supervisor.storage_providers.rucio import RucioProvider

        return RucioProvider(config)
    raise ConfigError(f"storage provider {config.name}: unknown type {config.type!r}")


def build_providers(config: FunctionConfig) -> Mapping[str, StorageProvider]:
    return {name: build_provider(provider) for name, provider in config.providers.items()}
