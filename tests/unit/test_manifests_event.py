"""A Job's `EVENT` reaches `faas-supervisor run` byte for byte, though the kubelet
expands every env value (`$(NAME)` becomes the variable NAME defined before it, `$$`
becomes `$`, any other `$` stays)."""

from __future__ import annotations

import random
import re

import kubernetes_validate
import pytest

from faas_supervisor.controller import manifests
from faas_supervisor.controller.fdl import parse_service

pytestmark = pytest.mark.timeout(60)

SERVICE = parse_service({"name": "cowsay", "image": "ghcr.io/grycap/cowsay",
                         "script": "echo\n", "environment": {"secrets": {"API_KEY": "k"}}})
_REFERENCE = re.compile(r"\$(\$|\(([^)]*)\))")


def kubelet_expand(value: str, defined: dict[str, str]) -> str:
    """What the container gets for an env value, as Kubernetes documents it: `$$` is `$`,
    `$(NAME)` is NAME's value when NAME is defined before it, else left as written."""
    def one(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        return defined.get(match.group(2), match.group(0))

    return _REFERENCE.sub(one, value)


def container_env(event: str) -> dict[str, str]:
    """The job's variables as its process sees them: each expanded against those before."""
    job = manifests.job(SERVICE, manifests.Cluster(), "cowsay-1", event)
    kubernetes_validate.validate(job, "1.30", strict=True)
    seen: dict[str, str] = {}
    for variable in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        seen[variable["name"]] = kubelet_expand(variable["value"], seen)
    return seen


EVENTS = [
    '{"cmd": "echo $$PPID costs US$$5"}',
    '{"tpl": "$(OSCAR_SERVICE_NAME) $(JOB_UUID) $(API_KEY)"}',
    "$", "$$$", "$(", "$()", "a$(b", "$$(OSCAR_SERVICE_NAME)", "plain {}",
]


@pytest.mark.parametrize("event", EVENTS)
def test_the_event_arrives_as_posted(event: str) -> None:
    env = container_env(event)
    assert env["EVENT"] == event
    assert env["JOB_UUID"] == "cowsay-1"


def test_any_mix_of_dollars_and_parentheses_arrives_as_posted() -> None:
    pick = random.Random(7)
    for _ in range(500):
        event = "".join(pick.choice("$()A_x ") for _ in range(pick.randrange(1, 24)))
        assert container_env(event)["EVENT"] == event


def test_the_stand_in_expands_as_the_kubelet() -> None:
    """What the test's expansion does with values written unescaped (the defect)."""
    defined = {"OSCAR_SERVICE_NAME": "cowsay"}
    assert kubelet_expand("US$$5 $(OSCAR_SERVICE_NAME) $(NONE) $x", defined) == (
        "US$5 cowsay $(NONE) $x"
    )


def test_the_largest_event_stays_within_what_exec_takes() -> None:
    """Escaping may double the value in the Job (well within an object's size limit);
    the process gets the event itself, at most EVENT_MAX bytes, under Linux's 128 KiB."""
    from faas_supervisor.controller.backends.kubernetes import EVENT_MAX

    event = "$" * EVENT_MAX
    job = manifests.job(SERVICE, manifests.Cluster(), "cowsay-1", event)
    (value,) = [e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
                if e["name"] == "EVENT"]
    assert len(value) == 2 * EVENT_MAX
    arrived = container_env(event)["EVENT"]
    assert arrived == event and len(f"EVENT={arrived}".encode()) < 128 * 1024
