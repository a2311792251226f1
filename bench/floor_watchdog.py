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
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import uuid

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

    async def invoke(request: web.Request) -> web.Response:
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
        env = {**base_env, "INPUT_FILE_PATH": input_file, "TMP_INPUT_DIR": input_dir,
               "TMP_OUTPUT_DIR": output_dir}
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
        os.waitpid(pid, 0)
        text = os.pread(log, os.fstat(log).st_size, 0)
        os.close(log)
        os.listdir(output_dir)  # the outputs, none here
        os.unlink(input_file)
        os.rmdir(input_dir)
        os.rmdir(output_dir)
        return web.Response(body=text, content_type="text/plain")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/", invoke)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1]
        print(f"watchdog ready (the floor) port={port}", flush=True)
        await asyncio.Event().wait()  # until SIGTERM

    asyncio.run(serve())


if __name__ == "__main__":
    main()
