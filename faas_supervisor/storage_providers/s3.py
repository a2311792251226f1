"""MinIO, Ceph RGW and Amazon S3 (`minio.*`, `s3.*`) through boto3's s3transfer.

One boto3 client and one s3transfer `TransferManager` per provider, made at construction
and shared by every invocation: the manager's own thread pool does the network and disk
work (multipart both ways, streamed between disk and network), so its size bounds the
provider's concurrency and the event loop only waits on a future. Failed multipart uploads
are aborted by s3transfer itself; downloads land in a temporary file renamed at the end,
named by `partial_path` as the direct path's (`_PartialNames`).

The client and the manager are built on first use, once (`_build`), not at construction:
importing boto3 and building an S3 client costs a few hundred milliseconds and tens of
MiB, which a watchdog start, or a job whose event needs no S3 transfer, should not pay.
The first transfer builds them in a worker thread, so the event loop keeps serving.

Objects under the multipart threshold on a plain-HTTP MinIO endpoint need neither: one
signed GetObject or PutObject (s3_direct.py), the request s3transfer would send too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import stat
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from faas_supervisor.config import ProviderConfig
from faas_supervisor.errors import NO_SPACE, FaasError, StorageError, local_write_error, printable
from faas_supervisor.gc_pause import collection_paused
from faas_supervisor.storage_providers import partial_path, scrub, url_secrets
from faas_supervisor.storage_providers.s3_direct import DirectError, direct

if TYPE_CHECKING:
    from s3transfer.futures import TransferFuture
    from s3transfer.manager import TransferManager

MiB = 1 << 20

# At most 3 attempts per request. botocore's `max_attempts` counts *retries* (3 would mean
# 4 attempts); `total_max_attempts` counts attempts, which is what SPEC 6.2 bounds.
RETRIES = {"total_max_attempts": 3, "mode": "standard"}
CANCEL_WAIT = 5.0  # seconds a cancelled transfer's cleanup is waited for (half a stop's grace)

# Told the bytes a transfer has moved, as they go (negative when a retry starts over).
Progress = Callable[[int], None]


class S3Provider:
    """A bucket store speaking S3. `minio` needs `endpoint`; `s3` (Amazon) may omit it."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        multipart_threshold: int = 8 * MiB,
        multipart_chunksize: int = 8 * MiB,
        max_concurrency: int = 10,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
    ) -> None:
        self.name = config.name
        self._secrets = tuple(
            s for s in (config.get("access_key"), config.get("secret_key"),
                        *url_secrets(config.get("endpoint"))) if len(s) >= 4
        )
        self._make = functools.partial(
            _make_client, config, multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize, max_concurrency=max_concurrency,
            connect_timeout=connect_timeout, read_timeout=read_timeout,
        )
        self._lock = threading.Lock()
        self._built: tuple[Any, TransferManager] | None = None
        self._direct = direct(config, connect_timeout, read_timeout)
        self._threshold = multipart_threshold

    def _build(self) -> tuple[Any, TransferManager]:
        """The boto3 client and its transfer manager, made by the first caller only."""
        with self._lock:
            if self._built is None:
                with collection_paused():  # botocore's models: long-lived, no garbage
                    self._built = self._make()
            return self._built

    @property
    def client(self) -> Any:
        """The boto3 client (for the controller's bucket API and for tests)."""
        return self._build()[0]

    async def download(self, bucket: str, key: str, dest: Path | BinaryIO,
                       progress: Progress | None = None) -> None:
        """Into `dest`: a path (s3transfer writes to a temporary name beside it and renames
        it when whole) or a file open for writing (the client's stdout)."""
        direct = self._direct
        if direct is not None and isinstance(dest, Path) and _regular_or_none(dest):
            done = await self._direct_request("download", bucket, key, lambda cancelled: (
                direct.get(bucket, key, dest, self._threshold, progress, cancelled)))
            if done:
                return
        target = str(dest) if isinstance(dest, Path) else dest
        await self._transfer(
            "download", bucket, key, lambda manager, subs: manager.download(
                bucket, key, target, subscribers=subs), progress
        )

    async def upload(self, src: Path | BinaryIO, bucket: str, key: str,
                     progress: Progress | None = None) -> None:
        """From a path or a file open for reading (the client's stdin). `progress` gets
        the bytes as they go (from s3transfer's threads)."""
        direct = self._direct
        if direct is not None and isinstance(src, Path):
            try:
                found = src.stat()
            except OSError as exc:
                raise self._error("upload", bucket, key, exc) from None
            # A regular file: read twice (its hash, then its bytes), which a FIFO is not.
            small = stat.S_ISREG(found.st_mode) and found.st_size < self._threshold
            if small and await self._direct_request("upload", bucket, key, lambda cancelled: (
                    direct.put(src, bucket, key, progress, cancelled))):
                return
        source = str(src) if isinstance(src, Path) else src
        await self._transfer(
            "upload", bucket, key, lambda manager, subs: manager.upload(
                source, bucket, key, subscribers=subs), progress
        )

    async def size(self, bucket: str, key: str) -> int:
        """The object's size (HeadObject); StorageError when it cannot be read."""
        try:
            head = await asyncio.to_thread(self._head, bucket, key)
        except Exception as exc:
            raise self._error("read", bucket, key, exc) from None
        return int(head.get("ContentLength") or 0)

    def _head(self, bucket: str, key: str) -> Any:
        return self.client.head_object(Bucket=bucket, Key=key)

    async def list_objects(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        """Every object under `prefix` (ListObjectsV2, all its pages), as boto3 gives them."""
        try:
            return await asyncio.to_thread(self._list, bucket, prefix)
        except Exception as exc:
            raise self._error("list", bucket, prefix, exc) from None

    def _list(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix)
        return [item for page in pages for item in page.get("Contents", [])]

    async def _direct_request(self, verb: str, bucket: str, key: str,
                              work: Callable[[threading.Event], bool]) -> bool:
        """A direct request in a worker thread: its answer, or False when the store's
        answer is one for boto3 to act on (a redirect, another region). Cancelled, the
        thread stops at its next piece: nothing renamed into place, the PUT abandoned."""
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(work, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except DirectError as exc:
            if exc.hand_over:
                return False
            raise self._error(verb, bucket, key, exc) from None
        except Exception as exc:
            raise self._error(verb, bucket, key, exc) from None

    async def _transfer(self, verb: str, bucket: str, key: str, submit: Any,
                        progress: Progress | None = None) -> None:
        """Submit to the manager and await its done callback; cancel it if we are cancelled."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        subscribers: list[Any] = [_DoneSubscriber(loop, done)]
        if progress is not None:
            subscribers.append(_ProgressSubscriber(progress))
        try:
            built = self._built
            if built is None:  # the first transfer: build off the event loop
                built = await asyncio.to_thread(self._build)
            future: TransferFuture = submit(built[1], subscribers)
        except Exception as exc:  # no client (a bad endpoint), or arguments refused
            raise self._error(verb, bucket, key, exc) from None
        try:
            await asyncio.shield(done)  # a cancel leaves `done` to tell the cleanup's end
        except asyncio.CancelledError:
            # Stopped (the client went away, the job deleted): stop the transfer, and give
            # s3transfer a few seconds for what it does after (it aborts a multipart upload
            # once the parts in flight end), since a stopped `run` exits without waiting for
            # its threads (cli.py): else the parts would stay in the store. A store too
            # slow for that is not waited for longer.
            future.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(done), CANCEL_WAIT)
            raise
        try:
            future.result()  # done: returns at once, or raises the transfer's error
        except Exception as exc:
            raise self._error(verb, bucket, key, exc) from None

    def _error(self, verb: str, bucket: str, key: str, exc: BaseException) -> FaasError:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:  # our disk, not the store
            return local_write_error(exc, f"the {verb} of {bucket}/{printable(key)} ({self.name})")
        return StorageError(
            f"{self.name}: cannot {verb} {bucket}/{printable(key)}: {self._reason(exc)}"
        )

    def _reason(self, exc: BaseException) -> str:
        # botocore's errors come only from a client it built: no import for the others.
        botocore = sys.modules.get("botocore.exceptions")
        if isinstance(exc, DirectError):
            text = _answer(exc.code, exc.message, exc.status)
        elif botocore is not None and isinstance(exc, botocore.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            text = _answer(str(error.get("Code") or "error"), error.get("Message"), status)
        elif isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        else:
            text = str(exc) or type(exc).__name__
        return scrub(text, self._secrets)  # botocore's messages quote the endpoint URL

    def close(self) -> None:
        """Stop the manager's threads (the watchdog's shutdown; tests)."""
        if self._built is not None:
            with contextlib.suppress(Exception):
                self._built[1].shutdown(cancel=True)


def _regular_or_none(path: Path) -> bool:
    """A regular file (through a symlink, as s3transfer looks), or nothing yet: a direct
    download renames its temporary file over it, where s3transfer writes into a special
    file (a FIFO, /dev/null) instead."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # boto3's path says what is wrong


def _answer(code: str, message: str | None, status: int | None) -> str:
    """A store's error answer, said the same whichever client got it."""
    if code in ("404", "NoSuchKey"):
        text = "no such object"
    elif code == "NoSuchBucket":
        text = "no such bucket"
    elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        text = f"access denied ({code})"
    else:
        text = f"{code}: {message or 'failed'}"
    return f"{text} (HTTP {status})" if status else text


def _make_client(
    config: ProviderConfig,
    *,
    multipart_threshold: int,
    multipart_chunksize: int,
    max_concurrency: int,
    connect_timeout: float,
    read_timeout: float,
) -> tuple[Any, TransferManager]:
    """A boto3 S3 client for the provider, and the s3transfer manager over it."""
    from botocore.config import Config
    from s3transfer.manager import TransferConfig, TransferManager
    from s3transfer.utils import OSUtils

    class _PartialNames(OSUtils):  # type: ignore[misc]  # s3transfer has no type hints
        """s3transfer's file operations, but a download's temporary name fits NAME_MAX
        bytes: s3transfer cuts `NAME.XXXXXXXX` to 255 *characters*, so a multibyte base
        name the event parser accepts (up to 255 bytes) failed with "File name too long".
        """

        def get_temp_filename(self, filename: str) -> str:
            return str(partial_path(Path(filename), f".{uuid.uuid4().hex[:8]}.part"))

    endpoint = config.get("endpoint") or None
    if endpoint and "://" not in endpoint:
        # OSCAR configs sometimes give `minio:9000`; its MinIO speaks HTTP by default.
        endpoint = f"http://{endpoint}"
    s3_options: dict[str, Any] = {}
    if config.type == "minio":
        # MinIO and Ceph are reached by one host name: buckets cannot be subdomains.
        s3_options["addressing_style"] = "path"
    client_config = Config(
        retries=RETRIES,
        connect_timeout=connect_timeout,  # a dead store fails in bounded time
        read_timeout=read_timeout,
        max_pool_connections=max_concurrency + 2,  # the manager's threads never wait
        s3=s3_options,
    )
    with _SESSION_LOCK:  # a boto3 session may not make two clients at once
        client = _shared_session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=config.get("region") or "us-east-1",
            # None, not "", when not given: boto3's own credentials (environment, ~/.aws)
            # then, as for the client's providers whose keys a controller keeps hidden.
            aws_access_key_id=config.get("access_key") or None,
            aws_secret_access_key=config.get("secret_key") or None,
            verify=config.flag("verify", True),
            config=client_config,
        )
    transfer_config = TransferConfig(
        multipart_threshold=multipart_threshold,
        multipart_chunksize=multipart_chunksize,
        max_request_concurrency=max_concurrency,
        # Streaming reads of a download are retried by s3transfer, not botocore: bound
        # them like the rest.
        num_download_attempts=3,
        # Downloaded chunks waiting for the disk: 128 x 256 KiB at most in memory.
        max_io_queue_size=128,
    )
    return client, TransferManager(client, transfer_config, osutil=_PartialNames())


class _ProgressSubscriber:
    """Counts of bytes moved, from s3transfer's threads, one at a time into `progress`."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lock = threading.Lock()

    def on_progress(self, future: TransferFuture, bytes_transferred: int, **kwargs: Any) -> None:
        with self._lock:
            self._progress(bytes_transferred)


class _DoneSubscriber:
    """s3transfer calls `on_done` in one of its threads once a transfer has ended, its
    failure cleanups (the multipart abort) included; this wakes the awaiting coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        self._loop = loop
        self._done = done

    def on_done(self, future: TransferFuture, **kwargs: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self._done.done():
            self._done.set_result(None)


# One boto3 session per process, made on first use: a second client (another provider's)
# is made from it in milliseconds. A session reads the AWS config files (AWS_CONFIG_FILE,
# ~/.aws/config: endpoint_url, ca_bundle, profiles, credential_process...) once and keeps
# what it read, so a warm job runner's session is never its jobs': each job forked from
# it makes its own, reading the files as they are then, as a cold `run` does.
_SESSION_LOCK = threading.Lock()
_session: Any = None


class _Models(NamedTuple):
    """What a session builds before it reads any config, and that never changes: kept by
    load_models() for the sessions made after it, in its process or a job forked from it."""

    loader: Any  # botocore's data loader, the models it read in it (about 85 ms of a client)
    data_path: Any  # the `data_path` setting it was made for (where it looks for models)
    hooks: Any  # an event emitter with botocore's built-in handlers only (4 ms to register)


_models: _Models | None = None


def _shared_session() -> Any:
    global _session
    if _session is None:
        _session = _new_session()
    return _session


def _new_session() -> Any:
    """A boto3 session, made from load_models()'s parts if it was called (the same as a
    session of its own: the same handlers, the same models)."""
    import boto3.session
    import botocore.session

    if _models is None:
        return boto3.session.Session()
    core = botocore.session.Session(event_hooks=copy.copy(_models.hooks),
                                    include_builtin_handlers=False)
    if core.get_config_variable("data_path") == _models.data_path:  # else other model files
        core.register_component("data_loader", _models.loader)
    return boto3.session.Session(botocore_session=core)


def load_models() -> None:
    """Read the S3 models into a loader kept for this process's later sessions (_Models),
    as a first client would.

    For the warm job runner (job_runner.py): its jobs are forked from it and inherit the
    loader, not the session that read them with the config of the runner's start. The
    client is made with placeholder keys, so nothing is looked up; it is dropped. Nothing
    here starts a thread or opens a connection.
    """
    import boto3.session
    import botocore.hooks
    import botocore.session

    global _models
    with _SESSION_LOCK, collection_paused():
        hooks = botocore.hooks.HierarchicalEmitter()
        core = botocore.session.Session(event_hooks=hooks)
        built_in = copy.copy(hooks)  # before boto3 adds its own handlers to it
        boto3.session.Session(botocore_session=core).client(
            "s3", region_name="us-east-1", aws_access_key_id="-", aws_secret_access_key="-"
        )
        _models = _Models(core.get_component("data_loader"),
                          core.get_config_variable("data_path"), built_in)
