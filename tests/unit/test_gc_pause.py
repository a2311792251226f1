"""gc_pause.collection_paused: no automatic collection inside, the state restored after."""

from __future__ import annotations

import gc

import pytest

from faas_supervisor.gc_pause import collection_paused


def test_paused_inside_and_enabled_again_after() -> None:
    assert gc.isenabled()
    with collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_enabled_again_after_an_exception() -> None:
    with pytest.raises(RuntimeError), collection_paused():
        raise RuntimeError("start-up failed")
    assert gc.isenabled()


def test_a_collector_already_off_stays_off() -> None:
    gc.disable()
    try:
        with collection_paused(), collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
