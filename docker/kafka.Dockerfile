# Apache Kafka on Debian's OpenJDK 17: the broker's jars are the ones `rdx setup` fetched from
# Maven Central (rdx/toolchain.py; Debian has no Kafka package), copied in by `make images`
# (rdx/images.py makes the build context: libs/ and kafka-entrypoint.sh).
#   BASE   the image to build on: rdx-base:bookworm (debootstrap), or an official debian:bookworm
ARG BASE=rdx-base:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kafka \
 && useradd --system --uid 10001 --gid kafka --no-create-home --home-dir /nonexistent kafka \
 && mkdir -p /var/lib/kafka && chown kafka:kafka /var/lib/kafka
COPY libs /opt/kafka/libs
COPY kafka-entrypoint.sh /usr/local/bin/kafka-entrypoint
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/kafka-entrypoint"]
