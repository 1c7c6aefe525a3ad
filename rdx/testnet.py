"""A local N-validator rdx network on loopback: the fault tests' network and ``make testnet``.

Each validator is one CometBFT node plus its own consensus service (``python -m
services.consensus``: rdx's ABCI app and its relay), with its own state directory and its own
ports. ``cometbft testnet`` makes the validator keys; ``rdx genesis`` (rdx/genesis.py) makes the
one genesis from ``<root>/genesis.yaml`` (the validators' public keys, the association, its board),
copied to every node (identical bytes, or the nodes would disagree on the genesis hash and never
connect). ``add_node`` starts one more node that is not a validator (it block-syncs from the
others, with its own validator key, which the board may then vote into the set).

Layout of the state directory::

    <root>/node<i>/          CometBFT home of validator i (config, data, cometbft.log)
    <root>/app<i>/           RDX_STATE_ROOT of validator i's consensus service (+ logs/)
    <root>/keys/             the association's and its board seat's signing keys (only with ``python -m rdx.testnet``)
    <root>/genesis.yaml      what the genesis was made from
    <root>/kafka/            the broker, when ``python -m rdx.testnet`` starts its own

Ports are picked afresh (free loopback ports) on every ``Testnet(...)``, so a second start on
the same directory resumes the chain on new ports; the ports stay fixed for the lifetime of the
object, so a stopped validator comes back where its peers expect it.

    python -m rdx.testnet --validators 4 --state-dir .rdx-testnet    # Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from nacl.signing import SigningKey

from rdx import genesis as rdx_genesis
from rdx import toolchain as tc
from rdx.components import LOOPBACK, CometNode, KafkaBroker, ServiceProcess, free_port, wait_until
from rdx.supervisor import association_identity, save_local_seat
from rdx.toolchain import SetupError
from services.common.identity import Identity

DEFAULT_CHAIN_ID = "rdx-testnet"

# Consensus timeouts for a loopback network: a stopped validator's turn as proposer costs
# timeout_propose, so keep it short; the rest follow CometBFT's defaults scaled down.
CONSENSUS_TIMEOUTS = {
    "timeout_propose": "1s",
    "timeout_propose_delta": "200ms",
    "timeout_prevote": "500ms",
    "timeout_prevote_delta": "200ms",
    "timeout_precommit": "500ms",
    "timeout_precommit_delta": "200ms",
}


def _rpc_get(url: str, timeout: float = 3.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = json.loads(resp.read())
    if "error" in body:
        raise RuntimeError(f"{url}: {body['error']}")
    return body["result"]


@dataclass
class Validator:
    index: int
    node: CometNode
    app: ServiceProcess

    @property
    def rpc_url(self) -> str:
        return self.node.rpc_url

    @property
    def p2p_address(self) -> str:
        return f"{LOOPBACK}:{self.node.p2p_port}"


class Testnet:
    """N validators on loopback sharing one Kafka broker; see the module docstring.

    Public API: ``start()``, ``stop()``, ``stop_validator(i)``, ``start_validator(i)``,
    ``kill_app(i)``, ``start_app(i)``, ``heights()``, ``app_hashes_at(h)``, ``app_infos()``,
    ``headers(lo, hi, node)``, ``divergent_heights(lo, hi)``, ``app_hash_mismatches()``,
    ``wait_for_height(h)``, ``kill_node(i)``, ``node_alive(i)``, ``app_alive(i)``, ``rpc_urls``,
    ``add_node()``, ``validator_key(i)``, ``replace_validator_key(i, key_file)``, ``validator_set(h)``,
    ``signers(h)``.

    ``board``, ``threshold`` and ``powers`` make the genesis' board (rdx/genesis.py
    ``local_app_spec``: by default one seat derived from the association's key, the officer
    holding every power it may). ``app_module`` runs every consensus service through a wrapper
    module (a test's "next release").
    """

    __test__ = False  # a name starting with "Test": not a pytest test class

    def __init__(self, root: Path, kafka_bootstrap: str, *, validators: int = 4, chain_id: str = DEFAULT_CHAIN_ID,
                 association: Identity | None = None, timeout_commit: str = "200ms",
                 toolchain: tc.Toolchain | None = None, params: dict | None = None,
                 board: list[Identity] | None = None, threshold: int = 1, powers: dict[str, str] | None = None,
                 log=lambda msg: None):
        if validators < 1:
            raise ValueError("a network needs at least one validator")
        self.root = Path(root).resolve()
        self.kafka_bootstrap, self.chain_id, self.count = kafka_bootstrap, chain_id, validators
        self.toolchain = toolchain or tc.installed()
        self.association = association or association_identity(self.root / "keys")
        if association is None and board is None:  # `make testnet`: the seat's key file beside the association's
            save_local_seat(self.root / "keys", self.association)
        self.timeout_commit = timeout_commit
        self.app_spec = rdx_genesis.local_app_spec(self.association, board=board, threshold=threshold, powers=powers,
                                                   params=params)
        self.log = log
        self._node_ids: dict[Path, str] = {}
        self.validators: list[Validator] = []
        for i in range(validators):
            self.validators.append(self._member(i))

    def _member(self, i: int) -> Validator:
        """Node i of the network: a CometBFT home and its consensus service, on fresh ports."""
        abci_port = free_port()
        node = CometNode(self.root / f"node{i}", self.toolchain, chain_id=self.chain_id, rpc_port=free_port(),
                         p2p_port=free_port(), abci_port=abci_port, timeout_commit=self.timeout_commit,
                         app_state=self.app_spec)
        # Every validator's relay publishes the same committed events to the same shared broker
        # and topic. That is harmless by design: an event's id (height/tx/event index) is the same
        # on every validator, and consumers apply each id once, so the copies are deduplicated.
        app = ServiceProcess("consensus", free_port(), {
            "RDX_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "RDX_STATE_ROOT": str(self.root / f"app{i}"),
            "RDX_CHAIN_ID": self.chain_id,
            "RDX_ABCI_PORT": str(abci_port),
            "RDX_COMETBFT_RPC": node.rpc_url,
        }, self.root / f"app{i}" / "logs")
        return Validator(i, node, app)

    # -- set-up -----------------------------------------------------------------------------------
    @property
    def rpc_urls(self) -> list[str]:
        return [v.rpc_url for v in self.validators]

    def prepare(self) -> None:
        """Generate keys and genesis on first use, then (re)write every node's config."""
        self.root.mkdir(parents=True, exist_ok=True)
        homes = [v.node.home for v in self.validators[:self.count]]
        existing = [h for h in homes if (h / "config").exists()]
        if not existing:
            self._generate(homes)
        elif len(existing) != len(homes):
            raise SetupError(f"{self.root} holds {len(existing)} of {len(homes)} validator homes; "
                             "it was made for another number of validators (or is damaged): use another --state-dir")
        for v in self.validators:
            self._configure(v)

    def _configure(self, v: Validator) -> None:
        v.node.prepare()  # validates the files, then writes proxy_app, laddrs, timeout_commit ...
        peers = ",".join(f"{self._node_id(o.node.home)}@{o.p2p_address}" for o in self.validators if o is not v)
        v.node.configure(persistent_peers=peers)
        self._tune(v.node.home / "config" / "config.toml")

    def _generate(self, homes: list[Path]) -> None:
        staging = Path(tempfile.mkdtemp(prefix="testnet.", dir=self.root))
        try:
            result = subprocess.run(
                [str(self.toolchain.cometbft), "testnet", "--v", str(self.count), "--o", str(staging),
                 "--starting-ip-address", LOOPBACK, "--populate-persistent-peers=false"],
                capture_output=True, text=True)
            if result.returncode != 0:
                raise SetupError(f"cometbft testnet failed: {(result.stdout + result.stderr).strip()[-800:]}")
            keys = [(f"validator-{i}", rdx_genesis.node_public_key(staging / f"node{i}")) for i in range(self.count)]
            spec_path = self.root / "genesis.yaml"
            rdx_genesis.dump_spec(rdx_genesis.local_spec(self.chain_id, keys, self.app_spec), spec_path)
            rdx_genesis.write(spec_path, staging / "genesis.json")
            text = (staging / "genesis.json").read_text()  # the same bytes for every node
            for i, home in enumerate(homes):
                (staging / f"node{i}" / "config" / "genesis.json").write_text(text)
                shutil.move(str(staging / f"node{i}"), str(home))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _node_id(self, home: Path) -> str:
        if home in self._node_ids:
            return self._node_ids[home]
        result = subprocess.run([str(self.toolchain.cometbft), "show-node-id", "--home", str(home)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SetupError(f"cometbft show-node-id failed for {home}: {result.stderr.strip()[-400:]}")
        self._node_ids[home] = result.stdout.strip()
        return self._node_ids[home]

    @staticmethod
    def _tune(config_path: Path) -> None:
        doc = tomlkit.parse(config_path.read_text())
        for key, value in CONSENSUS_TIMEOUTS.items():
            doc["consensus"][key] = value
        doc["p2p"]["pex"] = False  # the peers are all listed; nothing to discover on loopback
        config_path.write_text(tomlkit.dumps(doc))

    # -- whole network ----------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> None:
        """Every consensus service first (CometBFT dials them), then every node together: a node
        of a multi-validator network commits its first block only once 2/3 of the others are up."""
        self.prepare()
        try:
            for v in self.validators:
                v.app.start(wait=False)
            for v in self.validators:
                v.app.wait_ready(timeout)
            with ThreadPoolExecutor(len(self.validators)) as pool:
                list(pool.map(lambda v: v.node.start(timeout), self.validators))
        except BaseException:
            self.stop()
            raise
        self.log(f"testnet of {self.count} validators is up at height {max(h or 0 for h in self.heights())}")

    def stop(self) -> None:
        """Nodes first (they hold the ABCI connections), then the apps. Never raises."""
        for v in self.validators:
            self._quietly(v.node.stop)
        for v in self.validators:
            self._quietly(v.app.stop)

    @staticmethod
    def _quietly(fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - stopping must go on for the others
            print(f"testnet: {fn!r} failed while stopping: {exc}", file=sys.stderr)

    # -- the validator set ---------------------------------------------------------------------------
    def add_node(self, timeout: float = 60.0) -> int:
        """Start one more node, with its own validator key but not in the validator set: it
        block-syncs the chain from the others and follows it (the board may then vote its key
        in). Returns its index; every observation (heights, headers ...) includes it."""
        v = self._member(len(self.validators))
        if not (v.node.home / "config").exists():
            result = subprocess.run([str(self.toolchain.cometbft), "init", "--home", str(v.node.home)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise SetupError(f"cometbft init failed: {result.stderr.strip()[-800:]}")
            shutil.copyfile(self.validators[0].node.home / "config" / "genesis.json",
                            v.node.home / "config" / "genesis.json")
        self.validators.append(v)
        self._configure(v)
        for other in self.validators[:-1]:  # the others dial it too (restarts keep finding it)
            peers = ",".join(f"{self._node_id(o.node.home)}@{o.p2p_address}" for o in self.validators if o is not other)
            other.node.configure(persistent_peers=peers)
            self._tune(other.node.home / "config" / "config.toml")
        v.app.start(timeout=timeout)
        v.node.start(timeout)
        return v.index

    def validator_key(self, i: int) -> str:
        """Node i's consensus public key (base64), as a validators.Update names it."""
        return rdx_genesis.node_public_key(self.validators[i].node.home)

    @staticmethod
    def new_validator_key(path: Path) -> str:
        """Write a new Ed25519 priv_validator_key.json at ``path`` (0600); returns its public key."""
        key = SigningKey.generate()
        public = bytes(key.verify_key)
        doc = {"address": hashlib.sha256(public).digest()[:20].hex().upper(),
               "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(public).decode()},
               "priv_key": {"type": "tendermint/PrivKeyEd25519",
                            "value": base64.b64encode(bytes(key) + public).decode()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        return doc["pub_key"]["value"]

    def replace_validator_key(self, i: int, key_file: Path, timeout: float = 60.0) -> None:
        """Stop node i, put ``key_file`` in place as its priv_validator_key.json, start it again.
        Its priv_validator_state.json (the double-sign guard) stays: the new key signs only heights
        above what the node last signed."""
        v = self.validators[i]
        v.node.stop()
        shutil.copyfile(key_file, v.node.home / "config" / "priv_validator_key.json")
        os.chmod(v.node.home / "config" / "priv_validator_key.json", 0o600)
        v.node.start(timeout)

    def validator_set(self, height: int, node: int = 0) -> dict[str, int]:
        """The validator set CometBFT used at ``height``: public key (base64) -> voting power."""
        result = _rpc_get(f"{self.validators[node].rpc_url}/validators?height={height}&per_page=100")
        return {v["pub_key"]["value"]: int(v["voting_power"]) for v in result["validators"]}

    def signers(self, height: int, node: int = 0) -> set[str]:
        """Addresses of the validators whose precommit for block ``height`` is in its commit."""
        result = _rpc_get(f"{self.validators[node].rpc_url}/commit?height={height}")
        return {s["validator_address"] for s in result["signed_header"]["commit"]["signatures"]
                if s.get("validator_address") and s.get("block_id_flag") == 2}

    # -- one validator ----------------------------------------------------------------------------
    def stop_validator(self, i: int) -> None:
        """Gracefully stop validator i: its node, then its consensus service."""
        v = self.validators[i]
        v.node.stop()
        v.app.stop()

    def start_validator(self, i: int, timeout: float = 60.0) -> None:
        """Start whatever of validator i is not running (its app first, then its node).

        Also the way back after ``kill_app``: CometBFT stops when it loses its ABCI connection,
        and on restart its handshake replays to the app whatever blocks the app is missing."""
        v = self.validators[i]
        if not v.app.process or not v.app.process.alive():
            v.app.start(timeout=timeout)
        if v.node.process and v.node.process.alive():
            return
        v.node.start(timeout)

    def kill_app(self, i: int) -> None:
        """kill -9 the consensus service (ABCI app and relay) of validator i."""
        self.validators[i].app.kill()

    def start_app(self, i: int, timeout: float = 60.0) -> None:
        self.validators[i].app.start(timeout=timeout)

    def kill_node(self, i: int) -> None:
        """kill -9 validator i's CometBFT node."""
        self.validators[i].node.kill()

    def node_alive(self, i: int) -> bool:
        p = self.validators[i].node.process
        return p is not None and p.alive()

    def app_alive(self, i: int) -> bool:
        p = self.validators[i].app.process
        return p is not None and p.alive()

    # -- observation --------------------------------------------------------------------------------
    def heights(self) -> list[int | None]:
        """Each node's latest committed height; None for a node that does not answer."""
        out: list[int | None] = []
        for v in self.validators:
            try:
                out.append(v.node.height())
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                out.append(None)
        return out

    def app_hashes_at(self, height: int) -> list[str | None]:
        """The header app_hash of block ``height`` as each node stored it (None if it has not).

        A node only stores a block after checking its header's app_hash against what its own
        app answered for the previous block, so equal values mean equal app state (a diverged
        app halts its node instead)."""
        out: list[str | None] = []
        for v in self.validators:
            try:
                out.append(_rpc_get(f"{v.rpc_url}/block?height={height}")["block"]["header"]["app_hash"])
            except (urllib.error.URLError, OSError, KeyError, RuntimeError, ValueError):
                out.append(None)
        return out

    def app_infos(self) -> list[tuple[int, str] | None]:
        """(last height, app hash in upper-case hex) as each validator's own app reports them (ABCI Info)."""
        out: list[tuple[int, str] | None] = []
        for v in self.validators:
            try:
                info = _rpc_get(f"{v.rpc_url}/abci_info")["response"]
                app_hash = base64.b64decode(info.get("last_block_app_hash", "")).hex().upper()  # as in headers
                out.append((int(info.get("last_block_height", 0)), app_hash))
            except (urllib.error.URLError, OSError, KeyError, RuntimeError, ValueError):
                out.append(None)
        return out

    def headers(self, lo: int, hi: int, node: int) -> dict[int, dict]:
        """Block headers ``lo..hi`` from one node's store, 20 per ``/blockchain`` call."""
        found: dict[int, dict] = {}
        top = hi
        while top >= lo:
            result = _rpc_get(f"{self.validators[node].rpc_url}/blockchain?minHeight={max(lo, top - 19)}&maxHeight={top}",
                              timeout=10)
            metas = result["block_metas"]
            if not metas:
                break
            for meta in metas:
                found[int(meta["header"]["height"])] = meta["header"]
            top = min(int(m["header"]["height"]) for m in metas) - 1
        return found

    def divergent_heights(self, lo: int, hi: int) -> list[tuple[int, dict[int, tuple[str, str]]]]:
        """Heights in ``lo..hi`` where the nodes' headers disagree on app_hash or last_results_hash
        (the per-tx results' hash), with each node's pair; missing blocks count as disagreement."""
        per_node = [self.headers(lo, hi, i) for i in range(len(self.validators))]
        bad = []
        for h in range(lo, hi + 1):
            seen = {i: (hs[h]["app_hash"], hs[h]["last_results_hash"]) if h in hs else ("missing", "")
                    for i, hs in enumerate(per_node)}
            if len(set(seen.values())) != 1:
                bad.append((h, seen))
        return bad

    def app_hash_mismatches(self, reference: int = 0, timeout: float = 30.0) -> list[tuple[int, int, str, str]]:
        """Each validator's own app hash (ABCI Info, height h) against the app_hash that block h+1
        on the ``reference`` node carries; returns the (validator, h, app's, chain's) that differ.
        Raises if a validator's app does not answer."""
        infos = self.app_infos()
        bad = []
        for i, info in enumerate(infos):
            if info is None:
                raise SetupError(f"validator {i}'s app does not answer ABCI Info")
            height, app_hash = info
            self.wait_for_height(height + 1, [reference], timeout)
            chain = self.app_hashes_at(height + 1)[reference]
            if chain != app_hash:
                bad.append((i, height, app_hash, chain or "missing"))
        return bad

    def wait_for_height(self, height: int, nodes: list[int] | None = None, timeout: float = 60.0) -> None:
        """Until every node in ``nodes`` (default all) has committed ``height``."""
        wanted = range(len(self.validators)) if nodes is None else nodes

        def reached() -> bool:
            hs = self.heights()
            return all((hs[i] or 0) >= height for i in wanted)

        wait_until(reached, timeout, f"height {height} on validators {list(wanted)}")

    def describe(self) -> str:
        lines = [f"testnet {self.chain_id}: {self.count} validators, state in {self.root}"]
        for v in self.validators:
            lines.append(f"  validator {v.index}: rpc {v.rpc_url}  p2p {v.p2p_address}  "
                         f"abci tcp://{LOOPBACK}:{v.node.abci_port}  consensus {v.app.url}")
        lines.append(f"  kafka {self.kafka_bootstrap}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# python -m rdx.testnet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdx.testnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--validators", type=int, default=4, help="number of validators (default 4)")
    # Not under .rdx/: `rdx up` refuses a state directory that holds anything but its own files.
    parser.add_argument("--state-dir", type=Path, default=Path(".rdx-testnet"),
                        help="where keys, genesis, chain data and logs live; a second start resumes (default .rdx-testnet)")
    parser.add_argument("--chain-id", default=DEFAULT_CHAIN_ID)
    parser.add_argument("--timeout-commit", default="1s", help="CometBFT's timeout_commit (default 1s; `rdx up` uses 100ms with blocks on demand, rdx/supervisor.py)")
    parser.add_argument("--kafka", metavar="HOST:PORT",
                        help="use this broker instead of starting one in <state-dir>/kafka")
    args = parser.parse_args(argv)

    stopping = False

    def on_signal(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    state = args.state_dir.resolve()
    broker: KafkaBroker | None = None
    net: Testnet | None = None
    try:
        toolchain = tc.installed()
        bootstrap = args.kafka
        if bootstrap is None:
            broker = KafkaBroker(state / "kafka", toolchain, port=free_port(), controller_port=free_port())
            broker.prepare()
            print(f"starting Kafka on {broker.bootstrap} ...", flush=True)
            broker.start()
            bootstrap = broker.bootstrap
        net = Testnet(state, bootstrap, validators=args.validators, chain_id=args.chain_id,
                      timeout_commit=args.timeout_commit, toolchain=toolchain, log=lambda m: print(m, flush=True))
        print(f"starting {args.validators} validators ...", flush=True)
        net.start()
        print(net.describe(), flush=True)
        print("Ctrl-C stops the network", flush=True)
        while not stopping:
            for v in net.validators:
                for name, proc in (("node", v.node.process), ("consensus service", v.app.process)):
                    if proc is not None and proc.popen is not None and not proc.alive():
                        print(f"testnet: validator {v.index}'s {name} exited with code {proc.popen.returncode}; "
                              f"see {proc.log_path}", file=sys.stderr, flush=True)
                        proc.popen = None  # report once
            time.sleep(0.5)
        return 0
    except SetupError as exc:
        print(f"rdx testnet: {exc}", file=sys.stderr)
        return 2
    finally:
        print("testnet: stopping ...", flush=True)
        if net is not None:
            net.stop()
        if broker is not None:
            broker.stop()
        print("testnet: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
