"""Rucio's upload cut while it registers the replica (storage_providers/rucio.py): the
file it placed on the RSE goes unless a DID names it, and the look that tells is neither
cut by a second cancellation nor waited for without end.

Found by a review, with a real watchdog: shut down mid-registration, it cancels the upload
(Invocation.abort), and the look at the DID waited on a slow Rucio; its server then
cancelled the handler (after ABORT_GRACE and SHUTDOWN_TIMEOUT), which cut the look: the
file stayed on the RSE with no DID naming it, and the client got no answer at all.

Real files on a folder RSE; the catalogue is left out: its answers are given here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.config import ProviderConfig
from faas_supervisor.storage_providers import rucio
from faas_supervisor.storage_providers.http import HttpFailure
from faas_supervisor.storage_providers.rucio import RucioProvider
from faas_supervisor.watchdog.server import ABORT_GRACE


@dataclass
class Catalogue:
    """The Rucio calls an upload makes, each answered when the test says."""

    registering: asyncio.Event = field(default_factory=asyncio.Event)  # POST /replicas sent
    looking: asyncio.Event = field(default_factory=asyncio.Event)  # the DID's meta asked
    answer: asyncio.Future[dict[str, Any] | None] | None = None  # the meta's answer
    cut: bool = False  # the look was cancelled before its answer came


@pytest.fixture
def upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[RucioProvider, Path, Catalogue]]:
    """A provider whose upload of a new DID goes to `rse/test/a1/b2/out.bin` and whose
    POST /replicas never answers."""
    target = tmp_path / "rse" / "test" / "a1" / "b2" / "out.bin"
    provider = RucioProvider(ProviderConfig("rucio", "default", {
        "host": "http://127.0.0.1:9", "account": "root", "rse": "RSE",
        "username": "u", "password": "p"}))
    catalogue = Catalogue()
    asked: list[int] = []

    async def meta(*_args: Any) -> dict[str, Any] | None:
        asked.append(1)
        if len(asked) == 1:
            return None  # before the copy: a new DID
        catalogue.looking.set()
        assert catalogue.answer is not None
        try:
            return await asyncio.shield(catalogue.answer)
        except asyncio.CancelledError:
            catalogue.cut = True
            raise

    async def new_path(*_args: Any) -> Path:
        return target

    async def call(_session: Any, method: str, url: Any, *_args: Any, **_kw: Any) -> None:
        assert (method, url.path) == ("POST", "/replicas")
        catalogue.registering.set()
        await asyncio.Event().wait()  # a Rucio that turned slow

    monkeypatch.setattr(provider, "_meta", meta)
    monkeypatch.setattr(provider, "_new_path", new_path)
    monkeypatch.setattr(provider, "_call", call)
    yield provider, target, catalogue


async def _cut_while_registering(
    provider: RucioProvider, tmp_path: Path, catalogue: Catalogue
) -> asyncio.Task[None]:
    """The upload of a small file, cancelled once its registration is under way."""
    catalogue.answer = asyncio.get_running_loop().create_future()
    src = tmp_path / "out.bin"
    src.write_bytes(b"a whole file\n")
    task = asyncio.ensure_future(provider.upload(src, "test", "out.bin"))
    await asyncio.wait_for(catalogue.registering.wait(), 30)
    task.cancel()
    return task


async def test_a_second_cancellation_waits_for_the_look_and_the_unnamed_file_goes(
    upload: tuple[RucioProvider, Path, Catalogue], tmp_path: Path
) -> None:
    """Cancelled, then cancelled again while it asks whether a DID names the file: the
    upload still ends only once the answer (none) has come and the file is removed."""
    provider, target, catalogue = upload
    task = await _cut_while_registering(provider, tmp_path, catalogue)
    await asyncio.wait_for(catalogue.looking.wait(), 30)
    assert target.read_bytes() == b"a whole file\n"
    task.cancel()  # the watchdog's server cancelling the handler
    assert catalogue.answer is not None
    catalogue.answer.set_result(None)  # no DID: the file is nobody's
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert not catalogue.cut, "the second cancellation cut the look"
    assert not target.exists()


async def test_a_look_that_does_not_answer_is_given_up_and_the_file_left(
    upload: tuple[RucioProvider, Path, Catalogue], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rucio does not answer the look: the upload ends after CHECK_TIMEOUT (well within
    the watchdog's ABORT_GRACE: its 503 still goes), the file left (nothing told that no
    DID names it)."""
    monkeypatch.setattr(rucio, "CHECK_TIMEOUT", 0.2, raising=False)
    provider, target, catalogue = upload
    task = await _cut_while_registering(provider, tmp_path, catalogue)
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 0.2 + 2.0
    assert catalogue.looking.is_set()
    assert target.read_bytes() == b"a whole file\n"


def test_the_look_ends_well_within_what_a_stopped_watchdog_waits_for() -> None:
    """The look, then the 503, within ABORT_GRACE: a margin for the rest."""
    assert rucio.CHECK_TIMEOUT <= ABORT_GRACE - 1.0


@pytest.mark.parametrize("answer", [
    {"bytes": 13, "adler32": "1f6a0452"},  # registered after all: its answer was lost
    HttpFailure("HTTP 500", True),  # nothing known
], ids=["registered", "look-failed"])
async def test_a_file_a_did_may_name_is_never_removed(
    upload: tuple[RucioProvider, Path, Catalogue], tmp_path: Path, answer: Any
) -> None:
    provider, target, catalogue = upload
    task = await _cut_while_registering(provider, tmp_path, catalogue)
    await asyncio.wait_for(catalogue.looking.wait(), 30)
    assert catalogue.answer is not None
    if isinstance(answer, BaseException):
        catalogue.answer.set_exception(answer)
    else:
        catalogue.answer.set_result(answer)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert target.read_bytes() == b"a whole file\n"
