"""`faas-supervisor service ...`: a client of the controller, in oscar-cli's manner (SPEC 7.4).

Each subcommand is one coroutine over `ControllerClient`. Results go to stdout, one
error line to stderr: exit status 1 when the controller (or the network) said no, 2 for
bad usage or a bad local file, which argparse and `ConfigError` already mean elsewhere
in this program; a local file or stdout that cannot be written is a bad local file too,
but a full disk (ENOSPC, EDQUOT) is 4, as `faas-supervisor run` says it
(`local_write_failure`). SIGTERM or SIGINT stops a command with 128 plus the signal's
number once its cleanup is done; a reader of stdout that stops early (`| head`) ends it
quietly with 141, a SIGPIPE's status. cli.py imports this module only when the `service`
command is chosen, and aiohttp only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import stat
import sys
import tempfile
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from faas_supervisor.config import current_environ
from faas_supervisor.errors import (
    ConfigError,
    FaasError,
    InsufficientStorage,
    local_write_error,
    printable,
)

if TYPE_CHECKING:
    from faas_supervisor.api_client import Connection, ControllerClient
    from faas_supervisor.progress import Progress
    from faas_supervisor.transfer import Readable

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
RECEIVE_CHUNK = 256 << 10
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
RAW_TYPES = ("application/octet-stream", "application/zip")
STDOUT = "standard output"

Command = Callable[["ControllerClient", argparse.Namespace], Awaitable[int]]


def declare_arguments(service: argparse.ArgumentParser) -> None:
    """The `service` command's subcommands and flags (cli.py declares the command)."""
    subs = service.add_subparsers(dest="service_command", required=True, metavar="SUBCOMMAND")
    # The connection flags go on each subcommand so they may follow it, as users type them.
    conn = argparse.ArgumentParser(add_help=False)
    group = conn.add_argument_group("connection")
    group.add_argument("--endpoint",
                       help=f"controller URL (else $FAAS_ENDPOINT, else {DEFAULT_ENDPOINT})")
    group.add_argument("--user", help="basic auth user (else $FAAS_USER)")
    group.add_argument("--password", help="basic auth password (else $FAAS_PASSWORD)")

    def sub(name: str, text: str, command: Command) -> argparse.ArgumentParser:
        parser = subs.add_parser(name, help=text, description=text, parents=[conn])
        parser.set_defaults(handler=cmd_service, service_action=command)
        return parser

    apply = sub("apply", "create the services of an FDL file, or update them", cmd_apply)
    apply.add_argument("-f", "--file", required=True, metavar="FDL.yaml", help="the FDL file")

    sub("list", "list the services: name, image, cpu, memory", cmd_list)

    get = sub("get", "print a service's definition (JSON)", cmd_get)
    get.add_argument("name", metavar="NAME")

    delete = sub("delete", "delete services", cmd_delete)
    delete.add_argument("names", nargs="+", metavar="NAME")

    for name, text, command in (
        ("run", "invoke a service synchronously and print or save its result", cmd_run),
        ("job", "invoke a service asynchronously and print the job's name", cmd_job),
    ):
        parser = sub(name, text, command)
        parser.add_argument("name", metavar="NAME")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--input", metavar="FILE", help="the input file ('-': stdin)")
        source.add_argument("--text-input", metavar="TEXT", help="the input, as text")
        parser.add_argument("--token", help="the service's token (else read from the service)")
        if name == "run":
            parser.add_argument("-o", "--output", metavar="FILE",
                                help="write the result here (else to stdout)")

    logs = sub("logs", "list a service's jobs, or print one job's logs", cmd_logs)
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("job", nargs="?", metavar="JOB")

    for name, text, command in (
        ("put-file", "put a file in a service's storage (from LOCAL, else stdin)", cmd_put_file),
        ("get-file", "get a file from a service's storage (into LOCAL, else stdout)",
         cmd_get_file),
        ("list-files", "list the files under a path of a service's storage", cmd_list_files),
    ):
        parser = sub(name, text, command)
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("provider", metavar="STORAGE_PROVIDER",
                            help="minio (the controller's own storage), minio.ID or s3.ID "
                                 "(one of the service's storage_providers)")
        parser.add_argument("remote", metavar="REMOTE_PATH",
                            help="BUCKET/KEY (put-file: a path ending in / takes LOCAL's name)"
                            if name != "list-files" else "BUCKET or BUCKET/FOLDER")
        if name != "list-files":
            parser.add_argument("local", nargs="?", default="-", metavar="LOCAL",
                                help="the local file or folder ('-', the default: "
                                     + ("stdin)" if name == "put-file" else "stdout)"))


def connection(args: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
    from urllib.parse import unquote

    from faas_supervisor.api_client import Connection

    endpoint = args.endpoint or environ.get("FAAS_ENDPOINT") or DEFAULT_ENDPOINT
    # An empty variable is an unset one (`FAAS_USER= cmd`, a blank line in an env file),
    # as for FAAS_ENDPOINT: not credentials given, which an endpoint's own would clash with.
    user = args.user if args.user is not None else environ.get("FAAS_USER") or None
    password = (args.password if args.password is not None
                else environ.get("FAAS_PASSWORD") or None)
    # Credentials in the URL (`http://user:password@host`) are taken as --user and
    # --password, and the URL kept without them: no message ever shows them. They are
    # what comes before the last `@` (a password may hold `/`, `#`, `?` or `@`, which a
    # URL parser would take for the end of the host): an endpoint's path has none.
    scheme, separator, rest = endpoint.rpartition("://")
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        endpoint = f"{scheme}{separator}{rest}"
        if user is not None or password is not None:
            raise ConfigError(f"--endpoint {endpoint}: has credentials of its own, and "
                              "--user or --password (or FAAS_USER, FAAS_PASSWORD) are given "
                              "too: give them one way")
        named, colon, secret = userinfo.partition(":")
        user, password = unquote(named) or None, unquote(secret) if colon else None
    if not re.match(r"https?://", endpoint, re.IGNORECASE):
        raise ConfigError(f"--endpoint {endpoint}: must start with http:// or https://")
    return Connection(endpoint=endpoint, user=user, password=password)


def cmd_service(args: argparse.Namespace) -> int:
    try:
        conn = connection(args, current_environ())
        try:
            status = asyncio.run(_until_signalled(_with_client(conn, args)))
            sys.stdout.flush()  # here, where a failed write is caught: not at the exit
        except OSError as exc:
            # What escapes the commands unconverted is a write to stdout (a full disk,
            # `> /dev/full`, a file past `ulimit -f`): every other local file and every
            # request says its own failure.
            if _from_peer(exc):
                raise
            _discard_stdout()
            raise local_write_failure(exc, STDOUT) from None
        return status
    except FaasError as exc:
        print(f"faas-supervisor: error: {exc.message}", file=sys.stderr)
        return exc.exit_status
    except BrokenPipeError:
        return _stdout_closed()


def local_write_failure(exc: OSError, what: str) -> FaasError:
    """The client's one mapping of a local write that failed (stdout, `--output`,
    get-file's LOCAL): exit 4 when the disk is full, as `run` says it, else 2, the
    status of a bad local file; one line naming what could not be written."""
    error = local_write_error(exc, what)
    return error if isinstance(error, InsufficientStorage) else ConfigError(error.message)


@contextmanager
def writing_locally(what: str) -> Iterator[None]:
    """A failed local write inside becomes `local_write_failure`'s; FaasErrors pass."""
    try:
        yield
    except OSError as exc:
        if _from_peer(exc):
            raise
        raise local_write_failure(exc, what) from None


def _from_peer(exc: OSError) -> bool:
    """A network failure, or stdout's reader gone (`| head`), not a local write's."""
    aiohttp = sys.modules.get("aiohttp")  # its errors can come only once it is imported
    return isinstance(exc, ConnectionError | TimeoutError) or (
        aiohttp is not None and isinstance(exc, aiohttp.ClientError))


async def _until_signalled(work: Coroutine[Any, Any, int]) -> int:
    """`work`, until done or until SIGTERM or SIGINT (`kill`, `timeout`, Ctrl-C) cancelled
    it: its cleanup ran (a download's or `--output`'s temporary file removed, a multipart
    upload aborted), and the status is 128 plus the signal's number. As `run` does
    (cli.py), but returning rather than os._exit: the worker thread that removes a
    direct download's temporary file is waited for."""
    from faas_supervisor.processes import until_signalled

    status, _signalled = await until_signalled(work)
    return status


def _stdout_closed() -> int:
    """The reader of stdout stopped early (`| head -c 10`): no error to tell, as no
    other command of a pipeline tells one. The status is a SIGPIPE's (141), what `cat`
    or oscar-cli (Go) end with there: what was asked for was not all delivered, which a
    script (`set -o pipefail`) must be able to tell from success."""
    _discard_stdout()
    return 128 + signal.SIGPIPE


def _discard_stdout() -> None:
    """What is still buffered for stdout goes nowhere, or the interpreter's exit would
    fail on it again, with a message (and status 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


async def _with_client(conn: Connection, args: argparse.Namespace) -> int:
    from faas_supervisor.api_client import ControllerClient

    action: Command = args.service_action
    async with ControllerClient(conn) as client:
        return await action(client, args)


# apply


async def cmd_apply(client: ControllerClient, args: argparse.Namespace) -> int:
    # The controller's own reader (read as `manifests -f` reads it), sent as written but
    # for the bool and int fields, typed as oscar-cli types them (the file's plain scalars
    # are read as text): the server validates, be it this controller or an OSCAR manager.
    # But for `memory: 12`: sent as the text "12", which both take (12 bytes), it is
    # refused here as `manifests -f` refuses it, for every service before any is sent.
    from faas_supervisor.controller.fdl import (
        check_memory_unit,
        fdl_definitions,
        typed_definition,
    )

    definitions = fdl_definitions(Path(args.file))
    for where, definition in definitions:
        check_memory_unit(definition.get("memory"), f"{where}.memory", yaml_scalars=True)
    for _, definition in definitions:
        service = typed_definition(definition)
        done = await client.apply_service(service)
        print(f"{done.capitalize()} service \"{service['name']}\"")
    return 0


# list, get, delete


async def cmd_list(client: ControllerClient, args: argparse.Namespace) -> int:
    services = await client.list_services()
    if not services:
        print("There are no services")
        return 0
    rows = [[_cell(s.get("name")), _cell(s.get("image")), _cell(s.get("cpu")),
             _cell(s.get("memory"))] for s in services]
    print(table(["NAME", "IMAGE", "CPU", "MEMORY"], sorted(rows)))
    return 0


async def cmd_get(client: ControllerClient, args: argparse.Namespace) -> int:
    service = await client.get_service(args.name)
    print(json.dumps(service, indent=2, ensure_ascii=False))
    return 0


async def cmd_delete(client: ControllerClient, args: argparse.Namespace) -> int:
    for name in args.names:
        await client.delete_service(name)
        print(f"Deleted service \"{name}\"")
    return 0


# run, job


async def cmd_run(client: ControllerClient, args: argparse.Namespace) -> int:
    from faas_supervisor.api_client import service_path
    from faas_supervisor.errors import NotBase64, RequestFailed
    from faas_supervisor.progress import Progress
    from faas_supervisor.transfer import write_result

    if args.output:
        # Found before sending, not after a large upload.
        target = Path(args.output)
        if target.is_dir() or not (target.parent if str(target.parent) else Path(".")).is_dir():
            raise ConfigError(f"--output {target}: not a file in an existing folder")
    token = await _token(client, args)
    path = service_path("/run", args.name)
    with _input(args) as (source, size):
        sending = Progress("sending", size)
        try:
            async with client.request("POST", path, token=token,
                                      data=_encoded(source, sending)) as response:
                sending.close()
                receiving = Progress("receiving", response.content_length)
                chunks = _counted(response.content.iter_chunked(RECEIVE_CHUNK), receiving.update)
                raw = response.content_type in RAW_TYPES
                try:
                    if args.output:
                        await _write_file(Path(args.output), chunks, raw)
                    else:
                        await write_result(chunks, sys.stdout.buffer, raw=raw)
                        sys.stdout.buffer.flush()
                except NotBase64 as exc:
                    raise RequestFailed(f"POST {path}: the result is not valid base64: "
                                        f"{exc}") from None
                finally:
                    receiving.close()
        finally:
            sending.close()
    return 0


async def cmd_job(client: ControllerClient, args: argparse.Namespace) -> int:
    from faas_supervisor.api_client import service_path
    from faas_supervisor.progress import Progress

    token = await _token(client, args)
    with _input(args) as (source, size):
        sending = Progress("sending", size)
        try:
            value = await client.json("POST", service_path("/job", args.name), token=token,
                                      data=_encoded(source, sending))
        finally:
            sending.close()
    # SPEC 7.2 answers {"job": NAME}; some OSCAR managers say `jobName` or nothing.
    name = None
    if isinstance(value, dict):
        name = next((value[k] for k in ("job", "jobName", "job_name")
                     if value.get(k) and isinstance(value[k], str)), None)
    if name:
        print(name)
    return 0


async def _token(client: ControllerClient, args: argparse.Namespace) -> str | None:
    """The service's token: `/run` and `/job` take it as OSCAR's clients send it.

    A service JSON without a token (an OSCAR manager with other auth) means basic auth.
    """
    if args.token:
        return str(args.token)
    token = (await client.get_service(args.name)).get("token")
    return str(token) if token else None


@contextmanager
def _input(args: argparse.Namespace) -> Iterator[tuple[Readable, int | None]]:
    """The input file (or stdin, or the text) and its size when known."""
    from faas_supervisor.transfer import stdin_source

    if args.text_input is not None:
        data = args.text_input.encode("utf-8")
        yield io.BytesIO(data), len(data)
        return
    if args.input == "-":
        # Closed on the way out, a signal's too: a read waiting on an idle pipe stops, so
        # the process's exit does not wait for its worker thread (transfer.StdinReader).
        with contextlib.closing(stdin_source()) as stdin:
            yield stdin, None
        return
    try:
        source = open(args.input, "rb")  # noqa: SIM115 - closed below, after the request
    except OSError as exc:
        raise ConfigError(f"--input {args.input}: {exc.strerror}") from None
    with source:
        yield source, os.fstat(source.fileno()).st_size


async def _encoded(source: Readable, progress: Progress) -> AsyncIterator[bytes]:
    from faas_supervisor.transfer import encode_base64

    async for chunk in encode_base64(source, progress.update):
        yield chunk
    progress.close()  # the bar ends when the last byte is sent, not when the answer comes


async def _counted(chunks: AsyncIterator[bytes], count: Callable[[int], None]
                   ) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        count(len(chunk))
        yield chunk


def _umask() -> int:
    """The process's umask, read (Linux) rather than set and set back: another thread
    making a file meanwhile would get the umask 0 in between."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


async def _write_file(path: Path, chunks: AsyncIterator[bytes], raw: bool) -> None:
    """Into `path` as a shell's `>` writes it (through a symlink, into a FIFO or a
    device), but a regular file (or a new one) never holds a partial result: it is
    written under a temporary name beside it and renamed at the end."""
    from faas_supervisor.transfer import write_result

    what = f"--output {path}"
    # A symlink's target is what is written: renamed over the link, the result would
    # replace the link and leave its target as it was.
    real = Path(os.path.realpath(path))
    try:
        # The path itself, followed: /dev/stdout's link into /proc names a pipe that
        # realpath cannot spell (`pipe:[N]`), but that stat (and open) reach.
        found: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror}") from None
    # A FIFO, a device, or a descriptor already open (/dev/stdout, /dev/fd/N, whatever
    # it is open on, a file appended to say): written into, as `>` writes, never replaced.
    if found is not None and (not stat.S_ISREG(found.st_mode) or _DESCRIPTOR.fullmatch(
            os.path.abspath(path))):
        sink = await _open_special(path, found, what)
        with writing_locally(what), sink:
            await write_result(chunks, sink, raw=raw)
        return
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".part",
                                         dir=real.parent)
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror}") from None
    try:
        # The mode of the file it replaces, or the one a new file gets (0666 less the
        # umask), not mkstemp's 0600: as a shell's `>` would leave it. A file system
        # without modes keeps its own.
        mode = stat.S_IMODE(found.st_mode) if found is not None else 0o666 & ~_umask()
        with contextlib.suppress(OSError):
            os.fchmod(fd, mode)
        with writing_locally(what):  # the close and the rename too: they write
            with os.fdopen(fd, "wb") as sink:
                await write_result(chunks, sink, raw=raw)
            os.replace(temporary, real)
    except BaseException:
        os.unlink(temporary)
        raise


_DESCRIPTOR = re.compile(r"/dev/(std(in|out|err)|fd/[0-9]+)|/proc/[^/]+/fd/[0-9]+")


async def _open_special(path: Path, found: os.stat_result, what: str) -> BinaryIO:
    """A FIFO or a device, opened for writing in a worker thread: a FIFO's open waits for
    a reader. Stopped by a signal meanwhile, it opens the FIFO's read end a moment itself,
    which ends the wait: the process's exit waits for its threads."""
    try:
        return await asyncio.to_thread(open, path, "wb")
    except asyncio.CancelledError:
        if stat.S_ISFIFO(found.st_mode):
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        raise
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror}") from None


# logs


async def cmd_logs(client: ControllerClient, args: argparse.Namespace) -> int:
    from faas_supervisor.transfer import write_all

    if args.job:
        # Bytes as they come: a log holds whatever the script printed (not always UTF-8),
        # and may be large.
        out = sys.stdout.buffer
        last = b"\n"
        async with contextlib.aclosing(client.job_logs(args.name, args.job)) as chunks:
            async for chunk in chunks:
                write_all(out, chunk)
                last = chunk[-1:] or last
        if last != b"\n":
            out.write(b"\n")
        out.flush()
        return 0
    jobs = await client.list_jobs(args.name)
    if not jobs:
        print(f"Service \"{args.name}\" has no jobs")
        return 0
    rows = [[name, _cell(info.get("status")), _time(info.get("creation_time")),
             _time(info.get("start_time")), _time(info.get("finish_time"))]
            for name, info in jobs.items()]
    rows.sort(key=lambda row: (row[2], row[0]))  # oldest first, as they were submitted
    print(table(["JOB NAME", "STATUS", "CREATION TIME", "START TIME", "FINISH TIME"], rows))
    return 0


# put-file, get-file, list-files


async def cmd_put_file(client: ControllerClient, args: argparse.Namespace) -> int:
    from faas_supervisor.service_files import RemotePath, provider_for, put_file

    remote = RemotePath.parse(args.remote)  # a bad one said before any request
    provider = await provider_for(client, args.name, args.provider)
    try:
        await put_file(provider, remote, args.local)
    finally:
        provider.close()
    return 0


async def cmd_get_file(client: ControllerClient, args: argparse.Namespace) -> int:
    from faas_supervisor.service_files import RemotePath, get_file, local_target, provider_for

    remote = RemotePath.parse(args.remote)
    target = local_target(remote, args.local)  # a bad one said before any request
    provider = await provider_for(client, args.name, args.provider)
    try:
        await get_file(provider, remote, target)
    finally:
        provider.close()
    return 0


async def cmd_list_files(client: ControllerClient, args: argparse.Namespace) -> int:
    from faas_supervisor.service_files import RemotePath, list_files, provider_for

    remote = RemotePath.parse(args.remote)
    provider = await provider_for(client, args.name, args.provider)
    try:
        rows = await list_files(provider, remote)
    finally:
        provider.close()
    if not rows:
        print(f"There are no files in \"{remote}\"")
        return 0
    print(table(["NAME", "SIZE", "LAST MODIFIED"], rows))
    return 0


def _time(value: Any) -> str:
    """RFC 3339 (as Go writes times) shown as oscar-cli shows it; anything else as is."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(str(value)).strftime(TIME_FORMAT)
    except ValueError:
        return str(value)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns two spaces apart, left-aligned, no trailing blanks. A cell's characters
    that do not print are escaped: an object's key may hold any (ESC: a terminal's
    commands; a line break: a row that seems two)."""
    lines = [list(headers), *([printable(cell) for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
