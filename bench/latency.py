"""Latency of one invocation of `echo hi`, sequential requests on one keep-alive connection.

Three contenders, interleaved round by round so that the machine's noise hits them alike:

* floor: `subprocess.run(["/bin/sh", "script.sh"])`, the fork/exec any runtime pays;
* watchdog: `POST /` to `faas-supervisor watchdog`, with a small base64 body;
* FaaS Supervisor 1.5.8 from PyPI, started once per invocation with the same body on
  stdin, as the classic OpenFaaS watchdog runs it in OSCAR.

Targets: watchdog median <= 2x the floor's, and >= 50x faster than FaaS Supervisor's.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import tempfile
import time
from base64 import b64encode
from pathlib import Path

import _common as c

BODY = b"aGkK"  # base64 of "hi\n": an input file is decoded and written, as usual
SCRIPT = "echo hi\n"


def time_floor(script: Path, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        # Output to /dev/null rather than inherited: the bench's own stdout stays readable.
        subprocess.run(["/bin/sh", str(script)], stdout=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - started)
    return samples


def time_watchdog(conn: http.client.HTTPConnection, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("POST", "/", body=BODY, headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        data = response.read()
        samples.append(time.perf_counter() - started)
        if response.status != 200 or not data.endswith(b"hi\n"):
            raise RuntimeError(f"watchdog answered {response.status}: {data[:200]!r}")
    return samples


def time_baseline(python: Path, script: Path, workdir: Path, n: int) -> list[float]:
    env = {
        **os.environ,
        "SCRIPT": b64encode(script.read_bytes()).decode(),
        "FUNCTION_CONFIG": b64encode(c.BASELINE_CONFIG.encode()).decode(),
    }
    body = workdir / "body"
    body.write_bytes(BODY)
    samples = []
    for _ in range(n):
        with open(body, "rb") as stdin:
            started = time.perf_counter()
            done = subprocess.run(
                [str(python), "-m", "faassupervisor.supervisor"],
                stdin=stdin, capture_output=True, env=env, cwd=workdir,
            )
            samples.append(time.perf_counter() - started)
        if done.returncode != 0 or b"hi" not in done.stdout:
            raise RuntimeError(f"FaaS Supervisor failed: {done.stderr[-500:]!r}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=100,
                        help="floor and watchdog runs per round")
    parser.add_argument("--baseline-per-round", type=int, default=4)
    args = parser.parse_args()

    python = c.baseline_python()
    c.WORK_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=c.WORK_DIR) as tmp:
        workdir = Path(tmp)
        script = c.write_script(workdir / "script.sh", SCRIPT)
        floor: list[float] = []
        served: list[float] = []
        on_tmpfs: list[float] = []
        baseline: list[float] = []
        with c.tmpfs_dir(workdir) as tmpfs, c.watchdog(script, workdir) as wd, \
                c.watchdog(script, workdir, {"TMPDIR": str(tmpfs)}, name="tmpfs") as wd_tmpfs:
            conn = http.client.HTTPConnection("127.0.0.1", wd.port, timeout=60)
            conn_tmpfs = http.client.HTTPConnection("127.0.0.1", wd_tmpfs.port, timeout=60)
            # Warm up each contender (page cache, the connection, first-call costs).
            time_floor(script, 10)
            time_watchdog(conn, 20)
            time_watchdog(conn_tmpfs, 20)
            time_baseline(python, script, workdir, 1)
            for _ in range(args.rounds):
                floor += time_floor(script, args.per_round)
                served += time_watchdog(conn, args.per_round)
                on_tmpfs += time_watchdog(conn_tmpfs, args.per_round)
                baseline += time_baseline(python, script, workdir, args.baseline_per_round)
            conn.close()
            conn_tmpfs.close()

    m_floor, m_served, m_base = c.median(floor), c.median(served), c.median(baseline)
    vs_floor = m_served / m_floor
    speedup = m_base / m_served
    rows = [
        ["fork/exec floor: `subprocess.run([\"/bin/sh\", script])`", str(len(floor)),
         c.ms(m_floor), c.ms(c.percentile(floor, 90)), "1.00x"],
        ["watchdog, keep-alive `POST /`", str(len(served)), c.ms(m_served),
         c.ms(c.percentile(served, 90)), f"{vs_floor:.2f}x"],
        [f"watchdog, `TMPDIR` on tmpfs ({tmpfs.parent})", str(len(on_tmpfs)),
         c.ms(c.median(on_tmpfs)), c.ms(c.percentile(on_tmpfs, 90)),
         f"{c.median(on_tmpfs) / m_floor:.2f}x"],
        [f"FaaS Supervisor {c.BASELINE_VERSION}, one process per invocation",
         str(len(baseline)), c.ms(m_base), c.ms(c.percentile(baseline, 90)),
         f"{m_base / m_floor:.1f}x"],
    ]
    text = f"""
## 1. Latency: `echo hi`, sequential requests (`bench/latency.py`)

Run {c.machine()}.

{c.table(["contender", "runs", "median", "p90", "median / floor"], rows)}

* watchdog median / floor median = **{vs_floor:.2f}x** (target <= 2x): {c.verdict(vs_floor <= 2)};
  with `TMPDIR` on tmpfs {c.median(on_tmpfs) / m_floor:.2f}x
* FaaS Supervisor median / watchdog median = **{speedup:.0f}x** faster
  (target >= 50x): {c.verdict(speedup >= 50)}

The body is `{BODY.decode()}` (base64 of `hi`), saved as the input file by both
runtimes; the baseline gets `SCRIPT` and `FUNCTION_CONFIG` (`{c.BASELINE_CONFIG.strip()}`)
base64-encoded, as OSCAR sets them, and the body on stdin. Rounds are interleaved
({args.rounds} rounds of {args.per_round} + {args.per_round} + {args.baseline_per_round}).
The watchdog time includes the client (`http.client`, same machine).
"""
    c.write_section("latency", text)


if __name__ == "__main__":
    main()
