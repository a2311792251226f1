"""Rucio, what needs no server: the Hermes message parser, where it sits among the
recognisers, input paths, the provider's settings and its helpers (SPEC 6.1, 6.2)."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from faas_supervisor.access import authorize
from faas_supervisor.cli import main
from faas_supervisor.config import (
    FunctionConfig,
    ProviderConfig,
    Secret,
    StoragePath,
    load_function_config,
)
from faas_supervisor.controller.fdl import parse_service, service_json
from faas_supervisor.controller.function_config import function_config
from faas_supervisor.errors import BadEvent, ConfigError, Forbidden
from faas_supervisor.parsers import recognise
from faas_supervisor.parsers.event import StorageObject
from faas_supervisor.storage_providers import CollectionProvider, build_provider
from faas_supervisor.storage_providers.rucio import (
    RucioProvider,
    http_date,
    jwt_expiry,
    pfn_path,
    same_content,
    unique_names,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "rucio.json"


def load(raw: Any) -> FunctionConfig:
    text = base64.b64encode(yaml.safe_dump(raw).encode()).decode()
    return load_function_config(None, {"FUNCTION_CONFIG": text}, Path("/nonexistent"))


def message(**payload: Any) -> dict[str, Any]:
    return {"event_type": "rule_ok", "payload": payload,
            "created_at": "2026-11-30 18:24:03.186209"}


def jwt(expires: float) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(expires)})}.c2ln"


# ---- the parser ---------------------------------------------------------------------------


def test_the_message_rucio_recorded_for_a_closed_dataset() -> None:
    assert recognise(json.loads(FIXTURE.read_text())) == StorageObject(
        "rucio.default", "test", "ds1", "2026-11-30 18:23:57.146489")


def test_a_file_event_names_its_scope_and_name() -> None:
    found = recognise(message(scope="user.jdoe", name="run1/data.root", rule_id="ab"))
    assert found == StorageObject("rucio.default", "user.jdoe", "run1/data.root",
                                  "2026-11-30 18:24:03.186209")
    assert isinstance(found, StorageObject) and found.name == "data.root"


@pytest.mark.parametrize(("payload", "field"), [
    ({"scope": "test"}, "payload.name"),
    ({"scope": "test", "name": 3}, "payload.name"),
    ({"scope": 3, "name": "x"}, "payload.scope"),
])
def test_a_rucio_event_missing_its_name_or_with_a_bad_field_names_it(
    payload: Any, field: str
) -> None:
    with pytest.raises(BadEvent, match=re.escape(field)):
        recognise(message(**payload))


@pytest.mark.parametrize("value", [
    {"event_type": "push", "payload": {"ref": "refs/heads/main"}},  # a webhook's body
    {"event_type": "x", "payload": "x"},
    {"event_type": "close", "payload": None},
    {"event_type": "close"},
])
def test_json_without_payload_scope_is_not_a_rucio_event(value: Any) -> None:
    # SPEC 6.1: `event_type` and `payload.scope`; anything else is plain JSON.
    assert recognise(value) is None


def test_recognised_before_the_delegated_envelope_and_dcache() -> None:
    """A Hermes message carrying fields of other kinds is still Rucio's."""
    value = {**message(scope="test", name="f"), "event": {"name": "g"}, "subscription": "s",
             "storage_provider": "minio.other"}
    found = recognise(value)
    assert isinstance(found, StorageObject) and found.provider == "rucio.default"


def test_a_delegated_rucio_event_uses_the_named_provider() -> None:
    found = recognise({"event": message(scope="test", name="f"), "storage_provider": "rucio.cern"})
    assert isinstance(found, StorageObject)
    assert (found.provider, found.bucket, found.key, found.delegated) == (
        "rucio.cern", "test", "f", True)


@pytest.mark.parametrize("name", ["../etc/passwd", "in/../../x", "in/..", "in/", "."])
def test_a_did_name_that_would_leave_the_input_folder_is_refused(name: str) -> None:
    with pytest.raises(BadEvent):
        recognise(message(scope="test", name=name))


# ---- input paths: SCOPE or SCOPE/PREFIX ------------------------------------------------------


def rucio_config(*paths: str) -> FunctionConfig:
    return load({
        "storage_providers": {"rucio": {"default": {
            "host": "https://rucio", "account": "a", "rse": "R", "username": "u",
            "password": "p"}}},
        "input": [{"storage_provider": "rucio", "path": p} for p in paths],
    })


@pytest.mark.parametrize(("path", "scope", "name", "served"), [
    ("test", "test", "anything.txt", True),
    ("test", "test", "deep/er/x", True),
    ("test", "other", "x", False),
    ("test/in", "test", "in/x", True),
    ("test/in", "test", "in/sub/x", True),
    ("test/in", "test", "input2/x", False),
    ("test/in", "test", "x", False),
])
def test_an_input_path_holds_the_dids_of_its_scope_and_prefix(
    path: str, scope: str, name: str, served: bool
) -> None:
    obj = StorageObject("rucio.default", scope, name)
    if served:
        authorize(rucio_config(path), obj)
    else:
        with pytest.raises(Forbidden):
            authorize(rucio_config(path), obj)


def test_an_output_path_is_scope_and_prefix() -> None:
    out = StoragePath("rucio", "user.jdoe/results/run1")
    assert (out.provider, out.bucket, out.folder) == ("rucio.default", "user.jdoe", "results/run1")


# ---- the provider's settings -------------------------------------------------------------------


def provider(**settings: Any) -> RucioProvider:
    base: dict[str, Any] = {"host": "rucio.example.org", "account": "jdoe", "rse": "R"}
    built = build_provider(ProviderConfig("rucio", "cern", {**base, **settings}))
    assert isinstance(built, RucioProvider) and isinstance(built, CollectionProvider)
    return built


def test_settings_need_a_login_or_an_access_token() -> None:
    provider(username="u", password=Secret("p"))
    provider(access_token=Secret("opaque-token"))
    neither = re.escape("rucio.cern has neither 'username' and 'password'")
    with pytest.raises(ConfigError, match=neither):
        provider(username="u")


def test_an_expired_access_token_without_a_refresh_token_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("rucio.cern: access_token expired")):
        provider(access_token=Secret(jwt(time.time() - 10)))
    provider(access_token=Secret(jwt(time.time() - 10)), refresh_token=Secret("r"))


def test_required_keys_and_secrets_are_read_once_at_start_up() -> None:
    with pytest.raises(ConfigError, match=re.escape("rucio.default has no 'rse'")):
        load({"storage_providers": {"rucio": {"default": {
            "host": "h", "account": "a", "username": "u", "password": "p"}}}})
    config = load({"storage_providers": {"rucio": {"default": {
        "host": "h", "account": "a", "rse": "R", "access_token": "tok-secret",
        "refresh_token": "ref-secret"}}}})
    shown = repr(config)
    assert "tok-secret" not in shown and "ref-secret" not in shown


def test_the_host_without_a_scheme_is_https() -> None:
    built = provider(username="u", password=Secret("p"))
    assert built._host == "https://rucio.example.org"
    assert built._auth_host == "https://rucio.example.org"


# ---- helpers ---------------------------------------------------------------------------------


def test_unique_names_keep_the_first_and_number_the_rest() -> None:
    assert unique_names(["a.txt", "a.txt", "b", "b", "a.txt", "x.tar.gz", "x.tar.gz", ".rc",
                         ".rc"]) == ["a.txt", "a_1.txt", "b", "b_1", "a_2.txt", "x.tar.gz",
                                     "x_1.tar.gz", ".rc", ".rc_1"]


def test_a_jwt_expiry_or_zero() -> None:
    assert jwt_expiry(jwt(1_900_000_000)) == 1_900_000_000
    assert jwt_expiry("root-ddmlab-unknown-0123abcd") == 0
    assert jwt_expiry("a.!!!.c") == 0
    assert jwt_expiry("a.b.c") == 0


def test_rucio_token_expiry_header() -> None:
    assert http_date("Mon, 30 Nov 2026 19:29:34 UTC") == 1_796_066_974
    assert http_date("") == 0


def test_file_pfns_are_local_paths_others_are_not() -> None:
    assert pfn_path("file://localhost/srv/rse/test/69/02/one.txt") == Path(
        "/srv/rse/test/69/02/one.txt")
    assert pfn_path("file://localhost/srv/a%20b") == Path("/srv/a b")
    assert pfn_path("davs://dcache:2880/pnfs/x") is None


def test_same_content_is_size_and_adler32() -> None:
    assert same_content({"bytes": 6, "adler32": "0800ab01"}, 6, "800ab01")
    assert not same_content({"bytes": 7, "adler32": "0800ab01"}, 6, "0800ab01")
    assert not same_content({"bytes": 6, "adler32": "0800ab02"}, 6, "0800ab01")


# ---- the controller: an FDL service with rucio inputs and outputs ------------------------


def test_an_fdl_service_with_rucio_inputs_and_outputs() -> None:
    settings = {"host": "https://rucio", "account": "jdoe", "rse": "R", "username": "jdoe",
                "password": "pw-secret"}
    service = parse_service({
        "name": "reco", "script": "echo", "storage_providers": {"rucio": {"cern": settings}},
        "input": [{"storage_provider": "rucio.cern", "path": "user.jdoe/in"}],
        "output": [{"storage_provider": "rucio.cern", "path": "user.jdoe/out",
                    "suffix": [".root"]}],
    })
    shown = service_json(service, {})
    assert shown["storage_providers"]["rucio"]["cern"]["password"] != "pw-secret"
    assert shown["storage_providers"]["rucio"]["cern"]["rse"] == "R"
    config = function_config(service, {})
    assert config["storage_providers"]["rucio"]["cern"] == settings
    runtime = load(config)
    assert runtime.inputs[0].provider == "rucio.cern"


def test_manifests_carry_rucio_settings_as_every_provider_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runtime's config in the pod holds the rucio provider as it holds webdav's, and
    both passwords are in the providers' Secret, not in the ConfigMap (issue 12)."""
    rucio = {"host": "https://rucio", "account": "jdoe", "rse": "R", "username": "jdoe",
             "password": "pw"}
    webdav = {"hostname": "dcache.example.org", "login": "u", "password": "dav"}
    fdl = tmp_path / "fdl.yaml"
    fdl.write_text(yaml.safe_dump({
        "functions": {"oscar": [{"c": {
            "name": "reco", "image": "busybox", "script": "echo hi",
            "input": [{"storage_provider": "rucio.cern", "path": "user.jdoe/raw"}],
            "output": [{"storage_provider": "webdav.dcache", "path": "out"}]}}]},
        "storage_providers": {"rucio": {"cern": rucio}, "webdav": {"dcache": webdav}},
    }))
    assert main(["manifests", "-f", str(fdl)]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    config = yaml.safe_load(config_map["data"]["function_config.yaml"])
    without = {k: v for k, v in rucio.items() if k != "password"}
    assert config["storage_providers"] == {
        "rucio": {"cern": without}, "webdav": {"dcache": {"hostname": "dcache.example.org",
                                                          "login": "u"}}}
    [secret] = [d for d in docs if d["metadata"]["name"] == "reco-providers"]
    assert secret["stringData"] == {"rucio.cern.password": "pw", "webdav.dcache.password": "dav"}
    assert config["input"] == [{"storage_provider": "rucio.cern", "path": "user.jdoe/raw"}]
