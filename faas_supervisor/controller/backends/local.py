"""The embedded default: services as `faas-supervisor watchdog` processes of this machine.

Each service gets a folder `<data-dir>/services/NAME/` (script.sh, function_config.yaml,
the watchdog's and the job runner's logs, its TMPDIR, holding each job's own TMPDIR), a
watchdog on a free loopback port that is restarted if it dies, and its jobs run as
`faas-supervisor run` would, each in a child forked by the service's warm job runner
(job_runner.py; local_runner.py), started at its first job. Every process gets its own
process group and is stopped as processes.Child does: SIGTERM (a watchdog drains, `run`
kills its script and removes its folders), SIGKILL to the group after a grace period.
The controller is a child subreaper while this backend runs: what a watchdog or a job
leaves when it dies (even by SIGKILL: its scripts, their children) comes back to it and
is killed before the watchdog is restarted or the job is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from faas_supervisor import frozen, processes
from faas_supervisor.config import Mode, WatchdogSettings, parse_duration
from faas_supervisor.controller.backends import JobInterrupted
from faas_supervisor.controller.backends.local_runner import IDLE_STOP, JobLog, Runner, RunnerDied
from faas_supervisor.controller.deployments import Deployment, LogLine, read_tail, trim_log
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.function_config import function_config
from faas_supervisor.controller.store import CUT_NOTE_MAX, LOG_MAX
from faas_supervisor.errors import ConfigError, InvalidService, ServiceUnavailable
from faas_supervisor.job_runner import CONFIG_FILE
from faas_supervisor.logs import get_logger

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0  # seconds a new watchdog may take to answer its health check
SYNC_WAIT = 60.0  # seconds a request waits for a starting service (--sync-wait)
# Seconds a stopped watchdog gets before SIGKILL: its drain (healthcheck_interval, 10 s by
# default), a transfer cut short cleaning up (watchdog.server.ABORT_GRACE, 5 s), the last
# answers (SHUTDOWN_TIMEOUT, 2 s), and a margin.
STOP_TIMEOUT = 20.0
LOG_CHECK = 30.0  # seconds between two looks at a service's watchdog.log size (trim_log)
JOB_STOP_GRACE = 10.0  # seconds a stopped job's `run` gets to kill its script and clean up
EVENT_IN_ENV_MAX = 96 * 1024  # larger events go on stdin: the environment is bounded
logger = get_logger(component="local-backend")


def runtime_command() -> list[str]:
    """This very program: the frozen build's launcher, or the package with this Python."""
    if frozen.is_frozen():
        return [str(frozen.launcher())]
    # -P: not the working directory first on sys.path, where `-m` puts it. A controller
    # started from a checkout (or any folder holding a `faas_supervisor`) would otherwise
    # run its services' watchdogs and jobs on that code instead of its own.
    return [sys.executable, "-P", "-m", "faas_supervisor"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class _Pids:
    """Process ids kept on disk, so that a controller killed outright leaves no orphans:
    the next start stops the process groups the last one left (if still this data's).

    A script runs in a process group of its own, which the `run` or watchdog group
    killed does not hold: those groups are found by the environment every process this
    backend starts passes on, `TMPDIR` in the data folder's `services/` (a script that
    sets another TMPDIR, or clears its environment, is not found that way)."""

    def __init__(self, folder: Path, data_dir: Path) -> None:
        self.folder = folder
        # An argument that starts with a service's folder (a watchdog's --script, a
        # runner's folder; a job, forked by its runner, has the runner's): the data
        # folder alone, as a substring, is also in those of a controller on `/x/data2`.
        self.marker = b"\0" + f"{data_dir / 'services'}/".encode()
        self.tmpdirs = f"{data_dir / 'services'}/"  # every TMPDIR this backend sets

    def record(self, pid: int, kind: str = "") -> Path:
        """`kind` "job-": a job's `run`, forked by a runner (stopped first, see below)."""
        path = self.folder / f"{kind}{pid}.pid"
        path.write_text(str(pid))
        return path

    async def reap_leftovers(self) -> None:
        """Stop what the last controller left (killed outright): watchdogs and jobs."""
        self.folder.mkdir(parents=True, exist_ok=True)
        # Jobs first, then the rest: a job runner stopped passes SIGTERM to its jobs,
        # and a `run` must get only one (a second, once its handler is gone, ends it
        # before its last cleanup). A runner whose jobs are gone exits by itself.
        for pattern in ("job-*.pid", "*.pid"):
            stops = []
            for path in self.folder.glob(pattern):
                with contextlib.suppress(ValueError, OSError):
                    stops.append(processes.stop_stranger(int(path.read_text()), self.marker,
                                                         STOP_TIMEOUT))
                path.unlink(missing_ok=True)
            await asyncio.gather(*stops)
        # What is left: scripts whose `run` could not stop them. /proc is read in a thread.
        scripts = await asyncio.to_thread(
            processes.kill_groups_by_environ, "TMPDIR", self.tmpdirs
        )
        for group in scripts:
            logger.warning("stopped a script left by the last controller", pid=group)


class _ServiceLog:
    """A service's watchdog.log, which all its watchdogs append to, kept to its cap
    (trim_log) whatever state they are in: looked at before each watchdog starts and
    every LOG_CHECK seconds while the service has watchdogs. Looked at only while one
    ran healthy, it grew without bound for a server that prints a lot and exits before
    it listens (restarted for ever), or prints through a long health wait."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        # Trims of one file never overlap: a cut made from the size seen before another
        # cut would empty it. A thread lock, as a cancelled await leaves its thread running.
        self._lock = threading.Lock()
        self._timer: asyncio.Task[None] | None = None

    def _trim(self) -> None:
        with self._lock:
            trim_log(self.path)

    async def trim(self) -> None:
        try:
            await asyncio.to_thread(self._trim)  # off the loop: it copies up to a MiB
        except OSError as exc:  # a full disk: the watchdog starts all the same
            logger.warning("cannot trim the service's log", service=self.name,
                           log=str(self.path), error=str(exc))

    def watch(self) -> None:
        """The periodic look started (if not running)."""
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._every_check(), name=f"log-{self.name}")

    async def _every_check(self) -> None:
        while True:
            await asyncio.sleep(LOG_CHECK)  # a file's size has no event to await
            await self.trim()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None


class _Watchdog:
    """One service's watchdog process, kept running until stopped."""

    def __init__(
        self, name: str, log: _ServiceLog, command: list[str], env: dict[str, str],
        pids: _Pids, orphans: processes.Orphans, files: tuple[Path, Path],
    ) -> None:
        """`command` without its files; `files`: its own links to its definition's script
        and config (`LocalBackend._link_definition`), removed once it is stopped."""
        self.name = name
        self.files = files
        self.pids = pids
        self.orphans = orphans
        self.log = log
        self.command = command
        self.env = env
        self.port = 0
        self.ready = asyncio.Event()
        self.stopping = False
        self.process: processes.Child | None = None
        self.task = asyncio.create_task(self._supervise(), name=f"watchdog-{name}")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def _supervise(self) -> None:
        failures = 0
        while not self.stopping:
            self.port = free_port()
            # Each start appends to the log: cut first, however short the last one ran.
            await self.log.trim()
            started = time.monotonic()
            with open(self.log.path, "ab") as log:
                try:
                    script, config = self.files
                    self.process = processes.spawn(
                        [*self.command, "--script", str(script), "--config", str(config),
                         *self._upstream_flags(), "--port", str(self.port), "--host", HOST],
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                except (OSError, ValueError) as exc:  # E2BIG: its variables, too large
                    cannot_start: Exception | None = exc
                else:
                    cannot_start = None
            if cannot_start is not None:
                # Said, and tried again later: this task ending would leave the service
                # unanswered for ever, with no word why, and its delete failing.
                failures += 1
                delay = min(0.2 * 2**failures, 10.0)
                logger.error("cannot start the service's watchdog", service=self.name,
                             error=str(cannot_start), delay=delay)
                await asyncio.sleep(delay)
                continue
            assert self.process is not None
            pid_file = self.pids.record(self.process.pid)
            ended = asyncio.ensure_future(self.process.wait())
            try:
                if await self._healthy():
                    self.ready.set()
                    logger.info("service ready", service=self.name, port=self.port)
                code = await ended
            finally:
                # Also when cancelled by stop(), which has stopped the process by then.
                ended.cancel()
                pid_file.unlink(missing_ok=True)
            self.ready.clear()
            # What it left (killed outright: its scripts, its server's children) came to
            # us: killed before a new one starts, so that no port or file is held.
            await self.orphans.kill_all()
            if self.stopping:
                return
            failures = failures + 1 if time.monotonic() - started < 10 else 0
            delay = min(0.2 * 2**failures, 10.0)
            logger.warning(
                "service watchdog exited; restarting",
                service=self.name,
                status=code,
                delay=delay,
                log=str(self.log.path),
            )
            await asyncio.sleep(delay)  # back off a watchdog that keeps dying

    def _upstream_flags(self) -> list[str]:
        """In http mode, a fresh free port for the user's server at each start."""
        return ["--upstream-port", str(free_port())] if self.http else []

    @property
    def http(self) -> bool:
        return "--mode" in self.command

    def _ready_timeout(self) -> float:
        """How long a new watchdog may take to pass its health check: its own start, and
        in http mode its server's too, which the watchdog bounds itself (it exits 2 past
        its upstream_start_timeout, read from the environment given here). Not cut
        shorter: a server loading a model for longer would be killed and started again
        for ever."""
        if not self.http:
            return READY_TIMEOUT
        limit = WatchdogSettings.upstream_start_timeout
        with contextlib.suppress(ConfigError):  # the watchdog says why, and exits 2
            if text := self.env.get("upstream_start_timeout"):
                limit = parse_duration(text, "upstream_start_timeout")
        return limit + READY_TIMEOUT

    async def _healthy(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self._ready_timeout()
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline and self.process.returncode is None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/_/health") as response:
                        if response.status == 200:
                            return True
                await asyncio.sleep(0.05)  # a port has no readiness event to await
        if self.process.returncode is None:
            logger.error("service watchdog never became healthy; killing it", service=self.name)
            self.process.kill_group()
        return False

    async def stop(self) -> None:
        self.stopping = True
        if self.process is not None:
            # Graceful: in-flight work may finish (the watchdog drains on SIGTERM). To the
            # watchdog alone: a script it is spawning is in its group for a moment, and a
            # group's SIGTERM would kill it (Child.stop); it stops its scripts itself.
            await asyncio.shield(self.process.stop(STOP_TIMEOUT, leader_only=True))
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.orphans.kill_all()
        for path in self.files:  # its process, and with it every script it ran, is gone
            path.unlink(missing_ok=True)


class LocalBackend:
    name = "local"

    def __init__(
        self,
        data_dir: Path,
        default_provider: Mapping[str, Any],
        service_env: Mapping[str, str],
        runner_idle: float = IDLE_STOP,
        sync_wait: float = SYNC_WAIT,
    ) -> None:
        self.root = data_dir / "services"
        self.runner_idle = runner_idle
        self.sync_wait = sync_wait  # seconds a request waits for a watchdog that starts
        self.default_provider = dict(default_provider)
        # What every service process inherits: settings.py picked it from our environment.
        self.base_env = dict(service_env)
        # A service's watchdogs: one, or `min_scale` for an exposed service.
        self._watchdogs: dict[str, list[_Watchdog]] = {}
        # Set (and dropped) when a service's watchdogs are replaced or dropped: a request
        # waiting for the old ones to be ready looks again (_swap_watchdogs, invoke_url).
        self._changed: dict[str, asyncio.Event] = {}
        self._released = False  # release_waiters: the controller is stopping
        # A service's watchdog.log, kept to its cap while it has watchdogs.
        self._logs: dict[str, _ServiceLog] = {}
        self._turn = itertools.count()  # round robin over a service's watchdogs
        # Services whose watchdogs POST /system/services/NAME/stop stopped.
        self._stopped: set[str] = set()
        # A service's job runner; those of a service's earlier definitions, until idle.
        self._runners: dict[str, Runner] = {}
        # Runners of earlier definitions, each with the task that stops it once idle;
        # close() stops those too (a retire task cancelled there would not).
        self._retiring: dict[Runner, asyncio.Task[None]] = {}
        self.pids = _Pids(data_dir / "pids", data_dir)
        self.orphans: processes.Orphans | None = None

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # From here on, what our watchdogs and jobs leave when they die comes to us.
        self.orphans = processes.Orphans()
        await self.pids.reap_leftovers()
        # Before any watchdog or job starts: what is in a service's TMPDIR now belongs to
        # no live process (the data folder's lock: no other controller; the reap: none
        # of the last one's), only to the last controller's, killed outright.
        await asyncio.to_thread(_sweep_tmpdirs, self.root)

    def _orphans(self) -> processes.Orphans:
        assert self.orphans is not None, "start() first"
        return self.orphans

    async def close(self) -> None:
        retiring = dict(self._retiring)
        for task in retiring.values():
            task.cancel()  # no wait for idle: its runner is stopped here, with its jobs
        await asyncio.gather(*(w.stop() for ws in self._watchdogs.values() for w in ws),
                             *(r.stop() for r in (*self._runners.values(), *retiring)),
                             *retiring.values(), return_exceptions=True)
        self._watchdogs.clear()
        self._runners.clear()
        await asyncio.gather(*(log.close() for log in self._logs.values()))
        self._logs.clear()
        await self._orphans().kill_all()

    def _folder(self, name: str) -> Path:
        return self.root / name

    def _env(self, service: Service) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(service.secrets)  # as the manager's Secret mounted with envFrom
        env["TMPDIR"] = str(self._folder(service.name) / "tmp")
        env["suppress_lock"] = "true"  # /tmp/.lock is one file for every service here
        return env

    def _write(self, service: Service) -> Path:
        folder = self._folder(service.name)
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        _replace(folder / "script.sh", service.script, 0o700)
        config = yaml.safe_dump(function_config(service, self.default_provider), sort_keys=False)
        _replace(folder / CONFIG_FILE, config, 0o600)  # it holds the storage keys
        return folder

    def _link_definition(self, name: str) -> tuple[Path, Path]:
        """The service's script and config as they are now, under names of their own
        (links: no copy), for one runner or one watchdog and what they run. Given the
        service's script.sh by name, a job on a runner being retired (`run` opens the
        script once its input is downloaded) or a call on a watchdog being replaced
        could run the script an update had just written, with the old secrets (a review
        found `v2 S=s1`). Each removes its links once stopped for good."""
        folder = self._folder(name)
        tag = uuid.uuid4().hex[:12]
        script = folder / f".definition-{tag}-script.sh"
        config = folder / f".definition-{tag}-{CONFIG_FILE}"
        os.link(folder / "script.sh", script)
        os.link(folder / CONFIG_FILE, config)
        return script, config

    def _sweep_definitions(self, name: str) -> None:
        """Links no live runner or watchdog holds (a controller killed outright left
        them), removed; at every deploy, so at every start."""
        runners = [self._runners.get(name), *self._retiring]
        held = {path for holder in [*runners, *self._watchdogs.get(name, [])]
                if holder is not None and holder.name == name for path in holder.files}
        for stray in self._folder(name).glob(".definition-*"):
            if stray not in held:
                stray.unlink(missing_ok=True)

    async def check(self, service: Service) -> None:
        """Any image is fine: services run on this machine, in no image; and so there is
        no image command for `default_command` to run. A stored one (from before this
        check) is deployed as before, running its script."""
        if service.exposed and service.expose.default_command:
            raise InvalidService(
                "expose.default_command: the local backend runs no image, so it has no "
                "image command to run; run the server from the script instead (on "
                "$upstream_port), or use the kubernetes backend"
            )

    async def deploy(self, service: Service) -> None:
        old = self._runners.pop(service.name, None)
        if old is not None:  # its jobs finish on it; new ones go to a runner of the new env
            self._retire(old)
        # Replaced, not rewritten: a script still running (a draining watchdog's, a job's
        # on the old runner) reads on from the old file, never half of each.
        folder = self._write(service)
        self._sweep_definitions(service.name)
        self._runners[service.name] = Runner(
            service.name, [*runtime_command(), "job-runner", str(folder)], self._env(service),
            folder / "runner.log", self.pids.record, self.runner_idle,
            self._link_definition(service.name),
        )
        self._stopped.discard(service.name)  # a new definition runs
        await self._replace_watchdogs(service)

    def _start_watchdogs(self, service: Service) -> list[_Watchdog]:
        """The service's new watchdogs in place; those they replace, to be stopped."""
        command = [*runtime_command(), "watchdog"]
        if service.exposed:
            # Its own free port, not api_port: services of one machine share its ports. The
            # script gets it as $upstream_port.
            command += ["--mode", Mode.HTTP.value]
        instances = max(1, service.expose.min_scale) if service.exposed else 1
        log = self._logs.get(service.name)
        if log is None:
            log = self._logs[service.name] = _ServiceLog(
                service.name, self._folder(service.name) / "watchdog.log")
        log.watch()
        return self._swap_watchdogs(service.name, [
            _Watchdog(service.name, log, command, self._env(service), self.pids,
                      self._orphans(), self._link_definition(service.name))
            for _ in range(instances)
        ])

    def _swap_watchdogs(self, name: str, new: list[_Watchdog] | None) -> list[_Watchdog]:
        """The service's watchdogs replaced by `new` (None: by none); the old ones back.
        Requests waiting for the old ones to be ready are woken to look again: else they
        waited all of sync_wait for watchdogs being stopped, the new ones answering."""
        old = self._watchdogs.pop(name, [])
        if new is not None:
            self._watchdogs[name] = new
        changed = self._changed.pop(name, None)
        if changed is not None:
            changed.set()
        return old

    async def _unwatch_log(self, name: str) -> None:
        """Its log's periodic look stopped, once the service has no watchdogs left."""
        if name not in self._watchdogs and (log := self._logs.pop(name, None)) is not None:
            await log.close()

    async def _runner(self, name: str) -> Runner:
        """The service's runner, started (the first job of a service waits for its
        imports). One being replaced by an update meanwhile is not used: once this
        returns, the caller's submit (no await between) keeps it alive for the job."""
        while True:
            runner = self._runners.get(name)
            if runner is None:
                raise ServiceUnavailable(f"service {name} is not deployed")
            try:
                await runner.ensure()
            except RunnerDied:
                if self._runners.get(name) is not runner:
                    continue  # replaced meanwhile: the new one
                raise
            if not runner.stopped:
                return runner
            if self._runners.get(name) is runner:  # stopping with the backend
                raise RunnerDied(f"the job runner of service {name} is stopped")

    def _retire(self, runner: Runner) -> None:
        async def retire() -> None:
            await runner.idle.wait()
            await runner.stop()

        task = asyncio.create_task(retire(), name=f"retire-runner-{runner.name}")
        self._retiring[runner] = task
        task.add_done_callback(lambda _: self._retiring.pop(runner, None))

    async def remove(self, name: str) -> None:
        self._stopped.discard(name)
        runner = self._runners.pop(name, None)
        # Those of its earlier definitions too, as close() stops them: a job still on one
        # would run on in the folder removed below (delete_service deletes the service's
        # jobs only once this returns), its files keeping parts of it there.
        retiring = {r: task for r, task in self._retiring.items() if r.name == name}
        for task in retiring.values():
            task.cancel()  # no wait for idle: its runner is stopped here, with its jobs
        runners = [*([runner] if runner is not None else []), *retiring]
        await asyncio.gather(*(w.stop() for w in self._swap_watchdogs(name, None)),
                             *(r.stop() for r in runners))
        await asyncio.gather(*retiring.values(), return_exceptions=True)
        await self._unwatch_log(name)
        await asyncio.to_thread(shutil.rmtree, self._folder(name), True)

    # ---- the service's watchdogs, as the dashboard sees them -----------------------------

    async def deployment(self, service: Service) -> Deployment | None:
        if service.name in self._stopped:
            return Deployment(desired=0, running=0, ready=0)
        watchdogs = self._watchdogs.get(service.name)
        if not watchdogs:
            return None
        return Deployment(
            desired=len(watchdogs),
            running=sum(w.running for w in watchdogs),
            ready=sum(w.ready.is_set() for w in watchdogs),
        )

    async def deployment_logs(self, service: Service, tail: int) -> list[LogLine] | None:
        if not self._watchdogs.get(service.name):
            return None  # stopped, or not deployed: no instance, as a Deployment of none
        # Every watchdog of the service appends to this one file; it has no timestamps.
        lines = await asyncio.to_thread(
            read_tail, self._folder(service.name) / "watchdog.log", tail
        )
        return [LogLine(line) for line in lines]

    async def stop_service(self, service: Service) -> None:
        self._stopped.add(service.name)
        await asyncio.gather(*(w.stop() for w in self._swap_watchdogs(service.name, None)))
        await self._unwatch_log(service.name)

    async def start_service(self, service: Service) -> None:
        if service.name in self._stopped:
            self._stopped.discard(service.name)
            self._start_watchdogs(service)

    async def restart_service(self, service: Service) -> None:
        if service.name not in self._stopped:
            await self._replace_watchdogs(service)

    async def _replace_watchdogs(self, service: Service) -> None:
        """Rolling: the new ones take requests once ready (a request waits for them, at
        most sync_wait), the old ones drain meanwhile. Stopped first, they would leave
        the service without a watchdog (a 503) for as long as their drain took."""
        old = self._start_watchdogs(service)
        await asyncio.gather(*(w.stop() for w in old))

    def release_waiters(self) -> None:
        self._released = True
        changed, self._changed = self._changed, {}
        for event in changed.values():
            event.set()  # each waiter looks again, and is released (invoke_url)

    async def invoke_url(self, name: str) -> str:
        start = next(self._turn)  # round robin from the next in turn, over those answering
        deadline = time.monotonic() + self.sync_wait
        while True:
            # Read again after each wake-up: an update, restart, stop or delete meanwhile
            # replaced or dropped the watchdogs this request was waiting for.
            watchdogs = self._watchdogs.get(name)
            if not watchdogs:
                raise ServiceUnavailable(f"service {name} is not running")
            ordered = [watchdogs[(start + i) % len(watchdogs)] for i in range(len(watchdogs))]
            for watchdog in ordered:
                if watchdog.ready.is_set():
                    return watchdog.url
            # One that starts (just made, updated, restarted): waited for, at most sync_wait.
            if self._released:
                raise ServiceUnavailable(
                    f"service {name} is not answering yet (the controller is stopping)")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceUnavailable(
                    f"service {name} is not answering yet (waited {self.sync_wait:g} s)")
            changed = self._changed.setdefault(name, asyncio.Event())
            waits = [asyncio.ensure_future(w.ready.wait()) for w in ordered]
            waits.append(asyncio.ensure_future(changed.wait()))
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def run_job(self, service: Service, job: str, event: Path, log: Path) -> int:
        # A TMPDIR of the job's own, in the service's (so the sweeps at start find it,
        # as its processes are found by it): a `run` killed outright (the OOM killer)
        # leaves its folders, named at random, which only that tells from another job's
        # or a sync call's. Made once the runner is there, gone once the job's processes
        # are (_remove_job_tmp): an rmdir when its `run` removed its folders.
        tmp = f"{self._folder(service.name) / 'tmp'}/job-{job}"
        try:
            return await self._run_job(service, job, event, log, tmp)
        finally:
            await asyncio.shield(_remove_job_tmp(tmp))

    async def _run_job(self, service: Service, job: str, event: Path, log: Path,
                       tmp: str) -> int:
        runner = await self._runner(service.name)
        # The environment of the runner's definition, not of `service`: an update during
        # the wait for the runner's start sends the job to the new runner, which runs the
        # new script and config (a review found the new script with the old secrets).
        env = dict(runner.env)
        env["JOB_UUID"] = job
        env["TMPDIR"] = tmp
        # The event, never a secret of that name (`run` would read it instead).
        env.pop("EVENT", None)
        # Read here, not in a thread: jobs.submit has just written it (the page cache
        # holds it), and a thread hop costs more than reading 96 KiB from memory.
        data = _small_event(event)
        if data is not None and b"\0" not in data:
            # As OSCAR passes it; surrogateescape gives the child the exact bytes back.
            env["EVENT"] = data.decode("utf-8", "surrogateescape")
        with contextlib.suppress(FileExistsError):  # left by a run whose removal failed
            os.mkdir(env["TMPDIR"], 0o700)  # on the loop: tens of microseconds
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(log, "ab"))
            fds = [out.fileno()]
            if "EVENT" not in env:  # else /dev/null
                fds.append(stack.enter_context(open(event, "rb")).fileno())
            # Bounded while it runs by its `run`, as the store keeps it once it ends.
            script, config = runner.files
            warm = runner.submit(job, ["run", "--script", str(script), "--config", str(config)],
                                 env, fds, JobLog(log, LOG_MAX, LOG_MAX - CUT_NOTE_MAX))
        pid_file: Path | None = None
        # Should its runner die, its `run` comes to us (a subreaper): no sweep (another
        # job's end, a watchdog's restart) may kill it before its graceful stop below.
        kept = contextlib.ExitStack()
        try:
            await asyncio.shield(warm.started)
            kept.enter_context(processes.kept(warm.pid))
            pid_file = self.pids.record(warm.pid, "job-")
            return await asyncio.shield(warm.done)
        except RunnerDied as exc:
            raise JobInterrupted(str(exc)) from None
        finally:
            with kept:  # released however this ends
                if not warm.done.done():
                    # Cancelled (the job or its service deleted, the controller stopping):
                    # SIGTERM lets `run` kill its script's group and remove its folders.
                    await asyncio.shield(runner.stop_job(warm, JOB_STOP_GRACE))
                if warm.runner_died and warm.pid:
                    # Its `run` runs on, ours now: stopped as a job is (SIGTERM, the grace
                    # period, SIGKILL to its group), before the sweep.
                    await asyncio.shield(
                        processes.stop_stranger(warm.pid, self.pids.marker, JOB_STOP_GRACE)
                    )
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
            # A `run` killed outright left its script to us: it goes now.
            await asyncio.shield(self._orphans().kill_all())


def _replace(path: Path, text: str, mode: int) -> None:
    """`path` holding `text` with `mode`, swapped in whole (a rename): whoever has the old
    file open reads it to its end, whoever opens it next gets the new one."""
    new = path.with_name(f".{path.name}.new")
    new.unlink(missing_ok=True)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)  # whatever the umask
    with open(fd, "w") as f:
        f.write(text)
    os.replace(new, path)


def _sweep_tmpdirs(root: Path) -> None:
    """Each service's TMPDIR removed (_write makes it again), with what the processes of a
    controller killed outright left in it: invocation folders (an input object, a sync
    body), runtime folders. Never through a link: one in its place is removed itself."""
    # The invocations' own remover: never follows a link, gives back the modes a script
    # took from its folders. Imported here: the controller needs it at start only.
    from faas_supervisor.invocation import remove_tree

    with os.scandir(root) as services:
        for service in services:
            if not service.is_dir(follow_symlinks=False):
                continue
            tmp = f"{service.path}/tmp"
            try:
                os.unlink(tmp)  # a link, or a file, a script put in its place
            except IsADirectoryError:
                remove_tree(tmp)
            except OSError:  # none (a service never deployed)
                pass


async def _remove_job_tmp(tmp: str) -> None:
    """A job's TMPDIR removed, once its processes are gone: an rmdir when its `run`
    removed its folders (the usual end), else in a thread with what is left in it, as the
    invocations remove theirs. Never through a link: one put in its place goes itself."""
    try:
        os.rmdir(tmp)
    except FileNotFoundError:  # never made (the job did not start)
        pass
    except NotADirectoryError:  # a link, or a file, its script put in its place
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    except OSError:  # not empty: a `run` killed outright left its folders
        from faas_supervisor.invocation import remove_tree  # as _sweep_tmpdirs

        await asyncio.to_thread(remove_tree, tmp)


def _small_event(event: Path) -> bytes | None:
    """The event if the environment can hold it, else None."""
    return event.read_bytes() if event.stat().st_size <= EVENT_IN_ENV_MAX else None
