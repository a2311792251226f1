"""The injected runtime in a container against the same bundle outside one.

What a Docker-backend service costs over a local one: the bundle `make dist` builds, run
(a) as a process of this machine and (b) in a Python-less user image (busybox + glibc,
the image the image test makes), mounted read-only at /oscar/bin, on the host network.

* invocation: sequential `POST /` of `echo hi` on one keep-alive connection;
* cold start: exec (or `docker run -d`) to the first 200 on `GET /_/health`.

Needs a running Docker engine (tests/integration/docker_fixtures.py starts one).
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as c
from bundle import BUNDLE, REPO
from latency import time_watchdog


def _client() -> Any:
    import docker

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    try:
        client.ping()
    except Exception as exc:
        raise SystemExit(f"no Docker engine: {exc}; start one as tests/integration/"
                         "docker_fixtures.py does (dockerd --storage-driver=vfs ...)") from None
    return client


def user_image(client: Any) -> str:
    sys.path.insert(0, str(REPO))
    from tests.integration.docker_fixtures import GLIBC_BASE, _make_glibc_base

    _make_glibc_base(client)  # a no-op when the image test made it already
    return GLIBC_BASE


def wait_ready(port: int, alive: Callable[[], bool], started: float) -> float:
    while True:
        if not alive():
            raise RuntimeError("the watchdog exited before answering")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/_/health")
            if conn.getresponse().status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        finally:
            conn.close()
        if time.perf_counter() - started > 60:
            raise RuntimeError("the watchdog did not answer in 60 s")
        time.sleep(0.002)  # nothing to await for a port opening elsewhere: poll finely


def argv(port: int, bin_dir: str, app_dir: str) -> list[str]:
    return [f"{bin_dir}/faas-supervisor", "watchdog", "--port", str(port), "--host",
            "127.0.0.1", "--script", f"{app_dir}/script.sh", "--suppress-lock"]


@contextmanager
def on_host(app: Path) -> Iterator[tuple[int, float]]:
    port = c.free_port()
    started = time.perf_counter()
    process = subprocess.Popen(argv(port, str(BUNDLE), str(app)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield port, wait_ready(port, lambda: process.poll() is None, started)
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def in_container(client: Any, image: str, app: Path,
                 tmpfs: bool = False) -> Iterator[tuple[int, float]]:
    port = c.free_port()
    started = time.perf_counter()
    container = client.containers.run(
        image, argv(port, "/oscar/bin", "/app"), detach=True, network_mode="host",
        volumes={str(BUNDLE): {"bind": "/oscar/bin", "mode": "ro"},
                 str(app): {"bind": "/app", "mode": "ro"}},
        tmpfs={"/tmp": ""} if tmpfs else {})

    def alive() -> bool:
        container.reload()
        return container.status in ("created", "running")

    try:
        # alive() asks the engine each poll; the cost lands in the container's column,
        # as it would for any orchestrator waiting on a health check.
        yield port, wait_ready(port, alive, started)
    finally:
        container.remove(force=True)


def invocations(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return time_watchdog(conn, n)  # the same requests as bench/latency.py
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="per round and contender")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--starts", type=int, default=5, help="cold starts per contender")
    args = parser.parse_args()
    if not (BUNDLE / "faas-supervisor").exists():
        subprocess.run(["make", "-C", str(REPO), "dist"], check=True)
    client = _client()
    image = user_image(client)
    names = {"host": "bundle, a process of this machine",
             "container": "bundle in a busybox+glibc container, host network",
             "tmpfs": "the same container with a tmpfs at /tmp"}
    calls: dict[str, list[float]] = {k: [] for k in names}
    starts: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory(prefix="bench-container-") as tmp:
        app = Path(tmp)
        c.write_script(app / "script.sh", "echo hi\n")
        (app / "script.sh").chmod(0o755)
        contenders = {"host": lambda: on_host(app),
                      "container": lambda: in_container(client, image, app),
                      "tmpfs": lambda: in_container(client, image, app, tmpfs=True)}
        for _ in range(args.rounds):
            for key, start in contenders.items():
                with start() as (port, _):
                    invocations(port, 5)  # first requests warm the process up
                    calls[key] += invocations(port, args.requests)
        for _ in range(args.starts):
            for key, start in contenders.items():
                with start() as (_, seconds):
                    starts[key].append(seconds)

    rows = [[names[k], str(len(calls[k])), c.ms(c.median(calls[k])),
             c.ms(c.percentile(calls[k], 90)), str(len(starts[k])),
             c.ms(c.median(starts[k]))] for k in names]
    ratio = c.median(calls["container"]) / c.median(calls["host"])
    ratio_tmpfs = c.median(calls["tmpfs"]) / c.median(calls["host"])
    text = f"""
## Bundle, in a container vs outside (`bench/container.py`)

Run {c.machine()}; Docker {client.version()["Version"]}, storage driver vfs.

The same `dist/faas-supervisor` folder, script `echo hi`, body `aGkK`; invocations are
sequential on one keep-alive connection ({args.rounds} interleaved rounds); cold start is
exec (host) or `docker run -d` (container) to the first `200` on `GET /_/health`.

{c.table(["contender", "requests", "median", "p90", "starts", "cold start median"], rows)}

* in-container invocation median / host median = **{ratio:.2f}x**; with a tmpfs at
  `/tmp`, **{ratio_tmpfs:.2f}x**

Each invocation makes and deletes its folders under `$TMPDIR` (`/tmp`): in the container
that is the container's writable layer (here on the vfs driver); the tmpfs row shows how
much of the difference that is. When it is most of it, the docker backend should give
service containers a tmpfs at `/tmp`.
"""
    c.write_section("bundle-container", text)


if __name__ == "__main__":
    main()
