#!/bin/sh
# Start one Apache Kafka node (KRaft) from /etc/kafka/server.properties, formatting its log
# directory on the first start. Used by docker/exchange.yaml (rdx/deploy.py writes the file).
#
#   /etc/kafka/server.properties   the broker's configuration (log.dirs under /var/lib/kafka)
#   /etc/kafka/cluster-id          the cluster's id (kafka-storage random-uuid)
#   /run/secrets/kafka-scram       optional: one SCRAM credential a line, as
#                                  kafka-storage format --add-scram takes it
#                                  (SCRAM-SHA-512=[name=USER,password=PASSWORD]); read at format
#                                  time only, the first start
set -euf  # no globbing: the classpath is a literal libs/*

java="java -Xmx${KAFKA_HEAP:-512m} -Xms128m -XX:+UseG1GC -Djava.awt.headless=true -cp /opt/kafka/libs/*"
props=/etc/kafka/server.properties
logdirs="$(sed -n 's/^log\.dirs=//p' "$props")"

if [ ! -f "$logdirs/meta.properties" ]; then
    set -- # the --add-scram arguments, built from the secret's lines
    if [ -f /run/secrets/kafka-scram ]; then
        while IFS= read -r credential; do
            [ -n "$credential" ] && set -- "$@" --add-scram "$credential"
        done < /run/secrets/kafka-scram
    fi
    # shellcheck disable=SC2086 # $java is a command line
    $java kafka.tools.StorageTool format -t "$(cat /etc/kafka/cluster-id)" -c "$props" "$@" >/dev/null
fi

# shellcheck disable=SC2086
exec $java kafka.Kafka "$props"
