"""Storage events into the controller's jobs, end to end, no step but the put (SPEC 7.2).

* Queue: moto's S3 server notifies an SQS queue of its own (`--events-queue`), which the
  controller reads.
* Push: a real Ceph RGW pushes each event to the controller's `/job/{name}` through the
  SNS topic the controller made, the service token as the topic's OpaqueData.

Results are awaited by polling the buckets and the job list with generous deadlines (the
machine is shared); a deadline passed fails with what the controller logged.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from tests.integration.ceph import CephRgw
from tests.integration.conftest import S3Server
from tests.integration.controller_fixture import (
    ControllerFactory,
    ControllerProcess,
    wait_until,
)

pytestmark = pytest.mark.integration

# Each output is named by a hash of the key, so that any key gives a plain name; it holds
# the input's bytes, and the key the job was given.
SCRIPT = r"""
set -e
h=$(printf %s "$STORAGE_OBJECT_KEY" | sha256sum | cut -c1-16)
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$h.bin"
printf %s "$STORAGE_OBJECT_KEY" > "$TMP_OUTPUT_DIR/$h.key"
echo "job $JOB_UUID took $STORAGE_OBJECT_KEY"
"""
# Keys each server must carry intact: spaces, `+`, `%` and what looks like an escape.
KEYS = ["input/my dog.txt", "input/a+b c.txt", "input/100% p%2Fq é+%20.txt"]
DEADLINE = 180  # seconds for a job to run on this shared machine


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def service(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "busybox",
        "script": SCRIPT,
        "input": [{"storage_provider": "minio", "path": f"{name}/input"}],
        "output": [{"storage_provider": "minio", "path": f"{name}-out/results"}],
    }


def minio_args(endpoint: str, access_key: str, secret_key: str, region: str) -> list[str]:
    return [
        "--minio-endpoint",
        endpoint,
        "--minio-access-key",
        access_key,
        "--minio-secret-key",
        secret_key,
        "--minio-region",
        region,
    ]


def get(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return body


def await_outputs(
    s3: Any, name: str, blobs: dict[str, bytes], controller: ControllerProcess
) -> None:
    """Every input's copy and key in the output bucket, or a failure saying which are not."""
    for key, data in blobs.items():
        h = key_hash(key)

        def both(h: str = h) -> tuple[bytes, bytes] | None:
            copy = get(s3, f"{name}-out", f"results/{h}.bin")
            seen = get(s3, f"{name}-out", f"results/{h}.key")
            return None if copy is None or seen is None else (copy, seen)

        copy, seen = wait_until(
            both,
            DEADLINE,
            f"the outputs of {key!r} in bucket {name}-out",
            controller,
        )
        assert copy == data, key
        assert seen == key.encode()


def intake_of(controller: ControllerProcess, name: str) -> str:
    """How the controller said the service's events reach it (its `service events` line)."""
    for line in controller.log_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "service events" in line and fields.get("service") == name:
            return fields.get("intake", "")
    return f"nothing logged:\n{controller.log_text()}"


def await_succeeded(controller: ControllerProcess, name: str, count: int) -> None:
    jobs = controller.wait_jobs(name, count, timeout=DEADLINE)
    statuses = [job["status"] for job in jobs.values()]
    assert statuses == ["Succeeded"] * count, (statuses, controller.log_text())


# ---- a queue: moto ------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_moto_notifies_a_queue_the_controller_reads(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    name = f"queue-{uuid.uuid4().hex[:8]}"
    queue = f"events-{name}"
    controller = controllers(
        args=[
            *minio_args(
                moto_server.endpoint,
                moto_server.access_key,
                moto_server.secret_key,
                moto_server.region,
            ),
            "--events-queue",
            queue,
        ]
    )
    s3 = moto_server.client()
    sqs = moto_server.sqs()
    controller.create(service(name))
    assert intake_of(controller, name) == "queue"
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]  # made by the controller
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    (entry,) = s3.get_bucket_notification_configuration(Bucket=name)["QueueConfigurations"]
    assert entry["QueueArn"] == arn
    assert entry["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "input/"}]

    blobs = {key: f"bytes of {key}".encode() for key in KEYS}
    for key, data in blobs.items():
        s3.put_object(Bucket=name, Key=key, Body=data)
    s3.put_object(Bucket=name, Key="elsewhere/not an input.txt", Body=b"outside the prefix")
    await_outputs(s3, name, blobs, controller)
    await_succeeded(controller, name, len(KEYS))

    # Every message was deleted once its job was stored: none comes back for a second run.

    wait_until(lambda: moto_server.queue_empty(url), 60, "the events queue to be empty", controller)
    assert len(controller.jobs(name)) == len(KEYS)

    assert controller.request("DELETE", f"/system/services/{name}").status_code == 204
    left = s3.get_bucket_notification_configuration(Bucket=name)
    assert not left.get("QueueConfigurations"), left


# ---- push: Ceph RGW ---------------------------------------------------------------------


@pytest.mark.timeout(900)  # the first Ceph test of the session also starts the cluster
def test_rgw_pushes_its_events_to_the_controller(
    controllers: ControllerFactory, ceph_rgw: CephRgw
) -> None:
    name = f"push-{uuid.uuid4().hex[:8]}"
    controller = controllers(
        args=minio_args(ceph_rgw.endpoint, ceph_rgw.access_key, ceph_rgw.secret_key, "default")
    )
    s3, sns = ceph_rgw.client(), ceph_rgw.sns()
    token = controller.create(service(name))["token"]
    assert intake_of(controller, name) == "push"
    (entry,) = s3.get_bucket_notification_configuration(Bucket=name)["TopicConfigurations"]
    assert entry["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "input/"}]
    topic = sns.get_topic_attributes(TopicArn=entry["TopicArn"])["Attributes"]
    assert topic["OpaqueData"] == token
    assert f'"EndpointAddress":"{controller.url}/job/{name}"' in topic["EndPoint"]

    blobs = {key: f"bytes of {key}".encode() for key in KEYS}
    for key, data in blobs.items():
        s3.put_object(Bucket=name, Key=key, Body=data)
    s3.put_object(Bucket=name, Key="elsewhere/not an input.txt", Body=b"outside the prefix")
    await_outputs(s3, name, blobs, controller)
    await_succeeded(controller, name, len(KEYS))
    assert len(controller.jobs(name)) == len(KEYS)  # pushed once each, not also watched

    assert controller.request("DELETE", f"/system/services/{name}").status_code == 204
    assert not s3.get_bucket_notification_configuration(Bucket=name).get("TopicConfigurations")
    arns = [t["TopicArn"] for t in sns.list_topics().get("Topics", [])]
    assert entry["TopicArn"] not in arns


@pytest.mark.timeout(180)
def test_moto_cannot_push_so_its_inputs_are_watched(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    """moto makes SNS topics but keeps no push endpoint: no topic is left behind."""
    name = f"watch-{uuid.uuid4().hex[:8]}"
    controller = controllers(
        args=minio_args(
            moto_server.endpoint, moto_server.access_key, moto_server.secret_key, "us-east-1"
        )
    )
    controller.create(service(name))
    assert intake_of(controller, name) == "watch"
    import boto3

    sns = boto3.client(
        "sns",
        endpoint_url=moto_server.endpoint,
        aws_access_key_id=moto_server.access_key,
        aws_secret_access_key=moto_server.secret_key,
        region_name=moto_server.region,
    )
    arns = [t["TopicArn"] for t in sns.list_topics().get("Topics", [])]
    assert not [a for a in arns if a.endswith(f":faas-supervisor-{name}")]


# ---- restarts -----------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_queued_events_wait_for_a_stopped_controller(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    """An object put while the controller is down is on the queue when it comes back."""
    name = f"later-{uuid.uuid4().hex[:8]}"
    args = [
        *minio_args(
            moto_server.endpoint, moto_server.access_key, moto_server.secret_key, "us-east-1"
        ),
        "--events-queue",
        f"events-{name}",
    ]
    first = controllers(args=args)
    first.create(service(name))
    assert first.stop() == 0
    s3 = moto_server.client()
    blobs = {KEYS[1]: b"put while the controller was down"}
    s3.put_object(Bucket=name, Key=KEYS[1], Body=blobs[KEYS[1]])
    second = controllers(data_dir=first.data_dir, args=args)
    assert intake_of(second, name) == "queue"
    await_outputs(s3, name, blobs, second)
    await_succeeded(second, name, 1)


@pytest.mark.timeout(900)
def test_a_restarted_controller_points_rgw_at_its_new_address(
    controllers: ControllerFactory, ceph_rgw: CephRgw
) -> None:
    """Each start sets the topic's push endpoint again (here the port changes)."""
    name = f"moved-{uuid.uuid4().hex[:8]}"
    args = minio_args(ceph_rgw.endpoint, ceph_rgw.access_key, ceph_rgw.secret_key, "default")
    first = controllers(args=args)
    first.create(service(name))
    assert first.stop() == 0
    second = controllers(data_dir=first.data_dir, args=args)
    assert second.port != first.port
    assert intake_of(second, name) == "push"
    s3 = ceph_rgw.client()
    blobs = {KEYS[2]: b"pushed to the new address"}
    s3.put_object(Bucket=name, Key=KEYS[2], Body=blobs[KEYS[2]])
    await_outputs(s3, name, blobs, second)
    await_succeeded(second, name, 1)


@pytest.mark.timeout(600)
def test_services_sharing_a_bucket_share_its_notifications(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    """Two services, two folders of one bucket: each gets its own objects' events, and
    deleting one leaves the other's notification in place."""
    bucket = f"shared-{uuid.uuid4().hex[:8]}"
    controller = controllers(
        args=[
            *minio_args(
                moto_server.endpoint, moto_server.access_key, moto_server.secret_key, "us-east-1"
            ),
            "--events-queue",
            f"events-{bucket}",
        ]
    )
    s3 = moto_server.client()
    names = [f"{bucket}-a", f"{bucket}-b"]
    for name in names:
        definition = service(name)
        definition["input"] = [{"storage_provider": "minio", "path": f"{bucket}/{name}"}]
        controller.create(definition)
    entries = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    prefixes = sorted(e["Filter"]["Key"]["FilterRules"][0]["Value"] for e in entries)
    assert prefixes == [f"{name}/" for name in names]

    for name in names:
        key = f"{name}/only for {name}.txt"
        s3.put_object(Bucket=bucket, Key=key, Body=name.encode())
    for name in names:
        key = f"{name}/only for {name}.txt"
        await_outputs(s3, name, {key: name.encode()}, controller)
        await_succeeded(controller, name, 1)

    assert controller.request("DELETE", f"/system/services/{names[0]}").status_code == 204
    (left,) = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    assert left["Filter"]["Key"]["FilterRules"][0]["Value"] == f"{names[1]}/"
