"""The state tree's cost (issue 18): ``python -m bench.consensus_proofs`` -> bench/results/consensus_proofs.json.

1. The ABCI steps' CPU cost per tx (``bench.consensus.app_costs``, in-process) with the app hash
   as the state tree's root against the same app on the older hash chain of write sets (a
   genesis without ``state_tree``), alternated in one run so both see the same machine.
2. Proofs: an app over ``--keys`` state keys committed to SQLite; ``Query(prove=true)`` answered
   by ``RdxApp.query`` (proof generation, including the value read) and checked by
   ``services.common.proofs.verify`` (what a member runs), p50/p99 over ``--queries`` random keys,
   a tenth of them absent. The goal: verify p99 <= 5 ms (wall clock; also its thread CPU time).
   And the tree's own cost per distinct key written, in blocks of 500 distinct keys over that
   state: the update (hashing) and the node rows Commit stores.
3. A verified read's client cost (``services/common/verified.py``): on blocks recorded from a real
   4-validator testnet (tests/unit/common/lightclient_testnet_vectors.json), parsing and verifying
   a new header from the RPC's JSON (once per block, shared by every read answered at its height),
   and checking one answer's proof against a verified header (once per read). The wall-clock cost
   of a read is one more RPC round trip per new block (for the header that carries the app hash
   of the height read: the one before the node's latest, so it exists already).
4. That wall-clock cost end to end: a real rdx chain (CometBFT + the consensus service, Kafka,
   ``--timeout-commit``), ``--reads`` reads of one account through ``VerifiedChain`` alternated
   with the same read by ``ChainClient.query`` (no proof, the node's word), p50/p99 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from unittest import mock

from bench import common
from bench import consensus as consensus_bench


_genesis_app_state = consensus_bench.genesis_app_state


def _legacy_genesis(*args, **kwargs) -> dict:
    """The genesis of a chain made before the state tree: its app hash stays the hash chain."""
    spec = _genesis_app_state(*args, **kwargs)
    spec.pop("state_tree", None)
    return spec


def app_costs_both(rounds: int, n: int) -> dict[str, dict[str, float]]:
    """Best of ``rounds`` alternated runs of each (app_costs itself takes the best of three)."""
    best: dict[str, dict[str, float]] = {"state_tree": {}, "hash_chain": {}}
    for _ in range(rounds):
        for name in ("hash_chain", "state_tree"):
            if name == "hash_chain":
                with mock.patch.object(consensus_bench, "genesis_app_state", _legacy_genesis):
                    costs = consensus_bench.app_costs(n=n)
            else:
                costs = consensus_bench.app_costs(n=n)
            for step, value in costs.items():
                best[name][step] = min(value, best[name].get(step, float("inf")))
    return best


def proof_costs(keys: int, queries: int) -> dict[str, float]:
    from tendermint.abci import types_pb2 as abci

    from services.common import proofs
    from services.consensus.app import STATE_TREE, RdxApp
    from services.consensus.merkle import NONE, StateTree
    from services.consensus.state import Database, Overlay

    rng = random.Random(18)
    with tempfile.TemporaryDirectory(prefix="rdx-proofs.") as tmp:
        db = Database(Path(tmp) / "state.sqlite")
        block = Overlay(db)
        block.set(STATE_TREE, {"spec": proofs.PROOF_TYPE, "since": 0})
        for i in range(keys):
            block.set(f"accounts/bench-{i:07d}", {"member": f"bench-{i:07d}", "nonce": rng.randrange(10**6),
                                                  "public_key": "A" * 44})
        start = time.perf_counter()
        tree = StateTree(db.tree_node)  # one for the whole run, as the app keeps one
        root = tree.update(NONE, block.tree_changes(), block.nodes, 1)
        build_s = time.perf_counter() - start
        db.commit_block(1, root[0], block.writes, [], nodes=block.nodes, tree_version=root[1])
        tree.committed(block.nodes)
        # Blocks that each write 500 distinct keys (the app_costs load rewrites 32 accounts a block)
        plain = Database(Path(tmp) / "plain.sqlite")  # the same writes committed without tree nodes
        plain.commit_block(1, root[0], block.writes, [])
        update_us, commit_us, plain_us = [], [], []
        for height in range(2, 7):
            block = Overlay(db)
            for i in rng.sample(range(keys), 500):
                block.set(f"accounts/bench-{i:07d}", {"member": f"bench-{i:07d}", "nonce": height, "public_key": "B" * 44})
            start = time.perf_counter()
            root = tree.update(root, block.tree_changes(), block.nodes, height)
            middle = time.perf_counter()
            db.commit_block(height, root[0], block.writes, [], nodes=block.nodes, tree_version=root[1])
            tree.committed(block.nodes)
            end = time.perf_counter()
            update_us.append((middle - start) / 500 * 1e6)
            commit_us.append((end - middle) / 500 * 1e6)
            start = time.perf_counter()
            plain.commit_block(height, root[0], block.writes, [])
            plain_us.append((time.perf_counter() - start) / 500 * 1e6)
        app = RdxApp(Database(Path(tmp) / "state.sqlite"), consensus_bench.CHAIN_ID)  # a cold node cache
        generate, verify, verify_cpu, sizes = [], [], [], []
        for q in range(queries):
            i = rng.randrange(keys) if q % 10 else keys + q  # every tenth absent
            key = f"accounts/bench-{i:07d}"
            start = time.perf_counter()
            answer = app.query(abci.RequestQuery(path=f"/{key}", prove=True))
            middle, cpu = time.perf_counter(), time.thread_time()
            proofs.verify(app.db.app_hash, key, answer.value if answer.code == 0 else None, answer.proof_ops)
            end = time.perf_counter()
            verify_cpu.append(time.thread_time() - cpu)
            generate.append(middle - start)
            verify.append(end - middle)
            sizes.append(len(answer.proof_ops.ops[0].data))
        return {"keys": keys, "queries": queries, "build_s": build_s,
                "update_us_per_key": min(update_us), "commit_nodes_us_per_key": min(commit_us),
                "commit_plain_us_per_key": min(plain_us),
                "verify_cpu_p99_ms": common.percentile(verify_cpu, 0.99) * 1e3,
                "generate_p50_ms": common.percentile(generate, 0.5) * 1e3,
                "generate_p99_ms": common.percentile(generate, 0.99) * 1e3,
                "verify_p50_ms": common.percentile(verify, 0.5) * 1e3,
                "verify_p99_ms": common.percentile(verify, 0.99) * 1e3,
                "proof_bytes_p50": common.percentile(sizes, 0.5)}


VECTORS = Path(__file__).resolve().parent.parent / "tests" / "unit" / "common" / "lightclient_testnet_vectors.json"


def light_costs(rounds: int) -> dict[str, float]:
    from datetime import datetime, timedelta, timezone

    from services.common import lightclient

    vectors = json.loads(VECTORS.read_text())
    raw = {int(h): (b["commit"], b["validators"]) for h, b in vectors["blocks"].items()}
    first = lightclient.light_block(*raw[vectors["first"]])
    now = datetime.fromtimestamp(max(lightclient.light_block(*r).time_ns for r in raw.values()) / 1e9,
                                 timezone.utc) + timedelta(minutes=1)
    answer, key = vectors["query"]["answer"], vectors["query"]["key"]
    proving = lightclient.light_block(*raw[int(answer["response"]["height"]) + 1])
    header, read = [], []
    for _ in range(rounds):
        for height, pair in raw.items():
            if height <= first.height:
                continue
            start = time.perf_counter()
            lightclient.verify(first, lightclient.light_block(*pair), now=now, trusting_period_s=86_400)
            header.append(time.perf_counter() - start)
        start = time.perf_counter()
        lightclient.verify_query(proving, key, answer)
        read.append(time.perf_counter() - start)
    return {"validators": len(first.validators),
            "header_p50_ms": common.percentile(header, 0.5) * 1e3, "header_p99_ms": common.percentile(header, 0.99) * 1e3,
            "read_p50_ms": common.percentile(read, 0.5) * 1e3, "read_p99_ms": common.percentile(read, 0.99) * 1e3}


async def live_reads(reads: int, timeout_commit: str) -> dict[str, float]:
    import shutil

    from rdx import toolchain as tc
    from rdx.components import KafkaBroker, free_port
    from services.common.chain import ChainClient
    from services.common.identity import Identity
    from services.common.verified import Anchor, VerifiedChain

    root = Path(tempfile.mkdtemp(prefix="rdx-bench-reads."))
    association = Identity.generate("association")
    broker = KafkaBroker(root / "kafka", tc.installed(), port=free_port(), controller_port=free_port(), heap="384m")
    chain = None
    try:
        broker.prepare()
        broker.start()
        chain = consensus_bench.start_rdx(root, tc.installed(), broker.bootstrap, association, timeout_commit, None)
        anchor = Anchor.from_genesis(chain.node.home / "config" / "genesis.json")
        key = f"/accounts/{association.account}"
        plain_s, verified_s = [], []
        async with ChainClient(chain.rpc_url, consensus_bench.CHAIN_ID) as plain, \
                VerifiedChain(chain.rpc_url, anchor) as reader:
            await reader.query(key)  # the anchor's block, once
            for _ in range(reads):
                start = time.perf_counter()
                await plain.query(key)
                middle = time.perf_counter()
                await reader.query(key)
                plain_s.append(middle - start)
                verified_s.append(time.perf_counter() - middle)
        return {"reads": reads, "plain_p50_ms": common.percentile(plain_s, 0.5) * 1e3,
                "plain_p99_ms": common.percentile(plain_s, 0.99) * 1e3,
                "verified_p50_ms": common.percentile(verified_s, 0.5) * 1e3,
                "verified_p99_ms": common.percentile(verified_s, 0.99) * 1e3}
    finally:
        if chain:
            chain.stop()
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


def proof_metrics(p: dict[str, float]) -> list[dict]:
    """The issue's two numbers: proof generation and verification p99 (also in consensus.json)."""
    return [common.metric("proof_generate_p99_ms", p["generate_p99_ms"], "ms"),
            common.metric("proof_verify_p99_ms", p["verify_p99_ms"], "ms", bar="<= 5 ms",
                          passed=p["verify_p99_ms"] <= 5),
            # Its thread's CPU time: on a loaded 2-core machine the wall clock's p99 is mostly waiting.
            common.metric("proof_verify_cpu_p99_ms", p["verify_cpu_p99_ms"], "ms", bar="<= 5 ms",
                          passed=p["verify_cpu_p99_ms"] <= 5)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--txs", type=int, default=4000)
    parser.add_argument("--light-rounds", type=int, default=200)
    parser.add_argument("--reads", type=int, default=60, help="live reads of each kind (0: no live chain)")
    parser.add_argument("--timeout-commit", default="200ms", help="as bench-consensus")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    costs = app_costs_both(args.rounds, args.txs)
    p = proof_costs(args.keys, args.queries)
    metrics = []
    for step in ("check_tx", "process_proposal", "finalize_block", "commit", "finalize_block_alone"):
        metrics.append(common.metric(f"app_{step}_us_per_tx", costs["state_tree"][step], "us",
                                     baseline_name="hash chain of write sets", baseline_value=costs["hash_chain"][step]))
    tree, chain = costs["state_tree"], costs["hash_chain"]
    metrics.append(common.metric("app_process_plus_commit_us_per_tx", tree["process_proposal"] + tree["commit"], "us",
                                 baseline_name="hash chain of write sets",
                                 baseline_value=chain["process_proposal"] + chain["commit"]))
    metrics += proof_metrics(p)
    metrics.append(common.metric("tree_update_us_per_distinct_key", p["update_us_per_key"], "us"))
    metrics.append(common.metric("tree_commit_us_per_distinct_key", p["commit_nodes_us_per_key"], "us",
                                 baseline_name="the same writes committed without tree nodes",
                                 baseline_value=p["commit_plain_us_per_key"]))
    metrics.append(common.metric("proof_generate_p50_ms", p["generate_p50_ms"], "ms"))
    metrics.append(common.metric("proof_verify_p50_ms", p["verify_p50_ms"], "ms"))
    metrics.append(common.metric("proof_bytes_p50", p["proof_bytes_p50"], "bytes"))
    metrics.append(common.metric("tree_build_s", p["build_s"], "s"))
    light = light_costs(args.light_rounds)
    metrics.append(common.metric("light_header_verify_p99_ms", light["header_p99_ms"], "ms"))
    metrics.append(common.metric("light_header_verify_p50_ms", light["header_p50_ms"], "ms"))
    metrics.append(common.metric("verified_read_proof_check_p99_ms", light["read_p99_ms"], "ms"))
    metrics.append(common.metric("verified_read_proof_check_p50_ms", light["read_p50_ms"], "ms"))
    live = asyncio.run(live_reads(args.reads, args.timeout_commit)) if args.reads else {}
    for q in ("p50", "p99") if live else ():
        metrics.append(common.metric(f"verified_read_{q}_ms", live[f"verified_{q}_ms"], "ms",
                                     baseline_name="the same read unverified (ChainClient.query)",
                                     baseline_value=live[f"plain_{q}_ms"]))
    notes = (f"app costs: {args.txs} txs in blocks of 500, best of {args.rounds}x3 alternated runs per variant; "
             f"proofs: {p['keys']} keys in SQLite, {p['queries']} Query(prove=true) on a cold node cache, "
             f"a tenth absent; tree_build_s is the state-tree upgrade's one pass over that many keys; "
             f"light_*: {args.light_rounds} rounds over blocks of a real {light['validators']}-validator testnet; "
             f"verified_read_*: {args.reads} reads on a live 1-validator chain, timeout_commit {args.timeout_commit}")
    path = common.write("consensus_proofs", metrics, notes, path=args.out)
    print(json.dumps({"app_costs": costs, "proofs": p, "light": light, "live": live}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
