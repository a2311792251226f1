"""Service definitions: FDL files and service JSON, validated with errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.config import DEFAULT_PROVIDER, StoragePath, on_default_provider
from faas_supervisor.controller.fdl import (
    from_record,
    go_json,
    load_fdl,
    parse_service,
    parse_service_json,
    service_json,
    to_record,
    unmask,
)
from faas_supervisor.controller.notifications import input_paths
from faas_supervisor.errors import InvalidService

SCRIPT = "#!/bin/sh\necho hi\n"


def base(**fields: Any) -> dict[str, Any]:
    return {"name": "plants", "image": "grycap/plants", "script": SCRIPT, **fields}


def test_defaults_are_the_managers() -> None:
    service = parse_service(base())
    assert (service.cpu, service.memory, service.log_level) == ("0.2", "256Mi", "INFO")
    assert service.file_stage_in is True


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"name": None}, "name: missing"),
        ({"name": "Plants"}, "name:"),
        ({"name": "x" * 40}, "name:"),
        ({"name": "-plants"}, "name:"),
        ({"script": ""}, "script: missing"),
        ({"cpu": "lots"}, "cpu:"),
        ({"cpu": "0"}, "cpu:"),
        ({"memory": "big"}, "memory:"),
        # Not Kubernetes quantities: an API server cannot decode a pod holding one (a 502
        # at deploy time before).
        ({"memory": "1g"}, "memory: '1g' is not a memory amount"),
        ({"memory": "512K"}, "memory: '512K' is not a memory amount"),
        ({"memory": "1t"}, "memory:"),
        ({"memory": "1p"}, "memory:"),
        ({"log_level": "LOUD"}, "log_level:"),
        ({"input": {"path": "x"}}, "input: must be a list"),
        ({"input": [{"path": "plants/in"}]}, "input[0].storage_provider: missing"),
        ({"input": [{"storage_provider": "minio"}]}, "input[0].path: missing"),
        (
            {"output": [{"storage_provider": "s3.aws", "path": "b/out"}]},
            "output[0].storage_provider:",
        ),
        ({"output": [{"storage_provider": "minio", "path": "A_B/out"}]}, "output[0].path:"),
        ({"storage_providers": {"ftp": {}}}, "storage_providers.ftp: unknown provider type"),
        (
            {"storage_providers": {"s3": {"aws": {"access_key": "a"}}}},
            "storage_providers.s3.aws.secret_key: missing",
        ),
        # Accepted, then refused by the runtime at every job (a review found it).
        (
            {"storage_providers": {"s3": {"x": {"access_key": {"a": 1}, "secret_key": "s"}}}},
            "storage_providers.s3.x.access_key: must be a string or a number",
        ),
        (
            {"storage_providers": {"webdav": {"d": {
                "hostname": "h", "login": "u", "password": "p", "verify": None}}}},
            "storage_providers.webdav.d.verify: must be a string or a number",
        ),
        ({"environment": {"variables": {"A": ["x"]}}}, "environment.variables.A:"),
        # Stored (201), then no job nor watchdog of it could start (a review found it).
        ({"environment": {"secrets": {"A=B": "x"}}},
         "environment.secrets: 'A=B' is not a variable name"),
        ({"environment": {"variables": {"1X": "x"}}},
         "environment.variables: '1X' is not a variable name"),
        ({"environment": {"secrets": {"K": "a\x00b"}}}, "environment.secrets.K: a NUL"),
        ({"environment": {"variables": {"K": "\ud800"}}},
         "environment.variables.K: not UTF-8 text"),
        ({"environment": {"secrets": {"K": "x" * (128 << 10)}}},
         "environment.secrets.K: longer than a variable can be (128 KiB with its name)"),
        ({"environment": []}, "environment: must be a mapping"),
        ({"expose": {"api_port": 70000}}, "expose.api_port:"),
        ({"expose": {"min_scale": 3, "max_scale": 1}}, "expose.max_scale:"),
        # Found by reading the fuzzed schema: min_scale 3000 started 3000 watchdogs.
        ({"expose": {"api_port": 80, "min_scale": 101, "max_scale": 101}}, "expose.min_scale:"),
        ({"expose": {"api_port": 80, "max_scale": 10**9}}, "expose.max_scale: must be a whole"),
        # Said as "must be a whole number" alone, of a whole number (a review found it).
        ({"expose": {"min_scale": -1}}, "expose.min_scale: must be a whole number from 0 to 100"),
        ({"expose": {"max_scale": -1}}, "expose.max_scale: must be a whole number from 0 to 100"),
        ({"expose": {"max_scale": 101}}, "expose.max_scale: must be a whole number from 0 to 100"),
        ({"expose": {"cpu_threshold": -1}},
         "expose.cpu_threshold: must be a whole number from 0 to 100"),
        ({"expose": {"cpu_threshold": 101}},
         "expose.cpu_threshold: must be a whole number from 0 to 100"),
        # Accepted, then an OverflowError (500) or minutes of CPU on the docker backend.
        ({"memory": "1e400"}, "memory: '1e400' is more than"),
        ({"memory": "1e99999999"}, "memory:"),
        ({"cpu": "9" * 400}, "cpu:"),
        ({"file_stage_in": "maybe"}, "file_stage_in:"),
        ({"isolation_level": "NONE"}, "isolation_level:"),
        ({"labels": "x"}, "labels: must be a mapping"),
    ],
)
def test_invalid_definitions_name_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidService) as caught:
        parse_service(base(**fields))
    assert caught.value.message.startswith(named), caught.value.message
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        # Go's decoder refuses a number for the manager's string fields; a number for
        # memory would be bytes (`12` is 12 bytes), never what was meant (issue 8).
        ({"memory": 12}, "memory: 12 is a number"),
        ({"memory": 1.5}, "memory: 1.5 is a number"),
        ({"cpu": 1}, "cpu: must be a string"),
        ({"cpu": 0.5}, "cpu: must be a string"),
        ({"cpu": 0}, "cpu: must be a string"),  # not taken as "absent", as `or` would
        ({"image": 7}, "image: must be a string"),
        ({"log_level": 10}, "log_level: must be a string"),
        ({"environment": {"variables": {"A": 1}}}, "environment.variables.A: must be a string"),
        ({"environment": {"variables": {"A": True}}}, "environment.variables.A: must be a"),
        ({"bucket_list": [1]}, "bucket_list: must be a string"),
    ],
)
def test_service_json_takes_the_managers_types(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidService) as caught:
        parse_service_json(json.dumps(base(**fields)).encode())
    assert caught.value.message.startswith(named), caught.value.message
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    "memory", ["256Mi", "1.5Gi", "2Ei", "512k", "129M", "1G", "2T", "1P", "1E", "1e9", "128974848"]
)
def test_memory_takes_the_kubernetes_quantities(memory: str) -> None:
    assert parse_service(base(memory=memory)).memory == memory


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_service_json_with_nan_or_infinity_is_not_json(constant: str) -> None:
    body = json.dumps(base(expose={"min_scale": 1})).replace('"min_scale": 1',
                                                            f'"min_scale": {constant}')
    with pytest.raises(InvalidService, match=f"service: not valid JSON .*{constant}") as caught:
        parse_service_json(body.encode())
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("memory: 12", "memory: 12 is a number"),
        ("memory: 0.5", "memory: 0.5 is a number"),
        ("cpu: .inf", "cpu: '.inf' is not a CPU amount"),
        ("cpu: .nan", "cpu: '.nan' is not a CPU amount"),
    ],
)
def test_fdl_numbers_where_the_manager_wants_strings(tmp_path: Path, line: str,
                                                     named: str) -> None:
    """An FDL file is read as oscar-cli reads it: a plain scalar in a string field is its
    text (`cpu: 1` is "1", `.inf` is ".inf"), but a unit-less memory is refused."""
    fdl = tmp_path / "plants.yaml"
    fdl.write_text(f"functions:\n  oscar:\n  - c1:\n      name: plants\n"
                   f"      script: 'echo hi\n\n'\n      {line}\n")
    with pytest.raises(InvalidService) as caught:
        load_fdl(fdl)
    assert caught.value.message.startswith(f"functions.oscar[0].c1.{named}"), \
        caught.value.message


def test_fdl_scalars_in_string_fields_are_their_text(tmp_path: Path) -> None:
    """As written, not as YAML 1.1 types them (safe_load made 0777 511 and yes true): a
    credential or a version would not be what the file says."""
    fdl = tmp_path / "plants.yaml"
    fdl.write_text("functions:\n  oscar:\n  - c1:\n      name: plants\n"
                   "      script: 'echo hi\n\n'\n      cpu: 0.50\n      memory: 1Gi\n"
                   "      image: -.inf\n"
                   "      environment: {variables: {THREADS: 4, DEBUG: true, EMPTY: null,\n"
                   "                                VERSION: 1.10, MODE: 0777, ON: yes,\n"
                   "                                A: .nan}}\n"
                   "      expose: {api_port: 8080, min_scale: 2, set_auth: yes}\n"
                   "      alpine: off\n"
                   "      storage_providers:\n"
                   "        s3: {aws: {access_key: AK, secret_key: 0777, region: eu}}\n")
    (service,) = load_fdl(fdl)
    assert (service.cpu, service.memory, service.image) == ("0.50", "1Gi", "-.inf")
    assert service.variables == {"THREADS": "4", "DEBUG": "true", "EMPTY": "",
                                 "VERSION": "1.10", "MODE": "0777", "ON": "yes", "A": ".nan"}
    assert service.storage_providers["s3"]["aws"]["secret_key"] == "0777"
    assert (service.expose.api_port, service.expose.min_scale) == ((8080,), 2)
    assert service.expose.set_auth is True and service.alpine is False


def test_not_json_is_a_400() -> None:
    with pytest.raises(InvalidService, match="not valid JSON"):
        parse_service_json(b"{nope")
    with pytest.raises(InvalidService, match="service: must be a mapping"):
        parse_service_json(b"[1]")


def test_paths_without_a_folder_go_in_the_services_bucket() -> None:
    service = parse_service(
        base(
            input=[{"storage_provider": "minio", "path": "/in/"}],
            output=[{"storage_provider": "minio.default", "path": "bkt/out/x"}],
        )
    )
    assert service.input[0].path == "plants/in"
    assert (service.output[0].bucket, service.output[0].folder) == ("bkt", "out/x")
    assert service.output[0].provider == "minio.default"


def test_the_paths_on_the_default_provider_are_each_once_however_written() -> None:
    """One answer to "which paths are on minio.default", for the buckets the API makes
    and the inputs the notifications, the watcher and the reconciler serve. Before, the
    notifications listed `minio` and `minio.default` of one folder twice (two bucket
    notifications with one prefix, which S3 refuses as overlapping)."""
    service = parse_service(
        base(
            input=[
                {"storage_provider": "minio", "path": "plants/in"},
                {"storage_provider": "minio.default", "path": "plants/in", "suffix": [".jpg"]},
                {"storage_provider": "s3.aws", "path": "other/in"},
                {"storage_provider": "minio.default", "path": "whole"},
            ],
            output=[{"storage_provider": "minio", "path": "plants/out", "prefix": ["a"]}],
            storage_providers={"s3": {"aws": {"access_key": "a", "secret_key": "b"}}},
        )
    )
    assert input_paths(service) == [
        StoragePath(DEFAULT_PROVIDER, "plants/in"),
        StoragePath(DEFAULT_PROVIDER, "plants/whole"),
    ]
    assert [(p.bucket, p.key_prefix) for p in input_paths(service)] == [
        ("plants", "in/"), ("plants", "whole/")]
    both = on_default_provider((*service.input, *service.output))
    assert [p.path for p in both] == ["plants/in", "plants/whole", "plants/out"]
    # The entries themselves keep their spelling and filters (the JSON written back).
    assert [e.to_json() for e in service.output] == [
        {"storage_provider": "minio", "path": "plants/out", "prefix": ["a"]}]


def test_an_input_path_holds_the_keys_under_its_folder() -> None:
    path = StoragePath("minio", "plants/in")
    assert path.provider == DEFAULT_PROVIDER
    assert path.holds("plants", "in/a.jpg")
    assert not path.holds("plants", "input/a.jpg")
    assert not path.holds("other", "in/a.jpg")
    assert StoragePath("minio", "plants").holds("plants", "any/key")


def test_a_provider_with_an_empty_id_is_not_the_default() -> None:
    """`minio.` was taken as `minio.default` when checked, but not when used (the
    runtime refused it at start-up): now it is refused when the service is defined."""
    with pytest.raises(InvalidService, match=r"input\[0\]\.storage_provider"):
        parse_service(base(input=[{"storage_provider": "minio.", "path": "plants/in"}]))


def test_fdl_file_reads_the_script_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "script.sh").write_text(SCRIPT)
    fdl = tmp_path / "plants.yaml"
    fdl.write_text("""functions:
  oscar:
  - my-cluster:
      name: plants
      image: grycap/plants
      cpu: 1
      memory: 1Gi
      script: script.sh
      input:
      - storage_provider: minio
        path: plants/input
""")
    (service,) = load_fdl(fdl)
    assert service.script == SCRIPT
    assert service.cpu == "1"
    assert service.cluster_id == "my-cluster"
    assert load_fdl(fdl, cluster_id="other") == []


def test_fdl_errors_say_where(tmp_path: Path) -> None:
    fdl = tmp_path / "bad.yaml"
    fdl.write_text("functions:\n  oscar:\n  - c1:\n      name: plants\n      script: missing.sh\n")
    with pytest.raises(InvalidService, match=r"functions\.oscar\[0\]\.c1\.script"):
        load_fdl(fdl)
    fdl.write_text("functions: {}\n")
    with pytest.raises(InvalidService, match=r"functions\.oscar: missing"):
        load_fdl(fdl)


def test_service_json_hides_secrets_and_adds_the_managers_labels() -> None:
    service = parse_service(
        base(
            storage_providers={
                "s3": {"aws": {"access_key": "AK", "secret_key": "SK", "region": "r"}}
            },
            environment={"variables": {"A": "1"}, "secrets": {"PASS": "very-secret"}},
        )
    ).with_token("t" * 64)
    data = service_json(service, {"endpoint": "", "access_key": "", "secret_key": "", "region": ""})
    text = go_json(data).decode()
    assert "very-secret" not in text and "SK" not in text and "AK" not in text
    assert data["token"] == "t" * 64
    assert data["labels"]["oscar_service"] == "plants"
    assert data["storage_providers"]["minio"]["default"]["secret_key"] == "hidden"
    assert data["environment"] == {"variables": {"A": "1"}, "secrets": {"PASS": ""}}
    # Sent back as it was read, the stored secrets stay.
    again = unmask(parse_service(data), service)
    assert again.storage_providers["s3"]["aws"]["secret_key"] == "SK"
    assert again.secrets == {"PASS": "very-secret"}


def test_record_round_trip_keeps_everything() -> None:
    service = parse_service(
        base(
            input=[{"storage_provider": "minio", "path": "plants/in", "suffix": [".jpg"]}],
            environment={"secrets": {"K": "v"}},
            labels={"team": "a"},
            expose={"api_port": 8081},
        )
    ).with_token("abc")
    assert from_record(to_record(service)) == service


def test_go_json_is_compact_and_escapes_like_go() -> None:
    text = go_json({"a": [1, 2], "s": "x > y & <z> é"}).decode()
    assert text == '{"a":[1,2],"s":"x \\u003e y \\u0026 \\u003cz\\u003e é"}'
    assert json.loads(text)["s"] == "x > y & <z> é"


def test_a_definition_stored_by_an_older_version_still_loads() -> None:
    """What an older version stored (a secret named `MY KEY`, a provider setting that is
    a list) is read back as it was: the checks added since apply to what comes in. The
    controller refused to start on such a store (a review found it)."""
    from faas_supervisor.controller.fdl import from_record

    record = {**base(), "token": "t0k", "memory": "1g",
              "environment": {"secrets": {"MY KEY": "v"}, "variables": {"1ST": "x"}},
              "storage_providers": {"s3": {"x": {"access_key": "a", "secret_key": "s",
                                                 "tags": ["t"]}}}}
    service = from_record(json.dumps(record))
    assert service.secrets == {"MY KEY": "v"} and service.variables == {"1ST": "x"}
    assert service.token == "t0k" and service.memory == "1g"
    with pytest.raises(InvalidService):
        parse_service(record)


# ---- OSCAR fields this project handles its own way ----------------------------------------


def test_node_port_is_kept_shown_and_stored() -> None:
    """OSCAR's `nodePort` (one per api_port) was dropped: 201, and GET showed none."""
    service = parse_service(base(expose={"api_port": [8000, 9000], "nodePort": [30080, 30090]}))
    assert service.expose.node_port == (30080, 30090)
    expose = service_json(service, {})["expose"]
    assert expose["nodePort"] == [30080, 30090]
    # In the manager's field order: after rewrite_target, before default_command.
    keys = list(expose)
    assert keys.index("rewrite_target") < keys.index("nodePort") < keys.index("default_command")
    assert from_record(to_record(service.with_token("t"))) == service.with_token("t")
    one = parse_service(base(expose={"api_port": 8000, "nodePort": 30080}))
    assert one.expose.node_port == (30080,)
    assert "nodePort" not in service_json(parse_service(base(expose={"api_port": 1})), {})[
        "expose"]


@pytest.mark.parametrize(
    ("expose", "says"),
    [
        ({"api_port": 8000, "nodePort": [65536]}, "is not a TCP port"),
        ({"api_port": 8000, "nodePort": -1}, "is not a TCP port"),
        ({"api_port": 8000, "nodePort": "30080"}, "must be a list"),
        ({"api_port": 8000, "nodePort": True}, "is not a TCP port"),
        ({"api_port": [8000, 9000], "nodePort": [30080]}, "one node port per api_port"),
        ({"nodePort": [30080]}, "one node port per api_port"),
        ({"api_port": [8000, 9000], "nodePort": [30080, 30080]}, "given twice"),
    ],
)
def test_a_node_port_is_a_tcp_port_per_api_port(expose: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidService, match=f"^expose.nodePort: .*{says}") as raised:
        parse_service(base(expose=expose))
    assert "\n" not in raised.value.message


def test_a_mount_is_refused_and_its_empty_form_accepted() -> None:
    """`mount` was accepted (201) and dropped: nothing was ever mounted."""
    for mount in ({"storage_provider": "minio.default", "path": "mnt/data"},
                  {"storage_provider": "minio.default"}, {"path": "mnt/data"}):
        with pytest.raises(InvalidService, match=r"^mount: .*not supported here.*input") as got:
            parse_service(base(mount=mount))
        assert "\n" not in got.value.message
    with pytest.raises(InvalidService, match=r"^mount: must be a mapping"):
        parse_service(base(mount="minio.default"))
    # What the dashboard and the clients send with every service.
    for empty in ({"storage_provider": "", "path": ""}, {}, None,
                  {"storage_provider": None, "path": None}):
        parse_service(base(mount=empty))
    # Its own answers too (service_json shows the empty form): an update sends them back.
    parse_service(service_json(parse_service(base()), {}))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"labels": {"team name": "data science"}}, "labels: 'team name' is not a label key"),
        ({"labels": {"example.com/owner": "x/y"}},
         "labels.example.com/owner: 'x/y' is not a label value"),
        ({"labels": {"team": "a b"}}, "labels.team: 'a b' is not a label value"),
        ({"labels": {"team": "v" * 64}}, "labels.team: 'v+' is not a label value"),
        ({"labels": {"x/y/z": "v"}}, "labels: 'x/y/z' is not a label key"),
        ({"labels": {"Example.com/a": "v"}}, "labels: 'Example.com/a' is not a label key"),
        ({"labels": {"/a": "v"}}, "labels: '/a' is not a label key"),
        ({"labels": {"a" * 64: "v"}}, "labels: 'a+' is not a label key"),
        ({"labels": {"-a": "v"}}, "labels: '-a' is not a label key"),
        ({"annotations": {"bad annotation": "v"}},
         "annotations: 'bad annotation' is not an annotation key"),
        ({"annotations": {"a_": "v"}}, "annotations: 'a_' is not an annotation key"),
    ],
)
def test_labels_and_annotations_follow_the_kubernetes_rules(
    fields: dict[str, Any], says: str
) -> None:
    """They passed, and the API server refused every object carrying them."""
    with pytest.raises(InvalidService, match=f"^{says}") as raised:
        parse_service(base(**fields))
    assert "\n" not in raised.value.message


def test_labels_and_annotations_kubernetes_takes_pass() -> None:
    service = parse_service(base(
        labels={"team": "data", "example.com/owner": "x.y_z-1", "empty": "", "A.b_c": "V"},
        annotations={"example.com/a": "any text at all / é", "k8s.io/x-y": "", "a" * 63: "v"},
    ))
    assert service.labels["example.com/owner"] == "x.y_z-1"
    assert service.annotations["example.com/a"] == "any text at all / é"


def test_labels_refused_now_still_load_when_stored_before(tmp_path: Path) -> None:
    """A service stored with such labels by an older version loads (the controller
    starts); a new definition with them is refused, an FDL file's as well."""
    record = {**base(), "token": "t0k", "labels": {"team name": "data science"},
              "annotations": {"bad annotation": "v"}}
    service = from_record(json.dumps(record))
    assert service.labels == {"team name": "data science"}
    assert service.annotations == {"bad annotation": "v"}
    with pytest.raises(InvalidService, match=r"^labels: 'team name'"):
        parse_service(record)
    fdl = tmp_path / "fdl.yaml"
    fdl.write_text("functions: {oscar: [{c: {name: x, image: i, script: echo,\n"
                   "  labels: {'team name': 'data science'}}}]}\n")
    with pytest.raises(InvalidService, match=r"^functions.oscar\[0\].c.labels: 'team name'"):
        load_fdl(fdl)
