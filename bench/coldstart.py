"""Cold start: `faas-supervisor watchdog` exec to the first 200, `run` exec to exit.

The watchdog: from exec to the first 200 on /_/health. `run`: a plain JSON body on
standard input, the script `cat`, from exec to exit (what a job that moves no object pays
before and after its script).

The health check polls every millisecond on a port chosen beforehand. Side by side, for
scale: the interpreter alone (`python -c pass`) and importing the watchdog's modules.
Each run is a new process; the page cache is warm (one run is thrown away first), as it
is for every start but a container's first. The watchdog is a runtime-only installation of
this tree (`_common.installation()`, as a user's `pip install` makes it); `--against REF`
adds another installation (a git revision, or an executable's path), interleaved.

Targets: watchdog median <= 200 ms; `run` median <= 120 ms.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/_/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


TARGET = 0.2
RUN_TARGET = 0.12


def first_invocation(port: int) -> float:
    """Seconds of the first invocation (`POST /`, the script's `echo hi`) of a watchdog
    that has just answered its first 200: what start-up left for the first request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        started = time.perf_counter()
        conn.request("POST", "/", body=b"aGkK")
        answer = conn.getresponse()
        answer.read()
        took = time.perf_counter() - started
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"the first invocation answered {answer.status}")
    return took


def cold_start(executable: Path, script: Path, workdir: Path,
               first: list[float] | None = None) -> float:
    """Seconds from exec to the first 200 on /_/health; then, if `first` is given, the
    first invocation's time is appended to it (after the clock of the start stopped)."""
    port = c.free_port()
    command = [str(executable), "watchdog", "--script", str(script), "--port", str(port),
               "--host", "127.0.0.1", "--suppress-lock"]
    with open(workdir / "coldstart.log", "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not healthy(port):
                if process.poll() is not None:
                    log_text = (workdir / "coldstart.log").read_text()
                    raise RuntimeError(f"the watchdog exited: {log_text}")
                if time.perf_counter() - started > 30:
                    raise RuntimeError("the watchdog was not healthy within 30 s")
                time.sleep(0.001)
            took = time.perf_counter() - started
            if first is not None:
                first.append(first_invocation(port))
            return took
        finally:
            process.terminate()
            process.wait(30)


def time_command(command: list[str], stdin: bytes | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, input=stdin, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def plain_run(executable: Path, script: Path) -> float:
    return time_command([str(executable), "run", "--script", str(script)], b'{"a": 1}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each row (default 15)")
    parser.add_argument("--against", metavar="REF",
                        help="also start a reference installation (a git revision, or the "
                             "path of a faas-supervisor executable), e.g. today's main")
    args = parser.parse_args()

    entry = c.installation()
    reference = c.installation(args.against) if args.against else None
    # The interpreter the console script runs, for the side-by-side rows.
    python = sys.executable
    with open(entry, "rb") as f:
        first = f.readline()
    if first.startswith(b"#!"):
        python = first[2:].decode().strip()
    # As the watchdog imports them (aiohttp through lazy_ca, where this tree has it), but
    # with the cycle collector on: for scale.
    imports = ("import faas_supervisor.cli\n"
               "try:\n from faas_supervisor.lazy_ca import import_aiohttp\n"
               "except ImportError:\n pass\nelse:\n import_aiohttp()\n"
               "import faas_supervisor.watchdog.server")
    starts: list[float] = []
    against: list[float] = []
    firsts: list[float] = []
    firsts_against: list[float] = []
    bare: list[float] = []
    imported: list[float] = []
    runs: list[float] = []
    runs_against: list[float] = []
    c.WORK_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=c.WORK_DIR) as tmp:
        workdir = Path(tmp)
        script = c.write_script(workdir / "script.sh", "echo hi\n")
        cat = c.write_script(workdir / "cat.sh", "cat\n")
        for executable in (entry, reference):
            if executable is not None:  # warm the page cache: a warm node, not a cold disk
                cold_start(executable, script, workdir)
        for _ in range(args.runs):
            bare.append(time_command([python, "-c", "pass"]))
            imported.append(time_command([python, "-c", imports]))
            starts.append(cold_start(entry, script, workdir, firsts))
            runs.append(plain_run(entry, cat))
            if reference is not None:
                against.append(cold_start(reference, script, workdir, firsts_against))
                runs_against.append(plain_run(reference, cat))

    m = c.median(starts)
    rows = [
        [f"`python -c pass` ({os.path.basename(python)})", c.ms(c.median(bare)),
         c.ms(max(bare))],
        ["`python -c 'import faas_supervisor.cli, ...watchdog.server'` (as the watchdog does)",
         c.ms(c.median(imported)), c.ms(max(imported))],
        ["`faas-supervisor watchdog` exec to first 200 on `/_/health`", c.ms(m),
         c.ms(max(starts))],
    ]
    if against:
        rows.append([f"the same, {args.against}", c.ms(c.median(against)), c.ms(max(against))])
    rows.append(["its first invocation (`echo hi`), just after that 200", c.ms(c.median(firsts)),
                 c.ms(max(firsts))])
    if firsts_against:
        rows.append([f"the same, {args.against}", c.ms(c.median(firsts_against)),
                     c.ms(max(firsts_against))])
    r = c.median(runs)
    rows.append(["`faas-supervisor run` of a plain body, exec to exit", c.ms(r), c.ms(max(runs))])
    if runs_against:
        rows.append([f"the same, {args.against}", c.ms(c.median(runs_against)),
                     c.ms(max(runs_against))])
    text = f"""
## 4. Cold start: watchdog and `run` (`bench/coldstart.py`)

Run {c.machine()}.

{c.table(["what", f"median of {args.runs}", "max"], rows)}

* exec to first 200 on `/_/health`: **{c.ms(m)}** (target <= {TARGET * 1000:.0f} ms):
  {c.verdict(m <= TARGET)}
* `run` of a plain body, exec to exit: **{c.ms(r)}** (target <= {RUN_TARGET * 1000:.0f} ms):
  {c.verdict(r <= RUN_TARGET)}

Runs alternate the rows; `/_/health` is polled every millisecond. The watchdog is a
runtime-only installation of this tree. The first invocation is timed after the start's
clock stops: what start-up left to it (a lazy import, a first collection) shows there.
"""
    c.write_section("coldstart", text)


if __name__ == "__main__":
    main()
