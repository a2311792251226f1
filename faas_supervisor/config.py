"""The function's configuration, read once at start-up into frozen dataclasses.

Every validation lives here, with errors that name the key: nothing below this module
reads YAML or `os.environ` again. Sources, later ones winning (SPEC 3): the YAML file
(`--config`, `FUNCTION_CONFIG` base64, `/oscar/config/function_config.yaml`), then the
environment overrides, then command-line flags for the watchdog settings. A storage
provider's settings may also come from files, `<secrets dir>/TYPE.ID/SETTING`, which win.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from faas_supervisor.errors import ConfigError

if TYPE_CHECKING:
    import yaml

DEFAULT_CONFIG_PATH = Path("/oscar/config/function_config.yaml")
DEFAULT_SCRIPT_PATH = Path("/oscar/config/script.sh")
DEFAULT_SECRETS_DIR = Path("/var/run/secrets/providers")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_PROVIDER = "minio.default"  # the cluster's MinIO, as OSCAR names it

# Keys each provider type must have; the ones in SECRET_KEYS are wrapped in Secret (and
# on Kubernetes kept out of the ConfigMap, in a Secret: controller/manifests.py).
REQUIRED_PROVIDER_KEYS: Mapping[str, tuple[str, ...]] = {
    "minio": ("endpoint", "access_key", "secret_key"),
    "s3": ("access_key", "secret_key"),
    "webdav": ("hostname", "login", "password"),
    "onedata": ("oneprovider_host", "token", "space"),
    # and username + password, or access_token (storage_providers/rucio.py checks)
    "rucio": ("host", "account", "rse"),
    "local": ("path",),
}
SECRET_KEYS = frozenset({"access_key", "secret_key", "password", "token",
                         "access_token", "refresh_token", "client_secret"})
# The settings that name a server, and the scheme a providers module gives one written
# without (`minio:9000` is http://minio:9000): checked at start-up, not at the first
# request (exit 3, 502). Rucio's `token_endpoint` is used only to renew a token.
URL_KEYS: Mapping[str, Mapping[str, str]] = {
    "minio": {"endpoint": "http"},
    "s3": {"endpoint": "http"},
    "webdav": {"hostname": "https"},
    "onedata": {"oneprovider_host": "https"},
    "rucio": {"host": "https", "auth_host": "https"},
}


@dataclass(frozen=True)
class Secret:
    """A credential: its repr and str are masked so it cannot leak into a log line."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class ProviderConfig:
    """One storage provider, `TYPE.ID`, with its settings (secrets wrapped)."""

    type: str
    id: str
    settings: Mapping[str, str | bool | Secret]

    @property
    def name(self) -> str:
        return f"{self.type}.{self.id}"

    def get(self, key: str, default: str = "") -> str:
        value = self.settings.get(key, default)
        if isinstance(value, Secret):
            return value.value
        return str(value)

    def flag(self, key: str, default: bool) -> bool:
        """A bool setting; empty is the default (an empty `verify` is no `verify: false`,
        which would turn TLS checks off)."""
        value = self.settings.get(key, default)
        if isinstance(value, bool):
            return value
        text = str(value)
        return parse_bool(text, key) if text.strip() else default


@dataclass(frozen=True)
class StoragePath:
    """A provider and a `bucket/folder` path: an `input` or `output` entry, for the
    runtime's config and the controller's services alike. `prefix` and `suffix` are an
    output's filters (OSCAR's names: they filter file names, not keys)."""

    storage_provider: str  # as written (`minio`, `minio.default`, `s3.aws1`)
    path: str  # `bucket/folder`, without surrounding slashes
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()

    @property
    def provider(self) -> str:
        """The normalised `TYPE.ID`."""
        return normalize_provider_name(self.storage_provider)

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def folder(self) -> str:
        parts = self.path.split("/", 1)
        return parts[1] if len(parts) > 1 else ""

    @property
    def key_prefix(self) -> str:
        """The keys under the folder start with this: `folder/`, or "" for a whole bucket."""
        return f"{self.folder}/" if self.folder else ""

    def holds(self, bucket: str, key: str) -> bool:
        """Whether an object is under this path."""
        return bucket == self.bucket and key.startswith(self.key_prefix)

    def matches(self, relative_path: str) -> bool:
        """Whether an output file is sent here: an empty filter list matches all."""
        ok_prefix = not self.prefix or any(relative_path.startswith(p) for p in self.prefix)
        ok_suffix = not self.suffix or any(relative_path.endswith(s) for s in self.suffix)
        return ok_prefix and ok_suffix

    def to_json(self) -> dict[str, Any]:
        """The entry as the OSCAR manager writes it (its field order; no empty filters)."""
        out: dict[str, Any] = {"storage_provider": self.storage_provider, "path": self.path}
        if self.suffix:
            out["suffix"] = list(self.suffix)
        if self.prefix:
            out["prefix"] = list(self.prefix)
        return out


def on_default_provider(paths: Iterable[StoragePath]) -> list[StoragePath]:
    """The paths on the cluster's MinIO (`minio.default`, however written): the only ones
    the controller makes buckets for and announces objects of. Each once, in order, as
    `StoragePath(DEFAULT_PROVIDER, path)`: filters and spelling do not make two paths."""
    found = {
        StoragePath(DEFAULT_PROVIDER, p.path): None
        for p in paths
        if p.provider == DEFAULT_PROVIDER
    }
    return list(found)


@dataclass(frozen=True)
class FunctionConfig:
    name: str = "function"
    log_level: str = "INFO"
    file_stage_in: bool = True
    variables: Mapping[str, str] = field(default_factory=dict)
    inputs: tuple[StoragePath, ...] = ()
    outputs: tuple[StoragePath, ...] = ()
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    isolation_level: str = "SERVICE"
    bucket_list: tuple[str, ...] = ()
    script_text: str | None = field(default=None, repr=False)
    exec_timeout: float | None = None  # from EXEC_TIMEOUT; the watchdog settings decide

    def provider(self, name: str) -> ProviderConfig:
        try:
            return self.providers[normalize_provider_name(name)]
        except KeyError:
            raise ConfigError(f"storage provider {name!r} is not defined") from None


class Mode(StrEnum):
    """How the watchdog serves (SPEC 4.4); the value is the `mode` setting's."""

    FORK = "fork"  # one run of the script per request
    HTTP = "http"  # every request proxied to one long-running server of the user's


@dataclass(frozen=True)
class RunSettings:
    """The settings one invocation needs: all that `run` reads (load_run_settings)."""

    exec_timeout: float = 0.0
    max_body_size: int = 1 << 30
    tmp_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


@dataclass(frozen=True)
class WatchdogSettings:
    """SPEC 4.3, with the classic watchdog's variable names."""

    port: int = 8080
    exec_timeout: float = 0.0
    read_timeout: float = 300.0
    write_timeout: float = 300.0
    max_inflight: int = 0
    max_body_size: int = 1 << 30
    healthcheck_interval: float = 10.0
    suppress_lock: bool = False
    write_debug: bool = False
    mode: Mode = Mode.FORK
    upstream_port: int = 8081  # http mode: where the user's server listens (on 127.0.0.1)
    upstream_start_timeout: float = 120.0  # http mode: seconds it may take to start listening
    upstream_command: str = ""
    # A factory, not a value: gettempdir() writes and removes a probe file in TMPDIR,
    # which a signal at import (before cli.signals_held) could leave behind.
    tmp_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


# ---- parsing helpers -------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_SIZE = re.compile(r"(\d+)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, key: str) -> float:
    """`10`, `10s`, `1m`, `1m30s`, `500ms` -> seconds."""
    text = text.strip()
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if not match or (match.group(2) is None and match.end() != len(text)):
            raise ConfigError(f"{key}: {text!r} is not a duration (try 10, 10s or 1m)")
        total += float(match.group(1)) * _SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ConfigError(f"{key}: empty duration")
    return total


def parse_size(text: str, key: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"{key}: {text!r} is not a size in bytes (try 1048576 or 1Gi)")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_bool(text: str, key: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key}: {text!r} is not true or false")


def parse_int(text: str, key: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a whole number") from None
    if value < 0:
        raise ConfigError(f"{key}: must not be negative")
    return value


def normalize_provider_name(name: str) -> str:
    """`minio` is `minio.default`, as OSCAR's own FDL files write it."""
    return name if "." in name else f"{name}.default"


# ---- the function config ---------------------------------------------------------------


# A parse made ahead of a read of the same text: the local backend's job runner parses its
# service's config once, and each job forked from it, reading the file and finding the
# very same text, skips YAML's parser (pure Python: about 2 ms of each job's start). Taken
# once, by the first read of that text: no two callers ever share the parsed objects.
_parsed_ahead: tuple[str, Any] | None = None


def parse_ahead(path: Path) -> None:
    """Parse the config file at `path` now, for a later read of the same text; a file that
    cannot be read or parsed is left for that read to report."""
    global _parsed_ahead
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        _parsed_ahead = (text, yaml.load(text, Loader=text_loader()))
    except (OSError, RecursionError, yaml.YAMLError, *CONSTRUCTOR_ERRORS):
        _parsed_ahead = None


# The implicit types of YAML 1.1, which yaml.safe_load gives every plain scalar, change
# what a string field says: `1.10` is 1.1, `01234` is 668 (octal), `1:30` is 90, `yes` is
# True, `2024-01-01` a date; a variable or a credential would not be what was written.
# OSCAR's Go readers keep a string field's text, and so does this loader: a plain scalar
# is its text, but for null (`~`, `null`, nothing: "" in a string field, as in Go) and
# the merge key `<<`. The few keys that are not strings (file_stage_in, a provider's
# `verify`) are read from that text by parse_bool.
_KEPT_RESOLVERS = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")
# An explicit tag of a scalar type (`!!int 0777`, `!!bool yes`) is its text as well: a
# typed field reads it as it reads untagged text, as Go's decoders take a tagged scalar
# into a string field. SafeLoader's own constructors raised ValueError, KeyError or
# OverflowError (no YAMLError) on a bad value (`!!int abc`, `!!bool maybe`), whose
# message quotes it: a traceback that printed a tagged secret.
_TEXT_TAGS = tuple(f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp"))
# Tags of collection types no key takes (a set, a tuple list, an ordered map): refused
# as not valid YAML, rather than objects no reader of the config expects.
_REFUSED_TAGS = tuple(f"tag:yaml.org,2002:{name}" for name in ("set", "omap", "pairs"))
# What a constructor may still raise on a value it cannot build, besides YAMLError:
# each parse site reports these as YAML it cannot read, without the value.
CONSTRUCTOR_ERRORS = (ValueError, LookupError, ArithmeticError, TypeError)


@functools.cache
def text_loader() -> type[yaml.SafeLoader]:
    import yaml

    class TextLoader(yaml.SafeLoader):
        """safe_load's loader, its plain scalars left as text but for null and `<<`."""

        def construct_text(self, node: yaml.Node) -> str:
            return str(self.construct_scalar(node))  # type: ignore[arg-type]

        def construct_binary_text(self, node: yaml.Node) -> str:
            """`!!binary`: its bytes as UTF-8 text (Go's decoder gives a string field
            the decoded bytes); anything else is refused."""
            data = self.construct_yaml_binary(node)  # type: ignore[arg-type]
            try:
                return data.decode()
            except UnicodeDecodeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "binary data that is not UTF-8 text", node.start_mark
                ) from None

        def construct_refused(self, node: yaml.Node) -> Any:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.tag} is not read here", node.start_mark
            )

    TextLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag in _KEPT_RESOLVERS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag in _TEXT_TAGS:
        TextLoader.add_constructor(tag, TextLoader.construct_text)
    TextLoader.add_constructor("tag:yaml.org,2002:binary", TextLoader.construct_binary_text)
    for tag in _REFUSED_TAGS:
        TextLoader.add_constructor(tag, TextLoader.construct_refused)
    return TextLoader


def _parse_yaml(text: str) -> Any:
    global _parsed_ahead
    import yaml

    ahead, _parsed_ahead = _parsed_ahead, None
    if ahead is not None and ahead[0] == text:
        return ahead[1]
    return yaml.load(text, Loader=text_loader())


def _read_text(path: Path, source: str) -> str:
    """A config file's text, UTF-8 as FUNCTION_CONFIG's (not the locale's encoding)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None


def read_config_yaml(config_path: str | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The raw YAML mapping from the first source found; {} when there is none."""
    if config_path:
        text, source = _read_text(Path(config_path), f"--config {config_path}"), config_path
    elif environ.get("FUNCTION_CONFIG"):
        text = _b64_text(environ["FUNCTION_CONFIG"], "FUNCTION_CONFIG")
        source = "FUNCTION_CONFIG"
    elif DEFAULT_CONFIG_PATH.is_file():
        source = str(DEFAULT_CONFIG_PATH)
        text = _read_text(DEFAULT_CONFIG_PATH, source)
    else:
        return {}
    import yaml  # here, not above: a start with no config file need not pay for it

    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except RecursionError:  # PyYAML's parser recurses once per level of nesting
        raise ConfigError(f"{source}: nested too deeply to be read") from None
    except CONSTRUCTOR_ERRORS:  # the loader makes none (text_loader): in case it ever does
        raise ConfigError(f"{source}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys")
    return data


def load_function_config(
    config_path: str | None, environ: Mapping[str, str], secrets_dir: Path | None = None
) -> FunctionConfig:
    data = read_config_yaml(config_path, environ)
    # Empty is unset: Path("") would be the working folder, whose TYPE.ID/ files would
    # then override the config's credentials.
    secrets_dir = secrets_dir or Path(
        environ.get("FAAS_PROVIDER_SECRETS_DIR") or DEFAULT_SECRETS_DIR
    )

    # A bad value is named where it was read: the override's variable or the file's key.
    log_level_from = "LOG_LEVEL" if environ.get("LOG_LEVEL") else "log_level"
    log_level = str(environ.get("LOG_LEVEL") or data.get("log_level") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(
            f"{log_level_from}: {log_level!r} is not one of {', '.join(LOG_LEVELS)}"
        )

    # An empty override (a template left blank) is no override, as for LOG_LEVEL; and an
    # empty value in the file (`file_stage_in:`, null) is the default, not false.
    stage_in_from = "FILE_STAGE_IN" if environ.get("FILE_STAGE_IN") else "file_stage_in"
    stage_in = environ.get("FILE_STAGE_IN") or _scalar_text(
        data.get("file_stage_in"), "file_stage_in"
    )
    file_stage_in = parse_bool(stage_in, stage_in_from) if stage_in.strip() else True

    exec_timeout = None
    if environ.get("EXEC_TIMEOUT"):
        exec_timeout = parse_duration(environ["EXEC_TIMEOUT"], "EXEC_TIMEOUT")

    environment = _mapping(data.get("environment"), "environment")
    variables = _variables(environment.get("variables"), "environment.variables")

    providers = _providers(data.get("storage_providers"), secrets_dir)
    inputs = tuple(_storage_paths(data.get("input"), "input"))
    outputs = tuple(_storage_paths(data.get("output"), "output"))
    for kind, entries in (("input", inputs), ("output", outputs)):
        for i, entry in enumerate(entries):
            if entry.provider not in providers:
                raise ConfigError(
                    f"{kind}[{i}].storage_provider: {entry.provider!r} "
                    "is not defined in storage_providers"
                )

    isolation = str(data.get("isolation_level") or "SERVICE").upper()
    if isolation not in ("SERVICE", "USER"):
        raise ConfigError(f"isolation_level: {isolation!r} is not SERVICE or USER")
    script = data.get("script")
    if script is not None and not isinstance(script, str):
        raise ConfigError("script: must be the text of the script")

    return FunctionConfig(
        name=str(data.get("name") or "function"),
        log_level=log_level,
        file_stage_in=file_stage_in,
        variables=variables,
        inputs=inputs,
        outputs=outputs,
        providers=providers,
        isolation_level=isolation,
        bucket_list=tuple(
            _scalar_text(b, "bucket_list") for b in _list(data.get("bucket_list"), "bucket_list")
        ),
        script_text=script,
        exec_timeout=exec_timeout,
    )


def _providers(raw: Any, secrets_dir: Path) -> dict[str, ProviderConfig]:
    providers: dict[str, ProviderConfig] = {}
    for ptype, by_id in _mapping(raw, "storage_providers").items():
        if ptype not in REQUIRED_PROVIDER_KEYS:
            raise ConfigError(
                f"storage_providers.{ptype}: unknown provider type "
                f"(one of {', '.join(REQUIRED_PROVIDER_KEYS)})"
            )
        for pid, settings in _mapping(by_id, f"storage_providers.{ptype}").items():
            where = f"storage_providers.{ptype}.{pid}"
            values: dict[str, str | bool | Secret] = {}
            for key, value in _mapping(settings, where).items():
                text = _scalar_text(value, f"{where}.{key}")
                values[str(key)] = Secret(text) if key in SECRET_KEYS else text
            _read_secret_files(values, secrets_dir / f"{ptype}.{pid}", f"{ptype}.{pid}")
            # A MinIO provider given a `path` is a local folder store: the embedded default
            # serves OSCAR's FDL files, which name `minio`, from a folder.
            required = REQUIRED_PROVIDER_KEYS["local" if is_folder_store(ptype, values) else ptype]
            for key in required:
                value = values.get(key)
                if value is None or (isinstance(value, Secret) and not value.value) or value == "":
                    raise ConfigError(f"storage provider {ptype}.{pid} has no {key!r}")
            check_provider_values(ptype, values, where)
            providers[f"{ptype}.{pid}"] = ProviderConfig(type=ptype, id=str(pid), settings=values)
    return providers


def check_provider_values(
    ptype: str, values: Mapping[str, str | bool | Secret], where: str
) -> None:
    """What the provider's first request would find wrong, found at start-up: a `verify`
    that is no bool (empty is the default, true), a server's URL of no use."""
    verify = values.get("verify")
    if isinstance(verify, str) and verify.strip():
        parse_bool(verify, f"{where}.verify")
    for key, scheme in URL_KEYS.get(ptype, {}).items():
        url = values.get(key)
        if not isinstance(url, str) or not url:
            continue  # not given (optional, or a folder store's `path` instead)
        if not is_http_url(url if "://" in url else f"{scheme}://{url}", lowest_port=0):
            # Not shown when it may hold a user and password (storage_providers.url_secrets).
            shown = "the URL (not shown: it holds an '@')" if "@" in url else repr(url)
            raise ConfigError(
                f"{where}.{key}: {shown} is not a server's URL (http(s)://host[:port][/path])"
            )


def is_http_url(url: str, lowest_port: int) -> bool:
    """Whether `url` is `http(s)://host[:port][/path]`, its port (if any) from
    `lowest_port` to 65535: no blank or control character, no query or fragment."""
    if "?" in url or "#" in url or any(c.isspace() or not c.isprintable() for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number of 0-65535 raises too
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and (port is None or port >= lowest_port)
    )


def is_folder_store(ptype: str, settings: Mapping[str, object]) -> bool:
    return ptype == "local" or (
        ptype == "minio" and "path" in settings and "endpoint" not in settings
    )


# OSCAR's file names for the cluster MinIO's keys (SPEC 3); any provider may use them.
_SECRET_FILE_KEYS = {"accessKey": "access_key", "secretKey": "secret_key"}


def _read_secret_files(
    values: dict[str, str | bool | Secret], folder: Path, provider: str
) -> None:
    """Settings mounted as files, `<secrets dir>/TYPE.ID/<setting>` (the Kubernetes
    backend puts every provider's credentials there, never in the ConfigMap): each fills
    or overrides the config's setting of that name. Names starting with `.` are the
    Secret volume's own bookkeeping (`..data`), not settings."""
    if not folder.is_dir():
        return
    try:
        paths = sorted(folder.iterdir())
    except OSError as exc:
        raise ConfigError(f"storage provider {provider}: {folder}: {exc.strerror}") from None
    for path in paths:
        if path.name.startswith(".") or not path.is_file():
            continue
        key = _SECRET_FILE_KEYS.get(path.name, path.name)
        try:
            text = path.read_text().rstrip("\r\n")  # the newline an editor adds
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise ConfigError(f"storage provider {provider}: {path}: {reason}") from None
        values[key] = Secret(text) if key in SECRET_KEYS else text


def _storage_paths(raw: Any, kind: str) -> list[StoragePath]:
    entries = []
    for i, item in enumerate(_list(raw, kind)):
        where = f"{kind}[{i}]"
        item = _mapping(item, where)
        provider = item.get("storage_provider")
        if not provider or not isinstance(provider, str):
            raise ConfigError(f"{where}.storage_provider: missing")
        path = item.get("path")
        if not path or not isinstance(path, str):
            raise ConfigError(f"{where}.path: missing")
        if not path.strip("/") and provider.partition(".")[0] in ("minio", "s3"):
            # Else refused only by the server, after the script has run (SPEC 6.2's
            # paths start with a bucket).
            raise ConfigError(f"{where}.path: {path!r} names no bucket")
        # As the controller's check: found now, not at the first upload, after the script
        # has run (a '..' sent to a server as is, or "outside the store" for the local one).
        problem = path_problem(path.strip("/")) if path.strip("/") else None
        if problem is not None:
            raise ConfigError(f"{where}.path: {path!r} {problem}")
        entries.append(
            StoragePath(
                storage_provider=provider,
                path=path.strip("/"),
                prefix=tuple(
                    _scalar_text(p, f"{where}.prefix")
                    for p in _list(item.get("prefix"), f"{where}.prefix")
                ),
                suffix=tuple(
                    _scalar_text(s, f"{where}.suffix")
                    for s in _list(item.get("suffix"), f"{where}.suffix")
                ),
            )
        )
    return entries


def path_problem(path: str) -> str | None:
    """Why a `/`-separated path in a bucket is unsafe, or None when it is fine: nothing in
    it may climb out of the bucket or mean another folder than the one written."""
    if "\x00" in path:
        return "must not hold a NUL character"
    if "\\" in path:
        return "must not hold a backslash"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return "must not have an empty, '.' or '..' segment"
    return None


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a mapping")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | int | float):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list")
    return value


def _scalar_text(value: Any, key: str) -> str:
    """A string field: scalars are text already, tagged ones too (text_loader); null
    is "", as in Go."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ConfigError(f"{key}: must be a string or a number")


# Kubernetes' rule for an environment variable's name (the manager's services get theirs
# there): what every backend can set, and what `execve` can carry.
VARIABLE_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# Linux's bound on one `NAME=value` string given to a process (MAX_ARG_STRLEN), its NUL
# included.
VARIABLE_MAX = 128 * 1024


def variable_problem(name: str, value: str, where: str) -> str | None:
    """Why a new service's `name=value` is refused (fdl.py), as one line naming `where`,
    or None: the name as Kubernetes takes it, then what any process takes."""
    if not VARIABLE_NAME.fullmatch(name):
        return (f"{where}: {name!r} is not a variable name (letters, digits, '_', '-', '.', "
                "not starting with a digit)")
    return process_variable_problem(name, value, where)


def process_variable_problem(name: str, value: str, where: str) -> str | None:
    """Why `name=value` cannot be in a process's environment at all (an empty name, `=`
    or a NUL in it, a lone surrogate, over Linux's bound), or None: what the runtime's
    own config refuses, found when it is read rather than by every script's start. Not
    Kubernetes' name rule: a service stored before fdl.py checked it runs on."""
    if not name or "=" in name or "\x00" in name or not utf8_encodable(name):
        return f"{where}: {name!r} cannot be a variable's name"
    if "\x00" in value or not utf8_encodable(value):
        return f"{where}.{name}: a NUL or a lone surrogate cannot be in a variable"
    if len(f"{name}={value}".encode()) >= VARIABLE_MAX:
        return (f"{where}.{name}: longer than a variable can be "
                f"({VARIABLE_MAX // 1024} KiB with its name)")
    return None


def utf8_encodable(text: str) -> bool:
    """Whether `text` is UTF-8's: a name read from the file system (os.walk, scandir)
    holds surrogates where its bytes were not UTF-8, as a YAML or JSON lone surrogate."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _variables(raw: Any, where: str) -> dict[str, str]:
    variables = {}
    for key, value in _mapping(raw, where).items():
        name = _scalar_text(key, where)
        text = _scalar_text(value, f"{where}.{name}")
        if (problem := process_variable_problem(name, text, where)) is not None:
            raise ConfigError(problem)
        variables[name] = text
    return variables


def _b64_text(value: str, key: str) -> str:
    try:
        return base64.b64decode("".join(value.split()), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(f"{key}: not valid base64-encoded text") from None


# ---- the script ------------------------------------------------------------------------


def resolve_script(
    script_path: str | None, environ: Mapping[str, str], config: FunctionConfig, runtime_dir: Path
) -> Path:
    """The script's path, first found (SPEC 3); text sources are written under runtime_dir."""
    if script_path:
        path = Path(script_path)
        if not path.is_file():
            # A pipe (`--script <(...)`) is refused too: each invocation runs the file.
            problem = "not a regular file" if path.exists() else "no such file"
            raise ConfigError(f"--script {script_path}: {problem}")
        return path.resolve()
    if environ.get("SCRIPT"):
        return _write_script(_b64_text(environ["SCRIPT"], "SCRIPT"), runtime_dir)
    if DEFAULT_SCRIPT_PATH.is_file():
        return DEFAULT_SCRIPT_PATH
    if config.script_text:
        return _write_script(config.script_text, runtime_dir)
    raise ConfigError(
        "no script: give --script, SCRIPT (base64), /oscar/config/script.sh "
        "or the config's script key"
    )


def _write_script(text: str, runtime_dir: Path) -> Path:
    path = runtime_dir / "script.sh"
    path.write_text(text)
    path.chmod(0o700)
    return path


# ---- the watchdog settings -------------------------------------------------------------


def _picker(
    environ: Mapping[str, str], flags: Mapping[str, Any]
) -> Callable[[str], str | None]:
    """A setting's text: its flag, else its environment variable (classic names)."""

    def pick(name: str) -> str | None:
        value = flags.get(name)
        if value is not None:
            return str(value)
        # An empty variable (a template left blank) is no setting, as for LOG_LEVEL.
        return environ.get(name) or None

    return pick


def load_run_settings(
    environ: Mapping[str, str], config: FunctionConfig, flags: Mapping[str, Any] | None = None
) -> RunSettings:
    """What one invocation needs: all `run` reads. A job's environment may hold anything
    else (a `port` meant for a server of its script): `run` does not parse it."""
    pick = _picker(environ, flags or {})
    values: dict[str, Any] = {}
    timeout = pick("exec_timeout")
    if timeout is not None:
        values["exec_timeout"] = parse_duration(timeout, "exec_timeout")
    elif config.exec_timeout is not None:
        values["exec_timeout"] = config.exec_timeout
    if (text := pick("max_body_size")) is not None:
        values["max_body_size"] = parse_size(text, "max_body_size")
    # Absolute: the script runs in its input folder, so a relative TMPDIR would name
    # other folders there than those the runtime made and collects from.
    tmp_dir = Path(environ.get("TMPDIR") or tempfile.gettempdir()).absolute()
    if not tmp_dir.is_dir():  # found now, not as a traceback at the first mkdtemp
        raise ConfigError(f"TMPDIR: {str(tmp_dir)!r} is not a folder")
    values["tmp_dir"] = tmp_dir
    return RunSettings(**values)


def load_watchdog_settings(
    environ: Mapping[str, str], flags: Mapping[str, Any], config: FunctionConfig
) -> WatchdogSettings:
    """Environment (classic names), then flags; `exec_timeout` also from `EXEC_TIMEOUT`."""
    pick = _picker(environ, flags)
    run = load_run_settings(environ, config, flags)
    values: dict[str, Any] = {
        "exec_timeout": run.exec_timeout, "max_body_size": run.max_body_size,
        "tmp_dir": run.tmp_dir,
    }
    if (text := pick("port")) is not None:
        values["port"] = _tcp_port(text, "port", lowest=0)  # 0: any free port
    for name in ("read_timeout", "write_timeout", "healthcheck_interval", "upstream_start_timeout"):
        if (text := pick(name)) is not None:
            values[name] = parse_duration(text, name)
    if (text := pick("max_inflight")) is not None:
        values["max_inflight"] = parse_int(text, "max_inflight")
    for name in ("suppress_lock", "write_debug"):
        if (text := pick(name)) is not None:
            values[name] = parse_bool(text, name)
    if (text := pick("mode")) is not None:
        if text not in set(Mode):
            raise ConfigError(f"mode: {text!r} is not fork or http")
        values["mode"] = Mode(text)
    if (text := pick("upstream_port")) is not None:
        values["upstream_port"] = _tcp_port(text, "upstream_port", lowest=1)
    settings = WatchdogSettings(**values)
    # The http mode proxies to 127.0.0.1:upstream_port: on the watchdog's own port, every
    # request would be proxied to itself again, until no descriptor is left.
    if settings.mode is Mode.HTTP and settings.upstream_port == settings.port:
        raise ConfigError(
            f"upstream_port: {settings.upstream_port} is the watchdog's own port: "
            "the user's server needs another"
        )
    return settings


def _tcp_port(text: str, key: str, lowest: int) -> int:
    port = parse_int(text, key)
    if not lowest <= port < 65536:
        raise ConfigError(f"{key}: {text!r} is not a TCP port")
    return port


def script_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The watchdog's own environment as the base of every script's, minus its config."""
    hidden = {"FUNCTION_CONFIG", "SCRIPT", "EVENT"}
    return {k: v for k, v in environ.items() if k not in hidden}


def current_environ() -> dict[str, str]:
    """The one place the process environment is read (at start-up)."""
    return dict(os.environ)
