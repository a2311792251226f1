"""`run`'s response on standard output (cli._print_response): what failed is named."""

from __future__ import annotations

import asyncio
import errno
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor import cli


async def _unreadable_after_one_chunk() -> AsyncIterator[bytes]:
    yield b"PK\x03\x04"
    raise PermissionError(13, "Permission denied")  # an output made unreadable meanwhile


def test_an_output_that_cannot_be_read_is_not_called_a_write_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It was reported as 'cannot write the response to standard output' (a review found
    it), and standard output sent to /dev/null for nothing."""
    out = io.BytesIO()
    assert asyncio.run(cli._print_response(_unreadable_after_one_chunk(), out)) == 1
    assert capsys.readouterr().err == (
        "faas-supervisor: error: cannot read the response: Permission denied\n")
    assert out.getvalue() == b"PK\x03\x04"


class _FullDisk(io.RawIOBase):
    """Standard output on a full disk: every write fails (ENOSPC); a real descriptor
    underneath, which the failure sends to /dev/null."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, _data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self) -> int:
        return self.fd


async def _one_chunk() -> AsyncIterator[bytes]:
    yield b"result"


def test_a_full_disk_on_standard_output_is_exit_4_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    with open(tmp_path / "stdout", "wb") as real:
        out = _FullDisk(real.fileno())
        status = asyncio.run(cli._print_response(_one_chunk(), out))  # type: ignore[arg-type]
        assert status == 4
        assert capsys.readouterr().err == ("faas-supervisor: error: no space left on device "
                                           "writing the response to standard output\n")
        assert os.path.samefile(f"/proc/self/fd/{real.fileno()}", os.devnull)
