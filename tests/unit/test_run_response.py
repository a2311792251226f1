"""`run`'s response on standard output (cli._print_response): what failed is named."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

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
