"""The controller's settings: flags and environment read once, into one frozen object."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from faas_supervisor.cli import build_parser
from faas_supervisor.controller.settings import (
    ControllerSettings,
    DockerSettings,
    KubernetesSettings,
    LocalSettings,
    load_controller_settings,
    namespace_flag,
    runtime_image_flag,
)
from faas_supervisor.errors import ConfigError


def load(argv: list[str], environ: dict[str, str]) -> ControllerSettings:
    return load_controller_settings(build_parser().parse_args(["controller", *argv]), environ)


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    env = {"FAAS_USER": "env-user", "FAAS_PASSWORD": "env-pass",
           "FAAS_DATA_DIR": str(tmp_path / "env"), "MINIO_REGION": "eu-west-3"}
    from_env = load([], env)
    assert (from_env.user, from_env.password) == ("env-user", "env-pass")
    assert from_env.data_dir == tmp_path / "env"
    assert from_env.minio_region == "eu-west-3"
    flagged = load(["--user", "u", "--password", "p", "--data-dir", str(tmp_path / "f")], env)
    assert (flagged.user, flagged.password, flagged.data_dir) == ("u", "p", tmp_path / "f")
    assert "env-pass" not in repr(from_env)


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load(["--data-dir", str(tmp_path)], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_default_data_dir_follows_xdg_then_home() -> None:
    assert load([], {"XDG_DATA_HOME": "/x"}).data_dir == Path("/x/faas-supervisor")
    assert load([], {"HOME": "/h"}).data_dir == Path("/h/.local/share/faas-supervisor")


def test_log_level_is_read_with_the_settings() -> None:
    assert load([], {"LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert load([], {}).log_level == "INFO"
    with pytest.raises(ConfigError, match=r"^LOG_LEVEL: 'LOUD' is not one of"):
        load([], {"LOG_LEVEL": "loud"})


def test_a_local_service_inherits_the_environment_less_the_controllers_own() -> None:
    env = {"PATH": "/bin", "LANG": "C", "FAAS_PASSWORD": "s3cret", "FAAS_USER": "u",
           "FUNCTION_CONFIG": "x", "SCRIPT": "x", "EVENT": "x", "JOB_UUID": "j",
           "port": "1", "mode": "http", "upstream_port": "2", "healthcheck_interval": "3",
           # The storage's keys, which open every bucket (the S3 endpoint's too): a
           # review found them in every service's environment.
           "MINIO_ACCESS_KEY": "CTLACCESSKEY", "MINIO_SECRET_KEY": "CTLSECRETKEY"}
    backend = load([], env).backend
    assert isinstance(backend, LocalSettings)
    assert backend.service_env == {"PATH": "/bin", "LANG": "C", "healthcheck_interval": "3"}
    assert "s3cret" not in repr(backend)


def test_docker_gets_only_the_engine_variables() -> None:
    env = {"DOCKER_HOST": "tcp://e:2376", "DOCKER_TLS_VERIFY": "1", "FAAS_PASSWORD": "s",
           "PATH": "/bin"}
    backend = load(["--backend", "docker", "--runtime-image", "img:1"], env).backend
    assert backend == DockerSettings(
        runtime_image="img:1", engine_env={"DOCKER_HOST": "tcp://e:2376", "DOCKER_TLS_VERIFY": "1"}
    )


def test_kubernetes_connection_flag_then_kubeconfig_then_in_cluster() -> None:
    def backend(argv: list[str], env: dict[str, str]) -> KubernetesSettings:
        got = load(["--backend", "kubernetes", *argv], env).backend
        assert isinstance(got, KubernetesSettings)
        return got

    in_pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBECONFIG": "/env/config"}
    assert backend(["--kubeconfig", "/flag"], in_pod).kubeconfig == "/flag"
    assert backend([], in_pod).kubeconfig == "/env/config"
    assert not backend([], in_pod).in_cluster
    assert backend([], {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).in_cluster
    plain = backend([], {})
    assert (plain.kubeconfig, plain.in_cluster, plain.namespace) == ("", False, "oscar-svc")
    assert backend(["--namespace", "team-a"], {}).namespace == "team-a"


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--max-jobs", "0"], "--max-jobs"),
        (["--port", "70000"], "--port"),
        (["--reconcile-interval", "0"], "--reconcile-interval"),
        (["--minio-endpoint", "http://m"], "--minio-endpoint"),
        (["--events-queue", "q"], "--events-queue"),
        # Not checked before: the controller started, and each call to the API server
        # failed (a review found it).
        (["--backend", "kubernetes", "--namespace", "Bad_NS"], "--namespace: 'Bad_NS' is not"),
        (["--backend", "kubernetes", "--runtime-image", "a b"], "--runtime-image: 'a b' is not"),
        (["--backend", "docker", "--runtime-image", "x\ty"], "--runtime-image:"),
    ],
)
def test_bad_settings_name_the_flag(argv: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        load(argv, {})


@pytest.mark.parametrize("name", ["oscar-svc", "a", "0", "team-a-1", "a" * 63])
def test_a_namespace_name_is_taken(name: str) -> None:
    assert namespace_flag(name) == name


@pytest.mark.parametrize("name", ["", "Bad_NS", "Team", "-a", "a-", "a.b", "a b", "a" * 64,
                                  "\u00e9t\u00e9"])
def test_a_namespace_kubernetes_refuses_is_refused_in_one_line(name: str) -> None:
    """`controller` and `manifests` share the check (a review found both took any text)."""
    with pytest.raises(ConfigError) as info:
        namespace_flag(name)
    assert info.value.message.startswith(f"--namespace: {name!r} is not a namespace name")


@pytest.mark.parametrize("image", ["", " ", "a b", "img\n", "img:1\x00"])
def test_a_runtime_image_no_engine_takes_is_refused(image: str) -> None:
    with pytest.raises(ConfigError, match=r"^--runtime-image: .* is not an image reference"):
        runtime_image_flag(image)
    assert runtime_image_flag("localhost:5000/x/rt:1@sha256:" + "a" * 64).startswith("local")


def test_nothing_below_the_command_reads_the_process_environment() -> None:
    """The settings are the controller's one reading of its environment (config.py's
    current_environ, called by the command): no module of it reads os.environ again."""
    package = Path(__file__).parents[2] / "faas_supervisor" / "controller"
    readers = [
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if "os.environ" in path.read_text() or "getenv" in path.read_text()
    ]
    assert readers == []


def test_the_s3_endpoint_settings(tmp_path: Path) -> None:
    base = ["--data-dir", str(tmp_path)]
    default = load(base, {})
    assert (default.s3_port, default.s3_url) == (9000, "http://127.0.0.1:9000")
    external = load([*base, "--external-url", "https://oscar.example.org/", "--s3-port", "9100"],
                    {})
    assert external.s3_url == "http://oscar.example.org:9100"
    assert load([*base, "--external-url", "http://[::1]:8000"], {}).s3_url == "http://[::1]:9000"
    assert load([*base, "--s3-port", "0"], {}).s3_url == ""
    replaced = load([*base, "--minio-endpoint", "http://minio:9000", "--minio-access-key", "k",
                     "--minio-secret-key", "s"], {})
    assert replaced.s3_url == ""
    given = load(base, {"MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s"})
    assert (given.minio_access_key, given.minio_secret_key) == ("k", "s")
    assert "'s'" not in repr(given)
    for argv, flag in [(["--s3-port", "65536"], "--s3-port"),
                       (["--minio-access-key", "k"], "--minio-access-key")]:
        with pytest.raises(ConfigError, match=flag):
            load([*base, *argv], {})


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "notaurl", "ftp://x", "http://", "http://:8000", "http://h:99999",
     "http://h:port", "http://h:0", "http://h/?q=1", "http://h#top", "http://h st", "//h"],
)
def test_an_external_url_that_is_not_one_is_refused(tmp_path: Path, url: str) -> None:
    """At start-up, one line naming the flag: not a traceback when its host is first
    taken apart (s3_url), nor push endpoints no storage server can call."""
    with pytest.raises(ConfigError, match=r"^--external-url: .* is not a URL of the form"):
        load(["--data-dir", str(tmp_path), "--external-url", url], {})


def test_an_external_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    for url in ("http://me:HUNTER2@oscar.example.org", "http://me:HUNTER2@[::1",
                "http:/me:HUNTER2@oscar.example.org", "http//me:HUNTER2@host:9"):
        with pytest.raises(ConfigError) as info:
            load(["--data-dir", str(tmp_path), "--external-url", url], {})
        assert info.value.message == "--external-url: must not hold a user or password ('@')"


@pytest.mark.parametrize("region", ["*bad", "eu_west", "x.y", "a" * 70])
def test_a_region_botocore_would_refuse_is_a_config_error(tmp_path: Path, region: str) -> None:
    """A traceback (botocore's InvalidRegionError at the first client) before."""
    with pytest.raises(ConfigError) as info:
        load(["--data-dir", str(tmp_path), "--minio-region", region], {})
    assert info.value.message.startswith("--minio-region: ")
    assert load(["--data-dir", str(tmp_path), "--minio-region", "eu-west-3"],
                {}).minio_region == "eu-west-3"


def test_an_external_url_may_have_a_port_and_a_path(tmp_path: Path) -> None:
    settings = load(["--data-dir", str(tmp_path), "--external-url",
                     "https://lab.example.org:8443/oscar/"], {})
    assert settings.public_url == "https://lab.example.org:8443/oscar"
    assert settings.s3_url == "http://lab.example.org:9000"


def test_s3_keys_are_made_once_and_kept(tmp_path: Path) -> None:
    from faas_supervisor.controller.auth import load_s3_keys

    made, new = load_s3_keys(tmp_path, "", "")
    assert new and len(made.access_key) == 20 and len(made.secret_key) == 40
    assert (tmp_path / "s3-keys").stat().st_mode & 0o777 == 0o600
    assert load_s3_keys(tmp_path, "", "") == (made, False)
    assert load_s3_keys(tmp_path, "given", "secret")[0].access_key == "given"
    assert made.secret_key not in repr(made)


def test_sync_wait_and_job_retention() -> None:
    defaults = load([], {})
    assert (defaults.sync_wait, defaults.job_retention) == (60.0, 7 * 86400.0)
    kube = load(["--backend", "kubernetes", "--kubeconfig", "/k", "--sync-wait", "5",
                 "--job-retention", "3600"], {})
    assert (kube.sync_wait, kube.job_retention) == (5.0, 3600.0)
    assert isinstance(kube.backend, KubernetesSettings) and kube.backend.sync_wait == 5.0
    # Every backend gets it (the local and Docker ones once waited 60 s whatever it said).
    for backend in ("local", "docker"):
        assert load(["--backend", backend, "--sync-wait", "5"], {}).backend.sync_wait == 5.0
    for argv, message in ((["--sync-wait", "-1"], "--sync-wait"),
                          (["--job-retention", "0"], "--job-retention")):
        with pytest.raises(ConfigError, match=message):
            load(argv, {})


def test_runner_idle() -> None:
    defaults = load([], {})
    assert isinstance(defaults.backend, LocalSettings) and defaults.backend.runner_idle == 300.0
    short = load(["--runner-idle", "2.5"], {})
    assert isinstance(short.backend, LocalSettings) and short.backend.runner_idle == 2.5
    for value in ("0", "-1", "inf", "nan"):
        with pytest.raises(ConfigError, match="--runner-idle"):
            load(["--runner-idle", value], {})


def test_cors_origins_are_read_once_as_browsers_send_them(tmp_path: Path) -> None:
    assert load(["--data-dir", str(tmp_path)], {}).cors_origins == ()
    settings = load(["--data-dir", str(tmp_path), "--cors-origin", "https://UI.oscar.grycap.net/",
                     "--cors-origin", "http://127.0.0.1:5173", "--cors-origin", "*",
                     "--cors-origin", "https://ui.oscar.grycap.net"], {})
    assert settings.cors_origins == ("https://ui.oscar.grycap.net", "http://127.0.0.1:5173", "*")


@pytest.mark.parametrize("origin", ["ui.oscar.grycap.net", "https://a.b/path", "", "http://"])
def test_a_cors_origin_that_is_not_one_is_refused(tmp_path: Path, origin: str) -> None:
    with pytest.raises(ConfigError, match="--cors-origin"):
        load(["--data-dir", str(tmp_path), "--cors-origin", origin], {})


def test_the_cluster_name_is_oscar_unless_given(tmp_path: Path) -> None:
    assert load(["--data-dir", str(tmp_path)], {}).cluster_name == "oscar"
    assert load(["--data-dir", str(tmp_path), "--cluster-name", "lab"], {}).cluster_name == "lab"
    with pytest.raises(ConfigError, match="--cluster-name"):
        load(["--data-dir", str(tmp_path), "--cluster-name", "a b"], {})


@pytest.mark.parametrize("backend", ["docker", "kubernetes"])
def test_a_backend_whose_package_is_missing_is_a_config_error(backend: str,
                                                              tmp_path: Path) -> None:
    """The bundle has neither engine's client, nor has `pip install .` without
    [controller]: one line saying what to install, exit status 2, never a traceback."""
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{backend!r}] = None  # its import fails\n"
            "from faas_supervisor.cli import main\n"
            f"sys.exit(main(['controller', '--backend', {backend!r}, '--data-dir', "
            f"{str(tmp_path / 'data')!r}, '--port', '0']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"faas-supervisor: error: --backend {backend} needs the {backend} package: "
        "pip install 'faas-supervisor[controller]'"]


@pytest.mark.parametrize(
    "url",
    ["minio:9000", "not a url", "http://", "http://[::1", "http://h:99999", "http://h:0",
     "http://h:port", "ftp://h", "http://h/?x=1", "http://minio host:9000"],
)
def test_a_minio_endpoint_that_is_not_a_url_is_refused(tmp_path: Path, url: str) -> None:
    """boto3 refused it at the first S3 client: a traceback quoting the URL (exit 1)."""
    with pytest.raises(ConfigError) as info:
        load(["--data-dir", str(tmp_path), "--minio-endpoint", url,
              "--minio-access-key", "a", "--minio-secret-key", "SUPERSECRETKEY"], {})
    assert info.value.message == (
        f"--minio-endpoint: {url!r} is not a URL of the form http(s)://host[:port][/path]")


def test_a_minio_endpoint_with_a_user_is_refused_without_showing_it(tmp_path: Path) -> None:
    for url in ("http://admin:SUPERSECRET@minio host:9000", "http://admin:SUPERSECRET@minio:9000"):
        with pytest.raises(ConfigError) as info:
            load(["--data-dir", str(tmp_path), "--minio-endpoint", url,
                  "--minio-access-key", "a", "--minio-secret-key", "s"], {})
        assert info.value.message.startswith("--minio-endpoint: must not hold a user")
        assert "SUPERSECRET" not in info.value.message


def test_an_events_queue_with_a_user_is_refused_without_showing_it(tmp_path: Path) -> None:
    """It was taken, then shown in the start-up error and at every failed poll; the
    queue is read with the MinIO keys, so its userinfo reached no server anyway."""
    minio = ["--data-dir", str(tmp_path), "--minio-endpoint", "http://minio:9000",
             "--minio-access-key", "a", "--minio-secret-key", "s"]
    for queue in ("http://qu:URLPASS888@127.0.0.1:9000/123456789012/evq2",
                  "http:/qu:URLPASS888@minio/1/q", "qu:URLPASS888@q"):
        with pytest.raises(ConfigError) as info:
            load([*minio, "--events-queue", queue], {})
        assert info.value.message.startswith("--events-queue: must not hold a user")
        assert "URLPASS888" not in info.value.message
    for queue in ("evq2", "http://127.0.0.1:9000/123456789012/evq2"):
        assert load([*minio, "--events-queue", queue], {}).events_queue == queue


@pytest.mark.parametrize("url", ["http://minio:9000", "https://s3.example.org/base",
                                 "http://[::1]:9000", "http://127.0.0.1"])
def test_a_minio_endpoint_may_have_a_port_and_a_path(tmp_path: Path, url: str) -> None:
    settings = load(["--data-dir", str(tmp_path), "--minio-endpoint", url,
                     "--minio-access-key", "a", "--minio-secret-key", "s"], {})
    assert settings.minio_endpoint == url


def test_max_jobs_has_a_bound(tmp_path: Path) -> None:
    """One worker task per slot from the start: a million took 1.3 GiB and 12 s to start,
    ten million never listened."""
    from faas_supervisor.controller.settings import MAX_JOBS

    assert load(["--data-dir", str(tmp_path), "--max-jobs", str(MAX_JOBS)], {}).max_jobs == MAX_JOBS
    for many in (MAX_JOBS + 1, 10_000_000, 0):
        with pytest.raises(ConfigError) as info:
            load(["--data-dir", str(tmp_path), "--max-jobs", str(many)], {})
        assert info.value.message == f"--max-jobs: must be from 1 to {MAX_JOBS}"


def test_port_0_is_the_bound_port_in_the_push_endpoints_url(tmp_path: Path) -> None:
    """`--port 0` gave storage servers http://127.0.0.1:0 to push events to."""
    from faas_supervisor.controller.server import Controller

    controller = Controller(load(["--data-dir", str(tmp_path), "--host", "127.0.0.1",
                                  "--port", "0", "--s3-port", "0", "--password", "p"], {}))
    bound = controller._api_sockets
    try:
        assert len(bound) == 1  # 127.0.0.1: one address
        port = bound[0].getsockname()[1]
        assert port != 0 and controller.settings.port == port
        assert controller.intake.public_url == f"http://127.0.0.1:{port}"
    finally:
        for sock in bound:
            sock.close()
        controller.store.close()


def test_an_unusable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    """Not a traceback: one line naming the flag and why."""
    from faas_supervisor.controller.server import Controller

    a_file = tmp_path / "file"
    a_file.write_text("")
    for data_dir, reason in [(a_file, "not a folder"), (a_file / "sub", "Not a directory")]:
        with pytest.raises(ConfigError) as info:
            Controller(load(["--data-dir", str(data_dir), "--port", "0"], {}))
        assert info.value.message == f"--data-dir {data_dir}: {reason}"
