"""config.py: every source of the function config and the script, their precedence, the
environment overrides, the value parsers and the validation of storage providers (SPEC 3,
4.3). Unit tests: the environment is a plain dict, the default paths are moved into tmp.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from faas_supervisor import config as cfg
from faas_supervisor.config import (
    FunctionConfig,
    Secret,
    WatchdogSettings,
    load_function_config,
    load_watchdog_settings,
    normalize_provider_name,
    parse_bool,
    parse_duration,
    parse_size,
    resolve_script,
    script_environment,
)
from faas_supervisor.errors import ConfigError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(autouse=True)
def no_default_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The /oscar and /var/run defaults point into tmp, so the machine's files never count."""
    monkeypatch.setattr(cfg, "DEFAULT_CONFIG_PATH", tmp_path / "oscar" / "function_config.yaml")
    monkeypatch.setattr(cfg, "DEFAULT_SCRIPT_PATH", tmp_path / "oscar" / "script.sh")
    monkeypatch.setattr(cfg, "DEFAULT_SECRETS_DIR", tmp_path / "no-secrets")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- config sources --------------------------------------------------------------------


def test_no_config_at_all_gives_the_defaults() -> None:
    config = load_function_config(None, {})
    assert config == FunctionConfig()
    assert config.log_level == "INFO"
    assert config.file_stage_in is True


def test_config_file_from_flag(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: plants\nlog_level: debug\n")
    config = load_function_config(str(path), {})
    assert config.name == "plants"
    assert config.log_level == "DEBUG"


def test_config_from_function_config_base64_with_newlines() -> None:
    text = "name: from-env\nenvironment:\n  variables: {MODEL: small, N: 3, FLAG: true}\n"
    text += "#" * 200
    encoded = b64(text)
    # `base64` wraps at 76 columns; the wrapped form must be read the same.
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + "\n"
    config = load_function_config(None, {"FUNCTION_CONFIG": wrapped})
    assert config.name == "from-env"
    assert dict(config.variables) == {"MODEL": "small", "N": "3", "FLAG": "true"}


def test_default_config_path_is_read(tmp_path: Path) -> None:
    write(cfg.DEFAULT_CONFIG_PATH, "name: from-default-path\n")
    assert load_function_config(None, {}).name == "from-default-path"


def test_config_sources_precedence(tmp_path: Path) -> None:
    write(cfg.DEFAULT_CONFIG_PATH, "name: default-path\n")
    flag = write(tmp_path / "c.yaml", "name: flag\n")
    env = {"FUNCTION_CONFIG": b64("name: env\n")}
    assert load_function_config(str(flag), env).name == "flag"
    assert load_function_config(None, env).name == "env"
    assert load_function_config(None, {}).name == "default-path"


def test_unknown_keys_are_kept_and_ignored(tmp_path: Path) -> None:
    text = "name: x\nimage: ghcr.io/x\nmemory: 1Gi\nexpose: {api_port: 80}\n"
    path = write(tmp_path / "c.yaml", text)
    assert load_function_config(str(path), {}).name == "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed\n", "not valid YAML at line"),
        ("- a\n- b\n", "must be a mapping"),
        ("log_level: LOUD\n", "log_level"),
        ("environment: [1]\n", "environment"),
        ("environment: {variables: {A: {nested: 1}}}\n", "environment.variables.A"),
        ("isolation_level: GROUP\n", "isolation_level"),
        ("script: [1, 2]\n", "script"),
        ("file_stage_in: perhaps\n", "file_stage_in"),
        ("input: [{path: a/b}]\n", "input[0].storage_provider"),
        ("input: [{storage_provider: minio}]\n", "input[0].path"),
        ("output: [{storage_provider: minio, path: /}]\n", "output[0].path: '/' names no bucket"),
        ("input: [{storage_provider: s3.aws, path: //}]\n", "input[0].path: '//' names no"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_function_config(str(path), {})
    assert expected in info.value.message
    assert "\n" not in info.value.message


def test_missing_config_file_and_bad_base64_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_function_config(str(tmp_path / "absent.yaml"), {})
    with pytest.raises(ConfigError, match="FUNCTION_CONFIG"):
        load_function_config(None, {"FUNCTION_CONFIG": "not base64 !!"})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"name: caf\xe9\n", "not UTF-8 text"),  # Latin-1, as an old editor saves it
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    ],
)
@pytest.mark.parametrize("source", ["--config", "default path"])
def test_a_config_that_cannot_be_decoded_or_parsed_is_a_config_error(
    tmp_path: Path, content: bytes, expected: str, source: str
) -> None:
    """Not a traceback (exit 1) but one line, exit 2; the parse ahead leaves it to the read."""
    path = tmp_path / "c.yaml" if source == "--config" else cfg.DEFAULT_CONFIG_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    cfg.parse_ahead(path)
    assert cfg._parsed_ahead is None
    with pytest.raises(ConfigError) as info:
        load_function_config(str(path) if source == "--config" else None, {})
    assert expected in info.value.message and str(path) in info.value.message
    assert info.value.exit_status == 2


def test_empty_config_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_function_config(str(write(tmp_path / "c.yaml", "")), {}) == FunctionConfig()


# ---- environment overrides -------------------------------------------------------------


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "log_level: ERROR\nfile_stage_in: true\n")
    env = {"LOG_LEVEL": "debug", "FILE_STAGE_IN": "false", "EXEC_TIMEOUT": "1m"}
    config = load_function_config(str(path), env)
    assert config.log_level == "DEBUG"
    assert config.file_stage_in is False
    assert config.exec_timeout == 60.0


def test_file_stage_in_false_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "file_stage_in: false\n")
    assert load_function_config(str(path), {}).file_stage_in is False
    assert load_function_config(str(path), {"FILE_STAGE_IN": "yes"}).file_stage_in is True


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"FILE_STAGE_IN": "maybe"}, "FILE_STAGE_IN"),
        ({"EXEC_TIMEOUT": "soon"}, "EXEC_TIMEOUT"),
    ],
)
def test_bad_environment_override_names_it(env: dict[str, str], expected: str) -> None:
    # The variable, not the file's key (a review found the key named for an override).
    with pytest.raises(ConfigError, match=rf"^{expected}: "):
        load_function_config(None, env)


def test_a_bad_value_in_the_file_names_its_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "log_level: chatty\n")
    with pytest.raises(ConfigError, match=r"^log_level: "):
        load_function_config(str(path), {})
    path = write(tmp_path / "c.yaml", "file_stage_in: maybe\n")
    with pytest.raises(ConfigError, match=r"^file_stage_in: "):
        load_function_config(str(path), {})


def test_exec_timeout_from_environment_reaches_the_watchdog_settings() -> None:
    config = load_function_config(None, {"EXEC_TIMEOUT": "10s"})
    assert load_watchdog_settings({}, {}, config).exec_timeout == 10.0
    # The classic watchdog's own name, and then the flag, win over EXEC_TIMEOUT.
    assert load_watchdog_settings({"exec_timeout": "3"}, {}, config).exec_timeout == 3.0
    flagged = load_watchdog_settings({"exec_timeout": "3"}, {"exec_timeout": "1m"}, config)
    assert flagged.exec_timeout == 60


# ---- value parsers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("10s", 10.0), ("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("1.5", 1.5),
     ("2h", 7200.0), (" 0 ", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "exec_timeout") == seconds


@pytest.mark.parametrize("text", ["", "s", "ten", "10x", "-1", "10 s", "1m-5s"])
def test_bad_durations_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match="exec_timeout"):
        parse_duration(text, "exec_timeout")


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("1Gi", 1 << 30), ("1G", 10**9), ("10MiB", 10 << 20), ("2k", 2000),
     ("2Ki", 2048), ("5b", 5), ("0", 0)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text, "max_body_size") == size


@pytest.mark.parametrize("text", ["", "big", "-5", "1.5G", "10 parsecs"])
def test_bad_sizes_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match="max_body_size"):
        parse_size(text, "max_body_size")


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " True "])
def test_true_bools(text: str) -> None:
    assert parse_bool(text, "suppress_lock") is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off", ""])
def test_false_bools(text: str) -> None:
    assert parse_bool(text, "suppress_lock") is False


def test_bad_bool_names_the_key() -> None:
    with pytest.raises(ConfigError, match="write_debug"):
        parse_bool("sometimes", "write_debug")


# ---- watchdog settings -----------------------------------------------------------------


def test_watchdog_defaults(tmp_path: Path) -> None:
    settings = load_watchdog_settings({"TMPDIR": str(tmp_path)}, {}, FunctionConfig())
    assert settings == WatchdogSettings(tmp_dir=tmp_path)
    assert (settings.port, settings.exec_timeout, settings.max_inflight) == (8080, 0.0, 0)
    assert (settings.read_timeout, settings.write_timeout) == (300.0, 300.0)
    assert settings.max_body_size == 1 << 30
    assert settings.healthcheck_interval == 10.0
    assert (settings.suppress_lock, settings.write_debug, settings.mode) == (False, False, "fork")


def test_watchdog_settings_from_environment_and_flags_win() -> None:
    env = {
        "port": "9000", "exec_timeout": "1m", "read_timeout": "5s", "write_timeout": "6",
        "max_inflight": "4", "max_body_size": "1Ki", "healthcheck_interval": "2s",
        "suppress_lock": "true", "write_debug": "1", "mode": "http",
    }
    by_env = load_watchdog_settings(env, {}, FunctionConfig())
    assert by_env.port == 9000
    assert by_env.exec_timeout == 60.0
    assert (by_env.read_timeout, by_env.write_timeout) == (5.0, 6.0)
    assert by_env.max_inflight == 4
    assert by_env.max_body_size == 1024
    assert by_env.healthcheck_interval == 2.0
    assert (by_env.suppress_lock, by_env.write_debug, by_env.mode) == (True, True, "http")

    flags = {
        "port": 9001, "exec_timeout": "10s", "read_timeout": "1m", "write_timeout": "7s",
        "max_inflight": "2", "max_body_size": "2048", "healthcheck_interval": "3",
        "suppress_lock": None, "write_debug": None, "mode": "fork",
    }
    by_flag = load_watchdog_settings(env, flags, FunctionConfig())
    assert by_flag.port == 9001
    assert by_flag.exec_timeout == 10.0
    assert (by_flag.read_timeout, by_flag.write_timeout) == (60.0, 7.0)
    assert by_flag.max_inflight == 2
    assert by_flag.max_body_size == 2048
    assert by_flag.healthcheck_interval == 3.0
    # A flag left unset (None) leaves the environment's value.
    assert (by_flag.suppress_lock, by_flag.write_debug, by_flag.mode) == (True, True, "fork")


@pytest.mark.parametrize(
    ("env", "key"),
    [({"port": "http"}, "port"), ({"max_inflight": "-1"}, "max_inflight"),
     ({"mode": "thread"}, "mode"), ({"read_timeout": "forever"}, "read_timeout"),
     ({"max_body_size": "huge"}, "max_body_size"), ({"suppress_lock": "maybe"}, "suppress_lock")],
)
def test_bad_watchdog_setting_names_it(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_watchdog_settings(env, {}, FunctionConfig())


@pytest.mark.parametrize(
    ("env", "flags"),
    [({"port": "70000"}, {}), ({"port": "65536"}, {}), ({}, {"port": 70000}),
     ({"upstream_port": "0"}, {}), ({"upstream_port": "65536"}, {})],
)
def test_a_port_out_of_range_is_refused(env: dict[str, str], flags: dict[str, int]) -> None:
    """Not an OverflowError at bind (a traceback, exit 1)."""
    with pytest.raises(ConfigError, match=r"port: '\d+' is not a TCP port"):
        load_watchdog_settings(env, flags, FunctionConfig())


def test_the_port_range_bounds_are_accepted() -> None:
    for port in (0, 65535):  # 0: any free port, as for a bind
        assert load_watchdog_settings({"port": str(port)}, {}, FunctionConfig()).port == port
    upstream = load_watchdog_settings({"upstream_port": "65535"}, {}, FunctionConfig())
    assert upstream.upstream_port == 65535


@pytest.mark.parametrize(
    ("env", "flags"),
    [({"mode": "http", "port": "9000", "upstream_port": "9000"}, {}),
     ({"mode": "http", "upstream_port": "8080"}, {}),  # the default port
     ({"mode": "http", "upstream_port": "9000"}, {"port": 9000})],
)
def test_http_mode_proxying_to_the_watchdogs_own_port_is_refused(
    env: dict[str, str], flags: dict[str, int]
) -> None:
    """It would proxy each request to itself, again and again, until no fd is left."""
    with pytest.raises(ConfigError, match=r"^upstream_port: \d+ is the watchdog's own port"):
        load_watchdog_settings(env, flags, FunctionConfig())


def test_the_same_ports_are_fine_in_fork_mode_and_port_0_in_http_mode() -> None:
    fork = load_watchdog_settings({"port": "9000", "upstream_port": "9000"}, {}, FunctionConfig())
    assert (fork.port, fork.upstream_port) == (9000, 9000)  # upstream_port is unused
    http = load_watchdog_settings({"mode": "http", "port": "0"}, {}, FunctionConfig())
    assert (http.port, http.upstream_port) == (0, 8081)


WATCHDOG_VARIABLES = ("port", "exec_timeout", "read_timeout", "write_timeout", "max_inflight",
                      "max_body_size", "healthcheck_interval", "suppress_lock", "write_debug",
                      "mode", "upstream_port", "upstream_start_timeout")


def test_empty_watchdog_variables_are_unset(tmp_path: Path) -> None:
    """As an empty LOG_LEVEL, FILE_STAGE_IN or EXEC_TIMEOUT: a template left blank."""
    from faas_supervisor.config import RunSettings, load_run_settings

    blank = {name: "" for name in WATCHDOG_VARIABLES} | {"TMPDIR": str(tmp_path)}
    assert load_watchdog_settings(blank, {}, FunctionConfig()) == WatchdogSettings(
        tmp_dir=tmp_path)
    assert load_run_settings(blank, FunctionConfig()) == RunSettings(tmp_dir=tmp_path)
    # ... so EXEC_TIMEOUT, under it, still counts.
    config = load_function_config(None, {"EXEC_TIMEOUT": "5s"})
    assert load_run_settings(blank, config).exec_timeout == 5.0


def test_script_environment_hides_the_runtime_config() -> None:
    env = {"PATH": "/bin", "FUNCTION_CONFIG": "x", "SCRIPT": "y", "EVENT": "z", "MINE": "1"}
    assert script_environment(env) == {"PATH": "/bin", "MINE": "1"}


# ---- the script ------------------------------------------------------------------------


def test_script_sources_in_order(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    flag_script = write(tmp_path / "flag.sh", "echo flag\n")
    write(cfg.DEFAULT_SCRIPT_PATH, "echo default-path\n")
    config = FunctionConfig(script_text="echo config-key\n")
    env = {"SCRIPT": b64("echo env\n")}

    assert resolve_script(str(flag_script), env, config, runtime) == flag_script.resolve()
    from_env = resolve_script(None, env, config, runtime)
    assert from_env.read_text() == "echo env\n"
    assert from_env.parent == runtime
    assert resolve_script(None, {}, config, runtime) == cfg.DEFAULT_SCRIPT_PATH
    cfg.DEFAULT_SCRIPT_PATH.unlink()
    from_key = resolve_script(None, {}, config, runtime)
    assert from_key.read_text() == "echo config-key\n"
    assert from_key.parent == runtime


def test_script_key_of_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "script: |\n  #!/bin/sh\n  echo from yaml\n")
    config = load_function_config(str(path), {})
    script = resolve_script(None, {}, config, tmp_path)
    assert script.read_text() == "#!/bin/sh\necho from yaml\n"
    # The script's text is not in the config's repr (it is long, and may hold anything).
    assert "from yaml" not in repr(config)


def test_no_script_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no script"):
        resolve_script(None, {}, FunctionConfig(), tmp_path)


def test_missing_script_file_and_bad_script_base64(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.sh: no such file$"):
        resolve_script(str(tmp_path / "absent.sh"), {}, FunctionConfig(), tmp_path)
    # One that is there but no regular file (a folder; `--script <(...)`, a pipe, which
    # every invocation would read again) is said to be so, not missing.
    for there in (tmp_path, Path("/dev/null")):
        with pytest.raises(ConfigError, match=f"--script {there}: not a regular file$"):
            resolve_script(str(there), {}, FunctionConfig(), tmp_path)
    with pytest.raises(ConfigError, match="SCRIPT"):
        resolve_script(None, {"SCRIPT": "@@@"}, FunctionConfig(), tmp_path)


# ---- storage providers -----------------------------------------------------------------

PROVIDERS = """
storage_providers:
  minio:
    default: {endpoint: http://minio:9000, verify: false, access_key: AKMINIO, secret_key: SKMINIO}
  s3:
    aws1: {access_key: AKS3, secret_key: SKS3, region: eu-west-1}
  webdav:
    dcache: {hostname: https://dcache.example.org, login: me, password: PWWEBDAV}
  onedata:
    od1: {oneprovider_host: op.example.org, token: TKONEDATA, space: space1}
  local:
    files: {path: /srv/files}
"""
SECRET_VALUES = ("AKMINIO", "SKMINIO", "AKS3", "SKS3", "PWWEBDAV", "TKONEDATA")


def test_every_provider_type_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", PROVIDERS)
    config = load_function_config(str(path), {})
    assert set(config.providers) == {
        "minio.default", "s3.aws1", "webdav.dcache", "onedata.od1", "local.files",
    }
    minio = config.provider("minio")  # TYPE alone means TYPE.default
    assert minio.name == "minio.default"
    assert minio.get("endpoint") == "http://minio:9000"
    assert minio.get("secret_key") == "SKMINIO"
    assert minio.flag("verify", True) is False
    assert config.provider("webdav.dcache").get("password") == "PWWEBDAV"


def test_secrets_never_appear_in_repr_or_str(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", PROVIDERS)
    config = load_function_config(str(path), {})
    shown = repr(config) + str(config)
    for provider in config.providers.values():
        shown += repr(provider) + str(provider) + repr(dict(provider.settings))
    for secret in SECRET_VALUES:
        assert secret not in shown
    assert repr(Secret("hunter2")) == "Secret('***')"
    assert "hunter2" not in f"{Secret('hunter2')}"


def test_a_type_alone_means_its_default(tmp_path: Path) -> None:
    assert normalize_provider_name("minio") == "minio.default"
    assert normalize_provider_name("s3.aws1") == "s3.aws1"
    text = PROVIDERS + "input:\n  - {storage_provider: minio, path: /plants/input/}\n"
    text += "output:\n  - {storage_provider: s3.aws1, path: out/x, prefix: result, "
    text += "suffix: [.png]}\n"
    config = load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert config.inputs[0].provider == "minio.default"
    assert (config.inputs[0].bucket, config.inputs[0].folder) == ("plants", "input")
    assert config.outputs[0].provider == "s3.aws1"
    assert config.outputs[0].prefix == ("result",)
    assert config.outputs[0].matches("result-1.png")
    assert not config.outputs[0].matches("result-1.jpg")
    assert not config.outputs[0].matches("other.png")


@pytest.mark.parametrize("kind", ["input", "output"])
def test_undefined_provider_is_named(tmp_path: Path, kind: str) -> None:
    text = PROVIDERS + f"{kind}:\n  - {{storage_provider: minio.elsewhere, path: b/f}}\n"
    with pytest.raises(ConfigError) as info:
        load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert "minio.elsewhere" in info.value.message
    assert f"{kind}[0]" in info.value.message


def test_type_alone_without_a_default_is_named(tmp_path: Path) -> None:
    text = PROVIDERS + "output:\n  - {storage_provider: s3, path: b/f}\n"
    with pytest.raises(ConfigError, match=r"s3\.default"):
        load_function_config(str(write(tmp_path / "c.yaml", text)), {})


@pytest.mark.parametrize(
    ("ptype", "settings", "missing"),
    [
        ("minio", "{endpoint: http://m, access_key: A}", "secret_key"),
        ("minio", "{access_key: A, secret_key: S}", "endpoint"),
        ("s3", "{secret_key: S}", "access_key"),
        ("webdav", "{hostname: https://h, login: me}", "password"),
        ("webdav", "{hostname: https://h, login: me, password: ''}", "password"),
        ("onedata", "{oneprovider_host: h, token: T}", "space"),
        ("local", "{}", "path"),
    ],
)
def test_provider_without_a_required_key(
    tmp_path: Path, ptype: str, settings: str, missing: str
) -> None:
    text = f"storage_providers:\n  {ptype}:\n    p1: {settings}\n"
    with pytest.raises(ConfigError) as info:
        load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert f"{ptype}.p1" in info.value.message
    assert missing in info.value.message
    for secret in ("S", "T"):
        assert f"'{secret}'" not in info.value.message


def test_unknown_provider_type(tmp_path: Path) -> None:
    text = "storage_providers:\n  ftp:\n    x: {host: h}\n"
    with pytest.raises(ConfigError, match=r"storage_providers\.ftp"):
        load_function_config(str(write(tmp_path / "c.yaml", text)), {})


def test_minio_default_keys_from_secret_files(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    write(secrets / "minio.default" / "accessKey", "AKFILE\n")
    write(secrets / "minio.default" / "secretKey", "SKFILE\n")
    # Keys absent from the config: the files supply them, so the config is valid.
    text = "storage_providers:\n  minio:\n    default: {endpoint: http://m:9000}\n"
    path = write(tmp_path / "c.yaml", text)
    config = load_function_config(str(path), {"FAAS_PROVIDER_SECRETS_DIR": str(secrets)})
    minio = config.provider("minio")
    assert (minio.get("access_key"), minio.get("secret_key")) == ("AKFILE", "SKFILE")
    assert "AKFILE" not in repr(config) and "SKFILE" not in repr(config)
    # The files win over keys written in the config.
    config = load_function_config(
        str(write(tmp_path / "c2.yaml", PROVIDERS)), {"FAAS_PROVIDER_SECRETS_DIR": str(secrets)}
    )
    assert config.provider("minio.default").get("secret_key") == "SKFILE"
    # ... read from minio.default's folder only, not for another provider.
    other = "storage_providers:\n  minio:\n    other: {endpoint: http://m:9000}\n"
    with pytest.raises(ConfigError, match=r"minio\.other"):
        load_function_config(
            str(write(tmp_path / "c3.yaml", other)), {"FAAS_PROVIDER_SECRETS_DIR": str(secrets)}
        )


PROVIDERS_WITHOUT_CREDENTIALS = """\
storage_providers:
  webdav:
    dcache: {hostname: https://dcache.example.org, login: jo, password: FROM-CONFIG}
  rucio:
    cern: {host: https://rucio.example.org, account: jo, rse: DISK}
  s3:
    aws: {region: eu-west-1}
"""


def test_any_provider_takes_settings_from_files(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    write(secrets / "webdav.dcache" / "password", "DAV-FILE\n")  # overrides the config's
    write(secrets / "rucio.cern" / "password", "RUCIO-FILE")  # fills what it lacks
    write(secrets / "rucio.cern" / "username", "jo-user")
    write(secrets / "s3.aws" / "access_key", "S3-AK")
    write(secrets / "s3.aws" / "secret_key", " S3 SK ")  # only the newline is cut
    # A Secret volume's own entries are not settings.
    (secrets / "s3.aws" / "..data").mkdir()
    write(secrets / "s3.aws" / "..2026_11_30", "not a setting")
    write(secrets / "s3.other" / "secret_key", "unused: no such provider")
    path = write(tmp_path / "c.yaml", PROVIDERS_WITHOUT_CREDENTIALS)
    config = load_function_config(str(path), {"FAAS_PROVIDER_SECRETS_DIR": str(secrets)})
    dav, rucio, s3 = (config.provider(n) for n in ("webdav.dcache", "rucio.cern", "s3.aws"))
    assert dav.get("password") == "DAV-FILE"
    assert dav.get("login") == "jo"
    assert (rucio.get("username"), rucio.get("password")) == ("jo-user", "RUCIO-FILE")
    assert (s3.get("access_key"), s3.get("secret_key")) == ("S3-AK", " S3 SK ")
    assert set(s3.settings) == {"region", "access_key", "secret_key"}
    assert "s3.other" not in config.providers
    # Credentials are wrapped, whichever source they came from; other settings are not.
    assert isinstance(rucio.settings["password"], Secret)
    assert rucio.settings["username"] == "jo-user"
    for value in ("DAV-FILE", "RUCIO-FILE", "S3-AK", "S3 SK", "FROM-CONFIG"):
        assert value not in repr(config) and value not in str(config.providers)


def test_secret_files_in_the_layout_kubernetes_projects(tmp_path: Path) -> None:
    """The kubelet writes a Secret volume's files into a timestamped folder and links
    them through `..data`: `TYPE.ID` is a link to `..data/TYPE.ID`."""
    secrets = tmp_path / "secrets"
    write(secrets / "..2026_11_30_19_00_00.1" / "s3.aws" / "access_key", "S3-AK")
    write(secrets / "..2026_11_30_19_00_00.1" / "s3.aws" / "secret_key", "S3-SK")
    (secrets / "..data").symlink_to("..2026_11_30_19_00_00.1")
    (secrets / "s3.aws").symlink_to("..data/s3.aws")
    path = write(tmp_path / "c.yaml", PROVIDERS_WITHOUT_CREDENTIALS)
    config = load_function_config(str(path), {"FAAS_PROVIDER_SECRETS_DIR": str(secrets)})
    s3 = config.provider("s3.aws")
    assert (s3.get("access_key"), s3.get("secret_key")) == ("S3-AK", "S3-SK")


def test_a_provider_still_missing_a_key_after_the_files_names_it(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    write(secrets / "s3.aws" / "access_key", "S3-AK")
    path = write(tmp_path / "c.yaml", PROVIDERS_WITHOUT_CREDENTIALS)
    with pytest.raises(ConfigError) as info:
        load_function_config(str(path), {"FAAS_PROVIDER_SECRETS_DIR": str(secrets)})
    assert info.value.message == "storage provider s3.aws has no 'secret_key'"


def test_an_unreadable_secret_file_is_a_start_up_error_without_its_value(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "secrets"
    write(secrets / "s3.aws" / "access_key", "S3-AK")
    (secrets / "s3.aws" / "secret_key").write_bytes(b"\xff\xfeSECRET")
    path = write(tmp_path / "c.yaml", PROVIDERS_WITHOUT_CREDENTIALS)
    with pytest.raises(ConfigError) as info:
        load_function_config(str(path), {"FAAS_PROVIDER_SECRETS_DIR": str(secrets)})
    assert info.value.message.startswith("storage provider s3.aws: ")
    assert "secret_key" in info.value.message
    assert "SECRET" not in info.value.message.replace("secrets", "")


def test_minio_default_without_keys_or_files_names_the_key(tmp_path: Path) -> None:
    text = "storage_providers:\n  minio:\n    default: {endpoint: http://m:9000}\n"
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_function_config(str(path), {"FAAS_PROVIDER_SECRETS_DIR": str(tmp_path / "none")})
    assert "minio.default" in info.value.message
    assert "access_key" in info.value.message


def test_isolation_and_bucket_list(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "isolation_level: user\nbucket_list: [a, b]\n")
    config = load_function_config(str(path), {})
    assert config.isolation_level == "USER"
    assert config.bucket_list == ("a", "b")


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ('{"A=B": x}', "'A=B' cannot be a variable's name"),
        ('{"": x}', "'' cannot be a variable's name"),
        ("{~: x}", "'' cannot be a variable's name"),
        ('{"A\\0": x}', "'A\\x00' cannot be a variable's name"),
        ('{X: "a\\0b"}', "environment.variables.X: a NUL"),
        ('{X: "\\ud800"}', "environment.variables.X: a NUL or a lone surrogate"),
        ("{X: " + "v" * (128 * 1024) + "}", "environment.variables.X: longer than"),
    ],
)
def test_variables_no_process_can_be_given_are_refused_at_load(
    tmp_path: Path, variables: str, expected: str
) -> None:
    """As fdl.py refuses them in a service: at start-up, not by every invocation's spawn."""
    path = write(tmp_path / "c.yaml", f"environment:\n  variables: {variables}\n")
    with pytest.raises(ConfigError) as info:
        load_function_config(str(path), {})
    assert expected in info.value.message
    assert "vvvv" not in info.value.message  # the value is not shown


def test_a_name_kubernetes_would_refuse_still_runs(tmp_path: Path) -> None:
    """fdl.py refuses `1ST` in a new service (Kubernetes' rule), but one stored before it
    did must still run: the runtime refuses only what no process can be given."""
    path = write(tmp_path / "c.yaml", "environment:\n  variables: {1ST: x, a b: y}\n")
    assert load_function_config(str(path), {}).variables == {"1ST": "x", "a b": "y"}


def test_variables_of_the_longest_size_and_every_name_character_load(tmp_path: Path) -> None:
    value = "v" * (128 * 1024 - len("_a-1.b=") - 1)  # the bound counts the NUL
    path = write(tmp_path / "c.yaml", f"environment:\n  variables: {{_a-1.b: {value}}}\n")
    assert load_function_config(str(path), {}).variables == {"_a-1.b": value}


def test_string_fields_keep_their_yaml_text(tmp_path: Path) -> None:
    """YAML 1.1's implicit types are not applied to string fields (OSCAR's Go readers keep
    the text): a version, a zip code, a time, a date, an octal-looking credential."""
    text = """\
name: 1.10
environment:
  variables: {VERSION: 1.10, ZIP: 01234, HEX: 0x1F, T: 1:30, F: yes, N: 3, FLAG: true,
              DAY: 2024-01-01, EMPTY: , TILDE: ~, NAN: .nan, EQ: =, QUOTED: "1.10"}
storage_providers:
  s3:
    aws1: {access_key: 0777, secret_key: 1e3, region: 2024-01-01}
output:
  - {storage_provider: s3.aws1, path: out/2024, prefix: [01], suffix: 1.50}
bucket_list: [0x10, ~]
"""
    config = load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert config.name == "1.10"
    assert dict(config.variables) == {
        "VERSION": "1.10", "ZIP": "01234", "HEX": "0x1F", "T": "1:30", "F": "yes", "N": "3",
        "FLAG": "true", "DAY": "2024-01-01", "EMPTY": "", "TILDE": "", "NAN": ".nan",
        "EQ": "=", "QUOTED": "1.10",
    }
    s3 = config.provider("s3.aws1")
    assert (s3.get("access_key"), s3.get("secret_key"), s3.get("region")) == (
        "0777", "1e3", "2024-01-01")
    assert (config.outputs[0].prefix, config.outputs[0].suffix) == (("01",), ("1.50",))
    assert config.bucket_list == ("0x10", "")


@pytest.mark.parametrize(
    ("written", "value"),
    [("true", True), ("yes", True), ("on", True), ("True", True), ("1", True),
     ("false", False), ("no", False), ("off", False), ("0", False), ("!!bool false", False)],
)
def test_typed_keys_are_read_from_their_text(tmp_path: Path, written: str, value: bool) -> None:
    """file_stage_in and a provider's `verify` take YAML 1.1's booleans, as before."""
    text = (f"file_stage_in: {written}\nstorage_providers:\n  minio:\n    default:\n"
            f"      {{endpoint: http://m, access_key: A, secret_key: S, verify: {written}}}\n")
    config = load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert config.file_stage_in is value
    assert config.provider("minio").flag("verify", not value) is value


def test_an_empty_secrets_dir_variable_is_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the working folder, whose TYPE.ID/ files would override the config's keys."""
    write(tmp_path / "cwd" / "minio.default" / "accessKey", "FROM-CWD")
    write(cfg.DEFAULT_SECRETS_DIR / "minio.default" / "secretKey", "FROM-DEFAULT")
    monkeypatch.chdir(tmp_path / "cwd")
    text = "storage_providers:\n  minio:\n    default: {endpoint: http://m, access_key: A}\n"
    config = load_function_config(str(write(tmp_path / "c.yaml", text)),
                                  {"FAAS_PROVIDER_SECRETS_DIR": ""})
    minio = config.provider("minio")
    assert (minio.get("access_key"), minio.get("secret_key")) == ("A", "FROM-DEFAULT")


def test_empty_environment_overrides_are_no_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "log_level: ERROR\nfile_stage_in: true\n")
    blank = {"LOG_LEVEL": "", "FILE_STAGE_IN": "", "EXEC_TIMEOUT": ""}
    config = load_function_config(str(path), blank)
    assert (config.log_level, config.file_stage_in, config.exec_timeout) == ("ERROR", True, None)


def test_tmpdir_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TMPDIR"):
        load_watchdog_settings({"TMPDIR": str(tmp_path / "absent")}, {}, FunctionConfig())


def test_run_reads_only_what_one_invocation_needs(tmp_path: Path) -> None:
    """`run`'s settings: a job's environment may hold anything for the watchdog's names."""
    from faas_supervisor.config import RunSettings, load_run_settings

    env = {"TMPDIR": str(tmp_path), "port": "notaport", "mode": "threads",
           "max_inflight": "many", "exec_timeout": "1m", "max_body_size": "1Ki"}
    assert load_run_settings(env, FunctionConfig()) == RunSettings(60.0, 1024, tmp_path)
    with pytest.raises(ConfigError, match=r"^exec_timeout"):
        load_run_settings({**env, "exec_timeout": "soon"}, FunctionConfig())


def test_a_parse_ahead_is_taken_once_by_a_read_of_the_same_text(tmp_path: Path) -> None:
    """The job runner parses its service's config once; a job reading the same text takes
    that parse, and only one reader ever does (no two share the parsed objects)."""
    path = tmp_path / "function_cfg.yaml"
    path.write_text("name: svc\nlog_level: DEBUG\n")
    cfg.parse_ahead(path)
    assert cfg._parsed_ahead is not None
    ahead = cfg._parsed_ahead[1]
    first = cfg.read_config_yaml(str(path), {})
    assert first is ahead and first == {"name": "svc", "log_level": "DEBUG"}
    second = cfg.read_config_yaml(str(path), {})
    assert second == first and second is not first


def test_a_parse_ahead_of_other_text_is_not_used(tmp_path: Path) -> None:
    """A config changed after the parse ahead is read as it is now."""
    path = tmp_path / "function_cfg.yaml"
    path.write_text("log_level: DEBUG\n")
    cfg.parse_ahead(path)
    path.write_text("log_level: ERROR\n")
    assert cfg.read_config_yaml(str(path), {}) == {"log_level": "ERROR"}
    assert cfg._parsed_ahead is None
    assert load_function_config(str(path), {}).log_level == "ERROR"


def test_a_config_that_cannot_be_parsed_ahead_is_reported_by_its_read(tmp_path: Path) -> None:
    path = tmp_path / "function_cfg.yaml"
    path.write_text("log_level: [unclosed\n")
    cfg.parse_ahead(path)
    assert cfg._parsed_ahead is None
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg.read_config_yaml(str(path), {})
    cfg.parse_ahead(tmp_path / "missing.yaml")
    assert cfg._parsed_ahead is None


# ---- explicit YAML tags, provider values checked at load ----------------------------------


def test_explicitly_tagged_scalars_are_their_text(tmp_path: Path) -> None:
    """`!!int abc`, `!!bool maybe`, a bad `!!timestamp` or an `!!int` of more digits than
    int() reads were a traceback (exit 1) quoting the value, a tagged secret with it;
    now a tagged scalar is its text, read by a typed field as untagged text is."""
    text = f"""\
name: !!int abc
environment:
  variables: {{F: !!float abc, T: !!timestamp 2024-13-45, B: !!bool maybe,
              I: !!int {"9" * 5000}, N: !!float nan, OK: !!int 0777}}
storage_providers:
  minio:
    default: {{endpoint: http://m, access_key: !!binary QUtJRA==,
               secret_key: !!int SUPERSECRETKEY, verify: !!bool no}}
"""
    path = write(tmp_path / "c.yaml", text)
    cfg.parse_ahead(path)  # the job runner's parse: no exception either
    assert cfg._parsed_ahead is not None
    config = load_function_config(str(path), {})
    assert config.name == "abc"
    assert dict(config.variables) == {"F": "abc", "T": "2024-13-45", "B": "maybe",
                                      "I": "9" * 5000, "N": "nan", "OK": "0777"}
    minio = config.provider("minio")
    assert (minio.get("access_key"), minio.get("secret_key")) == ("AKID", "SUPERSECRETKEY")
    assert minio.flag("verify", True) is False
    with pytest.raises(ConfigError) as info:
        load_function_config(str(write(tmp_path / "b.yaml", "file_stage_in: !!bool maybe\n")), {})
    assert info.value.message == "file_stage_in: 'maybe' is not true or false"


@pytest.mark.parametrize(
    "value",
    ["!!set {SUPERSECRET}", "!!omap [SUPERSECRET: 1]", "!!pairs [SUPERSECRET: 1]",
     "!!binary SUPERSECRET!!", "!!binary //79", "!!python/object:os.system SUPERSECRET"],
)
def test_tags_no_key_takes_are_refused_without_the_value(tmp_path: Path, value: str) -> None:
    """Collections no key takes, and binary data that is not UTF-8 text: one line,
    exit 2, neither a traceback nor an object no reader of the config expects."""
    path = write(tmp_path / "c.yaml", f"name: x\nsecret: {value}\n")
    cfg.parse_ahead(path)
    assert cfg._parsed_ahead is None
    with pytest.raises(ConfigError) as info:
        load_function_config(str(path), {})
    assert info.value.message == f"{path}: not valid YAML at line 2"
    assert info.value.exit_status == 2


def test_a_value_a_yaml_constructor_cannot_build_is_one_line_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence, should the loader build typed values again: each parse
    site (the config, the parse ahead, an FDL file) says `not valid YAML`, not the
    ValueError, KeyError or OverflowError quoting the value."""
    import yaml

    from faas_supervisor.controller import fdl
    from faas_supervisor.errors import InvalidService

    monkeypatch.setattr(cfg, "text_loader", lambda: yaml.SafeLoader)
    monkeypatch.setattr(fdl, "text_loader", lambda: yaml.SafeLoader)
    for i, value in enumerate(["!!int SUPERSECRET", "!!bool SUPERSECRET",
                               "!!timestamp 2024-13-45", "!!int " + "9" * 5000]):
        path = write(tmp_path / f"c{i}.yaml", f"functions: {{secret_key: {value}}}\n")
        cfg.parse_ahead(path)
        assert cfg._parsed_ahead is None
        with pytest.raises(ConfigError) as info:
            load_function_config(str(path), {})
        assert info.value.message == f"{path}: not valid YAML"
        with pytest.raises(InvalidService) as fdl_info:
            fdl.fdl_definitions(path)
        assert fdl_info.value.message == f"{path}: not valid YAML"


@pytest.mark.parametrize(
    ("ptype", "key", "value"),
    [
        ("minio", "endpoint", "not a url"),
        ("minio", "endpoint", "http://h:99999"),
        ("minio", "endpoint", "http://h:port"),
        ("minio", "endpoint", "ftp://h"),
        ("minio", "endpoint", "http://"),
        ("minio", "endpoint", "http://[::1"),
        ("s3", "endpoint", "https://h/?x=1"),
        ("webdav", "hostname", "not a url"),
        ("webdav", "hostname", "https://h:99999"),
        ("onedata", "oneprovider_host", "a b"),
        ("rucio", "host", "http://h:65536"),
        ("rucio", "auth_host", "h\tx"),
    ],
)
def test_a_server_url_of_no_use_is_refused_at_load(
    tmp_path: Path, ptype: str, key: str, value: str
) -> None:
    """Found at the first request before (run: exit 3; watchdog: 502), while a bad
    config stops start-up: one line naming the setting."""
    required = {"minio": {"endpoint": "http://m", "access_key": "A", "secret_key": "S"},
                "s3": {"access_key": "A", "secret_key": "S"},
                "webdav": {"hostname": "h", "login": "L", "password": "P"},
                "onedata": {"oneprovider_host": "h", "token": "T", "space": "s"},
                "rucio": {"host": "h", "account": "a", "rse": "r", "access_token": "T"}}
    settings = {**required[ptype], key: value}
    text = json.dumps({"storage_providers": {ptype: {"p1": settings}}})  # JSON is YAML
    with pytest.raises(ConfigError) as info:
        load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert info.value.message == (f"storage_providers.{ptype}.p1.{key}: {value!r} is not a "
                                  "server's URL (http(s)://host[:port][/path])")


def test_a_bad_server_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    for url in ("http://u:SUPERSECRET@h:99999", "https://u:SUPERSECRET@a b"):
        text = ("storage_providers:\n  webdav:\n"
                f"    d: {{hostname: '{url}', login: L, password: P}}\n")
        with pytest.raises(ConfigError) as info:
            load_function_config(str(write(tmp_path / "c.yaml", text)), {})
        assert info.value.message.startswith("storage_providers.webdav.d.hostname: ")
        assert "SUPERSECRET" not in info.value.message


def test_server_urls_as_the_providers_take_them_load(tmp_path: Path) -> None:
    """A host alone (the provider's default scheme), a port, a path, a user in the URL."""
    text = """\
storage_providers:
  minio:
    default: {endpoint: 'minio:9000', access_key: A, secret_key: S}
    six: {endpoint: 'http://[::1]:9000', access_key: A, secret_key: S}
  s3:
    aws: {access_key: A, secret_key: S, endpoint: ''}
  webdav:
    d: {hostname: 'https://u:p@dav.example.org:8443/remote.php/dav', login: L, password: P}
  onedata:
    o: {oneprovider_host: op.example.org, token: T, space: s}
  rucio:
    r: {host: 'rucio.example.org', auth_host: 'https://auth:443', account: a, rse: r,
        access_token: T}
"""
    config = load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert config.provider("minio").get("endpoint") == "minio:9000"
    assert len(config.providers) == 6


def test_a_verify_that_is_no_bool_is_refused_at_load(tmp_path: Path) -> None:
    text = ("storage_providers:\n  minio:\n"
            "    default: {endpoint: http://m, access_key: A, secret_key: S, verify: maybe}\n")
    with pytest.raises(ConfigError) as info:
        load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert info.value.message == (
        "storage_providers.minio.default.verify: 'maybe' is not true or false")


@pytest.mark.parametrize("written", ["", "''", "~", "null", "' '"])
def test_an_empty_verify_or_file_stage_in_is_the_default_true(tmp_path: Path,
                                                               written: str) -> None:
    """Empty was false for `verify` (TLS checks silently off) and `'None' is not true or
    false` for a blank `file_stage_in`: both are their default, true."""
    text = (f"file_stage_in: {written}\nstorage_providers:\n  webdav:\n"
            f"    d: {{hostname: h, login: L, password: P, verify: {written}}}\n")
    config = load_function_config(str(write(tmp_path / "c.yaml", text)), {})
    assert config.file_stage_in is True
    assert config.provider("webdav.d").flag("verify", True) is True
