"""Job statuses, watchdog modes and intake kinds are enums whose values are the strings
the store, the settings, the API and the logs have always had."""

from __future__ import annotations

from pathlib import Path

import pytest

from faas_supervisor.config import FunctionConfig, Mode, load_watchdog_settings
from faas_supervisor.controller.intake import IntakeKind
from faas_supervisor.controller.store import FINISHED, JobStatus, Store
from faas_supervisor.errors import ConfigError


def test_the_values_are_the_strings_stored_and_shown() -> None:
    assert [s.value for s in JobStatus] == ["Pending", "Running", "Succeeded", "Failed"]
    assert FINISHED == (JobStatus.SUCCEEDED, JobStatus.FAILED)
    assert [m.value for m in Mode] == ["fork", "http"]
    assert [k.value for k in IntakeKind] == ["none", "watch", "queue", "push"]


def test_a_job_reads_back_as_its_status_stored_as_the_same_text(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.sqlite3")
    try:
        store.add_job("j1", "svc")
        job = store.job("j1")
        assert job is not None and job.status is JobStatus.PENDING
        stored = store.db.execute("SELECT status FROM jobs WHERE name = 'j1'").fetchone()[0]
        assert type(stored) is str and stored == "Pending"
        store.start_job("j1")
        store.finish_job("j1", 0, b"")
        assert [j.status for j in store.jobs(status=JobStatus.SUCCEEDED)] == [JobStatus.SUCCEEDED]
    finally:
        store.close()


def test_the_mode_setting_is_parsed_once_into_its_enum() -> None:
    assert load_watchdog_settings({"mode": "http"}, {}, FunctionConfig()).mode is Mode.HTTP
    with pytest.raises(ConfigError, match=r"^mode: 'proxy' is not fork or http$"):
        load_watchdog_settings({"mode": "proxy"}, {}, FunctionConfig())
