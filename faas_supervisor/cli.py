"""The `faas-supervisor` command: watchdog | run | controller | service | manifests.

Start-up reads the environment and the config once (config.py) and hands frozen objects
down; a bad config or script stops here with exit status 2 and one line, before any
request is served. Each command imports what it uses when it runs (asyncio included), so
that `--version`, `--help` and `manifests` pay for none of it (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, NoReturn, TextIO, TypeVar

from faas_supervisor import __version__
from faas_supervisor.config import (
    FunctionConfig,
    RunSettings,
    WatchdogSettings,
    current_environ,
    load_function_config,
    load_run_settings,
    load_watchdog_settings,
    resolve_script,
    script_environment,
)
from faas_supervisor.errors import ConfigError, FaasError, local_write_error, writing
from faas_supervisor.gc_pause import collection_paused

if TYPE_CHECKING:
    from faas_supervisor.processes import Orphans

WATCHDOG_FLAGS = (
    ("exec_timeout", "seconds a script may run, 0 = no limit (10, 10s, 1m)"),
    ("read_timeout", "seconds to read the request"),
    ("write_timeout", "seconds to write the response"),
    ("max_inflight", "concurrent invocations, 0 = no limit"),
    ("max_body_size", "largest request body, in bytes"),
    ("healthcheck_interval", "seconds to wait for in-flight work after SIGTERM"),
    ("mode", "fork (a script per request) or http (proxy to a long-running server)"),
    ("upstream_port", "http mode: the port the user's server listens on (default 8081)"),
    ("upstream_start_timeout", "http mode: seconds the server may take to listen (default 120)"),
)


def _service_arguments(parser: argparse.ArgumentParser) -> None:
    from faas_supervisor.client import declare_arguments

    declare_arguments(parser)


def _controller_arguments(parser: argparse.ArgumentParser) -> None:
    from faas_supervisor.controller.command import declare_arguments

    declare_arguments(parser)


def _manifests_arguments(parser: argparse.ArgumentParser) -> None:
    from faas_supervisor.controller.manifests_command import declare_arguments

    declare_arguments(parser)


# The commands implemented elsewhere: (name, help, description, the function that declares
# the command's arguments). Their modules are imported only when their command is chosen,
# so that `run` in a job's container does not import the controller or the client. (The
# imports are statements, not names in strings, so that the bundle's analysis finds them.)
OTHER_COMMANDS: tuple[tuple[str, str, str | None, Callable[[argparse.ArgumentParser], None]],
                      ...] = (
    ("service", "a client of the controller",
     "Manage and invoke the services of a controller (or an OSCAR manager).",
     _service_arguments),
    ("controller", "the controller's API server (OSCAR manager compatible)", None,
     _controller_arguments),
    ("manifests", "print the Kubernetes objects of an FDL file",
     "Print the Kubernetes objects of the services of an FDL file as YAML, "
     "for `kubectl apply -f -`.",
     _manifests_arguments),
)


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose arguments are declared when argparse picks one of them.

    `faas-supervisor --help` lists every command from its help text alone; the chosen
    command's own parser is completed (its module imported) just before it parses the
    rest of the command line, so its `--help` and its errors are as if built up front.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.declarers: dict[str, Callable[[argparse.ArgumentParser], None]] = {}
        # argparse names the choices from this map when a command is unknown.
        self._name_parser_map = self.choices = _Unlisted()

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        name = values[0]
        if name in self.declarers:
            self.declarers.pop(name)(self._name_parser_map[name])
        super().__call__(parser, namespace, values, option_string)


class _Unlisted(dict[str, argparse.ArgumentParser]):
    """The commands by name, the internal ones found but not listed among the choices
    an unknown command's error names."""

    INTERNAL = frozenset({"job-runner"})

    def __iter__(self) -> Iterator[str]:
        return (name for name in super().__iter__() if name not in self.INTERNAL)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faas-supervisor", description="An in-container runtime for serverless functions."
    )
    parser.add_argument("--version", action="version", version=f"faas-supervisor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     action=_Commands)
    assert isinstance(commands, _Commands)

    watchdog = commands.add_parser("watchdog", help="serve invocations over HTTP")
    watchdog.add_argument("--port", type=int, help="TCP port (default 8080, or $port)")
    watchdog.add_argument("--host", default="0.0.0.0", help="address to listen on")
    _function_flags(watchdog)
    for name, text in WATCHDOG_FLAGS:
        watchdog.add_argument(f"--{name.replace('_', '-')}", dest=name, help=text)
    for name, text in (("suppress_lock", "don't write /tmp/.lock"),
                       ("write_debug", "log each response body (truncated)")):
        watchdog.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_const",
                              const="true", help=text)
    watchdog.set_defaults(handler=cmd_watchdog)

    run = commands.add_parser("run", help="one invocation: event in, response out")
    run.add_argument("--event-file", help="the event (else $EVENT, else standard input)")
    run.add_argument("--print-response", action="store_true",
                     help="print the response for storage events too")
    _function_flags(run)
    run.set_defaults(handler=cmd_run)

    for name, text, description, declarer in OTHER_COMMANDS:
        commands.add_parser(name, help=text, description=description)
        commands.declarers[name] = declarer

    # Internal, so not listed: the local backend's warm runner of a service's jobs.
    runner = commands.add_parser("job-runner")
    runner.add_argument("folder", help="the service's folder (names the runner's processes)")
    runner.set_defaults(handler=cmd_job_runner)
    return parser


def _function_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--script", help="the user's script (else $SCRIPT, /oscar/config/script.sh)"
    )
    parser.add_argument("--config", help="function config YAML (else $FUNCTION_CONFIG, "
                                         "/oscar/config/function_config.yaml)")


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """`parser`: one built already (the local backend's job runner builds it once)."""
    args = (parser or build_parser()).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except FaasError as exc:  # a bad config, or a failure before an invocation could start
        _error_line(exc.message)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


# The settings a command reads: the watchdog's, or only those of one invocation (`run`).
_Settings = TypeVar("_Settings", RunSettings, WatchdogSettings)


class Startup(Generic[_Settings]):
    """The function's runtime, built once; owns the folder for a script given as text."""

    def __init__(
        self,
        args: argparse.Namespace,
        load_settings: Callable[[Mapping[str, str], FunctionConfig], _Settings],
        orphans: Orphans | None = None,
    ) -> None:
        from faas_supervisor import logs
        from faas_supervisor.invocation import Runtime
        from faas_supervisor.storage_providers import build_providers

        environ = current_environ()
        self.environ = environ
        config = load_function_config(args.config, environ)
        logs.configure(config.log_level)
        self.settings: _Settings = load_settings(environ, config)
        with writing("the runtime's folder"):
            self.runtime_dir = Path(
                tempfile.mkdtemp(prefix="faas-runtime-", dir=self.settings.tmp_dir)
            )
        try:
            with writing("the script"):
                script = resolve_script(args.script, environ, config, self.runtime_dir)
            providers = build_providers(config)
        except BaseException:
            self.close()
            raise
        self.runtime = Runtime(
            config=config,
            script=script,
            base_env=script_environment(environ),
            tmp_dir=self.settings.tmp_dir,
            exec_timeout=self.settings.exec_timeout,
            providers=providers,
            orphans=orphans,
        )

    def close(self) -> None:
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT held from a command's start until its handlers are in place
    (processes.captured_signals takes them then); the mask as it was on leaving.

    Start-up makes the runtime's folder: a signal taken with its default action before
    the handlers are there (a job deleted as it starts) would end the process at once
    and leave the folder behind."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def cmd_watchdog(args: argparse.Namespace) -> int:
    with signals_held():
        return _watchdog(args)


def _watchdog(args: argparse.Namespace) -> int:
    with collection_paused():  # start-up: imports and the runtime, all long-lived
        import asyncio

        from faas_supervisor.lazy_ca import import_aiohttp

        import_aiohttp()  # before anything imports aiohttp: see lazy_ca.py
        from faas_supervisor.processes import captured_signals
        from faas_supervisor.watchdog.server import Watchdog

        names = ["port", "suppress_lock", "write_debug"] + [n for n, _ in WATCHDOG_FLAGS]
        flags = {name: getattr(args, name) for name in names}
        startup = Startup(
            args, lambda environ, config: load_watchdog_settings(environ, flags, config)
        )
    # What start-up made (modules, classes, the config) lives as long as the process: out
    # of every later collection. Else the first ones, just as serving starts, would walk
    # the hundred thousand objects the paused collector let pile up (20-50 ms of CPU).
    gc.freeze()

    async def serve() -> int:
        with captured_signals() as stop:
            status = await Watchdog(startup.runtime, startup.settings, host=args.host).serve(stop)
        # Shut down: answers sent, scripts killed, folders removed. Threads still blocked
        # on a stalled store (a cancelled transfer's read, boto3's retries: up to a
        # minute) are not waited for, as asyncio.run's executor shutdown and the
        # interpreter's exit would, past the orchestrator's grace (a stopped `run` too).
        _exit_now(status, startup)

    try:
        return asyncio.run(serve())
    finally:
        startup.close()


def _exit_now(status: int, startup: Startup[Any]) -> NoReturn:
    """End the process with `status` once the runtime's folder is gone and the standard
    streams are flushed, without waiting for any thread."""
    from faas_supervisor.processes import exit_now

    startup.close()
    exit_now(status)


def cmd_run(args: argparse.Namespace) -> int:
    with signals_held():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    with collection_paused():  # start-up: imports and the runtime, all long-lived
        import asyncio

        from faas_supervisor.processes import Orphans

        # A subreaper: whatever the script started and left (`setsid cmd &`) comes back
        # to us instead of PID 1, and is killed when the script ends (invocation.py).
        orphans = Orphans()
        startup = Startup(args, load_run_settings, orphans)
    def stopped(status: int) -> NoReturn:
        """A job stopped by a signal ends once its script and folders are gone. Threads
        still blocked on a stalled store (a direct download's read, boto3's retries) are
        not waited for, as asyncio.run's executor shutdown and the interpreter's exit
        would (tens of seconds, past the 10 s a backend gives before SIGKILL)."""
        orphans.kill_all_now()
        _exit_now(status, startup)

    try:
        return asyncio.run(_until_signalled(_run_once(args, startup), stopped))
    finally:
        orphans.kill_all_now()  # and any left since (stage-out is over): all are its own
        startup.close()
        # The invocation is over and so is the process (`run` is one per process): the
        # interpreter's exit would now walk every object it made, boto3's models above
        # all, looking for cycles that the process's end frees anyway (20-100 ms).
        # Frozen objects are left out of that walk; what is made from here on is not.
        gc.freeze()


def cmd_job_runner(args: argparse.Namespace) -> int:
    from faas_supervisor.job_runner import serve

    return serve(args.folder)


async def _until_signalled(
    work: Coroutine[Any, Any, int], stopped: Callable[[int], NoReturn]
) -> int:
    """`work` until done, or until SIGTERM/SIGINT (a job deleted, Ctrl-C) cancelled it:
    its cleanup ran (the script's group killed, the folders removed), and `stopped` ends
    the process with 128 + the signal's number, as a shell's status."""
    from faas_supervisor.processes import until_signalled

    status, signalled = await until_signalled(work)
    if signalled:
        stopped(status)
    return status


async def _run_once(args: argparse.Namespace, startup: Startup[RunSettings]) -> int:
    """SPEC 5: the event in, the response body on stdout, logs on stderr."""
    import uuid

    from faas_supervisor.invocation import Invocation
    from faas_supervisor.responses import success_body

    job_id = startup.environ.get("JOB_UUID") or str(uuid.uuid4())
    # Told now: a log stream found gone later is pointed at /dev/null (LogStream), and
    # stdout would then no longer be the file it was.
    logs_already_out = _stdout_is_the_log(startup.environ)
    log = LogStream()
    # The runtime's lines go to the log stream as kept for a logs response (logs.py).
    invocation = Invocation(startup.runtime, job_id, log_echo=log.runtime_line)
    try:
        try:
            event = await invocation.read_event(
                _event_chunks(args.event_file, startup.environ), "", startup.settings.max_body_size
            )
        except FaasError as exc:
            # The folder first: on a full disk its space lets this line reach the job's log.
            invocation.close()
            log.runtime_line(f"faas-supervisor: error: {exc.message}\n")
            return exc.exit_status
        # The script's output goes to the log stream (stderr) as it comes, whatever the
        # event and the level: a job's logs show what its script printed (SPEC 5).
        # Where the log stream is the log (a job's), the script's output is not kept a
        # second time for a logs response that is never printed: a job printing without
        # end would fill its TMPDIR (the data folder's disk, on the local backend).
        outcome = await invocation.execute(event, {"JOB_UUID": job_id}, log.script_output,
                                           keep_output=not logs_already_out)
        if outcome.error is not None:
            # Its reason and logs are on the log stream already: free the folder's space.
            invocation.close()
            log.runtime_line(f"faas-supervisor: error: {outcome.error.message}\n")
            return outcome.error.exit_status
        if event.kind == "storage" and not args.print_response:
            return 0
        body = success_body(invocation, "")
        if body.kind == "logs" and logs_already_out:
            return 0  # it would be the same lines again, where they already are
        if sys.stdout is None:
            # Started with it closed (`>&-`): a write there fails (EBADF), as one whose
            # reader is gone does (EPIPE), and is told the same way: one line, status 1.
            import errno

            failure = local_write_error(OSError(errno.EBADF, os.strerror(errno.EBADF)),
                                        "the response to standard output")
            log.runtime_line(f"faas-supervisor: error: {failure.message}\n")
            return failure.exit_status
        return await _print_response(body.stream, sys.stdout.buffer, log.runtime_line)
    except BaseException:
        log.end_line()  # `stopped by SIGTERM` comes next (processes.until_signalled)
        raise
    finally:
        invocation.close()


async def _print_response(chunks: AsyncIterator[bytes], out: BinaryIO,
                          say: Callable[[str], None] | None = None) -> int:
    """The response on standard output; 0, or one line (to `say`, else stderr) and the
    exit status of what failed: reading the outputs (one made unreadable), or writing (a
    reader gone, as `| head` does, a full disk). A reader only behind a non-blocking
    standard output is waited for, as a blocking one is (_write_whole)."""
    writing = False
    try:
        async for chunk in chunks:
            writing = True
            _write_whole(out, chunk)
            writing = False
        writing = True
        _flush_whole(out)
    except OSError as exc:
        if writing:
            failure = local_write_error(exc, "the response to standard output")
            message, status = failure.message, failure.exit_status
        else:
            message, status = f"cannot read the response: {exc.strerror or exc}", 1
        if say is None:
            _error_line(message)
        else:
            say(f"faas-supervisor: error: {message}\n")
        try:
            _flush_whole(out)  # what was read goes out
        except OSError:
            # A reader gone, a full disk: what is left goes to /dev/null, so that the
            # interpreter's exit does not fail a second time.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        return status
    return 0


def _error_line(message: str) -> None:
    """`faas-supervisor: error: {message}` on standard error, whole where that is a
    non-blocking pipe whose reader is behind (_write_whole): print's write there raised
    EAGAIN, or unbuffered, dropped the rest of a short write. Nothing when it was closed
    from the start (`2>&-`), where print would take standard output, or when it cannot be
    written."""
    stream = sys.stderr
    if stream is None:
        return
    line = f"faas-supervisor: error: {message}\n"
    try:
        _write_whole(stream.buffer, line.encode(stream.encoding, stream.errors or "strict"))
        _flush_whole(stream.buffer)
    except OSError:
        # Its reader gone (EPIPE), a full disk: the exit status still says what failed,
        # not the interpreter's failed flush at exit (120).
        _discard(stream)


def _stdout_is_the_log(environ: Mapping[str, str]) -> bool:
    """Whether what `run` writes to stdout ends up in its log stream anyway.

    So in a job (`JOB_UUID`: every backend keeps a job's stdout and stderr as its one log)
    and where stdout and stderr are one file (a terminal, `2>&1`): a logs response there
    would repeat, in the same place, the lines the log stream has just carried.
    """
    if environ.get("JOB_UUID"):
        return True
    try:
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return False
    return (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


class LogStream:
    """`run`'s standard error, the job's log: the script's output as it comes (from the
    invocation's copier thread) and the runtime's lines (from the loop's).

    A runtime line starts a line of its own: after script output that did not end in a
    newline, one is written first (in the stream only; the script's bytes are otherwise
    as it wrote them). A stream that cannot be written (its reader gone, as `2>&1 | head`
    leaves it; closed, `2>&-`) is no failure of the job, which goes on, uploads its
    outputs and exits with its script's status: from then on nothing is written to it,
    and what it still holds goes to /dev/null, so that no later write (a line printed
    elsewhere, the interpreter's flush at exit) fails there again."""

    def __init__(self) -> None:
        import threading  # here: `--version` and `manifests` pay for none of it

        self._lock = threading.Lock()  # two threads write; a line is written whole
        self._line_open = False  # the script's last byte was not a newline
        self._gone = False

    def script_output(self, data: bytes) -> None:
        with self._lock:
            if data:
                self._line_open = not data.endswith(b"\n")
                self._write(data)

    def runtime_line(self, line: str) -> None:
        data = line.encode("utf-8", "backslashreplace")
        with self._lock:
            if self._line_open:
                data = b"\n" + data
                self._line_open = False
            self._write(data)

    def end_line(self) -> None:
        """A newline if the script's output left a line open (a line comes from elsewhere)."""
        with self._lock:
            if self._line_open:
                self._line_open = False
                self._write(b"\n")

    def _write(self, data: bytes) -> None:
        if self._gone:
            return
        stream = sys.stderr  # None when `run` started with it closed
        try:
            _write_whole(stream.buffer, data)
            _flush_whole(stream.buffer)
        except (AttributeError, OSError, ValueError):
            self._gone = True
            if stream is not None:
                _discard(stream)


def _write_whole(out: BinaryIO, data: bytes) -> None:
    """`data` written to `out` whole, or an OSError: where `out`'s descriptor is
    non-blocking and takes part or none of it, the rest waits (_write_when_taken). A
    blocking `out` pays one comparison."""
    taken = 0  # of `data`, by `out`
    try:
        # Unbuffered (`python -u`, PYTHONUNBUFFERED), `out` is the raw file: a write it
        # could not do whole returns what it wrote (None: nothing).
        taken = out.write(data) or 0
        if taken == len(data):
            return
    except BlockingIOError as exc:  # an OSError, but its reader is only behind
        taken = exc.characters_written  # what the write took, in its buffer or out
    _write_when_taken(out, memoryview(data)[taken:])


def _flush_whole(out: BinaryIO) -> None:
    """`out` flushed, waiting as _write_whole does."""
    try:
        out.flush()
    except BlockingIOError:  # what the flush could not write is still in `out`'s buffer
        _write_when_taken(out, memoryview(b""))


def _write_when_taken(out: BinaryIO, rest: memoryview) -> None:
    """`rest` written to `out` (which holds what it took before) and all flushed, waiting
    each time its descriptor takes no more.

    A stream shared with whoever started `run` (its log stream, its standard output) may
    be non-blocking (O_NONBLOCK belongs to the open file, so theirs is ours: some container
    runtimes set it); a write then fails with EAGAIN, or takes part, where a blocking one
    waits for a slow reader. That is no reader gone: the job's log and its response are
    written whole, as on a blocking stream."""
    import select

    waiting = select.poll()
    waiting.register(out.fileno(), select.POLLOUT)
    while True:
        # Until it takes more, or cannot: a reader gone (POLLERR) is EPIPE just below.
        waiting.poll()
        try:
            while rest and (written := out.write(rest)):
                rest = rest[written:]
            if not rest:
                out.flush()
                return
        except BlockingIOError as exc:
            rest = rest[exc.characters_written:]


def _discard(stream: TextIO) -> None:
    """`stream`'s descriptor to /dev/null, and what its buffers hold with it."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
        stream.flush()


async def _event_chunks(event_file: str | None, environ: Mapping[str, str]) -> AsyncIterator[bytes]:
    import asyncio

    if event_file:
        try:
            source: BinaryIO = open(event_file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigError(f"--event-file {event_file}: {exc.strerror}") from None
    elif "EVENT" in environ:
        # The variable's own bytes: os.environ decoded them with surrogateescape.
        yield environ["EVENT"].encode("utf-8", "surrogateescape")
        return
    elif sys.stdin is None:  # started with its standard input closed (`<&-`): no body
        return
    else:
        source = sys.stdin.buffer
    stopped = False
    try:
        while chunk := await asyncio.to_thread(_read_when_given, source, 1 << 20):
            yield chunk
    except asyncio.CancelledError:
        stopped = True
        raise
    finally:
        # Stopped by a signal (processes.until_signalled), a read may still wait in its
        # thread for a writer who sends nothing: closing `source` would wait for that
        # read's lock for ever, and the process would never end. It ends now, `source`
        # with it.
        if not stopped:
            source.close()


def _read_when_given(source: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes of `source`, b"" at its end only. Standard input, shared with
    whoever started `run`, may be non-blocking as its output may (_write_when_taken): a
    read with nothing come yet then returns None (EAGAIN), which is no end of the event:
    it waits for more, as a blocking read does. A blocking `source` pays one comparison."""
    chunk: bytes | None = source.read(size)
    if chunk is not None:
        return chunk
    import select

    waiting = select.poll()
    waiting.register(source.fileno(), select.POLLIN)
    while chunk is None:
        # Until it has more, or its end (POLLHUP: every writer gone, the read is b"").
        waiting.poll()
        chunk = source.read(size)
    return chunk
