"""Object-created events read from an SQS queue (`--events-queue`), one job per record.

For S3 servers that notify through a queue rather than by pushing (Amazon S3, moto): the
storage server puts an `aws:s3` event on the queue for each new object, and this poller
long-polls the queue in a thread of its own, hands each message to the event loop, and
deletes it once its jobs are stored. A controller that stops between the two leaves the
message on the queue, to be delivered again: events are not lost, and the redelivery
starts no second job (the object's identity is stored with its job: jobs.py).

Each record is routed to every service with an input path holding its bucket and key,
and given to the job as a delegated event for `minio.default`: the record says `aws:s3`,
but the object is on the controller's own S3 server, not on Amazon's.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_plus

from faas_supervisor import strict_json
from faas_supervisor.config import DEFAULT_PROVIDER
from faas_supervisor.controller.buckets import S3Store
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.notifications import input_paths
from faas_supervisor.logs import get_logger
from faas_supervisor.storage_providers import scrub, url_secrets

WAIT_SECONDS = 10  # SQS long polling: the receive returns at once when a message comes
RETRY_SECONDS = 2.0  # after the queue could not be read
logger = get_logger(component="queue")

Submit = Callable[[Service, bytes], Awaitable[object]]


class QueuePoller:
    def __init__(self, store: S3Store, queue: str, submit: Submit) -> None:
        self.store = store
        self.queue = queue  # a name, or the URL of an existing queue
        # What the log and errors show of it: settings.py refuses a `user:password@`, and
        # should one come another way, an SDK's message may still quote the URL.
        self._secrets = url_secrets(queue)
        self.shown = scrub(queue, self._secrets)
        self.submit = submit
        self.url = ""
        self.arn = ""
        self._sqs: Any = None
        self._services: dict[str, Service] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- set-up ------------------------------------------------------------------------

    def open(self) -> str:
        """The queue (made when missing) and its ARN, which bucket notifications name.
        Blocking: called in a thread."""
        self._sqs = self.store.other_client("sqs")
        name = self.queue.rstrip("/").rsplit("/", 1)[-1]
        if "://" in self.queue:
            self.url = self.queue  # an existing queue, maybe of another account: used as is
        else:
            self.url = self._sqs.create_queue(QueueName=name)["QueueUrl"]  # idempotent
        attributes = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        self.arn = attributes["Attributes"]["QueueArn"]
        return self.arn

    def shown_error(self, exc: BaseException) -> str:
        """An SDK's message, without the queue URL's userinfo (scrub)."""
        return scrub(str(exc), self._secrets)

    def add(self, service: Service) -> None:
        self._services[service.name] = service

    def remove(self, name: str) -> None:
        self._services.pop(name, None)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A daemon thread, not the loop's executor: a receive waiting on the queue must
        # not hold up the controller's shutdown (the executor is joined at exit).
        self._thread = threading.Thread(target=self._run, name="events-queue", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()  # the thread ends after its current receive; never waited for

    # ---- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        assert self._loop is not None
        while not self._stop.is_set():
            try:
                messages = self._sqs.receive_message(
                    QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=WAIT_SECONDS
                ).get("Messages", [])
            except Exception as exc:  # the server is down for a while: try again later
                logger.warning("cannot read the events queue",
                               queue=scrub(self.url, self._secrets),
                               error=self.shown_error(exc))
                self._stop.wait(RETRY_SECONDS)
                continue
            done = []
            for message in messages:
                if self._stop.is_set():
                    return  # not handled: the queue delivers it again later
                future = asyncio.run_coroutine_threadsafe(
                    self._handle(message.get("Body", "")), self._loop
                )
                try:
                    future.result()
                except Exception as exc:  # left on the queue, delivered again later
                    logger.error("an event could not be queued", error=str(exc))
                    continue
                done.append(message["ReceiptHandle"])
            if done:
                try:
                    self._sqs.delete_message_batch(
                        QueueUrl=self.url,
                        Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(done)],
                    )
                except Exception as exc:
                    logger.warning("cannot delete handled events", error=self.shown_error(exc))

    # ---- in the event loop -------------------------------------------------------------

    async def _handle(self, body: str) -> None:
        try:
            message = strict_json.loads(body)
        except strict_json.NotJson:
            logger.warning("not an event on the events queue", body=body[:200])
            return
        records = message.get("Records") if isinstance(message, dict) else None
        if not isinstance(records, list):
            # The `s3:TestEvent` a server sends when a notification is configured.
            return
        for record in records:
            for service, event in self._route(record):
                logger.info("object created", service=service.name)
                await self.submit(service, event)

    def _route(self, record: Any) -> list[tuple[Service, bytes]]:
        try:
            bucket = record["s3"]["bucket"]["name"]
            key = record["s3"]["object"]["key"]
        except (KeyError, TypeError):
            bucket = key = None
        if not isinstance(bucket, str) or not isinstance(key, str):
            # Malformed for good: handled (so deleted), or the queue would redeliver it
            # for ever, an error each time.
            logger.warning("an event without a bucket and key", record=str(record)[:200])
            return []
        key = unquote_plus(key)  # S3 URL-encodes it
        if key.endswith("/"):
            return []  # a folder marker is not an object a service processes
        event = json.dumps(
            {"event": {"Records": [record]}, "storage_provider": DEFAULT_PROVIDER},
            separators=(",", ":"),
        ).encode()
        found = [
            (service, event)
            for service in self._services.values()
            if any(path.holds(bucket, key) for path in input_paths(service))
        ]
        if not found:
            logger.info("an event no service takes", bucket=bucket, key=key)
        return found
