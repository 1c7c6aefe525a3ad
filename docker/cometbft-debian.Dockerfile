# A CometBFT validator from the patched build `rdx setup` made (rdx/toolchain.py: the pinned tag
# with rdx/patches/cometbft-*.patch applied, statically linked), on a Debian base. Built by
# `make images` (rdx/images.py makes the build context: cometbft and cometbft-entrypoint.sh).
# docker/cometbft.Dockerfile builds the same binary from source for operators with Docker Hub.
#   BASE   the image to build on: rdx-base:bookworm (debootstrap), or an official debian:bookworm
ARG BASE=rdx-base:bookworm
FROM ${BASE}
RUN groupadd --system --gid 10001 cometbft \
 && useradd --system --uid 10001 --gid cometbft --no-create-home --home-dir /cometbft cometbft \
 && mkdir -p /cometbft && chown cometbft:cometbft /cometbft
COPY cometbft /usr/local/bin/cometbft
COPY cometbft-entrypoint.sh /usr/local/bin/cometbft-entrypoint
ENV CMTHOME=/cometbft
USER 10001:10001
# p2p, RPC, Prometheus metrics
EXPOSE 26656 26657 26660
ENTRYPOINT ["/usr/local/bin/cometbft-entrypoint"]
