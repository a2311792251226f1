"""Throughput and p99 latency of `echo hi` through the watchdog at concurrency 1, 16, 64.

The client is aiohttp on the same machine (loopback), each level a fixed number of
requests. The floor is the rate of `subprocess.run(["/bin/sh", script])` from two
parallel workers (the machine's two cores busy forking). Levels and floor alternate over
a few repetitions so that the machine's noise hits them alike; the rate reported is the
median of the repetitions, p99 is over all requests of a level.

Target at concurrency 16: >= 60% of the floor's rate, zero errors.

With `--against REF` (a git revision, or another installation's `faas-supervisor`), it
compares instead this tree's watchdog with REF's, both installed alike
(`_common.installation`) and running side by side: the watchdog process's own CPU time
per sequential invocation (user + system from /proc/PID/stat, its children not counted),
and the rate at concurrency 16, in alternating rounds. Targets: at most half REF's CPU
per invocation, at least 1.6x REF's rate at concurrency 16. `--floor` adds two
contenders, bench/floor_watchdog.py: what any Python watchdog on aiohttp pays here, alone
and with the work the SPEC asks of every invocation (FLOOR_REQUIRED=1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
import aiohttp

BODY = b"aGkK"
LEVELS = (1, 16, 64)


@dataclass
class Level:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    requests: int = 0


def floor_rate(script: Path, n: int, workers: int = 2) -> float:
    def loop(count: int) -> None:
        for _ in range(count):
            subprocess.run(["/bin/sh", str(script)], stdout=subprocess.DEVNULL, check=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        # subprocess.run releases the GIL while the child runs: the workers overlap.
        list(pool.map(loop, [n // workers] * workers))
    return (n // workers * workers) / (time.perf_counter() - started)


async def load(port: int, concurrency: int, total: int, level: Level, path: str = "/",
               headers: dict[str, str] | None = None) -> None:
    url = f"http://127.0.0.1:{port}{path}"
    headers = {"Content-Type": "text/plain", **(headers or {})}
    left = total
    latencies: list[float] = []
    errors = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=BODY, headers=headers) as response:
                    data = await response.read()
                    ok = response.status == 200 and data.endswith(b"hi\n")
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    level.rates.append(total / wall)
    level.latencies += latencies
    level.errors += errors
    level.requests += total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` itself (all its threads, not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rfind(b")") + 2:].split()
    # utime and stime are fields 14 and 15 of the line, 12 and 13 after "pid (comm)".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Contender:
    name: str
    executable: Path
    env: dict[str, str] = field(default_factory=dict)
    cpu_per_invocation: list[float] = field(default_factory=list)  # one per round
    sequential: Level = field(default_factory=Level)
    at16: Level = field(default_factory=Level)


REQUIRED = "the floor + the SPEC's work"


def floor_launcher(installed: Path) -> Path:
    """An executable that runs bench/floor_watchdog.py with `installed`'s Python (that
    installation's aiohttp), taking the watchdog's command line."""
    launcher = c.WORK_DIR / "floor-watchdog"
    launcher.write_text(
        f"#!{installed.parent / 'python'}\nimport runpy\n"
        f"runpy.run_path({str(c.BENCH_DIR / 'floor_watchdog.py')!r}, run_name='__main__')\n"
    )
    launcher.chmod(0o755)
    return launcher


def against(ref: str, invocations: int, rounds: int, requests: int, floor: bool) -> None:
    """This tree's watchdog and REF's, side by side: CPU per invocation, rate at c16; with
    `floor`, the floor (floor_watchdog.py) as a third contender."""
    this_tree = c.installation()
    contenders = [Contender("this tree", this_tree), Contender(ref, c.installation(ref))]
    if floor:
        contenders.append(Contender("the floor", floor_launcher(this_tree)))
        contenders.append(Contender(REQUIRED, floor_launcher(this_tree), {"FLOOR_REQUIRED": "1"}))
    per_round = max(1, invocations // rounds)
    with tempfile.TemporaryDirectory(dir=c.WORK_DIR) as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        script = c.write_script(workdir / "script.sh", "echo hi\n")
        watchdogs = [
            stack.enter_context(c.watchdog(script, workdir, name=f"watchdog-{i}",
                                           executable=one.executable, env=one.env))
            for i, one in enumerate(contenders)
        ]
        for wd in watchdogs:
            asyncio.run(load(wd.port, 16, 200, Level()))  # warm-up
        for i in range(rounds):
            # Who goes first alternates too: the machine's noise hits both alike.
            order = list(zip(contenders, watchdogs, strict=True))
            for one, wd in order if i % 2 == 0 else order[::-1]:
                before = cpu_seconds(wd.pid)
                asyncio.run(load(wd.port, 1, per_round, one.sequential))
                one.cpu_per_invocation.append((cpu_seconds(wd.pid) - before) / per_round)
            for one, wd in order if i % 2 == 1 else order[::-1]:
                asyncio.run(load(wd.port, 16, requests, one.at16))

    this, other = contenders[:2]
    cpu = {one.name: c.median(one.cpu_per_invocation) for one in contenders}
    rate = {one.name: c.median(one.at16.rates) for one in contenders}
    cpu_ratio = cpu[this.name] / cpu[other.name]
    rate_ratio = rate[this.name] / rate[other.name]
    errors = sum(one.sequential.errors + one.at16.errors for one in contenders)
    rows = [
        [one.name, str(one.sequential.requests), f"{cpu[one.name] * 1000:.3f} ms",
         c.ms(c.median(one.sequential.latencies)), str(one.at16.requests),
         f"{rate[one.name]:.0f}/s", c.ms(c.percentile(one.at16.latencies, 99)),
         str(one.sequential.errors + one.at16.errors)]
        for one in contenders
    ]
    command = f"bench/throughput.py --against {ref}" + (" --floor" if floor else "")
    text = f"""
## 2b. Watchdog CPU per invocation, this tree against {ref} (`{command}`)

Run {c.machine()}. {rounds} alternating rounds: {per_round} sequential invocations of
`echo hi` per watchdog (CPU: user + system of the watchdog process from /proc/PID/stat,
its children not counted; the median of the rounds), then {requests} at concurrency 16.

{c.table(["watchdog", "sequential", "CPU per invocation (median)", "median latency",
          "at c16", "rate at c16 (median)", "p99 at c16", "errors"], rows)}

* CPU per invocation: **{cpu_ratio:.2f}x** {ref}'s (target <= 0.5x):
  {c.verdict(cpu_ratio <= 0.5 and errors == 0)}
* rate at concurrency 16: **{rate_ratio:.2f}x** {ref}'s (target >= 1.6x):
  {c.verdict(rate_ratio >= 1.6 and errors == 0)}

{_floor_text(cpu, rate, other.name) if floor else ""}
Per round, CPU ms per invocation: {"; ".join(
    f"{one.name}: " + ", ".join(f"{x * 1000:.2f}" for x in one.cpu_per_invocation)
    for one in contenders)}. Rates at c16: {"; ".join(
    f"{one.name}: " + ", ".join(f"{x:.0f}" for x in one.at16.rates) for one in contenders)}.
"""
    c.write_section("throughput-against", text)


def _floor_text(cpu: dict[str, float], rate: dict[str, float], ref: str) -> str:
    return f"""
* the floor (`bench/floor_watchdog.py`: a bare aiohttp handler that does only the
  syscalls an invocation needs, without logs, metrics, limits or checks):
  **{cpu["the floor"] / cpu[ref]:.2f}x** {ref}'s CPU per invocation,
  **{rate["the floor"] / rate[ref]:.2f}x** its rate at concurrency 16.
* {REQUIRED} (the same with FLOOR_REQUIRED=1: the `Http_*` variables, the metrics, the
  `X-*` headers, the runtime's lines in the answer and one log line per invocation):
  **{cpu[REQUIRED] / cpu[ref]:.2f}x** {ref}'s CPU per invocation,
  **{rate[REQUIRED] / rate[ref]:.2f}x** its rate at concurrency 16.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=800,
                        help="requests per level and repetition (a quarter at concurrency 1); "
                        "with --against, per round at concurrency 16")
    parser.add_argument("--floor-runs", type=int, default=600)
    parser.add_argument("--against", metavar="REF",
                        help="compare with REF's watchdog instead (a git revision or the path "
                        "of a faas-supervisor executable): CPU per invocation, rate at c16")
    parser.add_argument("--invocations", type=int, default=5000,
                        help="with --against: sequential invocations per watchdog, in all")
    parser.add_argument("--rounds", type=int, default=10,
                        help="with --against: alternating rounds")
    parser.add_argument("--floor", action="store_true",
                        help="with --against: the floor (bench/floor_watchdog.py) too")
    args = parser.parse_args()
    c.WORK_DIR.mkdir(exist_ok=True)
    if args.against:
        against(args.against, args.invocations, args.rounds, args.requests, args.floor)
        return

    c.WORK_DIR.mkdir(exist_ok=True)
    floor: list[float] = []
    levels = {n: Level() for n in LEVELS}
    with tempfile.TemporaryDirectory(dir=c.WORK_DIR) as tmp:
        workdir = Path(tmp)
        script = c.write_script(workdir / "script.sh", "echo hi\n")
        with c.watchdog(script, workdir) as wd:
            floor_rate(script, 50)
            asyncio.run(load(wd.port, 16, 100, Level()))  # warm-up
            for _ in range(args.repeat):
                floor.append(floor_rate(script, args.floor_runs))
                for n in LEVELS:
                    total = args.requests // 4 if n == 1 else args.requests
                    asyncio.run(load(wd.port, n, total, levels[n]))

    m_floor = c.median(floor)
    rows = [["fork/exec floor, 2 workers", "-", f"{m_floor:.0f}/s", "-", "-", "100%"]]
    for n, level in levels.items():
        rate = c.median(level.rates)
        rows.append([f"watchdog, concurrency {n}", str(level.requests), f"{rate:.0f}/s",
                     c.ms(c.median(level.latencies)), c.ms(c.percentile(level.latencies, 99)),
                     f"{rate / m_floor:.0%}"])
        rows[-1].insert(5, str(level.errors))
    rows[0].insert(5, "-")
    at16 = levels[16]
    share = c.median(at16.rates) / m_floor
    ok = share >= 0.6 and at16.errors == 0
    text = f"""
## 2. Throughput: `echo hi` at concurrency 1, 16, 64 (`bench/throughput.py`)

Run {c.machine()}.

{c.table(["contender", "requests", "rate (median)", "median latency", "p99", "errors",
          "of floor"], rows)}

* concurrency 16: **{share:.0%}** of the floor's rate with two workers, {at16.errors}
  errors (target >= 60%, zero errors): {c.verdict(ok)}

The floor's rates over the repetitions: {", ".join(f"{r:.0f}/s" for r in floor)}.
The client (aiohttp, one process, same two cores) takes CPU from the watchdog; the floor
has no client.
"""
    c.write_section("throughput", text)


if __name__ == "__main__":
    main()
