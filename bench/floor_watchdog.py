"""The floor of a Python watchdog on this machine: the least an aiohttp server must do for
one fork-mode invocation, and nothing else (`bench/throughput.py --against REF --floor`).

Per request, only what the SPEC makes unavoidable: the body read and base64-decoded, two
folders (TMP_INPUT_DIR, TMP_OUTPUT_DIR) and the input file in TMPDIR, the script's log (an
unnamed file), the environment, `/bin/sh SCRIPT` in its own process group (posix_spawn),
its exit awaited on a pidfd, its group killed before it is reaped, the log read back, the
files and folders removed, the log sent. No logging, metrics, limits, timeouts, checks
or error answers: a measure, not a server. It takes the watchdog's command line
(`watchdog --script S --port 0 --host H ...`, the rest ignored) and prints the ready line
`_common.watchdog` waits for.

With FLOOR_REQUIRED=1 in its environment, it adds, per request, what SPEC 4.1 and 4.2
require of every invocation beyond the syscalls, in the cheapest form we know: the
`Http_*` variables, the metrics (prometheus_client: invocations by code, the duration
histogram, bytes in and out; in flight read when scraped), the `X-*` headers, the
runtime's two lines in the logs answer, and one structlog line in the process's log.
Still no limits, timeouts, checks or error answers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["watchdog"])
    parser.add_argument("--script", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args, _ = parser.parse_known_args()
    tmp = os.environ.get("TMPDIR", "/tmp")
    base_env = dict(os.environ)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    required = Required() if os.environ.get("FLOOR_REQUIRED") == "1" else None

    async def invoke(request: web.Request) -> web.Response:
        if required is not None:
            return await required.invoke(request, plain)
        return await plain(request, {}, None)

    async def plain(
        request: web.Request, extra: dict[str, str], runtime_lines: list[str] | None
    ) -> web.Response:
        body = base64.b64decode(await request.read())
        base = f"{tmp}/faas-{uuid.uuid4().hex}"
        input_dir, output_dir = f"{base}-input", f"{base}-output"
        os.mkdir(input_dir, 0o700)
        os.mkdir(output_dir, 0o700)
        input_file = f"{input_dir}/event-file-{uuid.uuid4()}"
        fd = os.open(input_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.write(fd, body)
        os.close(fd)
        log = os.open(input_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        env = {**base_env, **extra, "INPUT_FILE_PATH": input_file, "TMP_INPUT_DIR": input_dir,
               "TMP_OUTPUT_DIR": output_dir}
        if runtime_lines is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            runtime_lines.append(f"{stamp} INFO event received kind=base64 bytes={len(body)}\n")
        pid = os.posix_spawn(
            "/bin/sh", ["/bin/sh", args.script], env, setpgroup=0,
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                          (os.POSIX_SPAWN_DUP2, log, 2)],
        )
        pidfd = os.pidfd_open(pid)
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(pidfd, exited.set_result, None)
        await exited
        loop.remove_reader(pidfd)
        os.close(pidfd)
        os.killpg(pid, signal.SIGKILL)  # what the script left in its group
        _, status = os.waitpid(pid, 0)
        text = os.pread(log, os.fstat(log).st_size, 0)
        if runtime_lines is not None:
            code = os.waitstatus_to_exitcode(status)
            runtime_lines.append(f"{stamp} INFO script exited status={code}\n")
            text = "".join(runtime_lines).encode() + text
        os.close(log)
        os.listdir(output_dir)  # the outputs, none here
        os.unlink(input_file)
        os.rmdir(input_dir)
        os.rmdir(output_dir)
        return web.Response(body=text, content_type="text/plain")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/", invoke)
        if required is not None:
            app.router.add_get("/metrics", required.page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1]
        print(f"watchdog ready (the floor) port={port}", flush=True)
        await asyncio.Event().wait()  # until SIGTERM

    asyncio.run(serve())


class Required:
    """What the SPEC asks of every invocation beyond its syscalls (FLOOR_REQUIRED=1)."""

    def __init__(self) -> None:
        import structlog
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        structlog.configure(
            processors=[structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        _render],
            logger_factory=structlog.WriteLoggerFactory(),
            wrapper_class=structlog.make_filtering_bound_logger(20),
            cache_logger_on_first_use=True,
        )
        self.log = structlog.get_logger(component="watchdog")
        self.registry = CollectorRegistry()
        self.codes = Counter("faas_invocations", "By code.", ["code"], registry=self.registry)
        self.ok = self.codes.labels(code="200")
        self.duration = Histogram("faas_invocation_duration_seconds", "Duration.",
                                  registry=self.registry)
        self.bytes_in = Counter("faas_bytes_in", "In.", registry=self.registry)
        self.bytes_out = Counter("faas_bytes_out", "Out.", registry=self.registry)
        self.inflight: set[str] = set()
        Gauge("faas_inflight", "In flight.", registry=self.registry).set_function(
            lambda: len(self.inflight))

    async def invoke(self, request: web.Request, plain: Plain) -> web.Response:
        started = time.monotonic()
        invocation_id = str(uuid.uuid4())
        self.inflight.add(invocation_id)
        extra = {}
        for name, value in request.headers.items():
            if name.lower() != "authorization":
                extra["Http_" + "_".join(p.capitalize() for p in name.split("-"))] = value
        extra.update(Http_Method=request.method, Http_Path=request.path,
                     Http_Query=request.rel_url.raw_query_string)
        self.bytes_in.inc(request.content_length or 0)
        response = await plain(request, extra, [])
        seconds = time.monotonic() - started
        response.headers.update({"X-Duration-Seconds": f"{seconds:.6f}", "X-Exit-Code": "0",
                                 "X-Invocation-Id": invocation_id})
        self.bytes_out.inc(len(response.body))  # type: ignore[arg-type]
        self.inflight.discard(invocation_id)
        self.ok.inc()
        self.duration.observe(seconds)
        self.log.info("invocation", id=invocation_id, path=request.path, exit_code=0,
                      seconds=round(seconds, 4))
        return response

    async def page(self, _request: web.Request) -> web.Response:
        from prometheus_client import generate_latest

        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


def _render(_logger: object, _name: str, event: dict[str, object]) -> str:
    """The line's text with the least work: its fields as `key=value`, in order."""
    return " ".join(f"{key}={value}" for key, value in event.items())


Plain = Callable[[web.Request, dict[str, str], list[str] | None], Awaitable[web.Response]]


if __name__ == "__main__":
    main()
