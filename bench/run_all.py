"""Run the benchmarks one after the other; each updates its RESULTS.md section.

One at a time, never in parallel: they would measure each other. Extra arguments are not
passed on; run a script alone to change its sizes (`python bench/latency.py --help`).
Exit status: non-zero when a benchmark could not run (a missed target is a result, not
a failure; RESULTS.md says which targets are met).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

# container.py is left out: it needs a Docker engine and the test suite's images
# (`python bench/container.py` runs it alone). bundle.py needs `make dist` first, which
# `make bench` does.
BENCHMARKS = ("latency.py", "throughput.py", "payload.py", "coldstart.py", "job.py",
              "controller.py", "storage.py", "bundle.py", "soak.py")


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHMARKS:
        print(f"=== {name}", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, str(here / name)]).returncode
        print(f"=== {name}: exit {code} in {time.monotonic() - started:.0f} s\n", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"results: {here / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
