#!/usr/bin/env bash
# A real Rucio server (the CERN data-management system) on loopback: Rucio 41 from PyPI,
# SQLite, gunicorn, username/password login, and one storage element (RSE) backed by a
# local folder. Vendored from the project's shared recipes (recipes/rucio.sh, "Starting
# real servers on this kind of machine"), so that a clean clone's `make test` has it; the
# changes: the two venvs live in a cache folder of their own ($RUCIO_VENV), installed once
# under a lock and marked complete, so that reruns start in seconds; `install` alone.
#
#   RUCIO_VENV=~/.cache/faas-supervisor-rucio tests/integration/rucio-server.sh install
#   RUCIO_DIR=/tmp/rucio-srv RUCIO_PORT=18080 tests/integration/rucio-server.sh start
#   RUCIO_DIR=/tmp/rucio-srv tests/integration/rucio-server.sh stop
#
# After start: account `root`, login `ddmlab` / `secret`, RSE `LOCALRSE` (files under
# $RUCIO_DIR/rse), scope `test`, unlimited quota for root on LOCALRSE (without a quota,
# uploads fail with "There is not enough quota left"). A client config is written to
# $RUCIO_DIR/client.cfg (use it with RUCIO_CONFIG=...). The server and the clients live
# in separate venvs: the `rucio` and `rucio-clients` packages install the same module.
set -euo pipefail
D=${RUCIO_DIR:-/tmp/rucio-srv}
V=${RUCIO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/faas-supervisor-rucio}
PORT=${RUCIO_PORT:-18080}
SERVER_VERSION=${RUCIO_SERVER_VERSION:-41.5.1}
CLIENTS_VERSION=${RUCIO_CLIENTS_VERSION:-36.5.0}
PY=${PYTHON:-python3}

stop() {
    [ -f "$D/server.pid" ] && kill "$(cat "$D/server.pid")" 2>/dev/null || true
    rm -f "$D/server.pid"
}

install() {
    mkdir -p "$V"
    exec 9>"$V/.lock"
    flock 9  # two test sessions never install into one folder at once
    if [ ! -f "$V/venv/.complete" ]; then
        rm -rf "$V/venv"
        "$PY" -m venv "$V/venv"
        "$V/venv/bin/pip" install -q "rucio==$SERVER_VERSION" gunicorn
        touch "$V/venv/.complete"
    fi
    if [ ! -f "$V/venv-clients/.complete" ]; then
        rm -rf "$V/venv-clients"
        "$PY" -m venv "$V/venv-clients"
        # rucio-clients 36 builds with pkg_resources, gone from setuptools 81.
        "$V/venv-clients/bin/pip" install -q 'setuptools<81' wheel
        "$V/venv-clients/bin/pip" install -q --no-build-isolation "rucio-clients==$CLIENTS_VERSION"
        touch "$V/venv-clients/.complete"
    fi
    exec 9>&-
}

start() {
    install
    mkdir -p "$D/logs" "$D/rse"
    site=$("$V/venv/bin/python" -c 'import rucio, os; print(os.path.dirname(rucio.__file__))')
    cat > "$D/alembic.ini" <<INI
[alembic]
sqlalchemy.url = sqlite:///$D/rucio.db
script_location = $site/db/sqla/migrate_repo/
[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARN
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic
[formatter_generic]
format = %%(levelname)s %%(name)s %%(message)s
INI
    cat > "$D/server.cfg" <<INI
[common]
logdir = $D/logs
loglevel = WARNING
mailtemplatedir = $V/venv/rucio/etc/mail_templates
[database]
default = sqlite:///$D/rucio.db
[bootstrap]
userpass_identity = ddmlab
userpass_pwd = secret
userpass_email = test@example.org
[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash
[api]
endpoints_remove =
[alembic]
cfg = $D/alembic.ini
INI
    cat > "$D/client.cfg" <<INI
[client]
rucio_host = http://127.0.0.1:$PORT
auth_host = http://127.0.0.1:$PORT
auth_type = userpass
username = ddmlab
password = secret
account = root
request_retries = 1
INI
    stop
    rm -f "$D/rucio.db"
    RUCIO_CONFIG="$D/server.cfg" "$V/venv/bin/python" "$V/venv/rucio/tools/bootstrap.py" > "$D/logs/bootstrap.log" 2>&1
    RUCIO_CONFIG="$D/server.cfg" nohup "$V/venv/bin/gunicorn" --no-control-socket -b "127.0.0.1:$PORT" -w 2 \
        rucio.web.rest.flaskapi.v1.main:application > "$D/logs/server.log" 2>&1 &
    echo $! > "$D/server.pid"
    for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/ping" && break; sleep 0.1; done
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/ping" || { echo "rucio server did not start" >&2; tail "$D/logs/server.log" >&2; exit 1; }
    r() { RUCIO_CONFIG="$D/client.cfg" "$V/venv-clients/bin/rucio" "$@"; }
    r rse add --rse LOCALRSE
    r rse protocol add --rse LOCALRSE --host localhost --scheme file --prefix "$D/rse/" --port 0 \
        --impl rucio.rse.protocols.posix.Default \
        --domain-json '{"wan": {"read": 1, "write": 1, "delete": 1}, "lan": {"read": 1, "write": 1, "delete": 1}}'
    r scope add --account root --scope test
    r account limit add --account root --rses LOCALRSE --bytes infinity
    echo "rucio at http://127.0.0.1:$PORT (RUCIO_CONFIG=$D/client.cfg)"
}

case "${1:-start}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
