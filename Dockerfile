# backupjobd container image.
#
#   docker build -t backupjobd .
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg SOURCE=https://example.org/backupjobd -t backupjobd:0.1.0 .
#   docker run -v backupjobd-data:/var/lib/backupjobd --env-file backupjobd.env backupjobd
#   make image-check   # builds with podman (a local base when no registry answers) and runs it
#
# The HTTP API listens on 0.0.0.0:8080 inside the container, and the daemon refuses to start
# on a non-loopback address without a bearer token: the orchestrator must provide
# BACKUPJOBD_API_TOKEN (a secret; it can register and cancel), or set
# BACKUPJOBD_API__BIND=127.0.0.1 when nothing outside the pod needs the API
# (config/kubernetes-sidecar.yaml). A /metrics scraper gets the read-only token,
# BACKUPJOBD_API_READ_TOKEN (GET only: metrics, health, reads, the page). No secret is baked
# into this image. /healthz needs no token, and `backupjobd healthcheck` probes it wherever
# the config puts the API (BACKUPJOBD_API__PORT, api.unix_socket ...).
#
# Versions: requirements.lock pins every dependency (`make lock` refreshes it); the image
# installs exactly the versions the test suite ran with.

# Both stages must use the same image: the venv's python is a link to the base image's.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: build the wheel (it carries the Alembic migrations) and install it, with its
# pinned dependencies, into a venv that has no pip or setuptools of its own
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY daemon/ daemon/
COPY migrations/ migrations/

# /opt/build-tools holds pip (and the build backend pip fetches); `pip --python` installs
# into the runtime venv from outside it, so that venv never gets a package installer.
RUN python -m venv /opt/build-tools \
    && /opt/build-tools/bin/python -m pip install --constraint requirements.lock pip \
    && /opt/build-tools/bin/python -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && python -m venv --without-pip /opt/backupjobd \
    && /opt/build-tools/bin/python -m pip --python /opt/backupjobd/bin/python install \
       --constraint requirements.lock /tmp/wheels/backupjobd-*.whl \
    && /opt/backupjobd/bin/python -m compileall -q /opt/backupjobd

# ---- runtime: the venv and nothing else from the build
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="backupjobd" \
      org.opencontainers.image.description="Tracks Azure Backup jobs until they finish and keeps a durable history of every state change." \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it and volume ownership
# is predictable (fsGroup: 10001).
RUN groupadd --system --gid 10001 backupjobd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin backupjobd \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/backupjobd

COPY --from=builder /opt/backupjobd /opt/backupjobd

# Configuration comes from these variables (and an optional TOML file mounted at
# /etc/backupjobd/backupjobd.toml or named by BACKUPJOBD_CONFIG). Secrets are never set here.
ENV PATH=/opt/backupjobd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BACKUPJOBD_DATABASE__URL=sqlite+aiosqlite:////var/lib/backupjobd/backupjobd.db \
    BACKUPJOBD_LOG__FORMAT=json \
    BACKUPJOBD_API__ENABLED=true \
    BACKUPJOBD_API__BIND=0.0.0.0 \
    BACKUPJOBD_API__PORT=8080

# The SQLite database (and its WAL) lives here; mount a volume to keep it across containers.
VOLUME /var/lib/backupjobd
WORKDIR /var/lib/backupjobd
EXPOSE 8080

USER 10001:10001

# Reads the same config as serve, so a changed port or a unix socket is probed where it is.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["backupjobd", "healthcheck"]

# SIGTERM (docker stop) drains in-flight polls for up to polling.shutdown_timeout_seconds
# (10 s): give the container a longer stop timeout (docker stop -t 20, stop_grace_period).
# `backupjobd emulator` (same image) stops at once on SIGTERM, PID 1 or not.
STOPSIGNAL SIGTERM
ENTRYPOINT ["backupjobd"]
CMD ["serve"]
