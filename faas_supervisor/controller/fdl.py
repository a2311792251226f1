"""Service definitions: OSCAR FDL files and service JSON -> frozen `Service` objects.

All validation of a definition lives here, with errors that name the field (the API
answers them with 400). The service JSON written back follows the OSCAR manager's
service type field for field, in its declaration order, as Go encodes it.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from faas_supervisor import strict_json
from faas_supervisor.config import (
    DEFAULT_PROVIDER,
    LOG_LEVELS,
    REQUIRED_PROVIDER_KEYS,
    SECRET_KEYS,
    URL_KEYS,
    StoragePath,
    check_provider_values,
    normalize_provider_name,
    text_loader,
    utf8_encodable,
    variable_problem,
)
from faas_supervisor.controller.names import DNS_LABEL, bucket_problem, path_problem
from faas_supervisor.controller.resources import cpu_nanos, memory_bytes
from faas_supervisor.errors import ConfigError, InvalidService

# The OSCAR manager's limits and defaults (its create handler).
NAME_MAX = 39
DEFAULT_CPU = "0.2"
DEFAULT_MEMORY = "256Mi"
DEFAULT_OWNER = "cluster_admin"
HIDDEN = "hidden"  # what the manager shows instead of the default provider's keys
# Replicas of an exposed service: the local and docker backends start `min_scale` of them
# at once, so one request must not be able to ask for thousands of processes.
MAX_SCALE = 100
_NAME = DNS_LABEL  # a service's name
# Digits are ASCII's: `\d` (and float()) would take any script's ("٣"), which Kubernetes
# refuses in a pod.
_CPU = re.compile(r"[0-9]+(\.[0-9]+)?m?|\.[0-9]+")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")  # a YAML file's unit-less memory: refused
# Kubernetes' quantity syntax (resource.ParseQuantity, which the OSCAR manager and the API
# server parse it with): its suffixes only, so `1g` or `512K` never reach a cluster that
# cannot even decode a pod holding them. What older versions stored is still read back
# (its digits made ASCII first: _ascii_digits).
_MEMORY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|e[0-9]+)?")
_STORED_MEMORY = re.compile(r"[0-9]+(\.[0-9]+)?([KMGTPE]i?|[kmgtpe]|e[0-9]+)?")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Kubernetes' rules for label and annotation keys (a qualified name: an optional DNS
# subdomain prefix and `/`, then a name) and label values, which the API server applies:
# checked here, a definition it would refuse is a 400 naming the key, not a deploy that fails.
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_RULE = ("at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
              "letter or digit")


@dataclass(frozen=True)
class Expose:
    min_scale: int = 1
    max_scale: int = 10
    api_port: tuple[int, ...] = ()
    cpu_threshold: int = 80
    rewrite_target: bool = False
    default_command: bool = False
    set_auth: bool = False
    health_path: str = "/"
    # OSCAR's `nodePort`: one per api_port, the Service made a NodePort one (kubernetes).
    node_port: tuple[int, ...] = ()


@dataclass(frozen=True)
class Service:
    name: str
    script: str
    image: str = ""
    cpu: str = DEFAULT_CPU
    memory: str = DEFAULT_MEMORY
    log_level: str = "INFO"
    file_stage_in: bool = True
    alpine: bool = False
    enable_gpu: bool = False
    input: tuple[StoragePath, ...] = ()
    output: tuple[StoragePath, ...] = ()
    # {type: {id: {key: value}}} as given; the default MinIO provider is the cluster's.
    storage_providers: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    variables: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    expose: Expose = field(default_factory=Expose)
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    isolation_level: str = "SERVICE"
    bucket_list: tuple[str, ...] = ()
    visibility: str = "private"
    allowed_users: tuple[str, ...] = ()
    cluster_id: str = ""
    image_pull_secrets: tuple[str, ...] = ()  # Secrets the cluster logs in to registries with
    token: str = field(default="", repr=False)

    @property
    def exposed(self) -> bool:
        return bool(self.expose.api_port)

    def with_token(self, token: str) -> Service:
        return replace(self, token=token)


# ---- parsing ---------------------------------------------------------------------------


def parse_service(
    data: Any, where: str = "", *, yaml_scalars: bool = False, stored: bool = False
) -> Service:
    """A service from the JSON (or FDL) mapping; `where` prefixes the field in errors.

    `stored`: a definition read back from the store, which an older version accepted:
    the checks added since (what a process can be given) apply to what comes in only,
    so that a controller still starts with what it stored then. What those checks refuse
    because nothing downstream holds it is read in a form that it does: another script's
    digits in `cpu` and `memory` as ASCII's, a lone surrogate as U+FFFD.

    Types are the OSCAR manager's: its string fields (`cpu`, `memory`, `image`...) take
    JSON strings only, as Go's decoder refuses a number for a string. An FDL file is read
    as oscar-cli reads it (`yaml_scalars`): a YAML number in a string field is its text
    (`cpu: 1` is "1"), except for `memory`, whose unit-less number would be bytes.
    """
    if not isinstance(data, dict):
        raise InvalidService(f"{where or 'service'}: must be a mapping of fields")
    # What an older version stored is read back, or the controller would not start.
    if stored:
        data = _without_surrogates(data)
    elif (problem := _unencodable(data, where)) is not None:
        raise InvalidService(problem)

    def key(name: str) -> str:
        return f"{where}.{name}" if where else name

    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidService(f"{key('name')}: missing")
    if len(name) > NAME_MAX or not _NAME.fullmatch(name):
        raise InvalidService(
            f"{key('name')}: {name!r} must be 1 to {NAME_MAX} lower-case letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    script = data.get("script")
    if not isinstance(script, str) or not script.strip():
        raise InvalidService(f"{key('script')}: missing (the text of the script)")
    def text(value: Any, where: str) -> str:
        return _text(value, where, yaml_scalars)

    image = text(_or_default(data.get("image"), ""), key("image"))

    cpu = text(_or_default(data.get("cpu"), DEFAULT_CPU), key("cpu"))
    if stored:
        cpu = _ascii_digits(cpu)
    if not _CPU.fullmatch(cpu) or float(cpu.rstrip("m") or 0) <= 0:
        raise InvalidService(f"{key('cpu')}: {cpu!r} is not a CPU amount (try 0.5, 1 or 500m)")
    memory = _or_default(data.get("memory"), DEFAULT_MEMORY)
    check_memory_unit(memory, key("memory"), yaml_scalars)
    memory = text(memory, key("memory"))
    if stored:
        memory = _ascii_digits(memory)
    if not (_STORED_MEMORY if stored else _MEMORY).fullmatch(memory):
        raise InvalidService(
            f"{key('memory')}: {memory!r} is not a memory amount (try 256Mi or 1Gi)"
        )
    log_level = text(_or_default(data.get("log_level"), "INFO"), key("log_level")).upper()
    if log_level == "NOTSET":  # the manager accepts it; the runtime's lowest level is DEBUG
        log_level = "DEBUG"
    if log_level not in LOG_LEVELS:
        raise InvalidService(
            f"{key('log_level')}: {log_level!r} is not one of {', '.join(LOG_LEVELS)}"
        )
    try:  # amounts every backend can hold, refused here rather than at deploy time
        cpu_nanos(cpu), memory_bytes(memory)
    except ValueError as exc:
        raise InvalidService(f"{where}.{exc}" if where else str(exc)) from None

    providers = _providers(data.get("storage_providers"), key("storage_providers"), stored)
    inputs = _storage_list(data.get("input"), key("input"), name, providers, yaml_scalars)
    outputs = _storage_list(data.get("output"), key("output"), name, providers, yaml_scalars)

    environment = _mapping(data.get("environment"), key("environment"))
    variables = _environment(environment.get("variables"), key("environment.variables"),
                             yaml_scalars, stored)
    secrets = _environment(environment.get("secrets"), key("environment.secrets"),
                           yaml_scalars, stored)

    isolation = text(_or_default(data.get("isolation_level"), "SERVICE"),
                     key("isolation_level")).upper()
    if isolation not in ("SERVICE", "USER"):
        raise InvalidService(f"{key('isolation_level')}: {isolation!r} is not SERVICE or USER")
    visibility = text(_or_default(data.get("visibility"), "private"), key("visibility")).lower()
    if visibility not in ("private", "public", "restricted"):
        raise InvalidService(
            f"{key('visibility')}: {visibility!r} is not private, public or restricted"
        )

    if not stored:  # a stored definition holds none: versions before this one dropped it
        _no_mount(data.get("mount"), key("mount"))
    labels = _string_map(data.get("labels"), key("labels"), yaml_scalars)
    annotations = _string_map(data.get("annotations"), key("annotations"), yaml_scalars)
    if not stored:  # what an older version stored is deployed as it can be, not refused
        _check_metadata(labels, annotations, key)

    buckets = key("bucket_list")
    return Service(
        name=name,
        script=script.replace("\r\n", "\n"),
        image=image,
        cpu=cpu,
        memory=memory,
        log_level=log_level,
        file_stage_in=_bool(data.get("file_stage_in"), key("file_stage_in"), True),
        alpine=_bool(data.get("alpine"), key("alpine"), False),
        enable_gpu=_bool(data.get("enable_gpu"), key("enable_gpu"), False),
        input=inputs,
        output=outputs,
        storage_providers=providers,
        variables=variables,
        secrets=secrets,
        expose=_expose(data.get("expose"), key("expose"), yaml_scalars),
        annotations=annotations,
        labels=labels,
        isolation_level=isolation,
        bucket_list=_buckets(
            [text(b, buckets) for b in _list(data.get("bucket_list"), buckets)],
            buckets,
        ),
        visibility=visibility,
        allowed_users=tuple(
            text(u, key("allowed_users"))
            for u in _list(data.get("allowed_users"), key("allowed_users"))
        ),
        cluster_id=text(_or_default(data.get("cluster_id"), ""), key("cluster_id")),
        image_pull_secrets=_pull_secrets(
            [text(v, key("image_pull_secrets"))
             for v in _list(data.get("image_pull_secrets"), key("image_pull_secrets"))],
            key("image_pull_secrets"),
        ),
    )


def check_memory_unit(memory: Any, where: str, yaml_scalars: bool) -> None:
    """A unit-less number in `memory` is refused: it would be bytes, never what was meant.
    In an FDL file (`yaml_scalars`) `memory: 12` is the text "12", refused too; in JSON
    only a number is, as the OSCAR manager takes the string "12". `service apply` checks
    an FDL file's with it before sending, as the server cannot tell the text from YAML's."""
    if (isinstance(memory, int | float) and not isinstance(memory, bool)) or (
        yaml_scalars and isinstance(memory, str) and _NUMBER.fullmatch(memory)
    ):
        raise InvalidService(
            f"{where}: {memory} is a number: write a string with its unit (256Mi, 1Gi)"
        )


def _unencodable(data: dict[str, Any], where: str) -> str | None:
    """Why a string of the definition is not text (its field named), or None.

    JSON's `"\\udc80"` (a lone surrogate) is a Python string that UTF-8 cannot encode:
    stored, it would fail every later answer that holds it, the list of all services
    too. Walked without recursion, however deep the definition is nested.
    """
    pending: list[tuple[str, Any]] = [(where, data)]
    while pending:
        at, value = pending.pop()
        if isinstance(value, str) and not utf8_encodable(value):
            return f"{at}: not UTF-8 text (it holds a lone surrogate such as \\udc80)"
        children: list[tuple[str, Any]] = []
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and not utf8_encodable(k):
                    return (f"{at or 'service'}: a key is not UTF-8 text "
                            "(it holds a lone surrogate such as \\udc80)")
                children.append((f"{at}.{k}" if at else str(k), v))
        elif isinstance(value, list):
            children = [(f"{at}[{i}]", v) for i, v in enumerate(value)]
        pending.extend(reversed(children))  # the first in the document is found first
    return None


def _without_surrogates(data: dict[str, Any]) -> dict[str, Any]:
    """A stored definition with each lone surrogate (JSON's `"\\udc80"`, which versions
    before `_unencodable` stored) made U+FFFD, as a UTF-8 decoder shows what is not text:
    the service is then shown, listed, run and deleted, where the surrogate failed every
    answer holding it and the writing of its script."""
    # Dumped unescaped, a surrogate can only stand inside a JSON string: replaced there,
    # the text reads back as the same structure.
    text = json.dumps(data, ensure_ascii=False)
    if _SURROGATE.search(text) is None:
        return data
    readable: dict[str, Any] = json.loads(_SURROGATE.sub("\ufffd", text))
    return readable


def _ascii_digits(amount: str) -> str:
    """A stored amount with another script's decimal digits ("\\u0661", which older
    versions' `\\d` took) in ASCII's, the only ones Kubernetes and Docker read."""
    return "".join(
        str(unicodedata.decimal(c)) if c.isdecimal() and not c.isascii() else c for c in amount
    )


def _no_mount(raw: Any, where: str) -> None:
    """OSCAR's `mount` (a bucket as a folder of the container) needs a sidecar this
    project does not run: refused, rather than stored and silently not mounted. The empty
    form, which the dashboard and the clients send with every service, is no mount."""
    mount = _mapping(raw, where)
    if any(mount.get(k) not in (None, "") for k in ("storage_provider", "path")):
        raise InvalidService(
            f"{where}: mounting a bucket in the container is not supported here; list its "
            "path in `input` instead, and its files are staged in for each invocation"
        )


def _check_metadata(labels: Mapping[str, str], annotations: Mapping[str, str],
                    key: Callable[[str], str]) -> None:
    """Labels and annotations as the Kubernetes API server takes them."""
    for name, value in labels.items():
        problem = _key_problem(name)
        if problem is not None:
            raise InvalidService(f"{key('labels')}: {name!r} is not a label key: {problem}")
        if value and (len(value) > 63 or not _QUALIFIED_NAME.fullmatch(value)):
            raise InvalidService(f"{key('labels')}.{name}: {value!r} is not a label value: "
                                 f"empty or {_NAME_RULE}")
    for name in annotations:
        problem = _key_problem(name)
        if problem is not None:
            raise InvalidService(
                f"{key('annotations')}: {name!r} is not an annotation key: {problem}")


def _key_problem(name: str) -> str | None:
    """Why `name` is not a Kubernetes label or annotation key, or None."""
    prefix, slash, rest = name.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return ("its prefix before '/' must be a DNS subdomain (lower-case letters, digits, "
                "'-' and '.', at most 253)")
    if len(rest) > 63 or not _QUALIFIED_NAME.fullmatch(rest):
        return f"its name (after an optional 'prefix/') must be {_NAME_RULE}"
    return None


def _pull_secrets(names: list[str], where: str) -> tuple[str, ...]:
    """Names of Secrets in the services' namespace: DNS subdomain names."""
    for name in names:
        if not _NAME.fullmatch(name.replace(".", "-")) or len(name) > 253:
            raise InvalidService(f"{where}: {name!r} is not a Secret's name")
    return tuple(names)


def parse_service_json(body: bytes) -> Service:
    try:
        data = strict_json.loads(body)
    except strict_json.NotJson as exc:
        raise InvalidService(f"service: not valid JSON ({exc})") from None
    return parse_service(data)


def load_fdl(path: str | Path, cluster_id: str | None = None) -> list[Service]:
    """The services of an FDL file (of one cluster id, if given), validated."""
    return [
        parse_service(definition, where, yaml_scalars=True)
        for where, definition in fdl_definitions(Path(path), cluster_id)
    ]


def fdl_definitions(
    path: Path, cluster_id: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The service definitions of an FDL file, as `(where, mapping)`, read as oscar-cli
    reads them; `service apply` sends the mappings, `load_fdl` validates them (SPEC 7.1).

    * `functions.oscar` is a list of `{cluster id: service}` mappings, each with one
      cluster id or several; the id is the service's `cluster_id`.
    * A top-level `storage_providers` is merged into every service; a service's own
      provider of the same type and id wins.
    * `script` is a file next to the FDL file, or the script's text (`script_text`).
    """
    document = _fdl_document(path)
    functions = document.get("functions") if isinstance(document, dict) else None
    entries = functions.get("oscar") if isinstance(functions, dict) else None
    if not isinstance(document, dict) or not isinstance(entries, list) or not entries:
        raise InvalidService("functions.oscar: missing (a list of {cluster id: service})")
    shared = _mapping(document.get("storage_providers"), "storage_providers")
    found = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry:
            raise InvalidService(f"functions.oscar[{i}]: must be a {{cluster id: service}} mapping")
        for cluster, raw in entry.items():
            if cluster_id is not None and str(cluster) != cluster_id:
                continue
            where = f"functions.oscar[{i}].{cluster}"
            if not isinstance(raw, dict):
                raise InvalidService(f"{where}: must be a mapping of fields")
            definition = dict(raw)
            if not isinstance(definition.get("name"), str) or not definition["name"]:
                raise InvalidService(f"{where}.name: missing")
            if "script" in definition:
                definition["script"] = script_text(
                    definition["script"], path.parent, f"{where}.script"
                )
            definition["cluster_id"] = str(cluster)
            own = definition.get("storage_providers")
            if shared and (own is None or isinstance(own, dict)):
                definition["storage_providers"] = _merge_providers(shared, own or {})
            found.append((where, definition))
    return found


# The fields of OSCAR's service type that are not strings (Go's bool and int), and of its
# `expose` and `synchronous`; every other field is a string, a list or a map of them.
_BOOL_FIELDS = ("enable_gpu", "enable_sgx", "image_prefetch", "alpine", "file_stage_in")
_EXPOSE_BOOLS = ("rewrite_target", "default_command", "set_auth")
_EXPOSE_INTS = ("min_scale", "max_scale", "cpu_threshold")
_SYNCHRONOUS_INTS = ("min_scale", "max_scale")


def typed_definition(definition: Mapping[str, Any]) -> dict[str, Any]:
    """An FDL mapping (`fdl_definitions`') as oscar-cli sends it: YAML's plain scalars
    are text here, where oscar-cli decodes them into its service type, so its bool and
    int fields become JSON's (`api_port: 8080` is 8080, not "8080"). A value that is no
    bool or number is sent as written, for the server to refuse, naming the field."""
    typed = dict(definition)
    for name in _BOOL_FIELDS:
        if name in typed:
            typed[name] = _as_bool(typed[name])
    if isinstance(expose := typed.get("expose"), dict):
        expose = typed["expose"] = dict(expose)
        for name in _EXPOSE_BOOLS:
            if name in expose:
                expose[name] = _as_bool(expose[name])
        for name in (*_EXPOSE_INTS, "api_port"):
            if name in expose:
                expose[name] = _as_int(expose[name])
    if isinstance(synchronous := typed.get("synchronous"), dict):
        typed["synchronous"] = {k: (_as_int(v) if k in _SYNCHRONOUS_INTS else v)
                                for k, v in synchronous.items()}
    return typed


def _as_bool(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    return value


def _as_int(value: Any) -> Any:
    """A number's text as the number; each of a list's (`api_port`) likewise."""
    if isinstance(value, list):
        return [_as_int_scalar(v) for v in value]
    return _as_int_scalar(value)


def _as_int_scalar(value: Any) -> Any:
    number = _whole(value)
    return value if number is None else number


def _fdl_document(path: Path) -> Any:
    try:
        # Plain scalars as their text (config.text_loader), as oscar-cli's Go decoder
        # gives a string field: `secret_key: 0777` is "0777", not YAML 1.1's 511. The
        # typed fields read their text (_bool, _whole).
        return yaml.load(path.read_text(encoding="utf-8"), Loader=text_loader())
    except OSError as exc:
        raise InvalidService(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidService(f"{path}: not UTF-8 text") from None
    except RecursionError:  # PyYAML's composer recurses once per level
        raise InvalidService(f"{path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InvalidService(f"{path}: not valid YAML{at}") from None
    except (ValueError, LookupError, ArithmeticError, TypeError):
        # A value a constructor could not build (text_loader makes none: in case it ever
        # does), whose message would quote it: one line without it.
        raise InvalidService(f"{path}: not valid YAML") from None


def script_text(value: Any, base: Path, where: str) -> str:
    """`script` is a path relative to the FDL file, or the script's text.

    One line naming an existing file is that file. One line that looks like a path
    (no blanks; a `/` or a file extension) but names no file is an error rather than
    a one-word script that would fail at the first invocation.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidService(f"{where}: must be a path or the script's text")
    if "\n" in value.strip():
        return value
    candidate = base / os.path.expanduser(value.strip())
    if _is_file(candidate):
        try:
            return candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidService(f"{where}: {candidate}: {exc}") from None
    if re.fullmatch(r"\S*(/\S*|\.\w+)", value.strip()):
        raise InvalidService(f"{where}: {candidate}: no such file")
    return value


def _is_file(path: Path) -> bool:
    """Path.is_file, but False for a name no file can have (a word over 255 bytes: the
    line is then script text, as one naming no file is)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _merge_providers(shared: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        kind: dict(ids) if isinstance(ids, dict) else ids for kind, ids in shared.items()
    }
    for kind, ids in own.items():
        if isinstance(ids, dict) and isinstance(merged.get(kind), dict):
            merged[kind].update(ids)
        else:
            merged[kind] = ids
    return merged


def _providers(raw: Any, where: str, stored: bool) -> dict[str, dict[str, dict[str, Any]]]:
    providers: dict[str, dict[str, dict[str, Any]]] = {}
    for ptype, by_id in _mapping(raw, where).items():
        if ptype not in REQUIRED_PROVIDER_KEYS or ptype == "local":
            known = ", ".join(t for t in REQUIRED_PROVIDER_KEYS if t != "local")
            raise InvalidService(f"{where}.{ptype}: unknown provider type (one of {known})")
        for pid, settings in _mapping(by_id, f"{where}.{ptype}").items():
            values = _mapping(settings, f"{where}.{ptype}.{pid}")
            if not stored:
                _no_url_userinfo(str(ptype), values, f"{where}.{ptype}.{pid}")
            if f"{ptype}.{pid}" != DEFAULT_PROVIDER:  # the cluster's: replaced anyway
                for required in REQUIRED_PROVIDER_KEYS[ptype]:
                    if values.get(required) in (None, ""):
                        raise InvalidService(f"{where}.{ptype}.{pid}.{required}: missing")
                # As the runtime reads them (config.py): refused here, not by every job.
                for key, value in values.items() if not stored else ():
                    if not isinstance(value, str | int | float):  # (a bool is an int)
                        raise InvalidService(
                            f"{where}.{ptype}.{pid}.{key}: must be a string or a number")
                if not stored:
                    # A `verify` or a server's URL the runtime would stop at (its
                    # watchdog would exit at every start: a service that never answers).
                    try:
                        check_provider_values(str(ptype), values, f"{where}.{ptype}.{pid}")
                    except ConfigError as exc:
                        raise InvalidService(exc.message) from None
            providers.setdefault(str(ptype), {})[str(pid)] = dict(values)
    return providers


# Where each provider type takes its credentials, named when a server's URL holds them.
_CREDENTIAL_SETTINGS = {
    "minio": "access_key and secret_key",
    "s3": "access_key and secret_key",
    "webdav": "login and password",
    "onedata": "token",
    "rucio": "username and password, or access_token",
}


def _no_url_userinfo(ptype: str, values: Mapping[str, Any], where: str) -> None:
    """A server's URL (config.URL_KEYS) with a `user:password@`: refused, as the
    controller's own --minio-endpoint is, since no provider ever uses it (boto3 drops it
    from `endpoint`; aiohttp refuses it beside WebDAV's own Authorization header, so
    every transfer failed; Onedata and Rucio log in with their own tokens and headers),
    while it would be a password shown wherever the URL is. Not shown in the message:
    what is before the `@` may be a password, however the URL is typed."""
    for key in URL_KEYS.get(ptype, {}):
        value = values.get(key)
        if isinstance(value, str) and "@" in value:
            raise InvalidService(
                f"{where}.{key}: must not hold a user or password ('@'): give "
                f"{_CREDENTIAL_SETTINGS[ptype]} as settings of their own"
            )


def _storage_list(
    raw: Any, where: str, service: str, providers: Mapping[str, Any], scalars: bool
) -> tuple[StoragePath, ...]:
    entries = []
    for i, item in enumerate(_list(raw, where)):
        at = f"{where}[{i}]"
        item = _mapping(item, at)
        provider = item.get("storage_provider")
        if not isinstance(provider, str) or not provider:
            raise InvalidService(f"{at}.storage_provider: missing")
        ptype, _, pid = normalize_provider_name(provider).partition(".")
        if f"{ptype}.{pid}" != DEFAULT_PROVIDER and pid not in providers.get(ptype, {}):
            raise InvalidService(
                f"{at}.storage_provider: {provider!r} is not defined in storage_providers"
            )
        path = item.get("path")
        if not isinstance(path, str) or not path.strip(" /"):
            raise InvalidService(f"{at}.path: missing")
        path = path.strip(" /")
        # As the manager does: a MinIO/S3 path without a folder goes in the service's bucket.
        if ptype in ("minio", "s3") and "/" not in path:
            path = f"{service}/{path}"
        problem = path_problem(path)
        if problem is not None:
            raise InvalidService(f"{at}.path: {path!r} {problem}")
        bucket = path.split("/", 1)[0]
        problem = bucket_problem(bucket) if ptype in ("minio", "s3") else None
        if problem is not None:
            raise InvalidService(f"{at}.path: bucket {bucket!r} {problem}")
        entries.append(
            StoragePath(
                storage_provider=provider,
                path=path,
                prefix=tuple(
                    _text(p, f"{at}.prefix", scalars)
                    for p in _list(item.get("prefix"), f"{at}.prefix")
                ),
                suffix=tuple(
                    _text(s, f"{at}.suffix", scalars)
                    for s in _list(item.get("suffix"), f"{at}.suffix")
                ),
            )
        )
    return tuple(entries)


def _buckets(names: list[str], where: str) -> tuple[str, ...]:
    for name in names:
        problem = bucket_problem(name)
        if problem is not None:
            raise InvalidService(f"{where}: bucket {name!r} {problem}")
    return tuple(names)


def _expose(raw: Any, where: str, scalars: bool) -> Expose:
    data = _mapping(raw, where)
    ports = data.get("api_port")
    one = isinstance(ports, int) or (scalars and isinstance(ports, str))
    port_list = []
    for port in [ports] if one else _list(ports, f"{where}.api_port"):
        number = _whole(port) if scalars or not isinstance(port, str) else None
        if number is None or not 0 < number < 65536:
            raise InvalidService(f"{where}.api_port: {port!r} is not a TCP port")
        port_list.append(number)
    values = {
        name: _int(data.get(name), f"{where}.{name}", default, most)
        for name, default, most in (("min_scale", 1, MAX_SCALE), ("max_scale", 10, MAX_SCALE),
                                    ("cpu_threshold", 80, 100))  # a percentage
    }
    if values["max_scale"] < values["min_scale"]:
        raise InvalidService(f"{where}.max_scale: must not be below min_scale")
    node_ports = _node_ports(data.get("nodePort"), f"{where}.nodePort", scalars)
    if node_ports and len(node_ports) != len(port_list):
        # OSCAR's rule: the i-th node port is the i-th api_port's.
        raise InvalidService(f"{where}.nodePort: {len(node_ports)} given, but api_port has "
                             f"{len(port_list)}: one node port per api_port")
    return Expose(
        api_port=tuple(port_list),
        node_port=node_ports,
        rewrite_target=_bool(data.get("rewrite_target"), f"{where}.rewrite_target", False),
        default_command=_bool(data.get("default_command"), f"{where}.default_command", False),
        set_auth=_bool(data.get("set_auth"), f"{where}.set_auth", False),
        health_path=_text(_or_default(data.get("health_path"), "/"), f"{where}.health_path",
                          scalars),
        **values,
    )


def _node_ports(raw: Any, where: str, scalars: bool) -> tuple[int, ...]:
    """OSCAR's `nodePort`: a list of ports (one port alone is taken as a list of one, as
    `api_port`); 0, as OSCAR reads it, lets the cluster choose (the dashboard's forms send
    it for a field left empty). Any TCP port: the cluster's range (30000-32767 by
    default) is its own, and its API server refuses a port outside it."""
    one = isinstance(raw, int) or (scalars and isinstance(raw, str))
    ports: list[int] = []
    for port in [raw] if one else _list(raw, where):
        number = _whole(port) if scalars or not isinstance(port, str) else None
        if number is None or not 0 <= number < 65536:
            raise InvalidService(f"{where}: {port!r} is not a TCP port (1 to 65535, or 0: "
                                 "the cluster's choice)")
        if number and number in ports:
            raise InvalidService(f"{where}: {number} is given twice")
        ports.append(number)
    return tuple(ports)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidService(f"{where}: must be a mapping")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidService(f"{where}: must be a list")
    return value


def _or_default(value: Any, default: str) -> Any:
    """The manager's default for an absent, null or empty field; `0` is not absent."""
    return default if value is None or value == "" else value


def _text(value: Any, where: str, scalars: bool = False) -> str:
    """A string field. With `scalars` (YAML, as oscar-cli decodes it), a finite number
    is its text too; `.nan` and `.inf` are refused as JSON has no such numbers."""
    if isinstance(value, str):
        return value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if scalars and number and math.isfinite(value):
        return str(value)
    raise InvalidService(f"{where}: must be a string")


def _string_map(value: Any, where: str, scalars: bool) -> dict[str, str]:
    """A map of strings (`map[string]string` in the manager): null is "" as in Go; in
    YAML a true/false or a number is its text, as oscar-cli reads it."""
    out = {}
    for k, v in _mapping(value, where).items():
        if scalars and isinstance(v, bool):
            v = "true" if v else "false"
        out[str(k)] = _text("" if v is None else v, f"{where}.{k}", scalars)
    return out


def _environment(value: Any, where: str, scalars: bool, stored: bool) -> dict[str, str]:
    """Variables for the script's environment: refused here, one line naming the one,
    rather than by the process start of every job (a name with `=`, a NUL); the rules
    the runtime's own config is read with (config.variable_problem)."""
    out = _string_map(value, where, scalars)
    for name, text in out.items() if not stored else ():
        if (problem := variable_problem(name, text, where)) is not None:
            raise InvalidService(problem)
    return out


# What a YAML file's bool field may say: Go's yaml.v3 (oscar-cli) takes YAML 1.1's words
# too when the field is a bool.
_TRUE = ("true", "yes", "y", "on")
_FALSE = ("false", "no", "n", "off")


def _bool(value: Any, where: str, default: bool) -> bool:
    """A true/false field; null (an FDL's empty value, `~`) is absent, its default, as Go's
    JSON decoder leaves a field at null and as `image` or `api_port` read it."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise InvalidService(f"{where}: must be true or false")


def _whole(value: Any) -> int | None:
    """A whole number: a JSON one, or a YAML file's text of one; None for anything else
    (text of more digits than int() reads: no field here takes such a number)."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        try:
            return int(value)
        except ValueError:
            return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _int(value: Any, where: str, default: int, most: int) -> int:
    """A whole-number field from 0 to `most`; null is absent, its default (see _bool).
    One message for a wrong type and a number out of range: the range allowed."""
    number = default if value is None else _whole(value)
    if number is None or not 0 <= number <= most:
        raise InvalidService(f"{where}: must be a whole number from 0 to {most}")
    return number


# ---- the service JSON ------------------------------------------------------------------


def manager_labels(service: Service) -> dict[str, str]:
    """The labels the OSCAR manager adds to every service."""
    return {
        **service.labels,
        "oscar.grycap/user-service": "true",
        "oscar_service": service.name,
        "applicationId": service.name,
        "queue": f"root.oscar-queue.{service.name}",
        "owner_name": "oscar",
    }


_NOT_EXPOSED = Expose(min_scale=0, max_scale=0, cpu_threshold=0, health_path="")


def service_json(service: Service, default_minio: Mapping[str, Any]) -> dict[str, Any]:
    """The manager's service JSON: its fields, in its order, secrets replaced by `hidden`."""
    providers: dict[str, Any] = {}
    # The manager's declaration order; rucio (not the manager's) last.
    for ptype in ("s3", "minio", "onedata", "webdav", "rucio"):
        by_id = {
            pid: _masked(ptype, settings)
            for pid, settings in service.storage_providers.get(ptype, {}).items()
        }
        if ptype == "minio":
            by_id["default"] = {**default_minio, "access_key": HIDDEN, "secret_key": HIDDEN}
        if by_id:
            providers[ptype] = dict(sorted(by_id.items()))
    # The manager fills no defaults in: a service that is not exposed answers Go's zero
    # values (max_scale 0 is how the dashboard tells it is not exposed), whatever it sent.
    shown = service.expose if service.exposed else _NOT_EXPOSED
    expose: dict[str, Any] = {"min_scale": shown.min_scale, "max_scale": shown.max_scale}
    if shown.api_port:
        expose["api_port"] = list(shown.api_port)
    expose.update(cpu_threshold=shown.cpu_threshold, rewrite_target=shown.rewrite_target)
    if shown.node_port:  # omitempty, as the manager's
        expose["nodePort"] = list(shown.node_port)
    expose.update(
        default_command=shown.default_command,
        set_auth=shown.set_auth,
        health_path=shown.health_path,
    )
    return {
        "name": service.name,
        "cluster_id": service.cluster_id,
        "memory": service.memory,
        "cpu": service.cpu,
        "total_memory": "",
        "total_cpu": "",
        "ephemeral_storage_request": "",
        "enable_gpu": service.enable_gpu,
        "enable_sgx": False,
        "image_prefetch": False,
        "synchronous": {"min_scale": 0, "max_scale": 0},
        "log_level": service.log_level,
        "image": service.image,
        "alpine": service.alpine,
        "token": service.token,
        "file_stage_in": service.file_stage_in,
        "input": [entry.to_json() for entry in service.input],
        "output": [entry.to_json() for entry in service.output],
        "script": service.script,
        **({"image_pull_secrets": list(service.image_pull_secrets)}
           if service.image_pull_secrets else {}),  # omitempty, as the manager's
        "expose": expose,
        # Secret values live with the backend only; the manager blanks them likewise.
        "environment": {
            "variables": dict(sorted(service.variables.items())),
            "secrets": {k: "" for k in sorted(service.secrets)},
        },
        "annotations": dict(sorted(service.annotations.items())),
        "vo": "",
        "labels": dict(sorted(manager_labels(service).items())),
        "storage_providers": providers,
        "owner": DEFAULT_OWNER,
        "interlink_node_name": "",
        "visibility": service.visibility,
        "allowed_users": list(service.allowed_users),
        "isolation_level": service.isolation_level,
        "bucket_list": list(service.bucket_list),
        "mount": {"storage_provider": "", "path": ""},
        "volume_status": {"enabled": False},
    }


def url_credential(ptype: str, key: str, value: Any) -> bool:
    """Whether a provider setting is a URL that may hold a `user:password@` (or a
    token as its user): a server's URL (config.URL_KEYS, with or without its scheme) or
    any setting written as a URL (Rucio's `token_endpoint`, whose userinfo aiohttp does
    send, as HTTP Basic auth) with an `@`. New definitions hold none in a server's URL
    (_no_url_userinfo); stored ones may, and other URLs may: such a value is a
    credential, shown masked (masked_url) and kept out of a ConfigMap (manifests.py)."""
    return (isinstance(value, str) and "@" in value
            and (key in URL_KEYS.get(ptype, {}) or "://" in value))


def masked_url(url: str) -> str:
    """`url` with its userinfo's password shown as `hidden` (`http://user:hidden@host`),
    as the manager shows a secret setting; a userinfo of one part (a token) is `hidden`
    whole. Up to the URL's last `@`: an unencoded `/` or `@` in a password (which makes
    the URL ambiguous) hides more of it, never less."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{HIDDEN}" if colon and not re.search(r"[/?#]", user) else HIDDEN
    return f"{head}{sep}{shown}@{host}"


def _masked(ptype: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (HIDDEN if k in SECRET_KEYS and v
            else masked_url(v) if url_credential(ptype, k, v) else v)
        for k, v in sorted(settings.items())
    }


def unmask(new: Service, old: Service) -> Service:
    """On update, a provider secret sent back as `hidden` keeps the stored value, and so
    does a URL sent back as masked_url showed it."""
    providers: dict[str, dict[str, dict[str, Any]]] = {}
    for ptype, by_id in new.storage_providers.items():
        for pid, settings in by_id.items():
            stored = old.storage_providers.get(ptype, {}).get(pid, {})
            providers.setdefault(ptype, {})[pid] = {
                k: (stored.get(k, v) if _shown_as(ptype, k, v, stored.get(k)) else v)
                for k, v in settings.items()
            }
    secrets = {k: (old.secrets.get(k, v) if v == "" else v) for k, v in new.secrets.items()}
    return replace(new, storage_providers=providers, secrets=secrets)


def _shown_as(ptype: str, key: str, sent: Any, stored: Any) -> bool:
    """Whether `sent` is how service_json showed the stored setting."""
    if key in SECRET_KEYS:
        return bool(sent == HIDDEN)
    return url_credential(ptype, key, stored) and sent == masked_url(stored)


# ---- storage of a definition (all fields, secrets included; for the store only) ---------


def to_record(service: Service) -> str:
    data = service_json(service, {})
    data["environment"]["secrets"] = dict(service.secrets)
    data["storage_providers"] = {t: dict(ids) for t, ids in service.storage_providers.items()}
    data["labels"] = dict(service.labels)
    data["annotations"] = dict(service.annotations)
    return json.dumps(data, separators=(",", ":"))


def from_record(text: str) -> Service:
    data = strict_json.loads(text)
    try:
        service = parse_service(data, stored=True)
    except InvalidService as exc:
        # At start-up this stops the controller: the line names what to remove.
        name = data.get("name") if isinstance(data, dict) else None
        raise InvalidService(
            f"stored service {name!r} cannot be read (delete its row from the services "
            f"table of controller.sqlite3 in the data folder to start without it): "
            f"{exc.message}"
        ) from None
    return service.with_token(data.get("token", ""))


def go_json(value: Any) -> bytes:
    """JSON as Go's encoding/json writes it: compact, UTF-8, `<`, `>`, `&` escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # These characters only ever occur inside JSON strings, so replacing them is safe.
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()
