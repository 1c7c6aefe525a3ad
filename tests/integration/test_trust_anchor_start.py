"""A trust anchor that cannot be used stops a whole service start with one line, after its Kafka
clients are up: the gateway, a compute node and billing, started as processes against the
session's real Kafka and chain. (tests/unit/common/test_verified_anchor.py calls
``verified.from_env`` itself; without a broker these services stop earlier, on Kafka.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rdx.components import free_port
from services.common.identity import Identity
from tests.filekit import plant

ROOT = Path(__file__).parents[2]


def _env(chain, tmp_path: Path, service: str, genesis: Path) -> dict[str, str]:
    env = {**os.environ, "RDX_KAFKA_BOOTSTRAP": chain.kafka, "RDX_COMETBFT_RPC": chain.rpc_url,
           "RDX_CHAIN_ID": chain.chain_id, "RDX_STATE_ROOT": str(tmp_path / "state"), "RDX_HTTP_PORT": str(free_port()),
           "RDX_TRUSTED_GENESIS": str(genesis)}
    if service == "compute":
        node = Identity.generate("anchor-m.node")
        node.save(tmp_path / "node.json")
        (tmp_path / "datasets").mkdir()
        env |= {"RDX_MEMBER_ID": "anchor-m", "RDX_NODE_KEY_FILE": str(tmp_path / "node.json"),
                "RDX_GRPC_PORT": str(free_port()), "RDX_DATASETS": str(tmp_path / "datasets")}
    return env


@pytest.mark.parametrize("service", ["gateway", "compute", "billing"])
@pytest.mark.parametrize("kind", ["fifo", "another chain"])
def test_a_trust_anchor_that_cannot_be_used_stops_the_start_with_one_line(chain, tmp_path, service, kind):
    genesis = tmp_path / "genesis.json"
    if kind == "fifo":  # read, it would have held the start for ever
        plant(genesis, "fifo")
        want = f"rdx: RDX_TRUSTED_GENESIS: {genesis} is not a regular file"
    else:
        doc = json.loads((chain.node.home / "config" / "genesis.json").read_text())
        doc["chain_id"] = "another-chain"
        genesis.write_text(json.dumps(doc))
        want = f"rdx: RDX_TRUSTED_GENESIS: the trusted genesis is of chain 'another-chain', not {chain.chain_id!r}"
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], env=_env(chain, tmp_path, service, genesis),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == want, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
