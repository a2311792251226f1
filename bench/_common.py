"""Shared helpers for the benchmarks: the machine, the watchdog under test, the baseline
FaaS Supervisor, statistics and the RESULTS.md sections.

Every benchmark runs its contenders side by side in one process run, so that the noise of
this (shared) machine hits them alike; the numbers that matter are the ratios.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"
RESULTS = BENCH_DIR / "RESULTS.md"
BASELINE_VENV = WORK_DIR / "baseline"
BASELINE_VERSION = "1.5.8"
# 1.5.8's metadata names `webdavclient3==3.14.6requests`, which pip cannot resolve, so it
# goes in without dependencies and they follow by name.
BASELINE_DEPS = ("boto3", "webdavclient3==3.14.6", "requests", "pyyaml", "rucio-clients")
# The smallest config 1.5.8 accepts: it wants a YAML mapping and nothing in it.
BASELINE_CONFIG = "{}\n"

RESULTS_HEADER = """# Benchmark results

Written by the scripts in `bench/` (`make bench` runs them all; each one also runs alone,
e.g. `python bench/latency.py`). Each section is replaced by the last run of its script,
with the date and machine of that run. The machine is shared with other developers'
test runs, so absolute numbers move from run to run; the contenders of one section are
measured side by side in the same run, and the ratios are what to compare.
"""


# ---- the machine ------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()}, {cpu}, "
        f"Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )


# ---- statistics -------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: p99 of 100 samples is the largest but one, not interpolated."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


# ---- RESULTS.md -------------------------------------------------------------------------


def write_section(name: str, text: str, path: Path = RESULTS, echo: bool = True) -> None:
    """Replace this benchmark's section of RESULTS.md (or of another document that keeps
    the same markers, such as docs/RELIABILITY.md), keeping the rest as it is."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text.strip()}\n{end}"
    current = path.read_text() if path.exists() else RESULTS_HEADER
    # Markers are lines of their own: the same text quoted in a sentence is not one.
    pattern = re.compile(f"^{re.escape(start)}$.*?^{re.escape(end)}$", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _m: block, current)
    else:
        updated = current.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(updated)
    if echo:
        print(text.strip() + "\n")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---- the watchdog under test ------------------------------------------------------------


def faas_command() -> list[str]:
    """The installed console script, as a user runs it; else the module."""
    found = shutil.which("faas-supervisor")
    return [found] if found else [sys.executable, "-m", "faas_supervisor"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Watchdog:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self, field: str) -> int:
        """A `/proc/PID/status` size field (VmHWM, VmRSS), in bytes."""
        return proc_status(self.pid, field)


def proc_status(pid: int, field: str) -> int:
    """A `/proc/PID/status` size field (VmHWM, VmRSS) of any process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@contextlib.contextmanager
def watchdog(
    script: Path, workdir: Path, env: Mapping[str, str] | None = None, name: str = "watchdog",
    executable: Path | None = None,
) -> Iterator[Watchdog]:
    """A `faas-supervisor watchdog` on a port the kernel picks (other developers' tests
    take ports on this machine too), stopped with SIGTERM at the end. `executable`: that
    installation's `faas-supervisor` (see installation()); else faas_command()."""
    log = workdir / f"{name}.log"
    program = [str(executable)] if executable is not None else faas_command()
    command = [*program, "watchdog", "--script", str(script), "--port", "0",
               "--host", "127.0.0.1", "--suppress-lock"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    try:
        port = _wait_for_port(process, log)
        yield Watchdog(process, port, log)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_port(process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(rb"watchdog ready.*?port=(\d+)", log.read_bytes())
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"the watchdog exited: {log.read_text()[-2000:]}")
        time.sleep(0.01)
    raise RuntimeError(f"the watchdog did not start in {timeout:g} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def tmpfs_dir(workdir: Path) -> Iterator[Path]:
    """A folder on tmpfs (/dev/shm) for TMPDIR, as a memory-backed emptyDir would give;
    the workdir itself when there is none."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="faas-bench-", dir=shm) as folder:
        yield Path(folder)


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- the FaaS Supervisor 1.5.8 baseline -------------------------------------------------


def baseline_python() -> Path:
    """The baseline's interpreter, installing it in bench/.work/baseline when missing."""
    python = BASELINE_VENV / "bin" / "python"
    probe = [str(python), "-c", "import faassupervisor.supervisor"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing FaaS Supervisor {BASELINE_VERSION} in {BASELINE_VENV} ...", flush=True)
    WORK_DIR.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(BASELINE_VENV)], check=True)
    pip = [str(BASELINE_VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, "--no-deps", f"faas-supervisor=={BASELINE_VERSION}"], check=True)
    subprocess.run([*pip, *BASELINE_DEPS], check=True)
    subprocess.run(probe, check=True)
    return python


# ---- installations: this tree, or a reference revision, as a user's `pip install` -------


def installation(rev: str | None = None) -> Path:
    """The `faas-supervisor` executable of a runtime-only installation, made in bench/.work.

    `rev` None: this working tree, reinstalled on every call (cheap: no dependencies).
    Else a git revision of this repository (`main`, `555bb1a`...), or the path of another
    installation's `faas-supervisor` executable, returned as it is. A revision is
    exported with `git archive` and installed once per commit, so that `--against REF`
    compares two installations made the same way, in the same run.

    The venvs hold the runtime's requirements and the controller's extras only: the test
    tools of the development venv (rich, pulled in by schemathesis, is imported by
    structlog when present) would otherwise add their import time to every start.
    """
    WORK_DIR.mkdir(exist_ok=True)
    repo = BENCH_DIR.parent
    if rev is not None and Path(rev).is_file():
        return Path(rev).resolve()
    if rev is None:
        venv, source, refresh = WORK_DIR / "installed", repo, True
    else:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", rev + "^{commit}"],
                             check=True, capture_output=True, text=True).stdout.strip()
        venv, refresh = WORK_DIR / f"ref-{sha[:12]}", False
        source = WORK_DIR / f"ref-{sha[:12]}-src"
        if not (venv / "bin" / "faas-supervisor").exists():
            shutil.rmtree(source, ignore_errors=True)
            source.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(repo), "archive", sha],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    executable = venv / "bin" / "faas-supervisor"
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    if not executable.exists():
        print(f"installing {rev or 'this tree'} in {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([*pip, f"{source}[controller]"], check=True)
    elif refresh:
        subprocess.run([*pip, "--no-deps", "--force-reinstall", str(source)], check=True,
                       stdout=subprocess.DEVNULL)
    return executable
