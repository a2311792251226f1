"""Faults, with nothing lost (issue 8): a full disk, a store that goes down, a service's
watchdog killed. Real processes throughout: a watchdog or `run` whose TMPDIR is a tiny
tmpfs, a controller whose --data-dir is one, moto's server stopped and started again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import WatchdogFactory, faas_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

KiB = 1 << 10
MiB = 1 << 20
MINIO_EVENT = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "minio.json"
NO_SPACE = b"no space left on device"


# ---- a tiny disk -------------------------------------------------------------------------


@dataclass
class TinyDisk:
    path: Path

    def fill(self) -> Path:
        """Take every free byte with one file (another user of the disk, say)."""
        filler = self.path / f"filler-{uuid.uuid4().hex}"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 4096)
                    out.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        # What a partial page left: a write of one byte more no longer fits.
        return filler

    def use_every_inode(self) -> list[Path]:
        made = []
        try:
            while True:
                path = self.path / f"inode-{len(made)}"
                path.touch()
                made.append(path)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        return made

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize


@pytest.fixture
def tiny_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TinyDisk]:
    """A tmpfs (options by indirect parametrization, else 256 KiB), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; run the tests as root (make test does)")
    options = getattr(request, "param", "size=256k")
    path = tmp_path / "tiny"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options},mode=0755", "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {path}: {mounted.stderr.strip()}")
    try:
        yield TinyDisk(path)
    finally:
        # Lazily: a process the test left (it fails the test elsewhere) must not hide why.
        subprocess.run(["umount", "-l", str(path)], check=False)


def invocation_folders(folder: Path, timeout: float = 10) -> list[str]:
    """The invocation folders left once the last answer's clean-up had time to run (the
    watchdog answers before it removes the folder): polled, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(p.name for p in folder.iterdir()
                      if p.name.startswith("faas-") and not p.name.startswith("faas-runtime-"))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# ---- a full TMPDIR: the watchdog ---------------------------------------------------------

ECHO = '#!/bin/sh\ncat "$INPUT_FILE_PATH"\n'


def test_watchdog_answers_507_when_the_input_does_not_fit_and_resumes(
    watchdog: WatchdogFactory, tiny_disk: TinyDisk
) -> None:
    wd = watchdog(ECHO, env={"TMPDIR": str(tiny_disk.path)})
    big = os.urandom(MiB)
    response = requests.post(wd.url, data=big, timeout=30,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 507, response.text
    first = response.content.split(b"\n", 1)[0]
    assert first == b"no space left on device writing the input", response.content[:300]
    assert invocation_folders(tiny_disk.path) == []  # no partial folder
    # The space came back with the folder: the next call succeeds.
    ok = requests.post(wd.url, data=b"small", timeout=30,
                       headers={"Content-Type": "application/octet-stream"})
    assert ok.status_code == 200, ok.text
    assert b"small" in ok.content
    assert invocation_folders(tiny_disk.path) == []
    assert b"Traceback" not in wd.log.read_bytes()


@pytest.mark.parametrize("tiny_disk", ["size=1m,nr_inodes=64"], indirect=True)
def test_watchdog_answers_507_when_its_folder_cannot_be_made(
    watchdog: WatchdogFactory, tiny_disk: TinyDisk
) -> None:
    wd = watchdog(ECHO, env={"TMPDIR": str(tiny_disk.path)})
    taken = tiny_disk.use_every_inode()
    response = requests.post(wd.url, data=b"x", timeout=30,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 507, response.text
    assert response.text.splitlines()[0] == (
        "no space left on device writing the invocation's folder"
    )
    assert invocation_folders(tiny_disk.path) == []
    for path in taken:  # space comes back
        path.unlink()
    ok = requests.post(wd.url, data=b"back", timeout=30,
                       headers={"Content-Type": "application/octet-stream"})
    assert ok.status_code == 200, ok.text


# ---- a full TMPDIR: `run` ----------------------------------------------------------------


def run(tmp_path: Path, tmpdir: Path, *args: str, stdin: bytes = b"",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    script = tmp_path / "script.sh"
    script.write_text('#!/bin/sh\necho "read $(wc -c < "$INPUT_FILE_PATH") bytes"\n')
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID")}
    full_env["TMPDIR"] = str(tmpdir)
    full_env.update(env or {})
    return subprocess.run([*faas_command(), "run", "--script", str(script), *args],
                          input=stdin, env=full_env, capture_output=True, timeout=60)


def test_run_exits_4_with_one_line_when_the_event_does_not_fit(
    tmp_path: Path, tiny_disk: TinyDisk
) -> None:
    result = run(tmp_path, tiny_disk.path, stdin=b"A" * MiB)
    assert result.returncode == 4, result.stderr
    assert result.stderr == b"faas-supervisor: error: no space left on device writing the input\n"
    assert list(tiny_disk.path.iterdir()) == []  # nothing left: no folder, no runtime folder
    ok = run(tmp_path, tiny_disk.path, stdin=b"A" * KiB)
    assert ok.returncode == 0, ok.stderr


def test_a_job_whose_object_does_not_fit_fails_naming_it(
    tmp_path: Path, tiny_disk: TinyDisk
) -> None:
    store = tmp_path / "store"
    obj = store / "plants" / "input" / "rose+red.jpg"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(os.urandom(MiB))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"storage_providers:\n  minio:\n    default: {{path: {store}}}\n"
        "input:\n  - {storage_provider: minio.default, path: plants/input}\n"
    )
    args = ["--config", str(config), "--event-file", str(MINIO_EVENT)]
    result = run(tmp_path, tiny_disk.path, *args)
    assert result.returncode == 4, result.stderr
    assert (b"faas-supervisor: error: no space left on device writing the download of "
            b"plants/input/rose+red.jpg (minio.default)") in result.stderr
    assert b"Traceback" not in result.stderr
    assert list(tiny_disk.path.iterdir()) == []
    obj.write_bytes(b"small now")  # the space the job needs is there again
    ok = run(tmp_path, tiny_disk.path, *args)
    assert ok.returncode == 0, ok.stderr
    assert b"read 9 bytes" in ok.stderr
