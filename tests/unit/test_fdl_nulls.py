"""Null in a service definition's true/false and whole-number fields is the field absent.

The OSCAR manager's JSON decoder leaves a field at its default on null, and oscar_python
posts `json.dumps(yaml.safe_load(fdl))`, so an FDL's empty value arrives as null. These
fields refused it (`file_stage_in: must be true or false`, `expose.min_scale: must be a
whole number`) where `image`, `cpu` or `expose.api_port` took it as absent (a review
with a real controller found it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.controller.fdl import (
    fdl_definitions,
    load_fdl,
    parse_service_json,
    typed_definition,
)
from faas_supervisor.errors import InvalidService

SCRIPT = "#!/bin/sh\necho hi\n"
EXPOSED = {"api_port": 8080}


def post(**fields: Any) -> Any:
    """The service as the API reads a POST/PUT body."""
    body = {"name": "nb1", "script": SCRIPT, **fields}
    return parse_service_json(json.dumps(body).encode())


@pytest.mark.parametrize(
    "fields",
    [
        {"file_stage_in": None},
        {"alpine": None},
        {"enable_gpu": None},
        {"expose": {**EXPOSED, "rewrite_target": None}},
        {"expose": {**EXPOSED, "default_command": None}},
        {"expose": {**EXPOSED, "set_auth": None}},
        {"expose": {**EXPOSED, "min_scale": None}},
        {"expose": {**EXPOSED, "max_scale": None}},
        {"expose": {**EXPOSED, "cpu_threshold": None}},
    ],
    ids=lambda fields: json.dumps(fields),
)
def test_json_null_is_the_fields_default(fields: dict[str, Any]) -> None:
    absent = post(expose=EXPOSED) if "expose" in fields else post()
    assert post(**fields) == absent


def test_json_nulls_all_at_once_are_the_defaults() -> None:
    service = post(
        file_stage_in=None, alpine=None, enable_gpu=None,
        expose={"api_port": 8080, "min_scale": None, "max_scale": None,
                "cpu_threshold": None, "rewrite_target": None, "default_command": None,
                "set_auth": None},
    )
    assert (service.file_stage_in, service.alpine, service.enable_gpu) == (True, False, False)
    expose = service.expose
    assert (expose.min_scale, expose.max_scale, expose.cpu_threshold) == (1, 10, 80)
    assert (expose.rewrite_target, expose.default_command, expose.set_auth) == (
        False, False, False)


FDL_EMPTY = """\
functions:
  oscar:
  - oscar-cluster:
      name: fe1
      script: "#!/bin/sh\\necho hi\\n"
      file_stage_in:
      alpine: ~
      enable_gpu: null
      expose:
        api_port: 8080
        min_scale:
        max_scale: ~
        cpu_threshold: null
        set_auth:
        rewrite_target: ~
        default_command: null
"""


def _defaults(service: Any) -> None:
    assert (service.file_stage_in, service.alpine, service.enable_gpu) == (True, False, False)
    expose = service.expose
    assert (expose.api_port, expose.min_scale, expose.max_scale, expose.cpu_threshold) == (
        (8080,), 1, 10, 80)
    assert (expose.rewrite_target, expose.default_command, expose.set_auth) == (
        False, False, False)


def test_an_fdls_empty_values_are_the_defaults(tmp_path: Path) -> None:
    """`manifests -f` / load_fdl: an empty value, `~` or `null` is the field absent."""
    fdl = tmp_path / "empty.yaml"
    fdl.write_text(FDL_EMPTY)
    (service,) = load_fdl(fdl)
    _defaults(service)


def test_service_apply_sends_empty_values_as_null_which_is_taken(tmp_path: Path) -> None:
    """`service apply`: typed_definition sends an empty value as null, as oscar_python
    does, and the controller takes it as the default (the OSCAR manager does)."""
    fdl = tmp_path / "empty.yaml"
    fdl.write_text(FDL_EMPTY)
    ((_, definition),) = fdl_definitions(fdl)
    body = typed_definition(definition)
    assert body["file_stage_in"] is None and body["expose"]["min_scale"] is None
    _defaults(parse_service_json(json.dumps(body).encode()))


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({"file_stage_in": "maybe"}, "file_stage_in: must be true or false"),
        ({"file_stage_in": ""}, "file_stage_in: must be true or false"),  # Go refuses it
        ({"alpine": 1.5}, "alpine: must be true or false"),
        ({"expose": {**EXPOSED, "set_auth": "maybe"}}, "expose.set_auth: must be true or"),
        ({"expose": {**EXPOSED, "min_scale": 1.5}}, "expose.min_scale: must be a whole number"),
        ({"expose": {**EXPOSED, "max_scale": "ten"}}, "expose.max_scale: must be a whole"),
        ({"expose": {**EXPOSED, "cpu_threshold": -1}}, "expose.cpu_threshold: must be a"),
    ],
)
def test_a_wrong_type_is_still_refused_in_one_line(fields: dict[str, Any], line: str) -> None:
    with pytest.raises(InvalidService) as caught:
        post(**fields)
    assert caught.value.message.startswith(line), caught.value.message
    assert "\n" not in caught.value.message and caught.value.http_status == 400


def test_an_fdls_wrong_type_is_still_refused(tmp_path: Path) -> None:
    fdl = tmp_path / "bad.yaml"
    fdl.write_text(FDL_EMPTY.replace("min_scale:\n", "min_scale: 1.5\n"))
    with pytest.raises(InvalidService) as caught:
        load_fdl(fdl)
    assert caught.value.message == (
        "functions.oscar[0].oscar-cluster.expose.min_scale: must be a whole number from 0 "
        "to 100")
