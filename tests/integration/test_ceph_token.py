"""A Ceph event's `opaqueData` (the service token, POST /job/NAME without Authorization)
that no bytes can spell, against a real controller on loopback.

JSON's lone surrogate ("\\ud800") made the token comparison raise: a 500 and a traceback
in the controller's log where a 401 belongs ("No input gives a 5xx").
"""

from __future__ import annotations

import pytest
import requests

from tests.integration.controller_fixture import ControllerProcess

pytestmark = pytest.mark.integration


def _event(opaque_data: bytes) -> bytes:
    """A Ceph RGW event, its `opaqueData` given as raw JSON text (to spell a lone surrogate)."""
    return (b'{"Records":[{"eventSource":"ceph:s3","eventTime":"2026-01-01T00:00:00Z",'
            b'"s3":{"bucket":{"name":"inbox"},"object":{"key":"in/a.txt"}},'
            b'"opaqueData":' + opaque_data + b"}]}")


@pytest.mark.timeout(120)
def test_a_lone_surrogate_as_opaque_data_is_a_401(controller: ControllerProcess) -> None:
    controller.create({
        "name": "inbox",
        "script": "true\n",
        "input": [{"storage_provider": "minio", "path": "inbox/in"}],
    })
    url = f"{controller.url}/job/inbox"
    json_header = {"Content-Type": "application/json"}
    for opaque_data in (b'"\\ud800"', b'"\\udfff"', b'"abc\\ud83d"', b'"wrong"'):
        answer = requests.post(url, data=_event(opaque_data), headers=json_header, timeout=30)
        assert answer.status_code == 401, (opaque_data, answer.status_code, answer.text)
    log = controller.log_text()
    assert "Traceback" not in log and "UnicodeEncodeError" not in log, log
    assert controller.jobs("inbox") == {}
