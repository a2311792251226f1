"""One job per input object, whatever happens to its events and to the controller.

* Events lost (a controller stopped, a queue purged, a notification gone) are made up
  for by the listing at start and every `--reconcile-interval`.
* Events delivered twice (an SQS redelivery, a webhook POSTed again) give one job.
* A controller killed with `kill -9` among queued and running jobs, then restarted,
  ends with every input in exactly one Succeeded job.
* Objects in a path before the service was created are not its events.

Real controller processes on loopback, moto's S3 server for the S3 cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config

from tests.integration.conftest import S3Server
from tests.integration.controller_fixture import ControllerFactory, ControllerProcess, wait_until
from tests.integration.test_controller_events import (
    await_outputs,
    await_succeeded,
    intake_of,
    minio_args,
    service,
)

pytestmark = pytest.mark.integration

DEADLINE = 120


def moto_args(moto: S3Server, *extra: str) -> list[str]:
    return [*minio_args(moto.endpoint, moto.access_key, moto.secret_key, moto.region), *extra]


def drop(folder: Path, name: str, data: bytes) -> None:
    """A file arriving whole in the folder store, as an upload does."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f".{name}.partial"
    staged.write_bytes(data)
    staged.rename(folder / name)


def statuses(controller: ControllerProcess, name: str) -> list[str]:
    return sorted(job["status"] for job in controller.jobs(name).values())


# ---- the folder store: restarts ---------------------------------------------------------

COUNTING_SCRIPT = """
set -e
sleep 0.1
echo "$STORAGE_OBJECT_KEY" >> {counter}
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
"""


def counting(name: str, counter: Path) -> dict[str, Any]:
    return {
        "name": name,
        "script": COUNTING_SCRIPT.format(counter=counter),
        "input": [{"storage_provider": "minio", "path": f"{name}/input"}],
        "output": [{"storage_provider": "minio", "path": f"{name}/output"}],
    }


@pytest.mark.reliability(
    fault="missed events reconciled",
    promise="a file dropped just before kill -9 gets its job after the restart",
)
@pytest.mark.timeout(120)
def test_a_file_dropped_just_before_a_kill_gets_its_job_and_old_files_none(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    first = controllers()
    inputs = first.storage / "late" / "input"
    drop(inputs, "there before.txt", b"old")  # before the service: not its event
    counter = tmp_path / "counter"
    first.create(counting("late", counter))
    drop(inputs, "dropped.txt", b"new")
    first.stop(signal.SIGKILL)  # at once: the watcher has not seen it settle

    second = controllers(data_dir=first.data_dir)
    await_succeeded(second, "late", 1)
    assert (second.storage / "late" / "output" / "dropped.txt").read_bytes() == b"new"
    assert counter.read_text().split("\n")[:-1] == ["input/dropped.txt"]
    assert not (second.storage / "late" / "output" / "there before.txt").exists()


@pytest.mark.reliability(
    fault="kill -9 with 50 jobs",
    promise="every input ends in exactly one Succeeded job, none left Running",
)
@pytest.mark.timeout(120)
def test_a_controller_killed_among_50_jobs_runs_each_input_once_after_restart(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    first = controllers(args=["--max-jobs", "2"])
    first.create(counting("fifty", counter))
    inputs = first.storage / "fifty" / "input"
    names = [f"in {i:02}.txt" for i in range(50)]
    for name in names:
        drop(inputs, name, f"bytes of {name}".encode())
    # Killed while some jobs are done, two run, and the rest are queued or not yet seen.
    wait_until(
        lambda: (
            "Running" in statuses(first, "fifty")
            and statuses(first, "fifty").count("Succeeded") >= 4
        ),
        DEADLINE,
        "jobs running after some succeeded",
        first,
    )
    first.stop(signal.SIGKILL)
    # Its jobs' processes run on until the next controller stops them, before it answers.
    second = controllers(data_dir=first.data_dir, args=["--max-jobs", "2"])
    ran_before = Counter(counter.read_text().split("\n")[:-1])
    jobs = second.wait_jobs("fifty", 50, timeout=DEADLINE, done=("Succeeded",))
    assert len(jobs) == 50 and statuses(second, "fifty") == ["Succeeded"] * 50
    outputs = second.storage / "fifty" / "output"
    assert sorted(p.name for p in outputs.iterdir()) == names
    for name in names:
        assert (outputs / name).read_bytes() == f"bytes of {name}".encode()
    # Each script ran once, but for those the kill interrupted (at most --max-jobs),
    # which ran again: at least once each, exactly one job each.
    runs = Counter(counter.read_text().split("\n")[:-1])
    assert set(runs) == {f"input/{name}" for name in names}
    assert sum(runs.values()) <= 50 + 2, runs
    assert all(runs[key] <= ran_before[key] + 1 for key in runs), (runs, ran_before)
    for job in jobs:
        logs = second.request("GET", f"/system/logs/fifty/{job}").text
        assert "Traceback" not in logs


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.reliability(
    fault="kill -9 with 50 jobs",
    promise="leftover scripts are stopped before the interrupted job runs again",
)
@pytest.mark.timeout(120)
def test_a_restart_stops_the_scripts_a_killed_controller_left_before_running_again(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    first = controllers()
    token = first.create({"name": "lingering", "script": f"echo $$ >> {pids}\nexec sleep 300\n"})[
        "token"
    ]
    job = requests.post(
        f"{first.url}/job/lingering",
        data=b"aGk=",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()["job"]
    wait_until(lambda: pids.exists() and pids.read_text().endswith("\n"), DEADLINE, "the script")
    (script,) = map(int, pids.read_text().split())
    first.stop(signal.SIGKILL)
    assert alive(script)  # its own process group: the controller's death leaves it

    second = controllers(data_dir=first.data_dir)  # answers once leftovers are stopped
    assert not alive(script)
    wait_until(lambda: len(pids.read_text().split()) == 2, DEADLINE, "the job's second run")
    assert list(second.jobs("lingering")) == [job]
    assert second.jobs("lingering")[job]["status"] == "Running"
    second.stop()
    for pid in map(int, pids.read_text().split()):  # whatever stopping a job leaves
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def drop_not_utf8(folder: Path, name: bytes) -> None:
    """A file whose name's bytes are not UTF-8 (no object key can name it)."""
    (folder / ".staged").write_bytes(b"not a key")
    os.rename(folder / ".staged", os.path.join(os.fsencode(folder), name))


@pytest.mark.timeout(120)
def test_files_named_in_no_utf_8_are_skipped_once_each_and_stop_nothing(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """Such a name made the service's creation a 502 (its input path's first listing),
    and, dropped later, stopped every job of its input path for good."""
    controller = controllers()
    inputs = controller.storage / "names" / "input"
    inputs.mkdir(parents=True)
    drop_not_utf8(inputs, b"there before \xff.txt")
    counter = tmp_path / "counter"
    controller.create(counting("names", counter))  # 201
    drop_not_utf8(inputs, b"a\xff.txt")  # listed before the next, and every poll after
    drop(inputs, "b.txt", b"b")
    await_succeeded(controller, "names", 1)
    drop(inputs, "c.txt", b"c")  # many polls later
    await_succeeded(controller, "names", 2)
    assert counter.read_text().split("\n")[:-1] == ["input/b.txt", "input/c.txt"]
    skipped = [line for line in controller.log_text().splitlines() if "not UTF-8" in line]
    assert len(skipped) == 2, skipped
    assert "file=names/input/a\\xff.txt" in skipped[0] + skipped[1]


# ---- S3: events delivered twice ---------------------------------------------------------


@pytest.mark.reliability(
    fault="SQS message delivered twice",
    promise="a redelivered SQS message gives one job",
)
@pytest.mark.timeout(300)
def test_an_sqs_message_delivered_twice_gives_one_job(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    name = f"twice-{uuid.uuid4().hex[:8]}"
    controller = controllers(args=moto_args(moto_server, "--events-queue", f"events-{name}"))
    controller.create(service(name))
    assert intake_of(controller, name) == "queue"
    s3, sqs = moto_server.client(), moto_server.sqs()
    key = "input/once only.txt"
    s3.put_object(Bucket=name, Key=key, Body=b"once")
    await_outputs(s3, name, {key: b"once"}, controller)
    await_succeeded(controller, name, 1)

    # The server's event again, twice more (as a queue redelivers after a visibility
    # timeout): the record names the same object and ETag.
    etag = s3.head_object(Bucket=name, Key=key)["ETag"].strip('"')
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-01-01T00:00:00.000Z",
        "s3": {
            "bucket": {"name": name, "arn": f"arn:aws:s3:::{name}"},
            "object": {"key": "input/once+only.txt", "size": 4, "eTag": etag},
        },
    }
    url = sqs.get_queue_url(QueueName=f"events-{name}")["QueueUrl"]
    for _ in range(2):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [record]}))


    wait_until(lambda: moto_server.queue_empty(url), 60, "the redelivered events to be handled",
               controller)
    assert len(controller.jobs(name)) == 1
    assert controller.log_text().count("the object has a job already") >= 2


@pytest.mark.timeout(120)
def test_an_sqs_record_without_a_string_bucket_and_key_is_dropped_once(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    """A key that is a number failed the message each time it came (never deleted): an
    error logged at every redelivery, for ever."""
    queue = f"events-{uuid.uuid4().hex[:8]}"
    controller = controllers(args=moto_args(moto_server, "--events-queue", queue))
    sqs = moto_server.sqs()
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]  # made by the controller
    # Redelivered a second after each receive, while it is not deleted.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "1"})
    records = [
        {"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}, "object": {"key": 5}}},
        {"eventSource": "aws:s3", "s3": {"bucket": {"name": ["b"]}, "object": {"key": "k"}}},
    ]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": records}))


    wait_until(lambda: moto_server.queue_empty(url), 30, "the malformed message to be deleted",
               controller)
    log = controller.log_text()
    assert log.count("an event without a bucket and key") == 2, log
    assert "could not be queued" not in log


@pytest.mark.reliability(
    fault="SQS message delivered twice",
    promise="the same MinIO event posted twice to /job gives one job",
)
@pytest.mark.timeout(300)
def test_the_same_minio_event_posted_twice_gives_one_job(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    """Watched (moto cannot push): the watcher sees the object too; still one job."""
    name = f"posted-{uuid.uuid4().hex[:8]}"
    controller = controllers(args=moto_args(moto_server))
    token = controller.create(service(name))["token"]
    s3 = moto_server.client()
    key = "input/a+b c.txt"
    s3.put_object(Bucket=name, Key=key, Body=b"posted")
    etag = s3.head_object(Bucket=name, Key=key)["ETag"].strip('"')
    event = json.loads((Path(__file__).parents[1] / "fixtures/events/minio.json").read_bytes())
    obj = event["Records"][0]["s3"]["object"]
    event["Records"][0]["s3"]["bucket"]["name"] = name
    obj.update(key="input%2Fa%2Bb+c.txt", eTag=etag, size=6)
    answers = [
        requests.post(
            f"{controller.url}/job/{name}",
            json=event,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        for _ in range(2)
    ]
    assert answers[0].status_code in (200, 201)  # 200: the watcher was first
    assert answers[1].status_code == 200, answers[1].text
    assert answers[0].json() == answers[1].json()
    await_outputs(s3, name, {key: b"posted"}, controller)
    await_succeeded(controller, name, 1)
    assert list(controller.jobs(name)) == [answers[0].json()["job"]]
    # A body that names no object is a job each time.
    for _ in range(2):
        plain = requests.post(
            f"{controller.url}/job/{name}",
            data=b'{"not": "an event"}',
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert plain.status_code == 201
    assert len(controller.jobs(name)) == 3


@pytest.mark.timeout(300)
def test_an_event_with_the_s3_endpoints_etag_names_the_watched_objects_job(
    controllers: ControllerFactory,
) -> None:
    """The embedded store's S3 endpoint serves an object's MD5 as its ETag, its listing
    (whose event the watcher submits) size and time: one object, one job, all the same."""
    name = f"etag-{uuid.uuid4().hex[:8]}"
    controller = controllers()
    token = controller.create(service(name))["token"]
    provider = controller.request("GET", "/system/config").json()["minio_provider"]
    s3 = boto3.client(
        "s3", endpoint_url=provider["endpoint"], aws_access_key_id=provider["access_key"],
        aws_secret_access_key=provider["secret_key"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}))
    key = "input/a+b c.txt"
    event = json.loads((Path(__file__).parents[1] / "fixtures/events/minio.json").read_bytes())
    event["Records"][0]["s3"]["bucket"]["name"] = name

    def post(data: bytes) -> requests.Response:
        """The MinIO event of the object as the S3 endpoint describes it now."""
        etag = s3.head_object(Bucket=name, Key=key)["ETag"].strip('"')
        event["Records"][0]["s3"]["object"].update(
            key="input%2Fa%2Bb+c.txt", eTag=etag, size=len(data))
        return requests.post(f"{controller.url}/job/{name}", json=event,
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)

    s3.put_object(Bucket=name, Key=key, Body=b"first")
    (first,) = controller.wait_jobs(name, 1, timeout=DEADLINE)  # the watcher's
    answer = post(b"first")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job": first}
    assert list(controller.jobs(name)) == [first]

    # Rewritten: a new object, whose event (the watcher's or this one) gives a new job.
    s3.put_object(Bucket=name, Key=key, Body=b"second!")
    answer = post(b"second!")
    assert answer.status_code in (200, 201), answer.text  # 200: the watcher was first
    second = answer.json()["job"]
    assert second != first
    again = post(b"second!")
    assert (again.status_code, again.json()) == (200, {"job": second}), again.text
    await_succeeded(controller, name, 2)
    assert set(controller.jobs(name)) == {first, second}


# ---- S3: events lost --------------------------------------------------------------------


@pytest.mark.reliability(
    fault="missed events reconciled",
    promise=(
        "objects whose events were lost get their jobs (at start and by the periodic "
        "listing)"
    ),
)
@pytest.mark.timeout(300)
def test_objects_whose_events_were_lost_get_their_jobs(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    name = f"lost-{uuid.uuid4().hex[:8]}"
    args = moto_args(moto_server, "--events-queue", f"events-{name}", "--reconcile-interval", "1")
    s3, sqs = moto_server.client(), moto_server.sqs()
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="input/before the service.txt", Body=b"old")
    first = controllers(args=args)
    first.create(service(name))
    assert first.stop() == 0

    # Put while the controller is down, and its event lost with the queue's messages.
    down = "input/put while down.txt"
    s3.put_object(Bucket=name, Key=down, Body=b"down")
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=f"events-{name}")["QueueUrl"])
    second = controllers(data_dir=first.data_dir, args=args)
    await_outputs(s3, name, {down: b"down"}, second)
    await_succeeded(second, name, 1)

    # While it runs: the bucket's notification is gone (as a storage server that lost
    # it), so only the periodic listing can find the new object.
    s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={})
    later = "input/no event at all.txt"
    s3.put_object(Bucket=name, Key=later, Body=b"later")
    await_outputs(s3, name, {later: b"later"}, second)
    await_succeeded(second, name, 2)
    assert "its event was lost" in second.log_text()
    # The object there before the service never got a job.
    assert len(second.jobs(name)) == 2


@pytest.mark.timeout(300)
def test_an_object_whose_key_the_runtime_refuses_gets_one_failed_job(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    """A base name over 255 bytes: its job fails, saying why, once. It had no identity,
    so every listing found it without a job and started another, for ever."""
    name = f"refused-{uuid.uuid4().hex[:8]}"
    args = moto_args(moto_server, "--events-queue", f"events-{name}", "--reconcile-interval",
                     "0.2")
    controller = controllers(args=args)
    controller.create(service(name))
    assert intake_of(controller, name) == "queue"
    s3 = moto_server.client()
    s3.put_object(Bucket=name, Key="input/" + "x" * 300 + ".txt", Body=b"long")
    (job,) = controller.wait_jobs(name, 1, timeout=DEADLINE)
    log = controller.request("GET", f"/system/logs/{name}/{job}").text
    assert "its base name is over 255 bytes" in log, log

    # Then objects only the listings find, one after the other: the round that found the
    # first listed the refused object too, with its job stored, and was over before the
    # round that found the second began. Those rounds are what the count below is after.
    s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={})
    for key in ("input/first.txt", "input/second.txt"):
        s3.put_object(Bucket=name, Key=key, Body=key.encode())
        await_outputs(s3, name, {key: key.encode()}, controller)
    controller.wait_jobs(name, 3, timeout=DEADLINE)
    assert statuses(controller, name) == ["Failed", "Succeeded", "Succeeded"]
