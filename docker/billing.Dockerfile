# The rdx billing service. Build from the repository root:
#   docker build -f docker/billing.Dockerfile -t rdx-billing:dev .
#
# Why every service Dockerfile has the same builder stage: the services still ship as one
# Python package (the root pyproject.toml installs rdx* and services*), so each image installs
# the whole project. The stage is byte-for-byte identical in all five files, so BuildKit builds
# it once and reuses its cache for the other images. When the services get their own
# dependency extras, this stage installs only this service's extra.

FROM python:3.11.14-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY pyproject.toml /src/
COPY rdx /src/rdx
COPY services /src/services
RUN /opt/venv/bin/pip install --no-cache-dir /src

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
    RDX_HTTP_PORT=8003 \
    RDX_STATE_ROOT=/var/lib/rdx
USER 10001:10001
EXPOSE 8003
ENTRYPOINT ["python", "-m", "services.billing"]
