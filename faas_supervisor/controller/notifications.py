"""Asking an S3-compatible server to announce a service's new input objects.

Two ways, both set up through the server's own API:

* Ceph RGW pushes: an SNS topic whose `push-endpoint` is the controller's `/job/{name}`
  and whose `OpaqueData` is the service token, and a bucket notification to it.
* A queue: a bucket notification to an SQS queue the controller reads (queue.py).

A service's bucket notifications are named `faas-supervisor.<service>.<n>`: service
names have no dots, so the prefix `faas-supervisor.<service>.` is that service's alone,
and the entries of other services (or of other tools) on the same bucket are kept. `n`
numbers the service's input paths, all buckets together: RGW (seen with Ceph 16.2)
deletes only the first of two same-named notifications on two buckets, and keeps the
other, pushing on, for ever.
Calls are blocking; the callers run them in a thread, several at once (services created
or deleted together): a bucket's configuration is read and written back under a lock of
that bucket, or two services on one bucket would each write it without the other's entry.

Removing a service's notifications goes on past a bucket that fails (one deleted before
the service has none left to remove), and always ends with its topic: what can be
removed is, and the first failure is then raised, for the caller to log.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from faas_supervisor import strict_json
from faas_supervisor.config import StoragePath, on_default_provider
from faas_supervisor.controller.buckets import BucketStore, S3Store, StoredObject
from faas_supervisor.controller.fdl import Service
from faas_supervisor.logs import get_logger

EVENTS = ["s3:ObjectCreated:*"]
ID_PREFIX = "faas-supervisor"
# Locks of buckets' configurations: a bucket's is the one its name hashes to, so one
# bucket's writes never overlap, and the locks stay as few as this whatever the buckets.
BUCKET_LOCKS = 64
logger = get_logger(component="notifications")


# A service's input paths (the provider normalised), each with the store it is listed
# through: the controller's own for the default provider's, a server's for a `minio.ID`.
Inputs = Mapping[StoragePath, BucketStore]


def input_paths(service: Service) -> list[StoragePath]:
    """The service's inputs on the default provider: the only ones whose server is asked to
    announce new objects (those on its own MinIO providers are watched: intake.py)."""
    return on_default_provider(service.input)


def list_input(store: BucketStore, path: StoragePath) -> list[StoredObject]:
    """The objects under an input path now (none while its bucket does not exist).
    Blocking: callers run it in a thread."""
    if not store.bucket_exists(path.bucket):
        return []
    return store.list_objects(path.bucket, path.key_prefix)


def topic_name(service: str) -> str:
    return f"{ID_PREFIX}-{service}"


def _ids_of(service: str) -> str:
    return f"{ID_PREFIX}.{service}."


def _buckets(service: Service) -> list[str]:
    return list(dict.fromkeys(path.bucket for path in input_paths(service)))


def _entries_by_bucket(
    service: Service, target: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """The service's notification entries, by bucket; their ids unique to the service."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for n, path in enumerate(input_paths(service)):
        grouped.setdefault(path.bucket, []).append(_entry(service.name, n, path, target))
    return grouped


def _each_bucket(buckets: Iterable[str], work: Callable[[str], None]) -> None:
    """`work(bucket)` for every bucket: a bucket gone has nothing left to undo, and one
    that fails stops none of the others (the first failure is raised at the end)."""
    failure: Exception | None = None
    for bucket in buckets:
        try:
            work(bucket)
        except Exception as exc:
            if not _no_such_bucket(exc) and failure is None:
                failure = exc
    if failure is not None:
        raise failure


def _no_such_bucket(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return bool(exc.response.get("Error", {}).get("Code") == "NoSuchBucket")
    # RGW's notification DELETE (urllib): the bucket, or the entry, is gone already.
    return isinstance(exc, urllib.error.HTTPError) and exc.code == 404


def _entry(service: str, n: int, path: StoragePath, target: dict[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": f"{_ids_of(service)}{n}", **target, "Events": EVENTS}
    if path.key_prefix:
        rule = {"Name": "prefix", "Value": path.key_prefix}
        entry["Filter"] = {"Key": {"FilterRules": [rule]}}
    return entry


class S3Notifications:
    """Bucket notifications (and RGW topics) on the default provider's server."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.s3: Any = store.client
        self._sns: Any = None
        self._locks = [threading.Lock() for _ in range(BUCKET_LOCKS)]

    @property
    def sns(self) -> Any:
        if self._sns is None:  # botocore's SNS model is only loaded when a push is tried
            self._sns = self.store.other_client("sns")
        return self._sns

    # ---- Ceph RGW: push to /job/{name} -------------------------------------------------

    def make_push_topic(self, service: Service, push_url: str) -> str | None:
        """RGW's topic for the service; None when the server keeps no push endpoint.

        RGW returns a topic's push endpoint in its attributes (`EndPoint`, JSON with
        `EndpointAddress`). MinIO and Amazon S3 refuse the call or its attributes, and
        moto makes the topic but drops them: those servers cannot push, and a topic
        made by trying is deleted again.
        """
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.parsers import ResponseParserError

        # Servers without the SNS API answer it in many ways (S3 error documents, HTML,
        # 404s): any refusal or unreadable answer means no push.
        refused = (ClientError, BotoCoreError, ResponseParserError)
        try:
            arn: str = self.sns.create_topic(
                Name=topic_name(service.name),
                Attributes={"push-endpoint": push_url, "OpaqueData": service.token},
            )["TopicArn"]
        except refused as exc:
            logger.info("the storage server has no push topics", error=str(exc))
            return None
        try:
            attributes = self.sns.get_topic_attributes(TopicArn=arn).get("Attributes", {})
            address = strict_json.loads(attributes.get("EndPoint") or "{}").get("EndpointAddress")
        except (*refused, strict_json.NotJson, AttributeError):
            address = None
        if address != push_url:
            with contextlib.suppress(*refused):
                self.sns.delete_topic(TopicArn=arn)
            logger.info("the storage server keeps no push endpoint on its topics")
            return None
        return arn

    def push_to_topic(self, service: Service, arn: str) -> None:
        """RGW adds (or replaces, by id) the notifications it is sent, keeping the others."""
        for bucket, entries in _entries_by_bucket(service, {"TopicArn": arn}).items():
            self.s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"TopicConfigurations": entries}
            )

    def remove_push(self, service: Service) -> None:
        """The service's notifications and its topic. RGW keeps a notification that a
        PUT leaves out, so each is deleted by id (RGW's `DELETE /bucket?notification=id`,
        which boto3 has no call for)."""

        def remove_from(bucket: str) -> None:
            for entry in self._entries(bucket, "TopicConfigurations"):
                if entry.get("Id", "").startswith(_ids_of(service.name)):
                    self._delete_notification(bucket, entry["Id"])

        try:
            _each_bucket(_buckets(service), remove_from)
        finally:
            self._delete_topic(service)

    def _delete_topic(self, service: Service) -> None:
        for topic in self.sns.list_topics().get("Topics", []):
            arn = topic.get("TopicArn", "")
            if arn.rsplit(":", 1)[-1] == topic_name(service.name):
                self.sns.delete_topic(TopicArn=arn)
                break

    def _delete_notification(self, bucket: str, notification: str) -> None:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        url = (
            f"{self.store.endpoint.rstrip('/')}/{quote(bucket)}"
            f"?notification={quote(notification, safe='')}"
        )
        request = AWSRequest(method="DELETE", url=url)
        from botocore.credentials import Credentials

        S3SigV4Auth(Credentials(*self.store.keys), "s3", self.store.region).add_auth(request)
        prepared = request.prepare()
        with urllib.request.urlopen(
            urllib.request.Request(prepared.url, method="DELETE", headers=dict(prepared.headers)),
            timeout=30,
        ):
            pass

    # ---- a queue -----------------------------------------------------------------------

    def notify_queue(self, service: Service, queue_arn: str) -> None:
        """Amazon S3 (and moto) replace a bucket's whole configuration with what they are
        sent: the entries of others are read first and sent back."""
        for bucket, mine in _entries_by_bucket(service, {"QueueArn": queue_arn}).items():
            self._replace(bucket, service.name, mine)

    def remove_queue(self, service: Service) -> None:
        _each_bucket(_buckets(service), lambda bucket: self._replace(bucket, service.name, []))

    def _replace(self, bucket: str, service: str, mine: list[dict[str, Any]]) -> None:
        # Read, then written back whole: no other write of this bucket's may come between.
        with self._locks[hash(bucket) % BUCKET_LOCKS]:
            self._replace_locked(bucket, service, mine)

    def _replace_locked(self, bucket: str, service: str, mine: list[dict[str, Any]]) -> None:
        current = self.s3.get_bucket_notification_configuration(Bucket=bucket)
        config: dict[str, Any] = {}
        for kind in ("TopicConfigurations", "QueueConfigurations", "LambdaFunctionConfigurations"):
            kept = [
                e for e in current.get(kind, []) if not e.get("Id", "").startswith(_ids_of(service))
            ]
            if kept:
                config[kind] = kept
        if "EventBridgeConfiguration" in current:  # present (even empty) means enabled
            config["EventBridgeConfiguration"] = current["EventBridgeConfiguration"]
        if mine:
            config["QueueConfigurations"] = [*config.get("QueueConfigurations", []), *mine]
        self.s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration=config
        )

    def _entries(self, bucket: str, kind: str) -> list[dict[str, Any]]:
        found = self.s3.get_bucket_notification_configuration(Bucket=bucket).get(kind)
        return list(found) if isinstance(found, list) else []
