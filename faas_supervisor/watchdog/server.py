"""The watchdog: routes, limits, start-up and graceful shutdown (SPEC 4.2, 4.3).

Start-up, serving and shutdown are one method each. The program's signals come as a
processes.Stop (cli.py): SIGTERM or SIGINT stop new work (503), wait up to
`healthcheck_interval` for what is in flight (a second signal: no longer), stop what is
left (its answer: 503, the watchdog is shutting down), remove every invocation folder,
and exit 0.

The watchdog is a child subreaper (processes.Orphans): what a script started outside its
process group comes back to it when orphaned, and is killed once its invocation is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

from aiohttp import web

from faas_supervisor.config import Mode, WatchdogSettings
from faas_supervisor.errors import (
    BadEvent,
    ConfigError,
    FaasError,
    PayloadTooLarge,
    ShuttingDown,
    TooManyRequests,
)
from faas_supervisor.http_timeouts import CLIENT_CLOSED, TimedAppRunner
from faas_supervisor.invocation import Invocation, Removals, Runtime
from faas_supervisor.logs import get_logger
from faas_supervisor.processes import Orphans, Stop, environ_value
from faas_supervisor.watchdog.answers import STOPPED, refusal
from faas_supervisor.watchdog.fork import ForkRunner
from faas_supervisor.watchdog.metrics import UPGRADED, Metrics
from faas_supervisor.watchdog.proxy import ProxyRunner

LOCK_FILE = Path("/tmp/.lock")
RESERVED = ("/_/health", "/_/ready", "/metrics")
SHUTDOWN_TIMEOUT = 2.0  # seconds, after healthcheck_interval: see serve()
# Seconds the steps of an invocation stopped at shutdown get to end before its handler may
# be cancelled: an S3 transfer cut short waits that long (s3.CANCEL_WAIT) for s3transfer's
# cleanup (a multipart upload aborted). Its 503 then goes within SHUTDOWN_TIMEOUT.
ABORT_GRACE = 5.0
# A connection waiting for a request this long (since it opened or had its last answer)
# is closed: nginx's default keep-alive. Callers' pools close theirs sooner (aiohttp's
# client after 15 s), so a pooled connection is not reused just as it is closed here.
KEEPALIVE_TIMEOUT = 75.0
SWEEP_INTERVAL = 1.0  # seconds between sweeps of orphans when nothing asks for one sooner
SWEEP_SPACING = 0.1  # seconds at least between two sweeps: each one reads /proc
logger = get_logger(component="watchdog")


class Watchdog:
    def __init__(self, runtime: Runtime, settings: WatchdogSettings, host: str = "0.0.0.0") -> None:
        self.runtime = runtime
        self.settings = settings
        self.host = host
        self.metrics = Metrics()
        self.runner = ForkRunner(settings, self.metrics)
        self.removals = Removals()  # invocation folders are removed off the loop's thread
        # mode http: every request goes to the user's long-running server (SPEC 4.4).
        self.proxy = (
            ProxyRunner(runtime, settings, self.metrics) if settings.mode == Mode.HTTP else None
        )
        # Invocations (fork mode) or the handler tasks forwarding requests (http mode).
        self.inflight: set[object] = set()
        # Read when /metrics is scraped: nothing to count per request.
        self.metrics.inflight.set_function(lambda: len(self.inflight))
        self.ready = False
        self.shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.orphans: Orphans | None = None  # set by serve(): a subreaper from then on
        self._sweep_wanted = asyncio.Event()

    # ---- routes ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_size or 1 << 62)
        app.router.add_get("/_/health", self.health)
        app.router.add_get("/_/ready", self.ready_check)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_route("*", "/{tail:.*}", self.invoke)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        if self.ready and not self.shutting_down:
            return web.Response(text="OK\n")
        text = "shutting down\n" if self.shutting_down else "starting\n"
        return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, text=text)

    async def ready_check(self, _request: web.Request) -> web.Response:
        if self.ready and not self.shutting_down and not self._at_limit():
            return web.Response(text="OK\n")
        return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, text="busy\n")

    async def metrics_page(self, _request: web.Request) -> web.Response:
        data, content_type = self.metrics.render()
        return web.Response(body=data, headers={"Content-Type": content_type})

    def _at_limit(self) -> bool:
        return bool(self.settings.max_inflight) and len(self.inflight) >= self.settings.max_inflight

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        status = 500
        try:
            response = await self._invoke(request)
            status = response.status
            if not response.prepared:  # a refusal, which aiohttp sends once we return
                self._count_body(request, response)
            return response
        except web.HTTPException as exc:
            status = exc.status  # a 405 is counted as a 405, not as a failed invocation
            self._count_body(request, exc)
            raise
        except asyncio.CancelledError:
            # The client went away; a WebSocket session ends so too, its 101 long sent.
            status = 101 if request.get(UPGRADED) else CLIENT_CLOSED
            raise
        finally:
            self.metrics.observe(status, time.monotonic() - started)

    def _count_body(self, request: web.Request, answer: web.StreamResponse) -> None:
        """Counts the body of an answer sent whole after the handler (a refusal, a 405):
        those the runners send themselves, they count as they send them."""
        if request.method != "HEAD":  # its body is not sent
            self.metrics.bytes_out.inc(answer.content_length or 0)

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        if request.path in RESERVED:
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])
        if self.proxy is None and request.method not in ("POST", "PUT"):
            raise web.HTTPMethodNotAllowed(request.method, ["POST", "PUT"])
        if self.shutting_down or not self.ready:
            return refusal(ShuttingDown(STOPPED if self.ready else "the watchdog is starting"))
        if self._at_limit():
            return refusal(TooManyRequests(f"max_inflight ({self.settings.max_inflight}) reached"))
        # A body declared too large is refused before anything of it is read, or passed
        # on to the user's server (which would see a request cut short).
        limit = self.settings.max_body_size
        if limit and (request.content_length or 0) > limit:
            return refusal(PayloadTooLarge(f"request body is over max_body_size ({limit} bytes)"))
        if self.proxy is not None:
            with self._tracked(asyncio.current_task()):
                return await self.proxy.forward(request)
        if "\0" in request.path:  # `%00`, decoded: no environment variable can hold it
            return refusal(BadEvent("request path holds a NUL byte (%00)"), close=True)

        try:
            invocation = Invocation(self.runtime)
        except FaasError as exc:  # its folders cannot be made: a full TMPDIR is a 507
            logger.error("invocation refused", error=exc.message)
            return refusal(exc)
        try:
            with self._tracked(invocation):
                try:
                    return await self.runner.invoke(request, invocation)
                finally:
                    await self._close(invocation)
        finally:
            self._sweep_wanted.set()  # what it left outside its group goes now
            logger.info(
                "invocation",
                id=invocation.id,
                path=request.path,
                exit_code=invocation.outcome.exit_code,
                error=invocation.outcome.error.message if invocation.outcome.error else None,
                seconds=round(invocation.outcome.duration, 4),
            )

    async def _close(self, invocation: Invocation) -> None:
        """Kill what is left of the script's group, remove the folders; while the invocation
        is still counted in flight, so max_inflight bounds the folders on disk too.

        An rmdir may wait for the disk (milliseconds on ext4 with `discard`). With other
        invocations in flight the loop must not stall meanwhile: the folders go in a worker
        thread. Alone, nobody waits for the loop, and the thread's round trip would cost
        more CPU than the removal itself: it goes here, unless the script left things to
        walk (a walk of unknown length). A client that leaves once it has its answer (the
        handler cancelled during the wait) changes nothing, and is not counted a 499: the
        removal runs on without us (shutdown waits for it)."""
        if len(self.inflight) <= 1:
            invocation.kill()
            if invocation.remove(deep=False):
                return
            # What the script left (a walk of unknown length) goes to the threads.
        with contextlib.suppress(asyncio.CancelledError):
            await self.removals.close(invocation)

    @contextlib.contextmanager
    def _tracked(self, work: object) -> Iterator[None]:
        """Counts `work` in flight: for max_inflight, the metrics and the drain at shutdown."""
        self.inflight.add(work)
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight.discard(work)
            if not self.inflight:
                self._idle.set()

    # ---- lifecycle -------------------------------------------------------------------

    async def serve(self, stop: Stop) -> int:
        """Start, serve until `stop` is requested, shut down gracefully (unless forced).
        Returns the exit status."""
        runner = TimedAppRunner(
            self.app(), handler_cancellation=True, access_log=None,
            # read_timeout bounds the request from its first byte: its head here, its
            # body in the runners (fork.py, proxy.py).
            head_timeout=self.settings.read_timeout, keepalive_timeout=KEEPALIVE_TIMEOUT,
            # http mode passes bodies on as sent, Content-Encoding and all; fork mode
            # gives the script the decoded bytes.
            auto_decompress=self.proxy is None,
            # healthcheck_interval is the grace period; once it is over and what was left
            # is killed, handlers get this long to send their last answers, then are
            # cancelled (aiohttp's default, 60 s, would hold a stalled upload that long).
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        self.orphans = Orphans()
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.settings.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            # A port in use is a start-up error like a bad config: one line, no traceback.
            raise ConfigError(
                f"cannot listen on {self.host}:{self.settings.port}: {exc.strerror}"
            ) from None
        if self.proxy is not None:
            try:
                # Once ready, the server's exit requests the stop too.
                started = await self.proxy.start(stop.requested)
            except BaseException:
                await self.proxy.close()
                await runner.cleanup()
                raise
            if not started:  # a stop came first: never ready, and not said to be
                await self.shutdown(runner, stop)
                return 0
        if not self.settings.suppress_lock:
            try:
                LOCK_FILE.touch()
            except OSError as exc:
                # A read-only /tmp (readOnlyRootFilesystem) is a start-up error like a
                # port in use: one line saying how to go without the lock, no traceback.
                if self.proxy is not None:
                    await self.proxy.close()
                await runner.cleanup()
                raise ConfigError(
                    f"cannot write {LOCK_FILE}: {exc.strerror}"
                    " (set suppress_lock, or pass --suppress-lock, to run without it)"
                ) from None
        self.ready = True
        sweeper = asyncio.create_task(self._sweep_orphans(self.orphans))
        logger.info("watchdog ready", port=_bound_port(runner, self.settings.port),
                    mode=self.settings.mode.value)
        await stop.requested.wait()
        sweeper.cancel()
        await self.shutdown(runner, stop)
        # The user's server died: exit non-zero so that the orchestrator restarts us.
        return 1 if self.proxy is not None and self.proxy.failed else 0

    async def shutdown(self, runner: web.AppRunner, stop: Stop) -> None:
        self.shutting_down = True
        logger.info("shutting down", inflight=len(self.inflight))
        await stop.unless_forced(self._idle.wait, self.settings.healthcheck_interval)
        if self.proxy is not None:
            # Cancelled, a WebSocket session would end with no close frame to the client
            # (1006) and a bare 1000 upstream.
            await stop.unless_forced(self.proxy.end_sessions, SHUTDOWN_TIMEOUT)
        cut: list[asyncio.Future[None]] = []
        for work in list(self.inflight):
            if isinstance(work, Invocation):
                logger.warning("stopping an invocation still running", id=work.id)
                ended = work.abort(ShuttingDown(STOPPED))  # its answer says why: 503
                if ended is not None:
                    cut.append(ended)
            elif isinstance(work, asyncio.Task):
                logger.warning("cutting a proxied request still running")
                work.cancel()  # else the runner's cleanup would wait for it for a minute
        if cut:
            # The runner's cleanup cancels a handler still in its steps after
            # SHUTDOWN_TIMEOUT: its client would get no answer at all. Forced or not: the
            # wait is the steps' own cleanup, itself bounded.
            await asyncio.wait(cut, timeout=ABORT_GRACE)
        await runner.cleanup()  # cancels handlers still running, closes connections
        await asyncio.to_thread(self.removals.close_all)  # every invocation folder is gone
        if self.proxy is not None:
            await self.proxy.close()  # the user's server, after the requests it was serving
        if self.orphans is not None:
            await self.orphans.kill_all()  # nothing we adopted outlives us
        if not self.settings.suppress_lock:
            try:
                LOCK_FILE.unlink(missing_ok=True)
            except OSError as exc:  # a directory there, say: the shutdown is clean all the same
                logger.warning("cannot remove the lock file", path=str(LOCK_FILE),
                               error=exc.strerror)

    # ---- orphans ---------------------------------------------------------------------

    async def _sweep_orphans(self, orphans: Orphans) -> None:
        """Reap orphans re-parented to us; kill those whose invocation is over.

        Runs after each invocation (coalesced) and every SWEEP_INTERVAL, in the loop's
        thread (see processes.spawn)."""
        if not orphans.enabled:
            return
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_wanted.wait(), SWEEP_INTERVAL)
            self._sweep_wanted.clear()
            await orphans.kill_all(self._orphan_wanted)
            await asyncio.sleep(SWEEP_SPACING)

    def _orphan_wanted(self, pid: int) -> bool:
        """Whether an orphan may live on: its invocation still runs (http mode: always,
        it is the server's). An invocation's processes carry its TMP_INPUT_DIR in their
        environment; one started without (cleared) may be any running invocation's, and
        lives until no invocation is in flight."""
        if self.proxy is not None:
            return True
        folder = environ_value(pid, "TMP_INPUT_DIR")
        running = {w.input_folder for w in self.inflight if isinstance(w, Invocation)}
        return bool(running) if folder is None else folder in running


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return default
