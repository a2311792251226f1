"""Run the benchmarks one after the other; each updates its RESULTS.md section.

One at a time, never in parallel: they would measure each other. Sizes are each script's
defaults; run a script alone to change them (`python bench/latency.py --help`).
`--against REF` (a git revision, e.g. the main an issue started from) is passed to the
scripts that compare this tree with another installation; `throughput.py` then measures
the comparison (its CPU per invocation and rate at concurrency 16) instead of its levels.
Exit status: non-zero when a benchmark could not run (a missed target is a result, not
a failure; RESULTS.md says which targets are met).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# scale.py is left out: at full size it takes half an hour and a Docker engine
# (`python bench/scale.py --help`).
# container.py is left out: it needs a Docker engine and the test suite's images
# (`python bench/container.py` runs it alone). bundle.py needs `make dist` first, which
# `make bench` does.
BENCHMARKS = ("latency.py", "throughput.py", "payload.py", "coldstart.py", "job.py",
              "controller.py", "storage.py", "s3_endpoint.py", "bundle.py", "soak.py")
TAKE_AGAINST = {"throughput.py", "payload.py", "coldstart.py", "job.py", "controller.py",
                "bundle.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--against", metavar="REF",
                        help="compare with another revision where a script can")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHMARKS:
        print(f"=== {name}", flush=True)
        started = time.monotonic()
        extra = ["--against", args.against] if args.against and name in TAKE_AGAINST else []
        code = subprocess.run([sys.executable, str(here / name), *extra]).returncode
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
