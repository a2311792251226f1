"""A storage server's bucket notifications, as services come and go (notifications.py).

* Services created together on one bucket each keep their entry: the bucket's
  configuration is read and written back whole, so two writes must not interleave.
* Deleting a service whose first input bucket is gone still removes its notifications on
  its other buckets, and its RGW topic.

moto's S3 server (queue mode), a real Ceph RGW (push mode), real controllers on loopback.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from faas_supervisor.controller.buckets import S3Store
from faas_supervisor.controller.fdl import parse_service
from faas_supervisor.controller.notifications import S3Notifications, topic_name
from tests.integration.ceph import CephRgw
from tests.integration.conftest import S3Server
from tests.integration.controller_fixture import ControllerFactory
from tests.integration.test_controller_events import intake_of, minio_args, service

pytestmark = pytest.mark.integration

# How long the first read of a bucket's notifications waits for a second one: the second
# comes at once unless a lock holds it back until the first has written.
OVERLAP_WAIT = 1.0


class FirstReadWaits:
    """The S3 client, whose first read of a bucket's notifications waits for a second
    read before it returns: two unserialised read-modify-writes then overlap for sure."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.reads = 0
        self.guard = threading.Lock()
        self.second_read = threading.Event()

    def get_bucket_notification_configuration(self, **kwargs: Any) -> Any:
        found = self.client.get_bucket_notification_configuration(**kwargs)
        with self.guard:
            self.reads += 1
            first = self.reads == 1
        if first:
            self.second_read.wait(OVERLAP_WAIT)
        else:
            self.second_read.set()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.mark.timeout(120)
def test_services_created_together_on_one_bucket_keep_both_notifications(
    moto_server: S3Server,
) -> None:
    bucket = f"together-{uuid.uuid4().hex[:8]}"
    store = S3Store(moto_server.endpoint, moto_server.access_key, moto_server.secret_key,
                    moto_server.region)
    store.create_bucket(bucket)
    sqs = store.other_client("sqs")
    url = sqs.create_queue(QueueName=f"events-{bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    notifications = S3Notifications(store)
    notifications.s3 = FirstReadWaits(store.client)
    names = [f"{bucket}-a", f"{bucket}-b"]
    services = [
        parse_service({"name": name, "script": "true",
                       "input": [{"storage_provider": "minio", "path": f"{bucket}/{name}"}]})
        for name in names
    ]
    failures: list[BaseException] = []

    def create(index: int) -> None:
        try:
            notifications.notify_queue(services[index], arn)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    entries = store.client.get_bucket_notification_configuration(Bucket=bucket)
    ids = sorted(e["Id"] for e in entries.get("QueueConfigurations", []))
    assert ids == [f"faas-supervisor.{name}.0" for name in names]


def two_buckets(name: str) -> dict[str, Any]:
    definition = service(name)
    definition["input"] = [{"storage_provider": "minio", "path": f"{name}-a/input"},
                           {"storage_provider": "minio", "path": f"{name}-b/input"}]
    return definition


@pytest.mark.timeout(180)
def test_a_service_whose_first_input_bucket_is_gone_leaves_no_queue_notification(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    name = f"gone-{uuid.uuid4().hex[:8]}"
    controller = controllers(args=[
        *minio_args(moto_server.endpoint, moto_server.access_key, moto_server.secret_key,
                    moto_server.region),
        "--events-queue", f"events-{name}",
    ])
    controller.create(two_buckets(name))
    assert intake_of(controller, name) == "queue"
    s3 = S3Store(moto_server.endpoint, moto_server.access_key, moto_server.secret_key,
                 moto_server.region).client
    assert s3.get_bucket_notification_configuration(Bucket=f"{name}-b")["QueueConfigurations"]

    assert controller.request("DELETE", f"/system/buckets/{name}-a").status_code == 204
    assert controller.request("DELETE", f"/system/services/{name}").status_code == 204
    left = s3.get_bucket_notification_configuration(Bucket=f"{name}-b")
    assert not left.get("QueueConfigurations"), left
    assert "cannot remove the service's notifications" not in controller.log_text()


@pytest.mark.timeout(900)  # the first Ceph test of the session also starts the cluster
def test_a_service_whose_first_input_bucket_is_gone_leaves_no_rgw_topic(
    controllers: ControllerFactory, ceph_rgw: CephRgw
) -> None:
    name = f"gone-{uuid.uuid4().hex[:8]}"
    controller = controllers(
        args=minio_args(ceph_rgw.endpoint, ceph_rgw.access_key, ceph_rgw.secret_key, "default")
    )
    controller.create(two_buckets(name))
    assert intake_of(controller, name) == "push"
    s3, sns = ceph_rgw.client(), ceph_rgw.sns()
    assert s3.get_bucket_notification_configuration(Bucket=f"{name}-b")["TopicConfigurations"]

    assert controller.request("DELETE", f"/system/buckets/{name}-a").status_code == 204
    assert controller.request("DELETE", f"/system/services/{name}").status_code == 204
    left = s3.get_bucket_notification_configuration(Bucket=f"{name}-b")
    assert not left.get("TopicConfigurations"), (left, controller.log_text())
    topics = [t["TopicArn"].rsplit(":", 1)[-1] for t in sns.list_topics().get("Topics", [])]
    assert topic_name(name) not in topics
    assert "cannot remove the service's notifications" not in controller.log_text()
