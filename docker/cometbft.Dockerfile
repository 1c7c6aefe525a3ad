# A CometBFT validator, built from source at the tag rdx pins (rdx/pins.py COMETBFT_VERSION;
# keep the ARG below equal to it) with rdx/patches/cometbft-*.patch applied, exactly as
# `rdx setup` builds it (rdx/toolchain.py). Build from the repository root:
#   docker build -f docker/cometbft.Dockerfile -t rdx-cometbft:v0.38.26 .
#
# The entrypoint initialises the home on first start and then runs `cometbft start`; see
# docker/cometbft-entrypoint.sh for how genesis and keys are supplied.

FROM golang:1.26.8-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG COMETBFT_VERSION=v0.38.26
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
COPY rdx/patches/ /patches/
RUN src="$(go mod download -json "github.com/cometbft/cometbft@${COMETBFT_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')" \
 && cp -r "${src}" /src && chmod -R u+w /src
WORKDIR /src
RUN for patch in /patches/cometbft-*.patch; do git apply "${patch}"; done \
 && go build -o /out/cometbft ./cmd/cometbft

FROM debian:12.12-slim
# Non-root (uid/gid 10001, as in the Kubernetes securityContext). The home, /cometbft, is the
# only writable path: a volume, so the root filesystem can be mounted read-only.
RUN groupadd --system --gid 10001 cometbft \
 && useradd --system --uid 10001 --gid cometbft --no-create-home --home-dir /cometbft cometbft \
 && mkdir -p /cometbft && chown cometbft:cometbft /cometbft
COPY --from=build /out/cometbft /usr/local/bin/cometbft
COPY docker/cometbft-entrypoint.sh /usr/local/bin/cometbft-entrypoint
ENV CMTHOME=/cometbft
USER 10001:10001
# p2p, RPC, Prometheus metrics
EXPOSE 26656 26657 26660
ENTRYPOINT ["/usr/local/bin/cometbft-entrypoint"]
