"""Input paths of one service that two of its providers name on one server: one job per
object (servers.input_peers), as OSCAR's one webhook per service gives one event per
object, whichever provider's listing (or the events queue) finds it first. A real
controller process, moto's S3 server as the MinIO providers' server.

Each job writes the key it took to the output bucket. Each test ends its waiting on a
later object's job (a marker): the watcher lists every input path each half second, so
by the time the marker, put after the first objects' jobs ended, has its job, a second
job for one of those would have come too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import S3Server
from tests.integration.controller_fixture import ControllerFactory, ControllerProcess, wait_until
from tests.integration.servers import start_moto

pytestmark = pytest.mark.integration

SCRIPT = 'printf %s "$STORAGE_OBJECT_KEY" > "$TMP_OUTPUT_DIR/$JOB_UUID.key"\n'
DEADLINE = 180  # seconds for jobs to run on this shared machine


def provider(moto: S3Server) -> dict[str, Any]:
    return {"endpoint": moto.endpoint, "access_key": moto.access_key,
            "secret_key": moto.secret_key, "region": moto.region, "verify": False}


def definition(name: str, inputs: list[tuple[str, str]], moto: S3Server,
               providers: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": name,
        "script": SCRIPT,
        "input": [{"storage_provider": p, "path": path} for p, path in inputs],
        "output": [{"storage_provider": inputs[0][0], "path": f"{name}-out/results"}],
        "storage_providers": {"minio": {pid: provider(moto) for pid in providers}},
    }


def taken(moto: S3Server, name: str) -> list[str]:
    """The keys the service's jobs took (their outputs), sorted."""
    s3 = moto.client()
    found = s3.list_objects_v2(Bucket=f"{name}-out", Prefix="results/").get("Contents", [])
    return sorted(s3.get_object(Bucket=f"{name}-out", Key=o["Key"])["Body"].read().decode()
                  for o in found if o["Key"].endswith(".key"))


def one_job_each(controller: ControllerProcess, moto: S3Server, name: str,
                 keys: list[str]) -> None:
    """Once the service's jobs have taken all `keys`: one job for each, succeeded."""
    wait_until(lambda: set(keys) <= set(taken(moto, name)), DEADLINE,
               f"jobs of {name} for {keys}", controller)
    jobs, took = controller.jobs(name), taken(moto, name)
    assert took == sorted(keys), f"{name} took {took}\n{controller.log_text()}"
    assert len(jobs) == len(keys), (jobs, controller.log_text())
    jobs = controller.wait_jobs(name, len(keys), timeout=DEADLINE)
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}, controller.log_text()


@pytest.mark.timeout(600)
def test_two_providers_naming_one_server_and_path_give_one_job(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    """`minio.a` and `minio.b`, identical, both with `bkt/input`, and a path of `b` holding
    one of `a`'s: one job per object. Controls: two services each with its own provider
    on one path get a job each; one provider's nested paths one job. A restart runs no
    object again, and the objects put while it was stopped get one job each."""
    tag = uuid.uuid4().hex[:8]
    shared, nested, other = f"shared-{tag}", f"nested-{tag}", f"other-{tag}"
    controller = controllers()
    two = f"two-{tag}"
    controller.create(definition(two, [
        ("minio.a", f"{shared}/input"), ("minio.b", f"{shared}/input"),
        ("minio.a", f"{nested}/input/sub"), ("minio.b", f"{nested}/input"),
    ], moto_server, ("a", "b")))
    alone = [f"alone1-{tag}", f"alone2-{tag}"]
    for name, pid in zip(alone, ("x", "y"), strict=True):
        controller.create(definition(name, [(f"minio.{pid}", f"{other}/input")], moto_server,
                                     (pid,)))
    one = f"one-{tag}"
    controller.create(definition(one, [("minio.a", f"{nested}/input"),
                                       ("minio.a", f"{nested}/input/sub")],
                                 moto_server, ("a",)))

    s3 = moto_server.client()
    s3.put_object(Bucket=shared, Key="input/first.txt", Body=b"first")
    s3.put_object(Bucket=nested, Key="input/sub/deep.txt", Body=b"deep")
    s3.put_object(Bucket=other, Key="input/first.txt", Body=b"first")
    one_job_each(controller, moto_server, two, ["input/first.txt", "input/sub/deep.txt"])
    one_job_each(controller, moto_server, one, ["input/sub/deep.txt"])
    for name in alone:
        one_job_each(controller, moto_server, name, ["input/first.txt"])

    # The marker: only `b` names this path, which `a`'s nested path overlaps.
    s3.put_object(Bucket=nested, Key="input/marker.txt", Body=b"marker")
    one_job_each(controller, moto_server, two,
                 ["input/first.txt", "input/marker.txt", "input/sub/deep.txt"])
    one_job_each(controller, moto_server, one, ["input/marker.txt", "input/sub/deep.txt"])
    for name in alone:
        one_job_each(controller, moto_server, name, ["input/first.txt"])

    assert controller.stop() == 0
    # While it is stopped, in every overlap: both providers' paths list these as new.
    s3.put_object(Bucket=shared, Key="input/down.txt", Body=b"while stopped")
    s3.put_object(Bucket=nested, Key="input/sub/down.txt", Body=b"while stopped")
    again = controllers(data_dir=controller.data_dir)
    s3.put_object(Bucket=shared, Key="input/after.txt", Body=b"after a restart")
    one_job_each(again, moto_server, two, [
        "input/after.txt", "input/down.txt", "input/first.txt", "input/marker.txt",
        "input/sub/deep.txt", "input/sub/down.txt"])


@pytest.mark.timeout(600)
def test_an_own_provider_on_the_default_server_gives_one_job(
    controllers: ControllerFactory, moto_server: S3Server
) -> None:
    """`minio.x` names `--minio-endpoint`'s server with its keys, its path holding the
    default input's (announced through the events queue): an object there gets one job
    (the queue's or the watcher's, whichever comes first), and one in the rest of the
    path the watcher's."""
    tag = uuid.uuid4().hex[:8]
    bucket, name = f"mixed-{tag}", f"mixed-{tag}"
    controller = controllers(args=[
        "--minio-endpoint", moto_server.endpoint,
        "--minio-access-key", moto_server.access_key,
        "--minio-secret-key", moto_server.secret_key,
        "--minio-region", moto_server.region,
        "--events-queue", f"events-{tag}",
    ])
    controller.create(definition(name, [("minio", f"{bucket}/input/sub"),
                                        ("minio.x", f"{bucket}/input")],
                                 moto_server, ("x",)))
    s3 = moto_server.client()
    s3.put_object(Bucket=bucket, Key="input/sub/first.txt", Body=b"first")
    one_job_each(controller, moto_server, name, ["input/sub/first.txt"])
    s3.put_object(Bucket=bucket, Key="input/marker.txt", Body=b"marker")
    one_job_each(controller, moto_server, name, ["input/marker.txt", "input/sub/first.txt"])


@pytest.fixture
def second_server(tmp_path: Path) -> Iterator[S3Server]:
    """A moto server of the test's own, beside the session's."""
    moto = start_moto(tmp_path)
    try:
        yield moto.server
    finally:
        moto.stop()


@pytest.mark.timeout(600)
def test_a_provider_pointed_at_its_peers_server_leaves_the_old_servers_objects_behind(
    controllers: ControllerFactory, moto_server: S3Server, second_server: S3Server
) -> None:
    """`minio.a` on one server, `minio.b` on another, both with `bkt/input`; an update points
    `b` at `a`'s server. An object put there then with the key and bytes of one `b` took
    on its old server is a new object: its job (found by a review: the old server's row,
    kept by the update, was taken for it, and it got none)."""
    tag = uuid.uuid4().hex[:8]
    bucket, name = f"moved-{tag}", f"moved-{tag}"
    service = definition(name, [("minio.a", f"{bucket}/input"), ("minio.b", f"{bucket}/input")],
                         moto_server, ("a", "b"))
    service["storage_providers"]["minio"]["b"] = provider(second_server)
    controller = controllers()
    controller.create(service)
    second_server.client().put_object(Bucket=bucket, Key="input/same.txt", Body=b"same")
    one_job_each(controller, moto_server, name, ["input/same.txt"])

    service["storage_providers"]["minio"]["b"] = provider(moto_server)
    answer = controller.request("PUT", "/system/services", json=service)
    assert answer.status_code == 204, answer.text
    s3 = moto_server.client()
    s3.put_object(Bucket=bucket, Key="input/same.txt", Body=b"same")
    s3.put_object(Bucket=bucket, Key="input/marker.txt", Body=b"marker")
    expected = ["input/marker.txt", "input/same.txt", "input/same.txt"]
    wait_until(lambda: len(taken(moto_server, name)) >= len(expected), DEADLINE,
               f"jobs of {name} for {expected}", controller)
    one_job_each(controller, moto_server, name, expected)


@pytest.mark.timeout(600)
def test_a_controller_moved_to_another_minio_endpoint_takes_the_objects_there_as_old(
    controllers: ControllerFactory, moto_server: S3Server, second_server: S3Server
) -> None:
    """A restart with `--minio-endpoint` pointing at another server: the default inputs
    there get a new baseline, as a provider's path an update points elsewhere does; an
    object already there gets no job, a new one does (before: a job each, as if new)."""
    tag = uuid.uuid4().hex[:8]
    name = bucket = f"switch-{tag}"
    service = {"name": name, "script": SCRIPT,
               "input": [{"storage_provider": "minio", "path": f"{bucket}/input"}],
               "output": [{"storage_provider": "minio", "path": f"{name}-out/results"}]}

    def on(server: S3Server) -> list[str]:
        return ["--minio-endpoint", server.endpoint, "--minio-access-key", server.access_key,
                "--minio-secret-key", server.secret_key, "--minio-region", server.region]

    first = controllers(args=on(moto_server))
    first.create(service)
    moto_server.client().put_object(Bucket=bucket, Key="input/first.txt", Body=b"first")
    one_job_each(first, moto_server, name, ["input/first.txt"])
    assert first.stop() == 0

    s3 = second_server.client()
    for made in (bucket, f"{name}-out"):
        s3.create_bucket(Bucket=made)
    s3.put_object(Bucket=bucket, Key="input/old.txt", Body=b"there before")
    moved = controllers(data_dir=first.data_dir, args=on(second_server))
    # Attached (its baseline, if any, taken) once its `service events` line is out.
    wait_until(lambda: f"service={name}" in moved.log_text(), DEADLINE, "the service", moved)
    s3.put_object(Bucket=bucket, Key="input/new.txt", Body=b"new")
    wait_until(lambda: taken(second_server, name), DEADLINE, "the new object's job", moved)
    s3.put_object(Bucket=bucket, Key="input/marker.txt", Body=b"marker")
    wait_until(lambda: len(taken(second_server, name)) >= 2, DEADLINE, "the marker's job",
               moved)
    assert taken(second_server, name) == ["input/marker.txt", "input/new.txt"], \
        moved.log_text()
    assert len(moved.wait_jobs(name, 3, timeout=DEADLINE)) == 3, moved.log_text()
    assert "the default provider's server is another one" in moved.log_text()
