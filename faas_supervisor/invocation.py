"""One invocation: its folders, its environment, the script, stage in and stage out.

The watchdog and `faas-supervisor run` are thin front ends over `Invocation`. Each
invocation owns two folders in `$TMPDIR` (`faas-X-input`, `faas-X-output`), the script's
log (a file with no name) and its own environment dict; nothing here touches `os.environ`
or global state, so concurrent invocations never see each other. `close()` removes the
folders and the log however things ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import os
import queue
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from faas_supervisor import processes
from faas_supervisor.access import authorize
from faas_supervisor.config import (
    FunctionConfig,
    StoragePath,
    normalize_provider_name,
    utf8_encodable,
)
from faas_supervisor.errors import (
    BadEvent,
    FaasError,
    Forbidden,
    ScriptFailed,
    ScriptTimeout,
    printable,
    storage_failure,
    writing,
)
from faas_supervisor.logs import LEVELS, InvocationLog, get_logger
from faas_supervisor.parsers.body import read_body
from faas_supervisor.parsers.event import ANY_ID, Event, StorageObject
from faas_supervisor.storage_providers import CollectionProvider, StorageProvider

_logger = get_logger(component="invocation")

# The variables the runtime sets for each invocation, and only it: unset when they do not
# apply (INPUT_FILE_PATH with no input, the storage ones for other events).
RUNTIME_VARIABLES = (
    "TMP_INPUT_DIR",
    "TMP_OUTPUT_DIR",
    "INPUT_FILE_PATH",
    "EVENT",
    "STORAGE_OBJECT_KEY",
    "STORAGE_BUCKET",
    "EVENT_TIME",
)

_RUNTIME_NAMES = frozenset(RUNTIME_VARIABLES)


@dataclass(frozen=True)
class Runtime:
    """What every invocation shares, built once at start-up."""

    config: FunctionConfig
    script: Path
    base_env: Mapping[str, str]  # the watchdog's own environment, less its config
    tmp_dir: Path
    exec_timeout: float = 0.0  # seconds; 0 = no limit
    providers: Mapping[str, StorageProvider] = field(default_factory=dict)
    # `run`'s subreaper, where every orphan is its one invocation's: killed as soon as
    # the script ends (one could hold the script's output pipe open). The watchdog's
    # invocations share theirs: it sorts them out itself (watchdog/server.py).
    orphans: processes.Orphans | None = None

    def script_environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The base of the script's environment: the watchdog's own, the config's
        variables, `extra`; less the runtime's variables, which only an invocation sets
        (a same-named variable would pass for the runtime's: an INPUT_FILE_PATH with no
        input, a forged EVENT)."""
        env = {**self._shared_env, **(extra or {})}
        if extra and not _RUNTIME_NAMES.isdisjoint(extra):  # the shared part has none
            for name in _RUNTIME_NAMES.intersection(extra):
                del env[name]
        return env

    @functools.cached_property
    def _shared_env(self) -> dict[str, str]:
        """What every invocation's environment starts with, merged once (a copy is made
        per invocation, never this)."""
        env = {**self.base_env, **self.config.variables}
        for name in RUNTIME_VARIABLES:
            env.pop(name, None)
        return env


@dataclass(frozen=True)
class OutputFile:
    path: Path
    relative: str  # path relative to TMP_OUTPUT_DIR, `/`-separated
    inode: int = 0  # as listed (0: not known): the file uploaded must be that one


@dataclass
class Outcome:
    """What happened, for the response: set as the invocation goes."""

    error: FaasError | None = None
    exit_code: int | None = None
    duration: float = 0.0
    outputs: list[OutputFile] = field(default_factory=list)


COPIER_GRACE = 5.0  # seconds to let the mirror's copy finish once the script's group is dead

# Output callback for `run`, which mirrors the script's output to stderr as it comes.
OutputMirror = Callable[[bytes], None]


class Invocation:
    def __init__(self, runtime: Runtime, invocation_id: str | None = None,
                 log_echo: Callable[[str], None] | None = None) -> None:
        """`log_echo`: where the runtime's lines are written as they come, as kept (`run`);
        else they go to the process's log through structlog (logs.InvocationLog)."""
        self.runtime = runtime
        self.id = invocation_id or str(uuid.uuid4())
        self.log = InvocationLog(runtime.config.log_level, self.id, log_echo)
        # Two folders side by side in TMPDIR, and the script's log an unnamed file: each
        # inode an invocation makes and deletes costs every later one (ext4 without a
        # journal scans past every inode deleted in the last half minute), so it makes
        # no more than the SPEC asks for.
        with writing("the invocation's folders"):
            base = _new_folders(str(runtime.tmp_dir))
        # Strings: this runs for every request, and pathlib's parsing is not free. The
        # Paths (input_dir, output_dir) are made when something asks for them.
        self.input_folder = f"{base}-input"
        self.output_folder = f"{base}-output"
        self._input_file: Path | None = None  # the body's or the download's: see close()
        try:
            with writing("the invocation's folders"):
                # The script's stdout and stderr, interleaved as they came: on disk (as
                # much as a script writes), with no name the script could replace or
                # leave behind. Made now, so that a disk without a free inode fails here,
                # before the body is read.
                self.script_log: int | None = _unnamed_file(runtime.tmp_dir)
        except BaseException:  # a FaasError, or what writing() lets through: none left
            _remove_folders(self.input_folder, self.output_folder, None)
            raise
        self.outcome = Outcome()
        self._started = time.monotonic()
        self._child: processes.Child | None = None
        self._aborted: FaasError | None = None  # set by abort(): the answer to give
        # The task running the steps abort() may cut (see abortable), while it runs them.
        self._task: asyncio.Task[object] | None = None
        # Made by an abort() that cut those steps: done once they have ended (abortable).
        self._steps_ended: asyncio.Future[None] | None = None

    @functools.cached_property
    def input_dir(self) -> Path:
        """TMP_INPUT_DIR."""
        return Path(self.input_folder)

    @functools.cached_property
    def output_dir(self) -> Path:
        """TMP_OUTPUT_DIR."""
        return Path(self.output_folder)

    # ---- the steps -----------------------------------------------------------------

    async def read_event(
        self, chunks: AsyncIterator[bytes], content_type: str, max_size: int
    ) -> Event:
        event = await read_body(
            chunks, content_type=content_type, input_dir=self.input_folder, max_size=max_size
        )
        self._input_file = event.input_file
        if self.log.threshold <= LEVELS["INFO"]:
            self.log.summary("event received", **_described(event))
        return event

    def locate(self, event: Event) -> Event:
        """The event with its object's provider, bucket and key made concrete, once the
        object is known to be the service's own (access.py); else BadEvent or Forbidden.

        Parsers name what the event says; two kinds need the config to finish the job:
        Onedata names a space (`onedata.*`: the provider whose `space` it is), dCache a
        file name (joined to the `input` path configured for its provider). This runs
        whether or not the file is staged in: an event that is not the service's is
        refused either way, before anything is read.
        """
        obj = event.storage
        if obj is None:
            return event
        config = self.runtime.config
        if obj.provider.endswith(f".{ANY_ID}"):
            ptype = obj.provider_type
            serving = [p.name for p in config.providers.values()
                       if p.type == ptype and p.get("space").strip("/") == obj.bucket]
            if not serving:
                raise BadEvent(f"no {ptype} storage provider is configured for space "
                               f"{obj.bucket!r}")
            obj = dataclasses.replace(obj, provider=serving[0])
        self._provider(obj.provider)  # an undefined provider is named as such (400)
        if obj.under_input_path:
            paths = [p for p in config.inputs if p.provider == obj.provider]
            if not paths:
                raise Forbidden(f"a {obj.provider} event, but no input path of this service "
                                f"uses {obj.provider}")
            folder = paths[0].folder
            obj = dataclasses.replace(
                obj,
                bucket=paths[0].bucket,
                key=f"{folder}/{obj.key}" if folder else obj.key,
                under_input_path=False,
            )
        authorize(config, obj)
        return dataclasses.replace(event, storage=obj)

    async def stage_in(self, event: Event) -> Path | None:
        """The input file's path: the body's file, or the storage object downloaded."""
        if event.storage is None:
            return event.input_file
        obj = event.storage
        dest = self._input_path(obj)
        if not self.runtime.config.file_stage_in:
            self.log.info("file stage-in skipped", key=obj.key)
            return None
        provider = self._provider(obj.provider)
        self.log.info("downloading", provider=provider.name, bucket=obj.bucket, key=obj.key)
        if isinstance(provider, CollectionProvider):
            # A Rucio dataset or container: all its files; the folder when several.
            async with _storage_errors(provider, "download", obj.bucket, obj.key):
                files = await provider.download_all(obj.bucket, obj.key, self.input_dir)
            self.log.info("downloaded", provider=provider.name, files=len(files))
            return files[0] if len(files) == 1 else self.input_dir
        self._input_file = dest
        async with _storage_errors(provider, "download", obj.bucket, obj.key):
            await provider.download(obj.bucket, obj.key, dest)
        return dest

    def _input_path(self, obj: StorageObject) -> Path:
        """`TMP_INPUT_DIR/<base name of the key>`, refusing names that would leave it.

        StorageObject already refuses such keys when parsed; this is the last guard
        before a file is written, for objects made by any other path.
        """
        name = obj.name
        if not name or name in (".", "..") or "\x00" in name or "/" in name:
            raise BadEvent(f"object key {obj.key!r} does not name a file")
        return self.input_dir / name

    def _provider(self, name: str) -> StorageProvider:
        try:
            return self.runtime.providers[normalize_provider_name(name)]
        except KeyError:
            raise BadEvent(f"event names storage provider {name!r}, which is not defined") from None

    def environment(
        self, event: Event, input_file: Path | None, extra: Mapping[str, str]
    ) -> dict[str, str]:
        env = self.runtime.script_environment(extra)
        env["TMP_INPUT_DIR"] = self.input_folder
        env["TMP_OUTPUT_DIR"] = self.output_folder
        if input_file is not None:
            env["INPUT_FILE_PATH"] = str(input_file)
        if event.text is not None:
            env["EVENT"] = event.text
        if event.storage is not None:
            env["STORAGE_OBJECT_KEY"] = event.storage.key
            env["STORAGE_BUCKET"] = event.storage.bucket
            env["EVENT_TIME"] = event.storage.event_time
        return env

    async def run_script(self, env: Mapping[str, str], mirror: OutputMirror | None = None,
                         keep_output: bool = True) -> int:
        """Run `/bin/sh SCRIPT` in its own process group; raise on failure or timeout.

        When the script exits, what is left of its group (background children) is killed
        before the script is reaped; what left the group is the subreaper's (processes.py).
        """
        if self._aborted is not None:
            raise self._aborted
        timeout = self.runtime.exec_timeout or None
        if self.script_log is None or self._child is not None:
            raise RuntimeError("run_script runs once per invocation, before remove()")
        # The log is written by the script itself, or (a mirror) by a copier thread with a
        # descriptor of its own, through os.write: no buffer whose flush could fail later,
        # unnamed. It stays open for the response (responses.py) until remove().
        log = self.script_log
        # With a mirror, output goes through a pipe we copy from; else straight to disk.
        # No preexec_fn and no setsid: the spawn stays a vfork (processes.spawn).
        try:
            self._child = child = processes.spawn(
                ["/bin/sh", str(self.runtime.script)],
                cwd=self.input_folder,
                env=env,
                stdout=subprocess.PIPE if mirror else log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                # The event's own text: a key or a header too long for the kernel (128 KiB
                # a variable), or all of them together past its limit.
                raise BadEvent("the script cannot start: its environment is too large (a "
                               "variable of over 128 KiB, or all of them past the system's "
                               "limit)") from None
            raise FaasError(f"cannot start the script: {exc.strerror}") from None
        stdout = child.popen.stdout
        # The mirror's copy runs in a worker thread (blocking reads) until every writer has
        # closed the pipe. Its own duplicate of the log's descriptor, closed by it: one it
        # outlives (a process that left the group holds the pipe) writes to the log, never
        # to a number remove() freed and something else got since.
        # Without keep_output the mirror alone has it: the log would be a second copy
        # nobody reads (a job's, whose log stream is its log), growing with the output.
        copier = (
            asyncio.ensure_future(asyncio.to_thread(
                _copy_output, stdout, os.dup(log) if keep_output else None, mirror))
            if mirror is not None and stdout is not None
            else None
        )
        started = time.monotonic()
        timed_out = False
        try:
            # A timeout scope, not wait_for: that wraps the wait in a task of its own, a
            # tenth of the watchdog's Python per `echo` invocation. None without a limit.
            if timeout is None:
                code = await child.wait()
            else:
                async with asyncio.timeout(timeout):
                    code = await child.wait()
        except TimeoutError:
            # Killed as a script killed at shutdown is: its status (-9) is recorded and
            # answered (X-Exit-Code) the same way, then the timeout is what is raised. One
            # that exited on its own as the time ran out (not yet reaped) keeps its status
            # and its answer: a timeout is a script our kill ended.
            child.kill_group()
            code = await child.wait()
            timed_out = code == -signal.SIGKILL
        finally:
            # Whatever way it ended (cancelled when the client left), nothing lingers. A
            # cancellation that comes meanwhile (`run`'s SIGTERM) lets the clean-up go
            # on, and is raised at its end: the invocation is not carried on to stage-out.
            cancelled = False
            if child.returncode is None:
                child.kill_group()
                try:
                    await asyncio.shield(child.wait())
                except asyncio.CancelledError:
                    cancelled = True
            if self.runtime.orphans is not None:
                try:
                    await asyncio.shield(self.runtime.orphans.kill_all())
                except asyncio.CancelledError:
                    cancelled = True
            if copier is not None:
                # The group is dead, so the pipe ends; a child that left the group and
                # holds it open is not waited for long. Its failure is read below, or
                # (still copying) by _retrieved, never left unretrieved.
                copier.add_done_callback(_retrieved)
                try:
                    await asyncio.wait_for(asyncio.shield(copier), COPIER_GRACE)
                except asyncio.CancelledError:
                    cancelled = True
                except Exception:  # past the grace, or its own failure (read below)
                    pass
            if cancelled:
                raise asyncio.CancelledError
        self.outcome.exit_code = code
        self.log.summary("script exited", status=_describe(code),
                      seconds=f"{time.monotonic() - started:.3f}")
        if self._aborted is not None:
            raise self._aborted  # killed on purpose: say why, not "killed by signal 9"
        if timed_out:
            raise ScriptTimeout(f"script ran past exec_timeout ({timeout:g} s)")
        if copier is not None and copier.done() and not copier.cancelled():
            failed = copier.exception()
            if isinstance(failed, FaasError):
                # The log could not be written (a full disk): that is the failure, not
                # the SIGPIPE the script got once nobody read its output.
                raise failed
        if code != 0:
            raise ScriptFailed(f"script exited with status {_describe(code)}", _exit_status(code))
        return code

    def kill(self) -> None:
        """SIGKILL the script's group, if the script is still running."""
        if self._child is not None:
            self._child.kill_group()

    def abort(self, error: FaasError) -> asyncio.Future[None] | None:
        """Stop now and answer `error` (the watchdog shutting down), whatever the step: a
        running script is killed (run_script raises `error`), any other step under way in
        `abortable` (the body being read, stage-in, stage-out) is cancelled there.

        Returns a future done once the steps cut have ended (the answer comes next): a
        step may clean up first (an S3 transfer: s3.CANCEL_WAIT). None when no step was
        under way."""
        self._aborted = error
        task = self._task
        child = self._child
        if child is not None and child.returncode is None:
            child.kill_group()
        elif task is not None:
            task.cancel()
            self._task = None  # let go: abortable() tells its cancellation from others
        if task is None:
            return None
        self._steps_ended = ended = task.get_loop().create_future()
        return ended

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        """The steps abort() may cut short, in the current task: cut, they end here with
        `error` as the invocation's failure. Outside (its answer being sent), abort() only
        kills the script. A cancellation from elsewhere (the client gone) goes on."""
        self._task = task = asyncio.current_task()
        try:
            yield
        except asyncio.CancelledError:
            # Cut by abort() (which let go of the task), and by nothing else: no other
            # cancellation pending (the client gone; uncancel() counts them).
            if (self._task is not None or self._aborted is None or task is None
                    or task.uncancel() > 0):
                if self._aborted is not None and self.outcome.error is None:
                    # Cut by abort() and cancelled again (the server's cleanup, once the
                    # step has outlasted ABORT_GRACE): no answer goes, but the log says why.
                    self.fail(self._aborted)
                raise
            self.fail(self._aborted)
        finally:
            self._task = None
            if self._steps_ended is not None and not self._steps_ended.done():
                self._steps_ended.set_result(None)

    def collect_outputs(self) -> list[OutputFile]:
        """Regular files under TMP_OUTPUT_DIR; links, FIFOs and sockets skipped, warned."""
        found: list[OutputFile] = []
        self.outcome.outputs = found
        # A walk follows a top folder that is a link: a script that replaced its output
        # folder (or the invocation's) by a link to elsewhere would have us read there.
        try:
            is_dir = stat.S_ISDIR(os.lstat(self.output_folder).st_mode)
        except FileNotFoundError:
            is_dir = False
        if not is_dir:
            self.log.warning("outputs skipped: TMP_OUTPUT_DIR is no longer a folder")
            return found
        # Top-down, as os.walk goes, never into a link; a folder that cannot be read is
        # skipped, as os.walk skips it, and said so. The entries' types come with the
        # listing: no stat per file.
        pending = [(self.output_folder, "")]
        while pending:
            current, prefix = pending.pop()
            try:
                with os.scandir(current) as listing:
                    entries = sorted(listing, key=lambda entry: entry.name)
            except OSError as exc:
                self.log.warning(f"outputs in {prefix or './'} skipped: the folder cannot be "
                                 f"read ({exc.strerror or type(exc).__name__})")
                continue
            subfolders = []
            for entry in entries:
                relative = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append((entry.path, relative + "/"))
                    continue
                if not utf8_encodable(relative):
                    # No ZIP entry nor object key can carry it (both are UTF-8 text).
                    shown = relative.encode("utf-8", "surrogateescape")
                    self.log.warning(f"output {shown!r} skipped: its name is not UTF-8")
                    continue
                if entry.is_file(follow_symlinks=False):
                    found.append(OutputFile(Path(entry.path), relative, entry.inode()))
                else:
                    kind = "symbolic link" if entry.is_symlink() else "special file"
                    self.log.warning(f"output {relative} skipped: a {kind}")
            pending.extend(reversed(subfolders))  # depth first, in order, as os.walk
        found.sort(key=lambda f: f.relative)
        return found

    async def stage_out(self, event: Event, outputs: list[OutputFile]) -> None:
        """Upload each output file to every `output` whose filters it matches (SPEC 6.3)."""
        for target in self.runtime.config.outputs:
            bucket = self._output_bucket(target, event)
            provider = self._provider(target.provider)
            for output in outputs:
                if not target.matches(output.relative):
                    continue
                key = "/".join(p for p in (target.folder, output.relative) if p)
                with self._held(output) as source:
                    if source is None:
                        continue
                    self.log.info("uploading", provider=provider.name, bucket=bucket, key=key)
                    async with _storage_errors(provider, "upload", bucket, key):
                        await provider.upload(source, bucket, key)

    @contextlib.contextmanager
    def _held(self, output: OutputFile) -> Iterator[Path | None]:
        """The output as listed, held open while it is uploaded: a path to that open file
        (/proc/self/fd/N), or None (skipped, with a warning) if it is no longer that
        regular file (open_output)."""
        try:
            fd = open_output(output)
        except OutputChanged as exc:
            self.log.warning(f"output {output.relative} skipped: {exc}")
            yield None
            return
        try:
            yield opened_path(fd, output)
        finally:
            os.close(fd)

    def _output_bucket(self, target: StoragePath, event: Event) -> str:
        """The output's bucket; with `isolation_level: USER`, the event's when in
        `bucket_list` (SPEC 6.3), for MinIO outputs only, as the FaaS Supervisor does:
        `bucket_list` names the cluster's MinIO buckets, and an Amazon S3 or WebDAV
        output of that name would be someone else's."""
        config = self.runtime.config
        if (
            config.isolation_level == "USER"
            and event.storage is not None
            and event.storage.bucket in config.bucket_list
            and target.provider.partition(".")[0] == "minio"
        ):
            return event.storage.bucket
        return target.bucket

    # ---- the whole pipeline --------------------------------------------------------

    async def execute(
        self, event: Event, extra_env: Mapping[str, str], mirror: OutputMirror | None = None,
        keep_output: bool = True,
    ) -> Outcome:
        """Stage in, run, stage out. Failures are recorded in the outcome, not raised.
        `keep_output` False (with a mirror): the script's output is not kept for a logs
        response (run_script)."""
        try:
            event = self.locate(event)
            input_file = await self.stage_in(event)
            env = self.environment(event, input_file, extra_env)
            self.log.debug("running script", script=str(self.runtime.script))
            await self.run_script(env, mirror, keep_output)
            outputs = self.collect_outputs()
            await self.stage_out(event, outputs)
        except FaasError as exc:
            self.fail(exc)
        finally:
            self.outcome.duration = time.monotonic() - self._started
        return self.outcome

    def fail(self, error: FaasError) -> Outcome:
        self.outcome.error = error
        self.outcome.duration = time.monotonic() - self._started
        self.log.error(error.message)
        return self.outcome

    def close(self) -> None:
        self.kill()
        self.remove()

    def remove(self, deep: bool = True) -> bool:
        """Remove the invocation's folders and what is in them, and close the script's log
        (the script has ended, the response is sent). With `deep` False, a folder that
        holds what the script left (a walk of unknown length) is left, and False
        returned: remove() again finishes the job."""
        # Forgotten first: close() frees the number even when it reports an error (an NFS
        # flush), which is nobody's to answer (the log was read, and has no name) and must
        # neither stop the removal nor have a second remove() close a number reused since.
        log, self.script_log = self.script_log, None
        if log is not None:
            with contextlib.suppress(OSError):
                os.close(log)
        return _remove_folders(self.input_folder, self.output_folder, self._input_file, deep)


class Removals:
    """A worker thread that removes invocations' folders for an event loop, and one more
    for the folders a script left things in.

    Removing a folder frees its disk block, which may wait for the disk (ext4 with
    `discard`: milliseconds per rmdir): done in the loop's thread, it would stall every
    other request meanwhile. Each removal's outcome goes to its loop as soon as it is
    done, but a wake-up already on its way carries the outcomes that come before the loop
    takes it: under load, one wake-up for several folders (a plain queue: a fraction of
    the CPU of asyncio.to_thread's executor futures). One thread for the known layout:
    more contend with the loop's thread for the interpreter lock at every syscall of a
    removal, which cost the watchdog more CPU at concurrency 16 than overlapping the
    disk's waits saved (bench/RESULTS.md). A folder that is not empty (a walk of unknown
    length: a script can leave a hundred thousand files) goes to a second thread, so that
    it holds up no other invocation's removal. A removal that fails is logged and its
    caller gets the exception; the thread goes on with the next one.
    """

    def __init__(self, workers: int = 1) -> None:
        self._workers = workers
        self._queue: queue.SimpleQueue[_Removal | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Removals of folders the script left things in, and their thread (made when the
        # first comes).
        self._deep_queue: queue.SimpleQueue[_Removal | None] = queue.SimpleQueue()
        self._deep_thread: threading.Thread | None = None
        # close_all() runs in another thread than close(): what it decides (closed, the
        # threads to stop) and what close() does (queue, or not) happen one at a time.
        self._lock = threading.Lock()
        self._closed = False  # close_all() called: from then on, removals are inline
        # Outcomes done and not yet taken by their loop; a loop that has some has a
        # wake-up (_take) on its way. Under _lock.
        self._done: dict[asyncio.AbstractEventLoop, list[_Removed]] = {}

    async def close(self, invocation: Invocation) -> None:
        """invocation.close(), its folder removed in a worker thread. Cancelling the caller
        stops the wait, not the removal: close_all() waits for it. After close_all() (a
        late handler), the folder is removed here and now: no thread is left to do it."""
        invocation.kill()  # here: only the loop's thread signals (processes.py)
        loop = asyncio.get_running_loop()
        removed = loop.create_future()

        def resolve(error: BaseException | None) -> None:
            if removed.done():  # the caller was cancelled: nobody waits
                return
            if error is None:
                removed.set_result(None)
            else:
                removed.set_exception(error)

        with self._lock:
            queued = not self._closed
            if queued:
                if not self._threads:
                    self._start()
                self._queue.put((invocation, loop, resolve))
        if not queued:
            invocation.remove()
            return
        await removed

    def close_all(self) -> None:
        """Wait for the removals asked for, and stop the threads (blocking: at the end).
        Removals asked for later run in their caller (see close)."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
            for _ in threads:
                self._queue.put(None)  # after every removal queued: those go first
        for thread in threads:
            thread.join()
        # Those threads are gone, and with them whoever hands folders over: the last.
        with self._lock:
            deep, self._deep_thread = self._deep_thread, None
        if deep is not None:
            self._deep_queue.put(None)
            deep.join()

    def _start(self) -> None:
        for number in range(self._workers):
            thread = threading.Thread(target=self._work, args=(self._queue, False),
                                      name=f"removals-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _hand_over(self, item: _Removal) -> bool:
        """To the thread that walks folders a script left things in; False if it cannot be
        started (a limit on threads): then the caller walks them."""
        with self._lock:
            if self._deep_thread is None:
                thread = threading.Thread(target=self._work, args=(self._deep_queue, True),
                                          name="removals-deep", daemon=True)
                try:
                    thread.start()
                except RuntimeError:
                    return False
                self._deep_thread = thread
            self._deep_queue.put(item)
        return True

    def _work(self, source: queue.SimpleQueue[_Removal | None], deep: bool) -> None:
        while (item := source.get()) is not None:
            invocation, loop, resolve = item
            error: BaseException | None = None
            try:
                if not invocation.remove(deep):
                    if self._hand_over(item):
                        continue  # its outcome comes from there
                    invocation.remove()
            except Exception as exc:  # this thread must live on for the next folders
                error = exc
                with contextlib.suppress(Exception):  # a log line that fails, too
                    _logger.error("could not remove an invocation's folder",
                                  path=invocation.input_folder, error=repr(exc))
            self._deliver(loop, (resolve, error))

    def _deliver(self, loop: asyncio.AbstractEventLoop, outcome: _Removed) -> None:
        """Hand an outcome to its loop now: with a wake-up of its own, or with the one
        already on its way."""
        with self._lock:
            pending = self._done.setdefault(loop, [])
            pending.append(outcome)
            wake = len(pending) == 1
        if wake:
            try:
                loop.call_soon_threadsafe(self._take, loop)
            except RuntimeError:  # the loop is closed: no one waits
                with self._lock:
                    self._done.pop(loop, None)

    def _take(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the loop's thread: every outcome done so far."""
        with self._lock:
            done = self._done.pop(loop, [])
        for resolve, error in done:
            resolve(error)


# An invocation whose folder to remove, and the callback into its loop once it is gone.
_Removal = tuple[
    Invocation, asyncio.AbstractEventLoop, Callable[[BaseException | None], None]
]
# A removal done: its callback, and the exception it raised if it failed.
_Removed = tuple[Callable[[BaseException | None], None], BaseException | None]


@contextlib.asynccontextmanager
async def _storage_errors(
    provider: StorageProvider, action: str, bucket: str, key: str
) -> AsyncIterator[None]:
    """A provider's unexpected exception becomes a StorageError naming it and the object.

    Providers raise StorageError themselves after their retries; anything else (an SDK
    error they did not foresee) must still be a 502 / exit 3, not a traceback, shown as
    `storage_failure` shows every storage failure.
    """
    try:
        yield
    except (FaasError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise storage_failure(provider.name, f"{action} of {bucket}/{printable(key)}", exc) from exc


def _copy_output(pipe: IO[bytes], log: int | None, mirror: OutputMirror) -> None:
    """Copy the script's output from `pipe` to the log (`log`, a descriptor this thread
    owns and closes; None: none kept) and to `mirror`, as it comes."""
    # The thread owns the pipe: closed here, at its end, never under a read in progress.
    try:
        with pipe:
            # os.read returns what has come, so the mirror shows the output as it comes.
            while chunk := os.read(pipe.fileno(), 65536):
                if log is not None:
                    with writing("the script's log"):  # a full disk fails the invocation
                        view = memoryview(chunk)
                        while view:  # unbuffered: nothing left to fail later, at a close
                            view = view[os.write(log, view):]
                try:
                    mirror(chunk)
                except OSError:  # stderr gone (a closed pipe): keep capturing, not mirroring
                    mirror = _ignore
    finally:
        if log is not None:
            with contextlib.suppress(OSError):  # written through os.write: nothing pending
                os.close(log)


def _retrieved(task: asyncio.Future[None]) -> None:
    """Marks a finished copier's outcome as seen (asyncio warns of one nobody read)."""
    if not task.cancelled():
        task.exception()


def _new_folders(parent: str) -> str:
    """`base` for two new folders `base-input` and `base-output` (`base` is
    `parent/faas-<random>`), this invocation's only (0700, as mkdtemp makes them, with less
    Python per call)."""
    while True:
        base = f"{parent}/faas-{os.urandom(16).hex()}"  # as uuid4().hex, with less Python
        try:
            os.mkdir(f"{base}-input", 0o700)
        except FileExistsError:  # 128 random bits: cannot happen, but never share one
            continue
        try:
            os.mkdir(f"{base}-output", 0o700)
        except FileExistsError:  # the same
            os.rmdir(f"{base}-input")
            continue
        except OSError:
            os.rmdir(f"{base}-input")
            raise
        return base


# Whether O_TMPFILE was refused here once: then the fallback, without a failed call each time.
_no_tmpfile = False


def _unnamed_file(folder: Path) -> int:
    """A descriptor of a new, empty file with no name, on `folder`'s file system (read and
    write; gone with its last descriptor). O_TMPFILE where the file system has it (O_EXCL:
    never to be given a name by linkat); else (overlayfs before Linux 6.6, NFS) a file
    made in `folder` and unlinked at once, before any script runs. `folder` is TMPDIR,
    never an invocation's folder: NFS keeps an unlinked open file visible (`.nfsXXXX`)."""
    global _no_tmpfile
    if not _no_tmpfile:
        try:
            return os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            _no_tmpfile = True
    path = f"{folder}/faas-log-{uuid.uuid4().hex}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.unlink(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_folders(
    input_dir: str, output_dir: str, input_file: Path | None, deep: bool = True
) -> bool:
    """Remove an invocation's two folders and all in them, whatever the script left there.

    The layout is known: what the runtime made is removed by name, a few syscalls; only a
    folder the script wrote in (not empty then) is walked, by rmtree. Names are resolved
    from descriptors opened with O_NOFOLLOW: a script that replaced a folder by a link
    never has us remove something outside its folders (the link itself is removed).
    False when `deep` is False and a folder was left for holding more (see remove)."""
    # The input file, when it is in the input folder (a collection's files are not).
    name = os.fspath(input_file).removeprefix(input_dir + "/") if input_file else "/"
    if "/" not in name:
        with contextlib.suppress(OSError):  # gone, or the folder is no longer one
            fd = os.open(input_dir, _DIRECTORY)
            try:
                os.unlink(name, dir_fd=fd)
            finally:
                os.close(fd)
    for folder in (input_dir, output_dir):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            pass
        except NotADirectoryError:  # a link, or a file, in its place: that goes
            with contextlib.suppress(OSError):
                os.unlink(folder)
        except OSError:  # not empty (rmtree never follows a link it finds inside)
            if not deep:
                return False
            remove_tree(folder)
    return True


def remove_tree(folder: str) -> None:
    """rmtree `folder`, errors ignored, whatever the script did to its folders' modes.

    A script may take its owner's permissions from a folder (`chmod 000` on its output
    folder, `chmod 500` on one with files in it): root removes it anyway, any other user
    (an image's `USER 1000`) cannot. Each folder refused is given its owner's permissions
    back (`u+rwx`: the folders are ours, as is what the script made) and the removal tried
    again, a round per level of such folders, until a round gives nothing back."""
    denied: set[str] = set()

    def refused(func: object, path: str, exc_info: tuple[type, BaseException, object]
                ) -> None:
        if isinstance(exc_info[1], PermissionError):
            # A folder that cannot be read (opened, listed); else the one holding `path`
            # cannot be searched or written (its stat, unlink or rmdir).
            denied.add(path if func in (os.open, os.scandir) else os.path.dirname(path))

    shutil.rmtree(folder, onerror=refused)
    while denied:
        # Parents first (sorted): one given back lets those under it be reached.
        given = [path for path in sorted(denied) if _give_back(folder, path)]
        denied.clear()
        if not given:
            return  # nothing more to give (not ours, immutable): left, as before
        shutil.rmtree(folder, onerror=refused)


def _give_back(top: str, path: str) -> bool:
    """`u+rwx` on the folder `path` (`top` or under it), reached from `top`'s parent one
    name at a time, never through a link; whether its mode changed."""
    if path != top and not path.startswith(top + "/"):
        return False  # TMPDIR itself, or what rmtree named outside: not the script's
    names = path[len(top) + 1:].split("/") if path != top else []
    parent, _, name = top.rpartition("/")
    try:
        fd = os.open(parent or "/", _FOLDER_PATH & ~os.O_NOFOLLOW)  # TMPDIR: as configured
    except OSError:
        return False
    try:
        for step in [name, *names]:
            # O_PATH needs no right on the folder itself, only search on the one above.
            fd, above = os.open(step, _FOLDER_PATH, dir_fd=fd), fd
            os.close(above)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISDIR(mode) or mode & stat.S_IRWXU == stat.S_IRWXU:
            return False
        # An O_PATH descriptor takes no fchmod: its /proc name is that same folder.
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode) | stat.S_IRWXU)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A folder by name alone (no right on it needed), never a link in its place.
_FOLDER_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# An output to upload: never through a link, and a FIFO opened without waiting for a writer.
_OUTPUT = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PROC_FD = Path("/proc/self/fd")  # where an open file has a path of its own


class OutputChanged(Exception):
    """An output is no longer the regular file listed; the message says what it is."""


def open_output(output: OutputFile) -> int:
    """The output as listed, open for reading (a descriptor the caller closes); else
    OutputChanged. A process the script left running (the watchdog stops those only once
    the answer is sent) may meanwhile put a link or a FIFO in its place, or a link in
    place of a folder above it: followed by name, the upload or the response would read
    what the link names, or wait on the FIFO for ever. O_NOFOLLOW refuses the first,
    O_NONBLOCK opens a FIFO without its writer, and the inode, compared with the
    listing's, refuses any other file reached by a folder's link."""
    try:
        fd = os.open(output.path, _OUTPUT)
    except OSError as exc:
        gone = exc.errno in (errno.ENOENT, errno.ENOTDIR)
        raise OutputChanged("gone" if gone else "a symbolic link" if exc.errno == errno.ELOOP
                            else exc.strerror or type(exc).__name__) from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise OutputChanged("a special file")
        if output.inode and found.st_ino != output.inode:
            raise OutputChanged("not the file listed")
    except BaseException:
        os.close(fd)
        raise
    return fd


def opened_path(fd: int, output: OutputFile) -> Path:
    """A path to the open file `fd` (the output), for what takes a path: /proc/self/fd/N,
    or without /proc the output's own path."""
    return Path(f"/proc/self/fd/{fd}") if _PROC_FD.is_dir() else output.path


def _described(event: Event) -> dict[str, object]:
    """What a log line may say of an event: its kind and size, the object it names;
    never its content (a body may carry anything, credentials included)."""
    if event.storage is not None:
        obj = event.storage
        return {"kind": event.kind, "provider": obj.provider, "bucket": obj.bucket,
                "key": obj.key}
    if event.input_file is not None:
        try:
            size = os.stat(event.input_file).st_size
        except OSError:
            size = 0
        return {"kind": event.kind, "bytes": size}
    return {"kind": event.kind}


def _ignore(_chunk: bytes) -> None:
    pass


def _describe(code: int) -> str:
    return f"{code} (killed by signal {-code})" if code < 0 else str(code)


def _exit_status(code: int) -> int:
    """A shell's convention: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code

