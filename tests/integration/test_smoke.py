"""The smallest end-to-end check: a watchdog answers health and runs a script."""

import requests

from tests.integration.conftest import EXAMPLES, WatchdogFactory


def test_cowsay_says_the_message(watchdog: WatchdogFactory) -> None:
    wd = watchdog(EXAMPLES / "cowsay" / "script.sh", EXAMPLES / "cowsay" / "function_config.yaml")
    response = requests.post(wd.url, json={"message": "hello"}, timeout=10)
    assert response.status_code == 200
    assert "< hello >" in response.text
    assert response.headers["X-Exit-Code"] == "0"
    assert wd.stop() == 0
    assert wd.invocation_folders() == []
