# The rdx catalog service. Build from the repository root:
#   docker build -f docker/catalog.Dockerfile -t rdx-catalog:dev .
#
# Why every service Dockerfile has the same builder stage: the services still ship as one
# Python package (the root pyproject.toml installs rdx* and services*), so each image installs
# the whole project. The stage is byte-for-byte identical in all five files, so BuildKit builds
# it once and reuses its cache for the other images. When the services get their own
# dependency extras, this stage installs only this service's extra.

# The chain's Ed25519 checks (native/ed25519: ZIP-215, for the consensus app's tx signatures and
# the light client's votes) are Rust: a wheel built by maturin here, where cargo and a C linker
# are, for the abi3 ABI any CPython 3.11+ loads.
FROM rust:1.95-slim-bookworm AS native
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir maturin==1.16.0
COPY native/ed25519 /src/native/ed25519
RUN /opt/build/bin/maturin build --release --out /wheels -m /src/native/ed25519/Cargo.toml

FROM python:3.11.14-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY --from=native /wheels /tmp/native
COPY pyproject.toml /src/
COPY rdx /src/rdx
COPY services /src/services
RUN /opt/venv/bin/pip install --no-cache-dir /src /tmp/native/*.whl

FROM python:3.11.14-slim-bookworm
# A fixed non-root uid/gid (10001) that the Kubernetes securityContext also names.
# /var/lib/rdx is the only writable path (RDX_STATE_ROOT): a volume in compose and Kubernetes,
# so the root filesystem can be mounted read-only. Bytecode is compiled at install time.
RUN groupadd --system --gid 10001 rdx \
 && useradd --system --uid 10001 --gid rdx --no-create-home --home-dir /nonexistent rdx \
 && mkdir -p /var/lib/rdx && chown rdx:rdx /var/lib/rdx
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RDX_HTTP_HOST=0.0.0.0 \
    RDX_HTTP_PORT=8001 \
    RDX_STATE_ROOT=/var/lib/rdx
USER 10001:10001
EXPOSE 8001
ENTRYPOINT ["python", "-m", "services.catalog"]
