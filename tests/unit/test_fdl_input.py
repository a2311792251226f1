"""Service definitions that Python reads but nothing downstream can hold: refused with a
one-line error naming the field, never stored (a lone surrogate made every later answer
holding the service a 500), never a crash of the CLI reading an FDL file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.controller.fdl import (
    fdl_definitions,
    from_record,
    go_json,
    load_fdl,
    parse_service,
    parse_service_json,
    service_json,
    to_record,
    typed_definition,
    unmask,
)
from faas_supervisor.errors import InvalidService

PROVIDERS = '"storage_providers":{"s3":{"aws":{"access_key":"a","secret_key":"b",%s}}}'


# Each is JSON text as a client sends it: `\udc80` is a valid JSON escape.
@pytest.mark.parametrize(
    ("fragment", "named"),
    [
        ('"script":"echo \\udc80"', "script:"),
        ('"image":"x\\udc80"', "image:"),
        ('"labels":{"k":"\\udc80"}', "labels.k:"),
        ('"annotations":{"\\udc80":"v"}', "annotations: a key"),
        ('"cluster_id":"\\udc80"', "cluster_id:"),
        ('"allowed_users":["\\udc80"]', "allowed_users[0]:"),
        ('"input":[{"storage_provider":"minio","path":"bkt/\\udc80"}]', "input[0].path:"),
        ('"output":[{"storage_provider":"minio","path":"bkt/o","prefix":["\\udc80"]}]',
         "output[0].prefix[0]:"),
        ('"output":[{"storage_provider":"minio","path":"bkt/o","suffix":["\\udc80"]}]',
         "output[0].suffix[0]:"),
        (PROVIDERS % '"region":"\\udc80"', "storage_providers.s3.aws.region:"),
        (PROVIDERS % '"\\udc80":"x"', "storage_providers.s3.aws: a key"),
        ('"environment":{"secrets":{"S":"\\udc80"}}', "environment.secrets.S:"),
        ('"expose":{"api_port":8080,"health_path":"/\\udc80"}', "expose.health_path:"),
    ],
)
def test_text_utf8_cannot_encode_is_refused_naming_the_field(fragment: str, named: str) -> None:
    body = ('{"name":"s","script":"echo",' + fragment + "}").encode()
    with pytest.raises(InvalidService) as caught:
        parse_service_json(body)
    message = str(caught.value)
    assert message.startswith(named) and "UTF-8" in message
    message.encode()  # the 400's own text is UTF-8


def test_every_accepted_service_answers_as_utf8() -> None:
    """What parse_service accepts, go_json writes (it wrote the 500s)."""
    service = parse_service_json(b'{"name":"s","script":"echo \\u00e9 \\ud83d\\ude00"}')
    assert "é 😀" in go_json(service_json(service, {})).decode()


@pytest.mark.parametrize(("field", "value"), [("cpu", "\u0663"), ("cpu", "\u0661.5"),
                                              ("memory", "\u0661Gi"), ("memory", "1e\u0661")])
def test_digits_are_ascii(field: str, value: str) -> None:
    """float() and `\\d` take any script's digits; Kubernetes refuses them in a pod."""
    with pytest.raises(InvalidService, match=f"^{field}: .* is not a"):
        parse_service({"name": "s", "script": "echo", field: value})


def test_memory_exponent_of_thousands_of_digits_names_the_field() -> None:
    with pytest.raises(InvalidService) as caught:
        parse_service({"name": "s", "script": "echo", "memory": "1e" + "9" * 5000})
    assert str(caught.value).startswith("memory: ")
    assert "4300" not in str(caught.value) and len(str(caught.value)) < 200


def fdl(tmp_path: Path, fields: str) -> Path:
    path = tmp_path / "fdl.yaml"
    path.write_text("functions:\n  oscar:\n  - local:\n      name: s\n" + fields)
    return path


def test_a_one_line_script_with_a_word_too_long_for_a_file_name(tmp_path: Path) -> None:
    script = "echo " + "x" * 300
    assert load_fdl(fdl(tmp_path, f"      script: {script}\n"))[0].script == script
    # Path-like, it is still a file that is not there.
    with pytest.raises(InvalidService, match=r"script: .*: no such file"):
        load_fdl(fdl(tmp_path, f"      script: {'x' * 300}.sh\n"))


def test_an_fdl_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    path = fdl(tmp_path, "      script: echo\n      labels: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(InvalidService, match=r"fdl\.yaml: nested too deeply$"):
        load_fdl(path)


def test_an_fdl_number_of_thousands_of_digits_is_refused(tmp_path: Path) -> None:
    path = fdl(tmp_path, "      script: echo\n      expose:\n        api_port: 80\n"
               f"        min_scale: {'9' * 5000}\n")
    with pytest.raises(InvalidService, match=r"^functions\.oscar\[0\]\.local\.expose\.min_scale: "):
        load_fdl(path)


def test_apply_sends_the_bool_and_int_fields_typed(tmp_path: Path) -> None:
    """As oscar-cli decodes a YAML file into OSCAR's service type before sending it."""
    path = fdl(tmp_path, """      script: echo
      cpu: 1
      memory: 1Gi
      alpine: yes
      file_stage_in: 'false'
      enable_gpu: off
      labels: {n: 1}
      environment: {variables: {PORT: 8080}}
      synchronous: {min_scale: 1, max_scale: 3}
      expose:
        api_port: 8080
        min_scale: 1
        max_scale: 2
        cpu_threshold: 90
        set_auth: true
        rewrite_target: n
        health_path: /health
""")
    [(_, definition)] = fdl_definitions(path)
    sent: dict[str, Any] = json.loads(json.dumps(typed_definition(definition)))
    assert sent["expose"] == {"api_port": 8080, "min_scale": 1, "max_scale": 2,
                              "cpu_threshold": 90, "set_auth": True, "rewrite_target": False,
                              "health_path": "/health"}
    assert (sent["alpine"], sent["file_stage_in"], sent["enable_gpu"]) == (True, False, False)
    assert sent["synchronous"] == {"min_scale": 1, "max_scale": 3}
    # String fields stay the text written, as in OSCAR's type.
    assert (sent["cpu"], sent["labels"], sent["environment"]) == (
        "1", {"n": "1"}, {"variables": {"PORT": "8080"}})
    assert definition["expose"]["api_port"] == "8080"  # the caller's mapping is unchanged
    # The server reads it as load_fdl reads the file.
    assert parse_service(sent).expose == load_fdl(path)[0].expose


@pytest.mark.parametrize(("expose", "sent"), [
    ({"api_port": ["80", "81"]}, {"api_port": [80, 81]}),
    ({"api_port": "http", "min_scale": "-1"}, {"api_port": "http", "min_scale": "-1"}),
    ({"set_auth": "maybe"}, {"set_auth": "maybe"}),
])
def test_apply_sends_what_is_no_number_as_written(expose: dict[str, Any],
                                                  sent: dict[str, Any]) -> None:
    """For the server to refuse, naming the field."""
    assert typed_definition({"name": "s", "expose": expose})["expose"] == sent


@pytest.mark.parametrize(("settings", "field"), [
    ({"hostname": "https://dav.example.org:99999"}, "hostname"),
    ({"hostname": "https://dav.example.org/a?b"}, "hostname"),
    ({"hostname": "https://dav.example.org", "verify": "maybe"}, "verify"),
])
def test_a_provider_the_runtime_would_stop_at_is_a_400_not_a_service_that_never_answers(
    settings: dict[str, str], field: str
) -> None:
    """The runtime checks a provider's `verify` and server URL at start-up (exit 2): the
    controller stored such a service (201), and its watchdog exited at every start."""
    provider = {"login": "u", "password": "p", **settings}
    definition = {"name": "dav", "script": "echo", "image": "x",
                  "storage_providers": {"webdav": {"dcache": provider}}}
    with pytest.raises(InvalidService, match=rf"storage_providers\.webdav\.dcache\.{field}"):
        parse_service(definition)
    # What a store already holds is read as it was: the controller still starts.
    assert parse_service(definition, stored=True).storage_providers["webdav"]["dcache"]


# A server's URL with a `user:password@` in it, by provider type: the settings besides it.
URL_USERINFO = [
    ("minio", "endpoint", {"access_key": "a", "secret_key": "b"}),
    ("s3", "endpoint", {"access_key": "a", "secret_key": "b"}),
    ("webdav", "hostname", {"login": "u", "password": "p"}),
    ("onedata", "oneprovider_host", {"token": "t", "space": "s"}),
    ("rucio", "host", {"account": "a", "rse": "R", "username": "u", "password": "p"}),
    ("rucio", "auth_host", {"host": "https://rucio.example", "account": "a", "rse": "R",
                            "username": "u", "password": "p"}),
]


@pytest.mark.parametrize("url", ["http://urluser:URLPASS888@srv.example:9000",
                                  "urluser:URLPASS888@srv.example:9000",  # no scheme
                                  "https://URLPASS888@srv.example"])  # a token as the user
@pytest.mark.parametrize(("ptype", "key", "others"), URL_USERINFO)
def test_a_servers_url_with_a_user_or_password_is_a_400_naming_it(
    ptype: str, key: str, others: dict[str, str], url: str
) -> None:
    """No provider uses it (boto3 drops it, aiohttp refuses it beside WebDAV's basic
    auth: every transfer failed; Onedata and Rucio log in with their own headers), and
    it was shown in the service JSON and written in the ConfigMap: refused, as the
    controller's own --minio-endpoint is, the message without it."""
    definition = {"name": "u", "script": "echo",
                  "storage_providers": {ptype: {"p": {**others, key: url}}}}
    with pytest.raises(InvalidService,
                       match=rf"^storage_providers\.{ptype}\.p\.{key}: must not hold a user "
                             r"or password \('@'\)") as refused:
        parse_service(definition)
    assert "URLPASS888" not in str(refused.value)
    # What a store already holds is read as it was: the controller still starts.
    assert parse_service(definition, stored=True).storage_providers[ptype]["p"][key] == url


STORED_URLS = {
    "minio": {"own": {"endpoint": "http://urluser:URLPASS888@minio.example:9000",
                      "access_key": "AK", "secret_key": "SK"}},
    "webdav": {"dc": {"hostname": "https://TOKENAAA1@dav.example/d",
                      "login": "w", "password": "WP"}},
    "rucio": {"r": {"host": "https://rucio.example", "account": "a", "rse": "R",
                    "username": "u", "password": "RP",
                    "token_endpoint": "https://cid:CLIENTPW9@iam.example/token"}},
}


def test_a_stored_urls_password_is_shown_hidden_and_kept_on_update() -> None:
    """GET /system/services showed a stored endpoint's `user:password@` whole (SPEC 3:
    no secret in a response); its password is `hidden`, as a secret setting's is."""
    stored = parse_service({"name": "u", "script": "echo", "storage_providers": STORED_URLS},
                           stored=True)
    data = service_json(stored, {})
    text = go_json(data).decode()
    for secret in ("URLPASS888", "TOKENAAA1", "CLIENTPW9"):
        assert secret not in text
    shown = data["storage_providers"]
    assert shown["minio"]["own"]["endpoint"] == "http://urluser:hidden@minio.example:9000"
    assert shown["webdav"]["dc"]["hostname"] == "https://hidden@dav.example/d"
    assert shown["rucio"]["r"]["token_endpoint"] == "https://cid:hidden@iam.example/token"
    # Sent back as shown: a server's URL is refused, naming it (no provider uses its
    # password); the token endpoint's (aiohttp sends it: HTTP Basic auth, an OAuth
    # client's) keeps the stored one.
    with pytest.raises(InvalidService, match=r"^storage_providers\.minio\.own\.endpoint: "):
        parse_service(data)
    del data["storage_providers"]["minio"], data["storage_providers"]["webdav"]
    again = unmask(parse_service(data), stored)
    assert again.storage_providers["rucio"]["r"] == STORED_URLS["rucio"]["r"]


# ---- what older versions stored: read back, or the controller would not start ----------


@pytest.mark.parametrize(("field", "value", "ascii"), [
    ("cpu", "\u0661", "1"), ("cpu", "\u0661.\u0665", "1.5"), ("cpu", "\u0665\u0660\u0660m", "500m"),
    ("memory", "\u0662\u0665\u0666Mi", "256Mi"), ("memory", "1e\u0669", "1e9"),
    ("memory", "1\u0966Gi", "10Gi"),  # Devanagari, and a mix with ASCII
])
def test_stored_amounts_of_other_scripts_digits_are_read_back_in_ascii(
    field: str, value: str, ascii: str
) -> None:
    """Versions before the ASCII check stored them (201): the controller then exited 2 at
    every start on that data folder, and the service could not be deleted."""
    definition = {"name": "s", "script": "echo", field: value}
    with pytest.raises(InvalidService, match=f"^{field}: .* is not a"):
        parse_service(definition)  # a new definition: still a 400
    service = parse_service(definition, stored=True)
    assert getattr(service, field) == ascii
    restored = from_record(to_record(service.with_token("t")))
    assert getattr(restored, field) == ascii and restored.token == "t"


def test_a_stored_lone_surrogate_is_read_back_as_a_replacement_character() -> None:
    """Versions before `_unencodable` stored one (201): every answer holding the service
    was then a 500, and a surrogate in the script stopped the controller's start."""
    record = json.loads(to_record(parse_service({"name": "s", "script": "echo"})))
    record.update(image="x\udc80", script="echo \udc81\n", labels={"k\udc82": "v\udc83"},
                  storage_providers={"s3": {"aws": {"access_key": "\udc84", "secret_key": "b",
                                                     "region": "r"}}})
    text = json.dumps(record)  # as the store writes it: the surrogates as \u escapes
    assert "\\udc80" in text
    service = from_record(text)
    assert (service.image, service.script) == ("x\ufffd", "echo \ufffd\n")
    assert service.labels == {"k\ufffd": "v\ufffd"}
    assert service.storage_providers["s3"]["aws"]["access_key"] == "\ufffd"
    assert "x\ufffd" in go_json(service_json(service, {})).decode()


def test_a_stored_service_that_cannot_be_read_is_named_with_what_to_do() -> None:
    """The controller stops at it (exit 2): the line says which service, and how to start
    without it, as the API to delete it is not up."""
    record = json.loads(to_record(parse_service({"name": "old-one", "script": "echo"})))
    record["isolation_level"] = "NEITHER"
    with pytest.raises(InvalidService) as caught:
        from_record(json.dumps(record))
    message = str(caught.value)
    assert "'old-one'" in message and "controller.sqlite3" in message
    assert message.endswith("isolation_level: 'NEITHER' is not SERVICE or USER")
