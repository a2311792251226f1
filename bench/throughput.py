"""Throughput and p99 latency of `echo hi` through the watchdog at concurrency 1, 16, 64.

The client is aiohttp on the same machine (loopback), each level a fixed number of
requests. The floor is the rate of `subprocess.run(["/bin/sh", script])` from two
parallel workers (the machine's two cores busy forking). Levels and floor alternate over
a few repetitions so that the machine's noise hits them alike; the rate reported is the
median of the repetitions, p99 is over all requests of a level.

Target at concurrency 16: >= 60% of the floor's rate, zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=800,
                        help="requests per level and repetition (a quarter at concurrency 1)")
    parser.add_argument("--floor-runs", type=int, default=600)
    args = parser.parse_args()

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
