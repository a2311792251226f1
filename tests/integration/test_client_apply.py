"""`faas-supervisor service apply -f FDL` against a real controller, both as subprocesses:
the FDL's typed fields reach the server as JSON's types, as oscar-cli sends them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import EXAMPLES, faas_command
from tests.integration.controller_fixture import ControllerProcess

pytestmark = pytest.mark.integration


def apply(controller: ControllerProcess, fdl: Path) -> subprocess.CompletedProcess[str]:
    user, password = controller.auth
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    env.update({"FAAS_ENDPOINT": controller.url, "FAAS_USER": user, "FAAS_PASSWORD": password})
    return subprocess.run([*faas_command(), "service", "apply", "-f", str(fdl)], env=env,
                          text=True, capture_output=True, timeout=120, check=False)


def test_apply_sends_an_exposed_service_typed(controller: ControllerProcess,
                                              tmp_path: Path) -> None:
    # Was refused whatever the file said: every plain scalar went as a string
    # ("expose.api_port: must be a list").
    (tmp_path / "script.sh").write_text((EXAMPLES / "exposed" / "script.sh").read_text())
    fdl = tmp_path / "web.yaml"
    fdl.write_text("""functions:
  oscar:
  - local:
      name: web
      image: nginx
      cpu: 1
      memory: 1Gi
      script: script.sh
      file_stage_in: false
      alpine: yes
      labels:
        tier: 2
      environment:
        variables:
          MODEL: 0777
      expose:
        api_port: 8080
        min_scale: 1
        max_scale: 2
        cpu_threshold: 90
        set_auth: true
        rewrite_target: no
""")
    applied = apply(controller, fdl)
    assert (applied.returncode, applied.stdout, applied.stderr) == (
        0, 'Created service "web"\n', ""), controller.log_text()

    service = controller.request("GET", "/system/services/web").json()
    assert service["expose"] == {
        "min_scale": 1, "max_scale": 2, "api_port": [8080], "cpu_threshold": 90,
        "rewrite_target": False, "default_command": False, "set_auth": True,
        "health_path": "/",
    }
    assert (service["cpu"], service["memory"]) == ("1", "1Gi")
    assert (service["file_stage_in"], service["alpine"]) == (False, True)
    # String fields keep the text written (not YAML 1.1's octal 511).
    assert service["labels"]["tier"] == "2"
    assert service["environment"]["variables"] == {"MODEL": "0777"}
    assert service["cluster_id"] == "local"
    assert service["script"] == (tmp_path / "script.sh").read_text()

    again = apply(controller, fdl)
    assert (again.returncode, again.stdout) == (0, 'Updated service "web"\n'), again.stderr


def test_apply_refuses_a_unitless_memory_before_sending(controller: ControllerProcess,
                                                        tmp_path: Path) -> None:
    # Was sent as the text "12", which the server takes (12 bytes): created, exit 0,
    # where `manifests -f` refuses the same file. The first service, valid, is not sent
    # either: nothing is, once the file is known bad.
    fdl = tmp_path / "nomem.yaml"
    fdl.write_text("""functions:
  oscar:
  - c:
      name: fine
      image: x
      memory: 1Gi
      script: echo
  - c:
      name: nomem
      image: x
      memory: 12
      script: echo
""")
    line = ("faas-supervisor: error: functions.oscar[1].c.memory: 12 is a number: write a "
            "string with its unit (256Mi, 1Gi)\n")
    applied = apply(controller, fdl)
    assert (applied.returncode, applied.stdout, applied.stderr) == (2, "", line)
    assert controller.request("GET", "/system/services").json() == []

    manifests = subprocess.run([*faas_command(), "manifests", "-f", str(fdl)], text=True,
                               capture_output=True, timeout=120, check=False)
    assert (manifests.returncode, manifests.stderr) == (2, line)
