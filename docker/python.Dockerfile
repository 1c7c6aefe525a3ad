# One image for every rdx Python service (gateway, catalog, billing, compute, consensus) and the
# `rdx` command itself: services differ only by their command (`python -m services.gateway`, ...).
# Built by `make images` (rdx/images.py) from a Debian base only: no registry but Debian's apt
# mirror is needed. The build context is made by rdx/images.py: wheels/deps (this project's
# dependencies, as wheels), wheels/rdx (this project's wheel) and abci-proto (the generated
# ABCI protobuf modules, as `rdx setup` makes them).
#   BASE   the image to build on: rdx-base:bookworm (debootstrap), or an official debian:bookworm
ARG BASE=rdx-base:bookworm
FROM ${BASE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian bookworm's Python 3.11. No version pins here: the base fixes the suite, and apt installs
# that suite's current version (the base's snapshot date, when a snapshot mirror is used).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# A fixed non-root uid/gid (10001) that the Kubernetes securityContext also names.
# /var/lib/rdx is the only writable path (RDX_STATE_ROOT): a volume, so the root filesystem can
# be mounted read-only.
RUN groupadd --system --gid 10001 rdx \
 && useradd --system --uid 10001 --gid rdx --no-create-home --home-dir /nonexistent rdx \
 && mkdir -p /var/lib/rdx && chown rdx:rdx /var/lib/rdx
# The dependencies first, in their own layer: it changes only with pyproject.toml.
COPY wheels/deps /tmp/wheels
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels
COPY abci-proto /opt/rdx/abci-proto
COPY wheels/rdx /tmp/wheels
RUN /opt/venv/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && echo /opt/rdx/abci-proto > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rdx_abci_proto.pth"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RDX_HTTP_HOST=0.0.0.0 \
    RDX_STATE_ROOT=/var/lib/rdx
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["services.gateway"]
