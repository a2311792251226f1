"""The controller: what its proxy adds to a synchronous invocation, and a queue of jobs.

* Sync: `POST /run/NAME` through the controller against the same request sent straight
  to the service's watchdog, alternating request by request on two keep-alive
  connections, so that the machine's noise hits both alike. Target: the controller adds
  at most 1 ms to the median.
* Jobs: 1 000 `POST /job/NAME` at once, drained by `--max-jobs 4`; the script appends
  its `JOB_UUID` to a file. Every job must be in the store as Succeeded and in the file
  exactly once: none lost, none run twice. With `--against REF`, the same burst on a
  controller of REF (a git revision or a `faas-supervisor` executable) too, one after the
  other: the drain times' ratio. Target: at least 5x faster than today's main.
* Job start latency: jobs sent one at a time (each once the last has finished), the
  script writing the time first thing; from just before the `POST /job/NAME` is sent to
  that time. The contenders alternate job by job. Target: median <= 20 ms.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import _common as c

USER, PASSWORD = "bench", "bench-password"
BODY = b"aGkK"  # base64 of "hi\n", as in latency.py
SYNC_SCRIPT = "echo hi\n"
TARGET_ADDED = 0.001  # seconds
TARGET_LATENCY = 0.020  # seconds, event accepted -> script started, median
TARGET_SPEEDUP = 5.0  # drain of the burst, against the reference


@dataclass
class Controller:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = self.conn()
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        conn.request(method, path, body=body, headers={"Authorization": f"Basic {auth}"})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, data

    def create(self, name: str, script: str) -> str:
        status, data = self.call(
            "POST", "/system/services", json.dumps({"name": name, "script": script}).encode()
        )
        if status != 201:
            raise RuntimeError(f"creating {name}: {status} {data[:300]!r}")
        status, data = self.call("GET", f"/system/services/{name}")
        token: str = json.loads(data)["token"]
        return token

    def jobs(self, name: str) -> dict[str, dict[str, str]]:
        status, data = self.call("GET", f"/system/logs/{name}")
        if status != 200:
            raise RuntimeError(f"listing jobs: {status} {data[:300]!r}")
        jobs: dict[str, dict[str, str]] = json.loads(data)["jobs"]
        return jobs

    def watchdog_port(self, name: str, timeout: float = 60) -> int:
        """The service's own watchdog, from its log (the local backend picks the port)."""
        log = self.data_dir / "services" / name / "watchdog.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists():
                found = re.findall(rb"watchdog ready.*?port=(\d+)", log.read_bytes())
                if found:
                    return int(found[-1])
            time.sleep(0.05)  # a log file has no event to await
        raise RuntimeError(f"{name}'s watchdog did not start: {self.log.read_text()[-2000:]}")


@functools.cache
def _knows_s3_port(executable: Path) -> bool:
    """Whether this build serves an S3 endpoint (--s3-port): a REF from before does not."""
    shown = subprocess.run([str(executable), "controller", "--help"], capture_output=True,
                           text=True, timeout=60, check=False)
    return "--s3-port" in shown.stdout


@contextmanager
def controller(workdir: Path, max_jobs: int, executable: Path) -> Iterator[Controller]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = c.free_port()
    data_dir = workdir / "data"
    log = workdir / "controller.log"
    command = [str(executable), "controller", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), "--user", USER, "--password", PASSWORD,
               "--max-jobs", str(max_jobs)]
    if _knows_s3_port(executable):  # else 9000, which another server may hold
        command += ["--s3-port", str(c.free_port())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    with open(log, "wb") as out:
        # Started in its own folder: a build without `-P` in its services' `python -m`
        # (before the fix) would otherwise run them on this checkout's code, not its own.
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=workdir)
    ctl = Controller(process, port, data_dir, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the controller exited: {log.read_text()[-2000:]}")
            try:
                if ctl.call("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)  # a port has no readiness event to await
        yield ctl
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Kept after the temporary folder is gone, to look into a run that went wrong.
        c.WORK_DIR.mkdir(exist_ok=True)
        shutil.copyfile(log, c.WORK_DIR / f"controller-{workdir.name}.log")


# ---- sync ---------------------------------------------------------------------------------


def one(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    conn.request("POST", path, body=BODY, headers=headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200 or not data.endswith(b"hi\n"):
        raise RuntimeError(f"{path} answered {response.status}: {data[:200]!r}")
    return elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sync(ctl: Controller, n: int) -> dict[str, list[float]]:
    token = ctl.create("bench-sync", SYNC_SCRIPT)
    port = ctl.watchdog_port("bench-sync")
    through = ctl.conn()
    direct = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    via = {"Content-Type": "text/plain", "Authorization": f"Bearer {token}"}
    plain = {"Content-Type": "text/plain"}
    for _ in range(20):  # warm both paths: connections, the controller's pool
        one(through, "/run/bench-sync", via)
        one(direct, "/", plain)
    samples: dict[str, list[float]] = {"controller": [], "direct": [], "paired": []}
    cpu_before = cpu_seconds(ctl.process.pid)
    for i in range(n):
        # Alternate which goes first, so neither always follows the other.
        if i % 2:
            t_direct = one(direct, "/", plain)
            t_through = one(through, "/run/bench-sync", via)
        else:
            t_through = one(through, "/run/bench-sync", via)
            t_direct = one(direct, "/", plain)
        samples["controller"].append(t_through)
        samples["direct"].append(t_direct)
        samples["paired"].append(t_through - t_direct)
    # The controller's own CPU per proxied request: unlike latency, hardly moved by what
    # else the machine runs (the direct requests never reach the controller).
    samples["cpu"] = [(cpu_seconds(ctl.process.pid) - cpu_before) / n]
    through.close()
    direct.close()
    return samples


# ---- jobs ---------------------------------------------------------------------------------


@dataclass
class Drain:
    jobs: int
    max_jobs: int
    submit_seconds: float
    drain_seconds: float
    succeeded: int
    failed: int
    stored: int
    ran_lines: int
    ran_unique: int
    ran_twice: int
    lost: int
    unknown: int
    peak_running: int
    failures: list[str]


def drain(ctl: Controller, workdir: Path, n: int, max_jobs: int, timeout: float) -> Drain:
    print(f"{workdir.name}: {n} jobs ...", flush=True)
    ran = workdir / "ran.txt"
    ran.touch()
    # O_APPEND writes of one short line are atomic: concurrent jobs do not interleave.
    token = ctl.create("bench-jobs", f'echo "$JOB_UUID" >> {ran}\n')
    conn = ctl.conn()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    names = []
    started = time.perf_counter()
    for _ in range(n):
        conn.request("POST", "/job/bench-jobs", body=b"aGkK", headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 201:
            raise RuntimeError(f"/job answered {response.status}: {data[:200]!r}")
        names.append(json.loads(data)["job"])
    submitted = time.perf_counter() - started
    conn.close()
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        jobs = ctl.jobs("bench-jobs")
        statuses = Counter(job["status"] for job in jobs.values())
        peak = max(peak, statuses["Running"])
        if statuses["Succeeded"] + statuses["Failed"] >= n or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the API has no push channel to await
    drained = time.perf_counter() - started
    lines = ran.read_text().split()
    failures: list[str] = []
    for job, info in jobs.items():
        if info["status"] != "Succeeded" and len(failures) < 3:
            _status, log = ctl.call("GET", f"/system/logs/bench-jobs/{job}")
            failures.append(f"{job} {info['status']}: {log.decode(errors='replace')[-1500:]}")
    counts = Counter(lines)
    return Drain(
        jobs=n,
        max_jobs=max_jobs,
        submit_seconds=submitted,
        drain_seconds=drained,
        succeeded=statuses["Succeeded"],
        failed=statuses["Failed"],
        stored=len(jobs),
        ran_lines=len(lines),
        ran_unique=len(counts),
        ran_twice=sum(1 for v in counts.values() if v > 1),
        lost=len(set(names) - set(counts)),
        unknown=len(set(counts) - set(names)),
        peak_running=peak,
        failures=failures,
    )


# ---- job start latency ---------------------------------------------------------------------


def latency(contenders: dict[str, Controller], workdir: Path, n: int,
            timeout: float = 120) -> dict[str, list[float]]:
    """Seconds from just before each `POST /job` is sent to the script's first line.

    One job at a time per controller, the next once the last is finished; the
    contenders alternate (which goes first too). Two jobs each first, not counted: a
    service's first job also starts what serves its jobs."""
    marks = workdir / "started"
    marks.mkdir(parents=True, exist_ok=True)
    tokens, folders = {}, {}
    for i, (label, ctl) in enumerate(contenders.items()):
        folder = folders[label] = marks / f"c{i}"
        folder.mkdir()
        script = f'date +%s%N > {folder}/"$JOB_UUID"\n'
        tokens[label] = ctl.create("bench-latency", script)
    samples: dict[str, list[float]] = {label: [] for label in contenders}
    order = list(contenders)
    for i in range(n + 2):
        for label in order if i % 2 else order[::-1]:
            ctl = contenders[label]
            conn = ctl.conn()
            headers = {"Authorization": f"Bearer {tokens[label]}",
                       "Content-Type": "text/plain"}
            sent = time.time_ns()
            conn.request("POST", "/job/bench-latency", body=BODY, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            if response.status != 201:
                raise RuntimeError(f"/job answered {response.status}: {data[:200]!r}")
            job = json.loads(data)["job"]
            mark = folders[label] / job
            deadline = time.monotonic() + timeout
            while True:
                status = ctl.jobs("bench-latency").get(job, {}).get("status")
                if status in ("Succeeded", "Failed"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: job {job} did not finish")
                time.sleep(0.005)  # the API has no push channel to await
            if status != "Succeeded" or not mark.exists():
                _s, log = ctl.call("GET", f"/system/logs/bench-latency/{job}")
                raise RuntimeError(f"{label}: job {job} {status}: {log[-1500:]!r}")
            if i >= 2:
                samples[label].append((int(mark.read_text()) - sent) / 1e9)
    return samples


# ---- report -------------------------------------------------------------------------------


def drain_rows(drains: dict[str, Drain]) -> str:
    header = ["controller", "submitted in", "drained in (from the first submit)", "jobs/s",
              "Succeeded / Failed in the store", "lines in the file", "unique",
              "run twice", "lost", "peak Running seen"]
    rows = [[label, f"{d.submit_seconds:.1f} s", f"{d.drain_seconds:.1f} s",
             f"{d.jobs / d.drain_seconds:.1f}", f"{d.succeeded} / {d.failed}",
             str(d.ran_lines), str(d.ran_unique), str(d.ran_twice), str(d.lost),
             str(d.peak_running)] for label, d in drains.items()]
    return c.table(header, rows)


def report(machine: str, s: dict[str, list[float]], drains: dict[str, Drain],
           starts: dict[str, list[float]], notes: str) -> str:
    if not s:  # --only latency or burst
        return f"Run {machine}.\n" + _jobs_report(drains, starts)
    added = c.median(s["controller"]) - c.median(s["direct"])
    paired = c.median(s["paired"])
    rows = [
        ["straight to the watchdog, keep-alive `POST /`", str(len(s["direct"])),
         c.ms(c.median(s["direct"])), c.ms(c.percentile(s["direct"], 90))],
        ["through the controller, keep-alive `POST /run/NAME`", str(len(s["controller"])),
         c.ms(c.median(s["controller"])), c.ms(c.percentile(s["controller"], 90))],
    ]
    met = c.verdict(max(added, paired) <= TARGET_ADDED)
    text = f"""## Controller: the proxy's cost, warm jobs' latency, a burst (`bench/controller.py`)

Run {machine}.

Synchronous `echo hi` (body `aGkK`), the two paths alternated request by request:

{c.table(["path", "runs", "median", "p90"], rows)}

* added by the controller: difference of the medians **{c.ms(added)}**, median of the
  per-pair differences {c.ms(paired)} (target <= 1 ms): {met}
* the controller's CPU time (user + system) per proxied request: {c.ms(s["cpu"][0])}
"""
    return text + _jobs_report(drains, starts) + notes


def _jobs_report(drains: dict[str, Drain], starts: dict[str, list[float]]) -> str:
    text = ""
    if starts:
        rows = [[label, str(len(v)), c.ms(c.median(v)), c.ms(c.percentile(v, 90))]
                for label, v in starts.items()]
        mine = c.median(starts[THIS])
        text += f"""
Job start latency: one job at a time, from just before `POST /job/NAME` is sent to the
script's first line (`date +%s%N`, itself about a millisecond), the controllers
alternating job by job:

{c.table(["controller", "jobs", "median", "p90"], rows)}

* this tree's median {c.ms(mine)} (target <= {c.ms(TARGET_LATENCY)}):
  {c.verdict(mine <= TARGET_LATENCY)}
"""
    if drains:
        d0 = next(iter(drains.values()))
        text += f"""
{d0.jobs} jobs (`POST /job/NAME`, one keep-alive connection) drained with
`--max-jobs {d0.max_jobs}`, one controller after the other; the script appends its
`JOB_UUID` to a file:

{drain_rows(drains)}

* none lost, none run twice: {c.verdict(all(
            d.succeeded == d.jobs and d.lost == 0 and d.ran_twice == 0 and d.unknown == 0
            for d in drains.values()))}
"""
        if len(drains) == 1:
            text += (f"* against today's main: not measured in this run (`--against REF`, "
                     f"target >= {TARGET_SPEEDUP:g}x)\n")
        if len(drains) > 1:
            ref = next(label for label in drains if label != THIS)
            ratio = drains[ref].drain_seconds / drains[THIS].drain_seconds
            text += (f"* this tree drains {ratio:.1f}x as fast as {ref} (target >= "
                     f"{TARGET_SPEEDUP:g}x): {c.verdict(ratio >= TARGET_SPEEDUP)}\n")
        for d in drains.values():
            for failure in d.failures:
                text += (f"\nA job that did not succeed, and its log:\n\n```\n"
                         f"{failure.strip()}\n```\n")
    return text


THIS = "this tree"
PARTS = ("sync", "latency", "burst")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1000, help="sync pairs (default 1000)")
    parser.add_argument("--jobs", type=int, default=1000,
                        help="jobs of the burst (default 1000; 0: no burst)")
    parser.add_argument("--latency-jobs", type=int, default=100,
                        help="jobs sent one at a time for the start latency (default 100)")
    parser.add_argument("--max-jobs", type=int, default=4,
                        help="the controllers' --max-jobs (default 4)")
    parser.add_argument("--drain-timeout", type=float, default=1800)
    parser.add_argument("--against", metavar="REF",
                        help="also run the jobs on a controller of REF (a git revision, "
                             "e.g. 555bb1a, or a faas-supervisor executable)")
    parser.add_argument("--only", choices=PARTS,
                        help="run one part only (to iterate on it; implies --no-write)")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md")
    args = parser.parse_args()
    if args.only:
        args.no_write = True
    executables = {THIS: c.installation()}
    if args.against:
        executables[f"`{args.against}`"] = c.installation(args.against)
    machine = c.machine()
    drains: dict[str, Drain] = {}
    with tempfile.TemporaryDirectory(prefix="faas-bench-controller-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        contenders = {
            label: stack.enter_context(controller(workdir / f"c{i}", args.max_jobs, exe))
            for i, (label, exe) in enumerate(executables.items())
        }
        samples = sync(contenders[THIS], args.requests) if args.only in (None, "sync") else {}
        starts = (latency(contenders, workdir, args.latency_jobs)
                  if args.latency_jobs and args.only in (None, "latency") else {})
        if args.jobs and args.only in (None, "burst"):
            # The reference first: this tree's run then cannot gain from a cooler machine.
            for label in reversed(contenders):
                ctl = contenders[label]
                drains[label] = drain(ctl, ctl.data_dir.parent, args.jobs, args.max_jobs,
                                      args.drain_timeout)
    text = report(machine, samples, drains, starts, NOTES)
    if args.no_write:
        print(text)
    else:
        c.write_section("controller", text)


NOTES = """
Jobs (issue 10): the reference starts a `faas-supervisor run` process per job, an
interpreter start and its imports each time (about 0.3 s of CPU on this machine). This
tree's local backend keeps a warm runner per service (`faas_supervisor/job_runner.py`),
started at the service's first job (its start, about half a second, is inside the
drain figure) with everything `run` imports loaded once (boto3 and the storage providers
too); each job is a child forked from it that sets the job's environment and runs
`run`'s own code, so a job costs `run`'s work itself (config, folders, the script,
stage-out) and no start-up. CPU per job in the burst, measured from /proc (300 jobs,
`echo >> file`): the controller 3.7 ms, the runner's fork 2.3 ms, the child (`run`'s
code, `sh`, the script) 20.6 ms, against about 0.3 s for a fresh `run`. What is left
of the start latency is `run`'s work up to the script's spawn (parse the flags, read the
config, make the folders, a new event loop: about 8 ms of CPU in the child), the
controller's queue and store (2 ms) and the script's own `date`; on this shared machine
the latency moves with the load far more than the drain's ratio does: 18.5 ms median
(p90 21.6 ms) against 117 ms, and a 6.8x drain, at load average 2; 50 ms and 5.2x at 6.

Both paths reach the same watchdog process, so its own cost cancels out and the
difference is the controller's: one more HTTP hop on loopback (aiohttp server and
client), the token check and the service lookup. On this shared machine the difference
moves with the load from run to run (0.6 to 1.6 ms seen for the same code, load averages
2 to 7); the controller's CPU time per request moves less, and is the figure to watch.

Profiled (cProfile of the controller, 2 000 `/run` calls), three small things dominated
the controller's own time and were fixed: the service's definition was parsed from its
stored JSON at every request (about a quarter of the handler's time; the store now keeps
parsed services, dropped when a service changes); a streamed answer sent its headers in
a write of their own (three `send` syscalls per request instead of two; answers of known
length up to 64 KiB now go out whole, larger ones still stream); and the request body
was written by a task of its own (a small body of known length is now read first and
sent with the headers: 0.70 against 0.86 ms of CPU per request, alternated runs). What
remains is the hop itself, 0.6 to 1 ms of the controller's CPU per request on this
machine: aiohttp's server and client objects for each request, two `send`s, two `recv`s
and about ten event-loop iterations. uvloop, tried outside the project, made no clear
difference; cutting it further means forwarding bytes on pooled connections below
aiohttp's request objects, a larger change than this benchmark's fixes.
"""


if __name__ == "__main__":
    main()
