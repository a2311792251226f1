"""A 256 MiB payload in (base64 body) and out (base64 response) through the watchdog.

The script copies the input file to TMP_OUTPUT_DIR, so the response is that one file,
base64-encoded. The client is curl (C, streams from and to disk), the reference is the
same bytes through `base64 -d | cat | base64` on the same machine, alternated with the
watchdog run by run. The watchdog's peak RSS is VmHWM from /proc/PID/status of a
watchdog started for this benchmark alone.

Targets: peak RSS < 100 MiB, and at least half the reference's speed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import _common as c

MIB = 1 << 20
SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n'


def make_payload(size: int) -> tuple[Path, str]:
    """Random bytes, base64-encoded, kept in bench/.work between runs; and their sha256."""
    path = c.WORK_DIR / f"payload-{size // MIB}MiB.b64"
    digest_file = path.with_suffix(".sha256")
    if path.exists() and digest_file.exists():
        return path, digest_file.read_text().strip()
    digest = hashlib.sha256()
    with open(path.with_suffix(".tmp"), "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 3 * MIB))  # multiple of 3: no padding mid-file
            digest.update(chunk)
            out.write(base64.b64encode(chunk))
            left -= len(chunk)
    path.with_suffix(".tmp").rename(path)
    digest_file.write_text(digest.hexdigest() + "\n")
    return path, digest.hexdigest()


def decoded_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):  # a multiple of 4: whole base64 groups
            digest.update(base64.b64decode(chunk))
    return digest.hexdigest()


def run_reference(payload: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["sh", "-c", 'base64 -d < "$1" | cat | base64 -w0 > "$2"', "sh",
                    str(payload), str(out)], check=True)
    return time.perf_counter() - started


def run_watchdog(port: int, payload: Path, out: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-T", str(payload), "-H", "Content-Type: text/plain",
         "-H", "Expect:", "-o", str(out), "-w", "%{http_code}", f"http://127.0.0.1:{port}/"],
        capture_output=True, check=True,
    )
    elapsed = time.perf_counter() - started
    if done.stdout != b"200":
        raise RuntimeError(f"watchdog answered {done.stdout!r}: {out.read_bytes()[:300]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    c.WORK_DIR.mkdir(exist_ok=True)
    payload, digest = make_payload(args.mib * MIB)
    reference: list[float] = []
    served: list[float] = []
    with tempfile.TemporaryDirectory(dir=c.WORK_DIR) as tmp:
        workdir = Path(tmp)
        script = c.write_script(workdir / "script.sh", SCRIPT)
        out = workdir / "out.b64"
        with c.watchdog(script, workdir) as wd:
            idle_rss = wd.status("VmHWM")
            for _ in range(args.runs):
                reference.append(run_reference(payload, out))
                served.append(run_watchdog(wd.port, payload, out))
                if decoded_sha256(out) != digest:
                    raise RuntimeError("the watchdog's response is not the payload")
            peak_rss = wd.status("VmHWM")

    body_mib = payload.stat().st_size / MIB
    m_ref, m_served = c.median(reference), c.median(served)
    speed = m_ref / m_served
    rows = [
        ["`base64 -d \\| cat \\| base64`", c.ms(m_ref), f"{body_mib / m_ref:.0f} MiB/s", "1.00"],
        ["watchdog (curl client)", c.ms(m_served), f"{body_mib / m_served:.0f} MiB/s",
         f"{speed:.2f}"],
    ]
    rss_ok = peak_rss < 100 * MIB
    text = f"""
## 3. Payload: {args.mib} MiB in and out, base64 (`bench/payload.py`)

Run {c.machine()}.

{c.table(["contender", "median time", "base64 MiB/s in", "speed vs reference"], rows)}

* watchdog peak RSS (VmHWM): **{peak_rss / MIB:.1f} MiB** ({idle_rss / MIB:.1f} MiB after
  start-up) (target < 100 MiB): {c.verdict(rss_ok)}
* speed: **{speed:.2f}x** the reference's (target >= 0.5x): {c.verdict(speed >= 0.5)}

{args.runs} runs each, alternated; the body is {body_mib:.0f} MiB of base64. The
watchdog's time includes the client (curl sends the body from disk and writes the
response to disk), and the script's `cp` of the {args.mib} MiB input. The response is
verified (sha256 of its decoded bytes) between runs, untimed.
"""
    c.write_section("payload", text)


if __name__ == "__main__":
    main()
