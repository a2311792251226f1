"""The controller at scale, simulated: many services and a flood of events, on the
`kubernetes` backend (against the tests' API stand-in) and on the `docker` backend.

* Kubernetes: a controller (`faas-supervisor controller --backend kubernetes`, a process
  of its own) against the API stand-in of tests/integration/fake_kube_api.py, also a
  process of its own (bench/_kube_standin.py: each Job's pod is Pending `--pod-start`
  seconds, Running `--pod-run`, then succeeds, played by the stand-in's `autorun`).
  `--services` services are made, then `--events` `POST /job/NAME` are sent open-loop
  at `--rate` per second, spread over the services round robin. At the end every event
  must have given exactly one Job (the stand-in's creations) and one final status (the
  controller's store and its API): none lost, none doubled.
* Docker: the same with `--docker-events` events over `--docker-services` services on
  the machine's Docker engine, the job's script `true` (a container that exits at once).

Reported for each: the controller's peak RSS (VmHWM), its CPU seconds per job, the rate
of events accepted and of jobs finished, API requests per job seen by the stand-in
(target: at most 4), and the time from an event's POST to its Job (Kubernetes: made in
the stand-in; Docker: the container's `create` event), p50 and p99.

Run: python bench/scale.py [--events N --rate R ...]; see --help.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import aiohttp

USER, PASSWORD = "bench", "bench-password"
NS = "oscar-svc"
TOKEN = "fake-kube-token"  # the stand-in's
TARGET_REQUESTS = 4.0
USER_IMAGE = "faas-supervisor-test/busybox-glibc:1"  # tests/integration/docker_fixtures.py
INIT_IMAGE = os.environ.get("FAAS_TEST_INIT_IMAGE", "faas-supervisor-test/init:latest")
FINAL = ("Succeeded", "Failed")


# ---- processes ---------------------------------------------------------------------------


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120,
              headers: dict[str, str] | None = None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                        timeout=5):
                return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer: {log.read_text()[-2000:]}")
        time.sleep(0.1)  # a port has no readiness event to await


@contextlib.contextmanager
def process(command: list[str], log: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        c.WORK_DIR.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            (c.WORK_DIR / f"scale-{log.name}").write_bytes(log.read_bytes()[-2_000_000:])


@contextlib.contextmanager
def standin(workdir: Path, pod_start: float, pod_run: float
            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = c.free_port()
    log = workdir / "standin.log"
    command = [sys.executable, str(c.BENCH_DIR / "_kube_standin.py"), "--port", str(port),
               "--pod-start", str(pod_start), "--pod-run", str(pod_run)]
    with process(command, log) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/_bench/stats", proc, log, headers={"Authorization": f"Bearer {TOKEN}"})
        yield url, proc


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "s", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "s", "context": {"cluster": "s", "user": "u"}}],
        "current-context": "s",
    }))
    return path


@dataclass
class Controller:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path

    def cpu(self) -> float:
        return cpu_of(self.proc.pid)

    def peak_rss(self) -> int:
        return c.proc_status(self.proc.pid, "VmHWM")

    def counts(self) -> Counter[str]:
        """Jobs by status, from the store (read-only: the controller writes it)."""
        path = self.data_dir / "controller.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=30)) as db:
            return Counter(dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status")))

    def names(self) -> Counter[str]:
        path = self.data_dir / "controller.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=30)) as db:
            return Counter(n for (n,) in db.execute("SELECT name FROM jobs"))


@contextlib.contextmanager
def controller(workdir: Path, args: list[str]) -> Iterator[Controller]:
    port = c.free_port()
    data_dir = workdir / "data"
    command = [*c.faas_command(), "controller", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), "--user", USER, "--password", PASSWORD,
               *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    with process(command, workdir / "controller.log", env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, workdir / "controller.log")
        yield Controller(proc, url, data_dir)


# ---- the load ------------------------------------------------------------------------------


@dataclass
class Sent:
    posted: dict[str, float] = field(default_factory=dict)  # job -> time.time() of its POST
    service: dict[str, str] = field(default_factory=dict)  # job -> service
    refused: list[str] = field(default_factory=list)
    seconds: float = 0.0  # from the first POST to the last answer


def auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


async def make_services(url: str, names: list[str], definition: dict[str, Any]) -> None:
    async with aiohttp.ClientSession(url, headers=auth(),
                                     timeout=aiohttp.ClientTimeout(total=600)) as http:
        gate = asyncio.Semaphore(8)

        async def one(name: str) -> None:
            async with gate, http.post("/system/services",
                                       json={**definition, "name": name}) as response:
                if response.status != 201:
                    raise RuntimeError(f"service {name}: {response.status} "
                                       f"{(await response.text())[:300]}")

        await asyncio.gather(*(one(n) for n in names))


async def send(url: str, services: list[str], events: int, rate: float) -> Sent:
    """`events` POST /job/NAME, the i-th at start + i/rate (open loop: a slow answer
    does not slow the arrivals, up to 1 000 in flight)."""
    sent = Sent()
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(url, headers=auth(), connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as http:
        loop = asyncio.get_running_loop()

        async def one(i: int) -> None:
            service = services[i % len(services)]
            started = time.time()
            try:
                async with http.post(f"/job/{service}", data=b'{"n": %d}' % i) as response:
                    body = await response.read()
                    if response.status != 201:
                        sent.refused.append(f"{response.status} {body[:200]!r}")
                        return
                    job = json.loads(body)["job"]
            except (aiohttp.ClientError, TimeoutError) as exc:
                sent.refused.append(repr(exc))
                return
            sent.posted[job] = started
            sent.service[job] = service

        start = loop.time()
        tasks = []
        for i in range(events):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the arrival schedule itself
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        sent.seconds = loop.time() - start
    return sent


def wait_final(ctl: Controller, total: int, timeout: float) -> tuple[float, Counter[str]]:
    """Seconds until every job of the store is final (polled: the API has no push)."""
    started = time.monotonic()
    while True:
        counts = ctl.counts()
        if sum(counts[s] for s in FINAL) >= total:
            return time.monotonic() - started, counts
        if time.monotonic() - started > timeout or ctl.proc.poll() is not None:
            return float("nan"), counts
        time.sleep(1.0)


async def api_statuses(url: str, services: list[str]) -> Counter[str]:
    """Every job's final status as GET /system/logs/NAME gives it: job -> times seen."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(url, headers=auth()) as http:
        gate = asyncio.Semaphore(16)

        async def one(service: str) -> None:
            async with gate, http.get(f"/system/logs/{service}") as response:
                jobs = (await response.json())["jobs"]
            for name, job in jobs.items():
                if job["status"] in FINAL:
                    seen[name] += 1

        await asyncio.gather(*(one(s) for s in services))
    return seen


# ---- a run ----------------------------------------------------------------------------------


@dataclass
class Run:
    backend: str
    services: int
    events: int
    rate: float
    sent: Sent
    drain: float  # seconds from the last answer to the last final status
    statuses: Counter[str]
    cpu: float  # controller CPU seconds over the events
    peak_rss: int
    made: dict[str, float]  # job -> when its Job/container was made
    made_twice: int
    requests: Counter[str] = field(default_factory=Counter)  # stand-in, during the events
    problems: list[str] = field(default_factory=list)
    server_cpu: float = 0.0  # the stand-in's CPU seconds over the events

    @property
    def jobs(self) -> int:
        return len(self.sent.posted)


def check(run: Run, store: Counter[str], api: Counter[str]) -> None:
    posted = set(run.sent.posted)
    problems = run.problems
    if run.sent.refused:
        problems.append(f"{len(run.sent.refused)} events refused, e.g. {run.sent.refused[0]}")
    if len(posted) != run.events - len(run.sent.refused):
        problems.append("job names given twice")
    if set(store) != posted or any(v != 1 for v in store.values()):
        problems.append(f"store: {len(set(store) - posted)} unknown, "
                        f"{len(posted - set(store))} missing")
    if set(api) != posted or any(v != 1 for v in api.values()):
        problems.append(f"API: {len(posted - set(api))} without a final status, "
                        f"{sum(v > 1 for v in api.values())} listed twice")
    if set(run.made) != posted:
        problems.append(f"backend: {len(posted - set(run.made))} events gave no Job, "
                        f"{len(set(run.made) - posted)} Jobs of no event")
    if run.made_twice:
        problems.append(f"backend: {run.made_twice} Jobs made twice")


def kubernetes_run(args: argparse.Namespace, workdir: Path) -> Run:
    import urllib.request

    names = [f"s{i:04d}" for i in range(args.services)]
    with standin(workdir, args.pod_start, args.pod_run) as (server, server_proc):
        def stats() -> dict[str, Any]:
            request = urllib.request.Request(f"{server}/_bench/stats",
                                             headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=300) as response:
                result: dict[str, Any] = json.load(response)
                return result

        config = kubeconfig(workdir / "kubeconfig", server)
        with controller(workdir, ["--backend", "kubernetes", "--kubeconfig", str(config),
                                  "--runtime-image", "registry.example/runtime:1",
                                  "--max-jobs", str(args.max_jobs)]) as ctl:
            started = time.monotonic()
            asyncio.run(make_services(ctl.url, names, {
                "image": "registry.example/user:1", "script": "echo done\n"}))
            print(f"kubernetes: {len(names)} services in {time.monotonic() - started:.0f} s",
                  flush=True)
            before, cpu = Counter(stats()["requests"]), ctl.cpu()
            server_cpu = cpu_of(server_proc.pid)
            sent = asyncio.run(send(ctl.url, names, args.events, args.rate))
            print(f"kubernetes: {len(sent.posted)} events in {sent.seconds:.0f} s", flush=True)
            drain, _ = wait_final(ctl, len(sent.posted), args.timeout)
            cpu = ctl.cpu() - cpu
            server_cpu = cpu_of(server_proc.pid) - server_cpu
            after = stats()
            run = Run("kubernetes", len(names), args.events, args.rate, sent, drain,
                      ctl.counts(), cpu, ctl.peak_rss(), after["jobs"],
                      max(0, Counter(after["requests"])["create jobs"] - len(after["jobs"])),
                      Counter(after["requests"]) - before, server_cpu=server_cpu)
            check(run, ctl.names(), asyncio.run(api_statuses(ctl.url, names)))
    return run


def docker_run(args: argparse.Namespace, workdir: Path) -> Run:
    import docker

    client = docker.from_env(timeout=600)
    for image in (USER_IMAGE, INIT_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SystemExit(f"{image} is missing: run tests/integration/test_docker_backend.py "
                             "once, which builds it") from None
    names = [f"d{i:03d}" for i in range(args.docker_services)]
    made: dict[str, float] = {}
    created: Counter[str] = Counter()
    stream = client.events(decode=True, filters={
        "type": "container", "event": "create",
        "label": ["faas-supervisor/component=job"]})

    def follow() -> None:
        with contextlib.suppress(Exception):  # the stream ends with an error when closed
            for event in stream:
                name = (event.get("Actor") or {}).get("Attributes", {}).get("name", "")
                created[name] += 1
                made.setdefault(name, event["timeNano"] / 1e9)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        with controller(workdir, ["--backend", "docker", "--runtime-image", INIT_IMAGE,
                                  "--max-jobs", str(args.docker_max_jobs)]) as ctl:
            started = time.monotonic()
            asyncio.run(make_services(ctl.url, names, {"image": USER_IMAGE, "script": "true\n",
                                                       "log_level": "CRITICAL"}))
            print(f"docker: {len(names)} services in {time.monotonic() - started:.0f} s",
                  flush=True)
            cpu = ctl.cpu()
            sent = asyncio.run(send(ctl.url, names, args.docker_events, args.rate))
            print(f"docker: {len(sent.posted)} events in {sent.seconds:.0f} s", flush=True)
            drain, _ = wait_final(ctl, len(sent.posted), args.timeout)
            cpu = ctl.cpu() - cpu
            run = Run("docker", len(names), args.docker_events, args.rate, sent, drain,
                      ctl.counts(), cpu, ctl.peak_rss(), dict(made),
                      sum(v - 1 for v in created.values()))
            check(run, ctl.names(), asyncio.run(api_statuses(ctl.url, names)))
            for name in names:  # the services' containers and volumes go with them
                asyncio.run(delete(ctl.url, name))
    finally:
        stream.close()
        follower.join(10)
        client.close()
    return run


async def delete(url: str, name: str) -> None:
    async with aiohttp.ClientSession(url, headers=auth()) as http, \
            http.delete(f"/system/services/{name}"):
        pass


# ---- the report ------------------------------------------------------------------------------


def row(run: Run) -> list[str]:
    waits = [run.made[j] - t for j, t in run.sent.posted.items() if j in run.made]
    finished = run.jobs / (run.sent.seconds + run.drain) if run.jobs else 0
    per_job = sum(run.requests.values()) / run.jobs if run.requests and run.jobs else None
    return [
        run.backend, f"{run.services}", f"{run.events}", f"{run.rate:.0f}",
        f"{run.jobs / run.sent.seconds:.0f}/s", f"{finished:.1f}/s",
        f"{run.peak_rss / 2**20:.0f} MiB", f"{run.cpu / max(1, run.jobs) * 1000:.2f} ms",
        "n/a" if per_job is None else f"{per_job:.2f}",
        duration(c.percentile(waits, 50)) if waits else "-",
        duration(c.percentile(waits, 99)) if waits else "-",
        "none" if not run.problems else "; ".join(run.problems),
    ]


def duration(seconds: float) -> str:
    return c.ms(seconds) if seconds < 10 else f"{seconds:.0f} s"


def report(machine: str, runs: list[Run], args: argparse.Namespace) -> str:
    header = ["backend", "services", "events", "rate asked", "accepted", "finished",
              "peak RSS", "CPU/job", "API req/job", "event→Job p50", "p99",
              "lost / doubled"]
    lines = [
        "## Scale, simulated (`bench/scale.py`)", "",
        f"Machine: {machine}; load average at the end "
        f"{os.getloadavg()[0]:.2f} (shared by seven engineers' test runs). "
        f"Controller `--max-jobs {args.max_jobs}` (docker: {args.docker_max_jobs}); "
        f"stand-in pods Pending {args.pod_start} s, then Running {args.pod_run} s.", "",
        c.table(header, [row(r) for r in runs]), "",
    ]
    for run in runs:
        if run.requests:
            each = ", ".join(f"{k} {v / max(1, run.jobs):.2f}"
                             for k, v in sorted(run.requests.items()))
            ok = sum(run.requests.values()) / max(1, run.jobs) <= TARGET_REQUESTS
            lines.append(f"Requests per job ({run.backend}): {each}; target ≤ "
                         f"{TARGET_REQUESTS:.0f}: {c.verdict(ok)}. The stand-in's CPU: "
                         f"{run.server_cpu / max(1, run.jobs) * 1000:.2f} ms per job, "
                         f"{run.server_cpu / (run.sent.seconds + run.drain):.0%} of a core "
                         "over the run.")
        lines.append(f"Every event one Job and one final status ({run.backend}): "
                     f"{c.verdict(not run.problems)}; statuses {dict(run.statuses)}; "
                     f"drain after the last event {run.drain:.0f} s.")
    return "\n".join(lines) + "\n" + NOTES


NOTES = """
What the columns mean: *accepted*, events answered 201 per second of arrivals (the rate
asked is an open-loop schedule); *finished*, jobs per second from the first event to the
last final status; *CPU/job* and *peak RSS*, the controller's (from /proc, its CPU over
the events and the drain); *API req/job*, requests the stand-in served during the events
over the jobs (the three shared watches are a handful in all); *event→Job*, from just
before an event's POST to the Job's creation in the stand-in (Kubernetes) or the job
container's `create` event (Docker): when arrivals outrun the jobs finished, this is
the controller's queue. The stand-in validates every body shape once (see
bench/_kube_standin.py): validating every Job (10-20 ms each) made it the bottleneck.
The README's *Performance* section says which limits these numbers show and what would
lift them.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--services", type=int, default=1000,
                        help="services on the kubernetes backend (default 1000)")
    parser.add_argument("--events", type=int, default=100_000,
                        help="events on the kubernetes backend (default 100000; 0: skip)")
    parser.add_argument("--rate", type=float, default=500, help="events per second (default 500)")
    parser.add_argument("--pod-start", type=float, default=0.2,
                        help="seconds a Job's pod is Pending in the stand-in (default 0.2)")
    parser.add_argument("--pod-run", type=float, default=0.3,
                        help="seconds it then runs before exiting 0 (default 0.3)")
    parser.add_argument("--docker-services", type=int, default=10,
                        help="services on the docker backend (default 10)")
    parser.add_argument("--docker-events", type=int, default=10_000,
                        help="events on the docker backend (default 10000; 0: skip)")
    parser.add_argument("--max-jobs", type=int, default=64,
                        help="the controller's --max-jobs (default 64)")
    parser.add_argument("--docker-max-jobs", type=int, default=8,
                        help="the docker controller's --max-jobs (default 8: each job is a "
                             "container start, and more at once only thrash 2 cores)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds to wait for the jobs after the last event (default 3600)")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md")
    args = parser.parse_args()
    # A stopped benchmark stops its controller and stand-in (the `with` blocks' exits).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    machine = c.machine()
    runs = []
    with tempfile.TemporaryDirectory(prefix="faas-bench-scale-") as tmp:
        if args.events:
            (Path(tmp) / "k").mkdir()
            runs.append(kubernetes_run(args, Path(tmp) / "k"))
        if args.docker_events:
            (Path(tmp) / "d").mkdir()
            runs.append(docker_run(args, Path(tmp) / "d"))
    text = report(machine, runs, args)
    if args.no_write:
        print(text)
    else:
        c.write_section("scale", text)


if __name__ == "__main__":
    main()
