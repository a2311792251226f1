"""The controller's process: start-up, serving, and graceful shutdown.

Start-up opens the store, stops what a controller killed outright left running (the
backend's start), restarts the stored services, requeues the stored jobs (those left
Running too) and starts watching and reconciling input paths; shutdown (SIGTERM or
SIGINT) stops at once taking requests (on every port), starting jobs for new objects and
waiting for starting services, gives the requests in flight of every port one drain
together (DRAIN_TIMEOUT, then those left are cancelled), then stops the jobs still
running (Pending again, to run at the next start), the watchdogs, and the store. A
second signal forces it: requests in flight are cancelled, and the watchdogs told to
skip their drain. The exit waits for no thread still blocked on a stalled store past
EXIT_GRACE. Signals are taken until the process ends: a third one changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from faas_supervisor.controller.api import Api, ApiInfo
from faas_supervisor.controller.auth import S3_KEYS_FILE, load_credentials, load_s3_keys
from faas_supervisor.controller.backends import build_backend
from faas_supervisor.controller.buckets import FolderStore, S3Endpoint, S3Store, build_store
from faas_supervisor.controller.cors import setup_cors
from faas_supervisor.controller.executions import Executions
from faas_supervisor.controller.intake import Intake
from faas_supervisor.controller.jobs import Jobs
from faas_supervisor.controller.s3.sigv4 import Keys
from faas_supervisor.controller.servers import default_server, server_view
from faas_supervisor.controller.settings import ControllerSettings, KubernetesSettings
from faas_supervisor.controller.store import NoStore, Store
from faas_supervisor.errors import ConfigError, printable
from faas_supervisor.http_timeouts import TimedAppRunner
from faas_supervisor.logs import get_logger
from faas_supervisor.processes import Stop, captured_signals, exit_now

logger = get_logger(component="controller")
# A request head must be complete this long after its first byte (else 408), and a
# connection waiting for a request is closed after KEEPALIVE_TIMEOUT: nginx's defaults
# (client_header_timeout, keepalive_timeout). Bodies the controller reads itself are
# bounded by its apps (api.BODY_TIMEOUT, s3/app.BODY_IDLE_TIMEOUT); those of /run and
# exposed ports stream to the service's watchdog, whose read_timeout bounds them.
HEAD_TIMEOUT = 60.0
KEEPALIVE_TIMEOUT = 75.0
# Seconds an answer may wait for a client that takes none of it (its receive window shut):
# then its connection is aborted (http_timeouts.py), as nginx's send_timeout (60 s) does.
SEND_TIMEOUT = 60.0
# The stop's one bound for the requests in flight of every port (aiohttp's default
# shutdown_timeout, given to the runners); those still running then are cancelled.
DRAIN_TIMEOUT = 60.0
LOCK_FILE = "controller.lock"  # in the data folder: one controller per data folder
# Seconds the exit waits for threads still running once everything is stopped: those
# ending their work in hand, not a call blocked on a stalled server (boto3's: 60 s).
EXIT_GRACE = 5.0


class Controller:
    def __init__(self, settings: ControllerSettings) -> None:
        data_dir = settings.data_dir
        named = f"{settings.data_dir_source} {data_dir}"  # the flag or variable that gave it
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            data_dir.chmod(0o700)  # it holds the admin password and the services' keys
        except OSError as exc:
            reason = "not a folder" if isinstance(exc, FileExistsError) else exc.strerror
            raise ConfigError(f"{named}: {reason or exc}") from None
        self._lock = _lock_data_dir(data_dir, named)  # first: before anything in it is touched
        # `--port 0`, any free port: bound now, for the push endpoints' URL (public_url)
        # that storage servers are given, before any service is attached; listened on
        # once the API is ready, as a given port is.
        self._api_sockets: list[socket.socket] = []
        if settings.port == 0:
            self._api_sockets = _bound_sockets(settings.host)
            port = self._api_sockets[0].getsockname()[1]
            settings = dataclasses.replace(settings, port=port)
        self.settings = settings
        self.credentials, made = load_credentials(data_dir, settings.user, settings.password)
        if made:
            # Printed once, when made; later starts read it from the data folder.
            print(
                f"faas-supervisor controller: user {settings.user!r}, password "
                f"{self.credentials.password} (kept in {data_dir / 'admin-password'})",
                flush=True,
            )
        self.s3_keys: Keys | None = None
        endpoint = None
        if settings.s3_url:
            self.s3_keys, made = load_s3_keys(
                data_dir, settings.minio_access_key, settings.minio_secret_key
            )
            if made:
                print(
                    f"faas-supervisor controller: S3 endpoint keys made (access key "
                    f"{self.s3_keys.access_key}; both kept in {data_dir / S3_KEYS_FILE})",
                    flush=True,
                )
            endpoint = S3Endpoint(
                settings.s3_url,
                self.s3_keys.access_key,
                self.s3_keys.secret_key,
                settings.minio_region,
            )
        self.buckets = build_store(
            data_dir,
            {
                "endpoint": settings.minio_endpoint,
                "access_key": settings.minio_access_key,
                "secret_key": settings.minio_secret_key,
                "region": settings.minio_region,
            },
            endpoint,
        )
        # Services' folders or jobs' files with no store to own them: the store was
        # removed or emptied. A new one would orphan the services and delete the jobs.
        held = _work_files(data_dir)
        try:
            self.store = Store(data_dir / "controller.sqlite3", new=not held)
        except NoStore as exc:
            raise ConfigError(
                f"{named}: {exc}, but the folder holds {printable(held[0])}"
                f"{f' and {len(held) - 1} more' if len(held) > 1 else ''}: "
                "restore the file, or remove services/ and jobs/ to start anew"
            ) from None
        except sqlite3.Error as exc:  # damaged, locked by another process, a full disk
            raise ConfigError(f"{named}: controller.sqlite3: {exc}") from None
        self.backend = build_backend(settings.backend, data_dir, self.buckets.provider_settings())
        self.jobs = Jobs(
            self.store, self.backend, data_dir / "jobs", settings.max_jobs, self.store.service,
            settings.job_retention,
            # Events of its S3 endpoint carry an ETag (the MD5) its listings do not.
            self.buckets.version if isinstance(self.buckets, FolderStore) else None,
            server_view(self.buckets.endpoint, settings.minio_access_key)
            if isinstance(self.buckets, S3Store) else None,
        )
        self.default_server = default_server(self.buckets)
        self.executions = Executions()
        self.intake = Intake(
            self.buckets,
            self.store,
            # Its jobs listed as the MinIO requests that would have started them in OSCAR.
            self.executions.recording(self.jobs.submit),
            settings.public_url,
            settings.events_queue,
            settings.reconcile_interval,
        )
        self.api = Api(
            ApiInfo(self.backend.name, time.time(), settings.max_jobs,
                    cluster_name=settings.cluster_name,
                    namespace=settings.backend.namespace
                    if isinstance(settings.backend, KubernetesSettings) else "",
                    cors_origins=settings.cors_origins),
            self.credentials,
            self.store,
            self.backend,
            self.jobs,
            self.intake,
            self.buckets,
            self.executions,
        )

    async def serve(self, stop: Stop) -> int:
        await self.intake.open()  # first: a queue that cannot be opened is a usage error
        # Before jobs are judged: the last controller's leftovers are stopped, so a job
        # found Running is not running any more when it is queued again.
        await self.backend.start()
        try:
            await self._resume()
        except BaseException as exc:
            # Nothing it started is left running (a service's watchdog with no pid file
            # would wait for the next start to be stopped).
            for close in (self.intake.close, self.jobs.close, self.backend.close):
                with contextlib.suppress(Exception):
                    await close()
            self.store.close()
            if isinstance(exc, sqlite3.Error):  # damage quick_check did not see
                named = f"{self.settings.data_dir_source} {self.settings.data_dir}"
                raise ConfigError(f"{named}: controller.sqlite3: {exc}") from None
            raise
        runner = TimedAppRunner(
            self.api.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=DRAIN_TIMEOUT,
            head_timeout=HEAD_TIMEOUT,
            send_timeout=SEND_TIMEOUT,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            # Bodies pass through as sent (a gzip body to /run reaches the service's
            # watchdog gzipped, with its Content-Encoding), as the OSCAR manager does.
            auto_decompress=False,
        )
        runners = [runner]
        await runner.setup()
        s3_runner = self._s3_runner()
        if s3_runner is not None:
            runners.append(s3_runner)
            await s3_runner.setup()
        try:
            await self._listen(runner, self.settings.port, self._api_sockets)
            if s3_runner is not None:
                await self._listen(s3_runner, self.settings.s3_port)
        except ConfigError:
            await self._stop(*runners)
            raise
        logger.info(
            "controller ready",
            port=self.settings.port,
            s3_port=self.settings.s3_port if s3_runner is not None else None,
            backend=self.backend.name,
            data_dir=str(self.settings.data_dir),
        )
        await stop.requested.wait()
        logger.info("controller stopping")
        forcing = asyncio.ensure_future(self._forced(stop, *runners))
        try:
            await self._stop(*runners)
        finally:
            forcing.cancel()
        return 0

    async def _resume(self) -> None:
        """The stored services deployed and attached, their jobs queued, the intake on."""
        # A backend may bring a stored service back more cheaply than a new deploy (no
        # checks, no waiting: kubernetes' `restore`).
        restore = getattr(self.backend, "restore", self.backend.deploy)
        try:
            if self.store.use_default_server(self.default_server):
                logger.warning("the default provider's server is another one: its input paths "
                               "are listed anew, the objects there now taken as old")
        except Exception as exc:  # a full disk: checked again at the next start
            logger.warning("cannot record the default provider's server", error=str(exc))
        for service in self.store.services():
            await restore(service)
            # Again at each start: the external URL may have changed, or the server.
            await self.intake.attach(service, fallback=True)
        await self.jobs.start()
        self.intake.start()

    def _s3_runner(self) -> TimedAppRunner | None:
        """The S3 endpoint's server, when the folder store is served (s3/)."""
        if self.s3_keys is None or not isinstance(self.buckets, FolderStore):
            return None
        from faas_supervisor.controller.s3.app import s3_app

        # The store's own Objects: its bucket deletes and the endpoint's puts take turns.
        app = s3_app(self.buckets.objects, self.s3_keys, self.settings.minio_region)
        # The API's origins: the dashboard's Buckets page calls both (GetObject streams,
        # so the response hook as well as the middleware).
        setup_cors(app, self.settings.cors_origins)
        return TimedAppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=DRAIN_TIMEOUT,
            head_timeout=HEAD_TIMEOUT,
            send_timeout=SEND_TIMEOUT,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            auto_decompress=False,  # an object is stored as sent (Content-Encoding kept)
        )

    async def _listen(
        self, runner: TimedAppRunner, port: int, bound: Sequence[socket.socket] = ()
    ) -> None:
        sites: list[web.BaseSite] = (
            [web.SockSite(runner, sock) for sock in bound]
            if bound
            else [web.TCPSite(runner, self.settings.host, port)]
        )
        try:
            for site in sites:
                await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.settings.host}:{port}: {exc.strerror}"
            ) from None

    async def _forced(self, stop: Stop, *runners: TimedAppRunner) -> None:
        """A second signal: requests in flight are cancelled rather than awaited; the
        watchdogs and jobs being stopped get it too (processes.Child.stop), and drain no
        longer either."""
        await stop.forced.wait()
        logger.warning("forced to stop: not waiting for work in flight")
        for runner in runners:
            runner.stop_waiting()

    async def _stop(self, *runners: TimedAppRunner) -> None:
        # First, at once: both ports refuse new connections (the S3 endpoint's too, or
        # an object put during the drain would start a job); no new object starts a job
        # (one stored meanwhile gets it at the next start: the watcher, reconciliation);
        # requests waiting for a starting service get their 503.
        for runner in runners:
            for site in list(runner.sites):
                await site.stop()
        await self.intake.close()
        self.backend.release_waiters()
        # Then the requests in flight, of both ports at once: one bound, not one after
        # the other. Past it, the handlers still running are cancelled: aiohttp itself
        # would cancel only their request's body and wait as long again for a handler
        # reading none (one awaiting a thread: a bucket call to a stalled store).
        drained = asyncio.get_running_loop().call_later(DRAIN_TIMEOUT, _drain_over, runners)
        try:
            await asyncio.gather(*(runner.cleanup() for runner in runners))
        finally:
            drained.cancel()
        for sock in self._api_sockets:
            sock.close()  # closed by its runner's cleanup once listened on
        await self.jobs.close()
        await self.backend.close()
        self.store.close()


def _drain_over(runners: Sequence[TimedAppRunner]) -> None:
    logger.warning("drain over: cancelling the requests still in flight",
                   seconds=DRAIN_TIMEOUT)
    for runner in runners:
        runner.stop_waiting()


def _work_files(data_dir: Path) -> list[str]:
    """What the data folder holds of services and jobs (`services/NAME`, `jobs/NAME.event`),
    as paths in it, sorted."""
    found = []
    for folder in ("services", "jobs"):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            found += sorted(f"{folder}/{entry.name}" for entry in os.scandir(data_dir / folder))
    return found


def _lock_data_dir(data_dir: Path, named: str) -> int:
    """An exclusive lock on the data folder, held for this process's life (the descriptor,
    never closed): a second controller on it would take the first one's watchdogs and
    jobs for a dead controller's leftovers and kill them (_Pids.reap_leftovers), then run
    the same jobs. flock's lock goes with the process, however it dies; O_CLOEXEC: no
    service process inherits it, which would hold it past a SIGKILL of the controller and
    refuse the restart that is to stop that very process. The file holds the pid. `named`:
    the folder as its errors show it (`--data-dir DIR`, or `FAAS_DATA_DIR DIR`)."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"{named}: {path.name}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 20, 0).decode(errors="replace").strip()
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            who = f" (pid {holder})" if holder.isdigit() else ""  # it may not have written it yet
            raise ConfigError(f"another controller is using {named}{who}") from None
        raise ConfigError(f"{named}: {path.name}: {exc.strerror or exc}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk
        os.close(fd)
        raise ConfigError(f"{named}: {path.name}: {exc.strerror or exc}") from None
    return fd


def _bound_sockets(host: str) -> list[socket.socket]:
    """TCP sockets bound to one free port on each of `host`'s addresses (asyncio's
    create_server binds them all: "" is IPv4's and IPv6's any address), the first
    choosing the port; not yet listening (a connection is refused until the API is
    ready, as on a given port)."""
    try:
        found = socket.getaddrinfo(
            host or None,  # "": every interface, as asyncio reads it (AI_PASSIVE's any)
            0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE,
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:0: {exc.strerror or exc}") from None
    sockets: list[socket.socket] = []
    port = 0
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            # As asyncio's create_server sets them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:0: {exc.strerror or exc}") from None
    return sockets


def serve(settings: ControllerSettings) -> int:
    from faas_supervisor import logs

    logs.configure(settings.log_level)
    controller = Controller(settings)
    # The loop's default pool (asyncio.to_thread: the API's bucket calls, the Kubernetes
    # API's, the jobs' files), made here so that the exit can leave it without joining.
    pool = ThreadPoolExecutor(thread_name_prefix="controller")

    async def main() -> int:
        asyncio.get_running_loop().set_default_executor(pool)
        # The exit's wait for threads too: a signal then is a third, and changes nothing
        # (Python's handlers back, it would end the process or raise KeyboardInterrupt
        # into asyncio.run's own unbounded wait for those threads).
        with captured_signals() as stop:
            status = await controller.serve(stop)
            await _leave_threads(pool, status)
        return status

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    finally:
        # Closed (`>&-`: None) or its reader gone: nothing to flush, and no failure of a
        # clean stop.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stdout.flush()


async def _leave_threads(pool: ThreadPoolExecutor, status: int) -> None:
    """Return once the default pool's threads and every other non-daemon thread have
    ended, or end the process with `status` EXIT_GRACE seconds later without them.

    asyncio.run's executor shutdown, then the interpreter's exit, would join them without
    a bound: a bucket call cancelled by a second signal goes on in its thread until the
    store's client gives up (boto3's retries on a stalled server: up to a minute).
    Everything else is stopped and the store closed by now: nothing is lost. The joins
    run in a daemon thread: the loop keeps serving a thread that hands it work."""
    pool.shutdown(wait=False, cancel_futures=True)
    loop = asyncio.get_running_loop()
    current = threading.current_thread()
    others = [t for t in threading.enumerate() if t is not current and not t.daemon]
    joined = asyncio.Event()

    def join() -> None:
        deadline = time.monotonic() + EXIT_GRACE
        for thread in others:
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(RuntimeError):  # the loop gone: the process is ending
            loop.call_soon_threadsafe(joined.set)

    threading.Thread(target=join, name="exit-join", daemon=True).start()
    await joined.wait()
    left = sum(thread.is_alive() for thread in others)
    if left:
        logger.warning("exiting: threads still blocked (a stalled server?) not waited for",
                       threads=left)
        exit_now(status)
