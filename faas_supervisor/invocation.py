"""One invocation: its folders, its environment, the script, stage in and stage out.

The watchdog and `faas-supervisor run` are thin front ends over `Invocation`. Each
invocation owns a folder under `$TMPDIR` (input/, output/ and the script's log) and its
own environment dict; nothing here touches `os.environ` or global state, so concurrent
invocations never see each other. `close()` removes the folder however things ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from faas_supervisor import processes
from faas_supervisor.access import authorize
from faas_supervisor.config import FunctionConfig, StoragePath, normalize_provider_name
from faas_supervisor.errors import (
    BadEvent,
    FaasError,
    Forbidden,
    ScriptFailed,
    ScriptTimeout,
    storage_failure,
    writing,
)
from faas_supervisor.logs import InvocationLog
from faas_supervisor.parsers.body import read_body
from faas_supervisor.parsers.event import ANY_ID, Event, StorageObject
from faas_supervisor.storage_providers import StorageProvider

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
        env = {**self.base_env, **self.config.variables, **(extra or {})}
        for name in RUNTIME_VARIABLES:
            env.pop(name, None)
        return env


@dataclass(frozen=True)
class OutputFile:
    path: Path
    relative: str  # path relative to TMP_OUTPUT_DIR, `/`-separated


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
    def __init__(self, runtime: Runtime, invocation_id: str | None = None) -> None:
        self.runtime = runtime
        self.id = invocation_id or str(uuid.uuid4())
        self.log = InvocationLog(runtime.config.log_level, self.id)
        with writing("the invocation's folder"):
            self.root = Path(tempfile.mkdtemp(prefix="faas-", dir=runtime.tmp_dir))
        self.input_dir = self.root / "input"
        self.output_dir = self.root / "output"
        # The script's stdout and stderr, interleaved as they came, kept on disk.
        self.script_log = self.root / "script.log"
        try:
            with writing("the invocation's folder"):
                self.input_dir.mkdir()
                self.output_dir.mkdir()
                # Made now, so that a disk without a free inode fails here, before the
                # body is read, and run_script's open() needs no new inode.
                self.script_log.touch()
        except FaasError:
            shutil.rmtree(self.root, ignore_errors=True)  # no partial folder left behind
            raise
        self.outcome = Outcome()
        self._started = time.monotonic()
        self._child: processes.Child | None = None
        self._aborted: FaasError | None = None  # set by abort(): the answer to give

    # ---- the steps -----------------------------------------------------------------

    async def read_event(
        self, chunks: AsyncIterator[bytes], content_type: str, max_size: int
    ) -> Event:
        return await read_body(
            chunks, content_type=content_type, input_dir=self.input_dir, max_size=max_size
        )

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
                       if p.type == ptype and p.get("space") == obj.bucket]
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
        env["TMP_INPUT_DIR"] = str(self.input_dir)
        env["TMP_OUTPUT_DIR"] = str(self.output_dir)
        if input_file is not None:
            env["INPUT_FILE_PATH"] = str(input_file)
        if event.text is not None:
            env["EVENT"] = event.text
        if event.storage is not None:
            env["STORAGE_OBJECT_KEY"] = event.storage.key
            env["STORAGE_BUCKET"] = event.storage.bucket
            env["EVENT_TIME"] = event.storage.event_time
        return env

    async def run_script(self, env: Mapping[str, str], mirror: OutputMirror | None = None) -> int:
        """Run `/bin/sh SCRIPT` in its own process group; raise on failure or timeout.

        When the script exits, what is left of its group (background children) is killed
        before the script is reaped; what left the group is the subreaper's (processes.py).
        """
        if self._aborted is not None:
            raise self._aborted
        timeout = self.runtime.exec_timeout or None
        with open(self.script_log, "wb") as log_file:
            # With a mirror, output goes through a pipe we copy from; else straight to disk.
            # No preexec_fn and no setsid: the spawn stays a vfork (processes.spawn).
            self._child = child = processes.spawn(
                ["/bin/sh", str(self.runtime.script)],
                cwd=self.input_dir,
                env=env,
                stdout=subprocess.PIPE if mirror else log_file,
                stderr=subprocess.STDOUT,
            )
            stdout = child.popen.stdout
            # The mirror's copy runs in a worker thread (blocking reads) until every
            # writer has closed the pipe; it is awaited before log_file closes.
            copier = (
                asyncio.ensure_future(asyncio.to_thread(_copy_output, stdout, log_file, mirror))
                if mirror is not None and stdout is not None
                else None
            )
            try:
                code = await asyncio.wait_for(child.wait(), timeout)
            except TimeoutError:
                child.kill_group()
                await child.wait()
                raise ScriptTimeout(f"script ran past exec_timeout ({timeout:g} s)") from None
            finally:
                # Whatever way it ended (cancelled when the client left), nothing lingers.
                if child.returncode is None:
                    child.kill_group()
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(child.wait())
                if self.runtime.orphans is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(self.runtime.orphans.kill_all())
                if copier is not None:
                    # The group is dead, so the pipe ends; a child that left the group
                    # and holds it open is not waited for long.
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.wait_for(asyncio.shield(copier), COPIER_GRACE)
        self.outcome.exit_code = code
        if self._aborted is not None:
            raise self._aborted  # killed on purpose: say why, not "killed by signal 9"
        if code != 0:
            raise ScriptFailed(f"script exited with status {_describe(code)}", _exit_status(code))
        return code

    def kill(self) -> None:
        """SIGKILL the script's group, if the script is still running."""
        if self._child is not None:
            self._child.kill_group()

    def abort(self, error: FaasError) -> None:
        """Stop the script now and answer `error` for it (the watchdog shutting down)."""
        self._aborted = error
        self.kill()

    def collect_outputs(self) -> list[OutputFile]:
        """Regular files under TMP_OUTPUT_DIR; links, FIFOs and sockets skipped, warned."""
        found: list[OutputFile] = []
        # os.walk follows a top folder that is a link: a script that replaced its output
        # folder (or the invocation's) by a link to elsewhere would have us read there.
        for folder in (self.root, self.output_dir):
            try:
                is_dir = stat.S_ISDIR(folder.lstat().st_mode)
            except FileNotFoundError:
                is_dir = False
            if not is_dir:
                self.log.warning(f"outputs skipped: {folder.name} is no longer a folder")
                self.outcome.outputs = found
                return found
        for dirpath, dirnames, filenames in os.walk(self.output_dir):
            base = Path(dirpath)
            for name in sorted(dirnames + filenames):
                path = base / name
                mode = path.lstat().st_mode
                relative = path.relative_to(self.output_dir).as_posix()
                if stat.S_ISDIR(mode):
                    continue
                if not _utf8(relative):
                    # No ZIP entry nor object key can carry it (both are UTF-8 text).
                    shown = relative.encode("utf-8", "surrogateescape")
                    self.log.warning(f"output {shown!r} skipped: its name is not UTF-8")
                    continue
                if stat.S_ISREG(mode):
                    found.append(OutputFile(path, relative))
                else:
                    kind = "symbolic link" if stat.S_ISLNK(mode) else "special file"
                    self.log.warning(f"output {relative} skipped: a {kind}")
        found.sort(key=lambda f: f.relative)
        self.outcome.outputs = found
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
                self.log.info("uploading", provider=provider.name, bucket=bucket, key=key)
                async with _storage_errors(provider, "upload", bucket, key):
                    await provider.upload(output.path, bucket, key)

    def _output_bucket(self, target: StoragePath, event: Event) -> str:
        config = self.runtime.config
        if (
            config.isolation_level == "USER"
            and event.storage is not None
            and event.storage.bucket in config.bucket_list
        ):
            return event.storage.bucket
        return target.bucket

    # ---- the whole pipeline --------------------------------------------------------

    async def execute(
        self, event: Event, extra_env: Mapping[str, str], mirror: OutputMirror | None = None
    ) -> Outcome:
        """Stage in, run, stage out. Failures are recorded in the outcome, not raised."""
        try:
            event = self.locate(event)
            input_file = await self.stage_in(event)
            env = self.environment(event, input_file, extra_env)
            self.log.debug("running script", script=str(self.runtime.script))
            await self.run_script(env, mirror)
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
        shutil.rmtree(self.root, ignore_errors=True)


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
        raise storage_failure(provider.name, f"{action} of {bucket}/{key}", exc) from exc


def _copy_output(pipe: IO[bytes], log_file: BinaryIO, mirror: OutputMirror) -> None:
    # The thread owns the pipe: closed here, at its end, never under a read in progress.
    with pipe:
        # os.read returns what has come, so the mirror shows the output as it comes.
        while chunk := os.read(pipe.fileno(), 65536):
            with writing("the script's log"):  # a full disk fails the invocation, named
                log_file.write(chunk)
                log_file.flush()  # here, not at close(), where an error would be unnamed
            try:
                mirror(chunk)
            except OSError:  # stderr gone (a closed pipe): keep capturing, stop mirroring
                mirror = _ignore


def _ignore(_chunk: bytes) -> None:
    pass


def _describe(code: int) -> str:
    return f"{code} (killed by signal {-code})" if code < 0 else str(code)


def _exit_status(code: int) -> int:
    """A shell's convention: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


def _utf8(name: str) -> bool:
    """A file name decoded by os.walk holds surrogates where its bytes were not UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
