# One command each: `make demo`, `make test`. Both install what they need first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APT_PKGS := radosgw ceph-mon ceph-osd ceph-common curl

.PHONY: all deps system-deps demo test unit integration lint bench clean

all: test

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,controller]' 'moto[server]' wsgidav cheroot
	touch $(STAMP)

deps: $(STAMP)

# Debian packages the integration tests need (Ceph RGW). Installed once, only if missing.
system-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: deps
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

lint: deps
	$(BIN)/ruff check faas_supervisor tests bench
	$(BIN)/mypy

unit: deps
	$(BIN)/pytest -q tests/unit

integration: deps system-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q tests/integration

test: deps system-deps lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q tests

bench: deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
