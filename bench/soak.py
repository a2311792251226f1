"""Soak: many invocations in a row, then nothing may have grown or been left behind.

* 20 000 `echo hi` invocations at concurrency 32 straight to a watchdog;
* 5 000 through the controller's `POST /run/NAME` (local backend), same concurrency.

Promised (issue 8): 0 errors; the resident memory (RSS) of the watchdog, and of the
controller, grows by less than 10 MiB from the 2 000th request to the last; once the load
stops, open file descriptors (/proc/PID/fd), folders under the watchdog's TMPDIR and child
processes are back to what they were before it. A run that misses one says so in its
section (a result, as the other benchmarks' targets are); `python bench/soak.py
--requests 2000 --controller-requests 500` is a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _common as c
import controller as bench_controller
from throughput import Level, load

MiB = 1 << 20
RSS_LIMIT = 10 * MiB
FROM = 2000  # RSS growth is measured from this request on: warm caches, pools, arenas
SEGMENT = 2000  # requests between two RSS samples
SETTLE = 30.0  # seconds allowed for connections and folders to go once the load stops
DOC = c.BENCH_DIR.parent / "docs" / "RELIABILITY.md"


@dataclass(frozen=True)
class Snapshot:
    rss: int
    fds: int
    children: int
    folders: int

    def at_most(self, other: Snapshot) -> bool:
        return (self.fds <= other.fds and self.children <= other.children
                and self.folders <= other.folders)


@dataclass(frozen=True)
class Probe:
    """What one process holds: memory, descriptors, descendants, folders in its TMPDIR."""

    pid: int
    tmpdir: Path | None

    def snapshot(self) -> Snapshot:
        folders = len(list(self.tmpdir.iterdir())) if self.tmpdir else 0
        return Snapshot(c.proc_status(self.pid, "VmRSS"), len(os.listdir(f"/proc/{self.pid}/fd")),
                        len(descendants(self.pid)), folders)

    def quiet(self, still: float = 1.0, timeout: float = 15.0) -> Snapshot:
        """The baseline: a snapshot once nothing has changed for `still` seconds (the
        warm-up's last connections closed, its last folder removed)."""
        last, since, deadline = self.snapshot(), time.monotonic(), time.monotonic() + timeout
        while time.monotonic() - since < still and time.monotonic() < deadline:
            time.sleep(0.1)  # /proc has no event to await
            now = self.snapshot()
            if (now.fds, now.children, now.folders) != (last.fds, last.children, last.folders):
                last, since = now, time.monotonic()
        return last

    def settle(self, baseline: Snapshot) -> tuple[Snapshot, float]:
        """Poll until back to the baseline, or SETTLE seconds: the state and the time."""
        started = time.monotonic()
        while True:
            now = self.snapshot()
            waited = time.monotonic() - started
            if now.at_most(baseline) or waited > SETTLE:
                return now, waited
            time.sleep(0.1)  # /proc has no event to await


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


@dataclass
class Phase:
    name: str
    requests: int
    level: Level
    seconds: float
    rss: dict[str, list[tuple[int, int]]]  # by process: (requests done, its RSS)
    probes: dict[str, tuple[Snapshot, Snapshot, float]]  # name: before, after, settled in

    def at_from(self, name: str) -> int:
        return next(rss for done, rss in self.rss[name] if done >= FROM)

    def growth(self, name: str) -> int:
        return self.rss[name][-1][1] - self.at_from(name)

    def back(self) -> bool:
        return all(after.at_most(before) for before, after, _ in self.probes.values())

    def ok(self) -> bool:
        return (self.level.errors == 0 and self.back()
                and all(self.growth(name) < RSS_LIMIT for name in self.rss))


def soak(name: str, port: int, total: int, concurrency: int, probes: dict[str, Probe],
         path: str = "/", headers: dict[str, str] | None = None) -> Phase:
    """Warm up, take the baselines, run `total` requests in segments sampling every
    probe's RSS, then wait for every probe to settle."""
    asyncio.run(load(port, concurrency, 200, Level(), path, headers))
    before = {key: probe.quiet() for key, probe in probes.items()}
    level = Level()
    rss: dict[str, list[tuple[int, int]]] = {key: [] for key in probes}
    done = 0
    started = time.perf_counter()
    while done < total:
        n = min(SEGMENT, total - done)
        asyncio.run(load(port, concurrency, n, level, path, headers))
        done += n
        for key, probe in probes.items():
            rss[key].append((done, probe.snapshot().rss))
        sizes = ", ".join(f"{key} {r[-1][1] / MiB:.1f} MiB" for key, r in rss.items())
        print(f"  {name}: {done}/{total}, errors {level.errors}, RSS: {sizes}", flush=True)
    seconds = time.perf_counter() - started
    settled = {key: (before[key], *probe.settle(before[key])) for key, probe in probes.items()}
    return Phase(name, total, level, seconds, rss, settled)


def watchdog_phase(total: int, concurrency: int) -> Phase:
    with tempfile.TemporaryDirectory(dir=c.WORK_DIR) as tmp:
        workdir = Path(tmp)
        tmpdir = workdir / "tmp"
        tmpdir.mkdir()
        script = c.write_script(workdir / "script.sh", "echo hi\n")
        with c.watchdog(script, workdir, env={"TMPDIR": str(tmpdir)}) as wd:
            probe = Probe(wd.pid, tmpdir)
            return soak("watchdog", wd.port, total, concurrency, {"watchdog": probe})


def controller_phase(total: int, concurrency: int) -> Phase:
    # The same program as the watchdog phase's (faas_command), as controller() wants it:
    # one executable.
    executable = Path(shutil.which("faas-supervisor") or c.installation())
    with (tempfile.TemporaryDirectory(prefix="faas-bench-soak-") as tmp,
          bench_controller.controller(Path(tmp), 2, executable) as ctl):
        token = ctl.create("soak", "echo hi\n")
        ctl.watchdog_port("soak")
        # The local backend gives each service's watchdog a TMPDIR of its own.
        tmpdir = ctl.data_dir / "services" / "soak" / "tmp"
        service = next(pid for pid in descendants(ctl.process.pid)
                       if b"watchdog" in Path(f"/proc/{pid}/cmdline").read_bytes())
        probes = {"controller": Probe(ctl.process.pid, None),
                  "service's watchdog": Probe(service, tmpdir)}
        return soak("controller", ctl.port, total, concurrency, probes, "/run/soak",
                    {"Authorization": f"Bearer {token}"})


def report(machine: str, phases: list[Phase], concurrency: int) -> str:
    load_rows = [[f"{p.name} (`{'POST /run/NAME' if p.name == 'controller' else 'POST /'}`)",
                  str(p.requests), f"{p.requests / p.seconds:.0f}/s", str(p.level.errors),
                  c.ms(c.median(p.level.latencies)), c.ms(c.percentile(p.level.latencies, 99))]
                 for p in phases]
    rows = []
    for p in phases:
        for name, (before, after, waited) in p.probes.items():
            rows.append([f"{name} ({p.name} phase)", f"{p.at_from(name) / MiB:.1f} MiB",
                         f"{p.rss[name][-1][1] / MiB:.1f} MiB",
                         f"{p.growth(name) / MiB:+.2f} MiB", f"{before.fds} / {after.fds}",
                         "-" if name == "controller"
                         else f"{before.folders} / {after.folders}",
                         f"{before.children} / {after.children}", f"{waited:.1f} s"])
    verdicts = "\n".join(
        f"* {p.name} phase: {p.level.errors} errors; RSS growth from request {FROM} to "
        f"{p.requests}: " + ", ".join(f"{n} {p.growth(n) / MiB:+.2f} MiB" for n in p.rss)
        + f" (target under 10 MiB); descriptors, folders and children back to the baseline: "
        f"{'yes' if p.back() else '**no**'}: {c.verdict(p.ok())}"
        for p in phases)
    curves = "\n".join(
        f"* {name} ({p.name} phase): " + ", ".join(f"{d}: {r / MiB:.1f}" for d, r in curve)
        for p in phases for name, curve in p.rss.items())
    return f"""## Soak: nothing grows, nothing is left (`bench/soak.py`)

Run {machine}. `echo hi` (body `aGkK`) at concurrency {concurrency}, aiohttp client on the
same machine; 200 warm-up requests first, then the baselines are taken once the processes
are quiet. The machine is shared: rates and latencies here say little (`throughput.py`
measures those); growth and leftovers are the figures.

{c.table(["path", "requests", "rate", "errors", "median", "p99"], load_rows)}

Each process: RSS at request {FROM} and at the last; then, before the load / after it,
open file descriptors, folders in its TMPDIR and descendant processes, and how long they
took to come back (at most {SETTLE:g} s):

{c.table(["process", f"RSS at {FROM}", "RSS at the last", "growth", "open FDs",
          "folders in TMPDIR", "descendants", "settled in"], rows)}

{verdicts}

RSS (MiB) by requests done:

{curves}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20000,
                        help="invocations straight to the watchdog (default 20000)")
    parser.add_argument("--controller-requests", type=int, default=5000,
                        help="invocations through the controller's /run (default 5000; 0: skip)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-write", action="store_true",
                        help="print, leave RESULTS.md and docs/RELIABILITY.md")
    args = parser.parse_args()
    if min(args.requests, args.controller_requests or FROM) < FROM:
        parser.error(f"RSS growth is measured from request {FROM}: ask for at least that many")
    c.WORK_DIR.mkdir(exist_ok=True)
    machine = c.machine()
    phases = [watchdog_phase(args.requests, args.concurrency)]
    if args.controller_requests:
        phases.append(controller_phase(args.controller_requests, args.concurrency))
    text = report(machine, phases, args.concurrency)
    if args.no_write:
        print(text)
    else:
        c.write_section("soak", text)
        c.write_section("soak", text.replace("## Soak", "### Soak", 1), path=DOC, echo=False)
    return 0 if all(p.ok() for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
