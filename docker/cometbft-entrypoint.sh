#!/bin/sh
# Start a CometBFT validator, initialising its home on the first start.
# Used by docker/compose.yaml and the validator StatefulSet (infra/base/validators.yaml).
#
#   cometbft-entrypoint init      initialise the home (and install genesis and keys, below), then exit:
#                                 the step before `rdx genesis` on a one-validator dev chain
#   cometbft-entrypoint [ARGS]    the same, then `cometbft start ARGS`
#
#   CMTHOME (default /cometbft)   the persistent home; nothing else is written
#   /etc/cometbft/genesis/genesis.json
#                                 the network's genesis, made by `rdx genesis` (a ConfigMap).
#                                 Without it, config/genesis.json must have been written by
#                                 `rdx genesis` (compose and the dev overlay run it after `init`):
#                                 `cometbft init`'s own genesis has no rdx app_state, which rdx's
#                                 InitChain refuses, so it is removed and never started from.
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
    rm -f "$config/genesis.json"
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

if [ "${1:-}" = "init" ]; then
    exit 0
fi

if [ ! -f "$config/genesis.json" ]; then
    echo "cometbft-entrypoint: no genesis in $config: mount the network's genesis.json (made by rdx genesis)" \
         "at /etc/cometbft/genesis/, or write it with rdx genesis after 'cometbft-entrypoint init'" >&2
    exit 1
fi

exec cometbft start --home "$home" "$@"
