#!/bin/sh
# Start a CometBFT validator, initialising its home on the first start.
# Used by docker/compose.yaml and the validator StatefulSet (infra/base/validators.yaml).
#
#   CMTHOME (default /cometbft)   the persistent home; nothing else is written
#   /etc/cometbft/genesis/genesis.json
#                                 the network's genesis (a ConfigMap). Without it a
#                                 single-validator genesis is made with chain id $RDX_CHAIN_ID
#                                 (compose, the dev overlay).
#   /etc/cometbft/keys/$VALIDATOR_NAME.node_key.json, .priv_validator_key.json
#                                 this validator's keys (a Secret holding every validator's,
#                                 VALIDATOR_NAME being the pod name). Without them the keys
#                                 made by `cometbft init` are kept.
#
# data/priv_validator_state.json, the guard against double signing, is never touched here.
# Extra arguments go to `cometbft start`; any config.toml key can also be set as CMT_<KEY>,
# e.g. CMT_INSTRUMENTATION_PROMETHEUS=true.
set -eu

home="${CMTHOME:-/cometbft}"
config="$home/config"

if [ ! -f "$config/config.toml" ]; then
    cometbft init --home "$home"
    if [ -n "${RDX_CHAIN_ID:-}" ]; then
        sed -i "s/\"chain_id\": \"[^\"]*\"/\"chain_id\": \"$RDX_CHAIN_ID\"/" "$config/genesis.json"
    fi
fi

if [ -f /etc/cometbft/genesis/genesis.json ]; then
    cp /etc/cometbft/genesis/genesis.json "$config/genesis.json"
fi

for key in node_key priv_validator_key; do
    src="/etc/cometbft/keys/${VALIDATOR_NAME:-none}.$key.json"
    if [ -f "$src" ]; then
        cp "$src" "$config/$key.json"
        chmod 600 "$config/$key.json"
    fi
done

exec cometbft start --home "$home" "$@"
