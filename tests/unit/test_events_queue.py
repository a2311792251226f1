"""The events queue's messages (queue.py, intake.py): a queue URL's `user:password@`
never reaches the log or an error, whatever the SDK's message quotes. settings.py
refuses such a URL; this is the line behind it, for a queue given another way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.controller.buckets import S3Store
from faas_supervisor.controller.intake import Intake
from faas_supervisor.controller.queue import QueuePoller
from faas_supervisor.controller.store import Store
from faas_supervisor.errors import ConfigError

QUEUE = "http://qu:URLPASS888@127.0.0.1:9/123456789012/evq2"


async def submit(*_: Any) -> None:
    return None


class QuotingSqs:
    """An SQS client whose calls fail with a message quoting the queue URL, as an SDK's
    may; `on_receive` runs at each receive, before it fails."""

    def __init__(self, on_receive: Any = None) -> None:
        self.on_receive = on_receive

    def get_queue_attributes(self, QueueUrl: str, **_: Any) -> dict[str, Any]:
        raise ValueError(f"Could not connect to the queue {QueueUrl}")

    def receive_message(self, QueueUrl: str, **_: Any) -> dict[str, Any]:
        if self.on_receive is not None:
            self.on_receive()
        raise ValueError(f"Could not connect to the queue {QueueUrl}")


def s3_store(sqs: QuotingSqs, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    store = S3Store("http://127.0.0.1:9", "AK", "SK", "us-east-1")
    monkeypatch.setattr(store, "other_client", lambda service: sqs)
    return store


async def test_a_queue_that_cannot_be_opened_is_named_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s.sqlite3")
    intake = Intake(s3_store(QuotingSqs(), monkeypatch), store, submit,
                    "http://127.0.0.1:1", events_queue=QUEUE)
    with pytest.raises(ConfigError) as failed:
        await intake.open()
    message = failed.value.message
    assert message.startswith("--events-queue: cannot open http://***@127.0.0.1:9/")
    assert "Could not connect to the queue" in message
    assert "URLPASS888" not in message


async def test_a_failed_poll_logs_the_queue_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    poller: QueuePoller
    sqs = QuotingSqs(on_receive=lambda: poller.close())  # one poll: the loop then ends
    poller = QueuePoller(s3_store(sqs, monkeypatch), QUEUE, submit)
    poller.url = QUEUE  # as open() takes a queue given by its URL
    poller._sqs = sqs
    poller._loop = asyncio.get_running_loop()
    poller._run()  # here, not in its thread: it returns after the one failed poll
    out = capsys.readouterr().out
    assert "cannot read the events queue" in out and "Could not connect to the queue" in out
    assert "URLPASS888" not in out
