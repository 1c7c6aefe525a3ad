"""The containers' way to a one-validator dev chain (docker/compose.yaml, the dev overlay), run
here with the real script and binaries instead of images: ``cometbft-entrypoint init`` makes the
home and key and leaves no genesis (``cometbft init``'s has no rdx app_state, which InitChain
refuses); started like that the entrypoint refuses with a message; ``rdx genesis --local`` writes
the genesis (the association's keys made on first use) and, run again, leaves it as it is; then
the entrypoint starts CometBFT against the consensus service and the association's key works."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from rdx.components import LOOPBACK, Process, ServiceProcess, comet_healthy, free_port, wait_until
from services.common.chain import ChainClient
from services.common.identity import Identity

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "cometbft-entrypoint.sh"
CHAIN_ID = "rdx-container"


def genesis_step(home: Path, keys: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdx", "genesis", "--local", str(keys), "--chain-id", CHAIN_ID,
                           "--if-missing", "--validator-key-file", str(home / "config" / "priv_validator_key.json"),
                           "--out", str(home / "config" / "genesis.json")], capture_output=True, text=True, cwd=ROOT)


async def test_the_containers_genesis_steps_make_a_chain_the_association_runs(toolchain, kafka, tmp_path):
    home, state = tmp_path / "cometbft", tmp_path / "state"
    env = {**os.environ, "CMTHOME": str(home), "PATH": f"{toolchain.cometbft.parent}:{os.environ['PATH']}"}
    init = subprocess.run(["sh", str(ENTRYPOINT), "init"], env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert (home / "config" / "priv_validator_key.json").exists() and not (home / "config" / "genesis.json").exists()
    refused = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "no genesis" in refused.stderr

    made = genesis_step(home, state / "keys")
    assert made.returncode == 0, made.stderr
    assert "1 validators (power 10), board 1 of 1" in made.stdout
    first = hashlib.sha256((home / "config" / "genesis.json").read_bytes()).hexdigest()
    again = genesis_step(home, state / "keys")
    assert again.returncode == 0 and "left as it is" in again.stdout
    assert hashlib.sha256((home / "config" / "genesis.json").read_bytes()).hexdigest() == first
    assert oct((state / "keys" / "association.json").stat().st_mode & 0o777) == "0o600"

    abci_port, rpc_port = free_port(), free_port()
    consensus = ServiceProcess("consensus", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": kafka.bootstrap, "RDX_STATE_ROOT": str(state), "RDX_CHAIN_ID": CHAIN_ID,
        "RDX_ABCI_PORT": str(abci_port)}, tmp_path / "logs")
    node = Process("cometbft", ["sh", str(ENTRYPOINT), f"--proxy_app=tcp://{LOOPBACK}:{abci_port}"],
                   tmp_path / "logs" / "cometbft.log",
                   env={**env, "CMT_RPC_LADDR": f"tcp://{LOOPBACK}:{rpc_port}",
                        "CMT_P2P_LADDR": f"tcp://{LOOPBACK}:{free_port()}"})
    consensus.start()
    try:
        node.start()
        rpc = f"http://{LOOPBACK}:{rpc_port}"
        wait_until(lambda: comet_healthy(rpc), 60, "CometBFT started by the entrypoint", node)
        association = Identity.load(state / "keys" / "association.json")
        seat = Identity.load(state / "keys" / "association.board-local.json")
        member = Identity.generate("acme")
        async with ChainClient(rpc, CHAIN_ID) as client:
            await client.submit(association, "members.Register", {
                "id": "acme", "name": "ACME", "roles": ["consumer"], "public_key": member.public_key})
            await client.submit(seat, "board.Propose", {"id": "credit-1", "action": {
                "type": "bank.Deposit", "payload": {"to": "acme", "amount": 10, "reference": "first"}}})
            assert await client.query("/bank/balance/acme") == 10
            assert (await client.query("/governance/board"))["seats"] == [seat.account]
    finally:
        node.stop()
        consensus.stop()
