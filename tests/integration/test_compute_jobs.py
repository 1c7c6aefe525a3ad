"""Issue 7's job types on the real chain and broker: secure aggregation across three providers,
HE scoring between two members, supply-chain cross-verification across four, each checked
against the same computation in the clear; the minimum group size refused, a provider killed
mid-aggregation (plain, and aligned on a key while the others are in the alignment ring)
failing the job with the escrow refunded, and the canaries nowhere outside their
owners' nodes (Kafka topics, node logs, chain transactions, the bytes to and from one provider).

Four members, each with a real node process (``python -m services.compute``): the consumer
("zbank") and three providers; the consumer's node is reached through a recording TCP proxy
(its id sorts last, so every provider dials it, and every provider's last frames are a gRPC
client's — the case the job types' closing handshake is for).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from jobkit import PRICE, start_net
from rdx.components import ServiceProcess, free_port
from services.common.events import CHAIN_EVENTS, JOB_STATUS
from services.compute.jobtypes import he_scoring as he
from test_compute import _chain_txs, _topic_bytes

TAG = os.urandom(3).hex()
BANK = f"zbank-{TAG}"  # sorts after the providers: they dial it, so their last frames are a client's
P1, P2, P3 = f"prov-a-{TAG}", f"prov-b-{TAG}", f"prov-c-{TAG}"
PROVIDERS = (P1, P2, P3)
CANARIES = {m: f"CANARY-{i}-{TAG}" for i, m in enumerate((BANK, *PROVIDERS))}
MIN_GROUP = 5
FEATURES = ["income", "debt", "age"]
WEIGHTS = {"income": 0.8, "debt": -1.1, "age": 0.35, "__intercept__": -0.2}
HE_ERROR_BOUND = 1e-3  # |decrypted score - clear polynomial score|


def _rng(seed):
    return np.random.default_rng(seed)


def _write(root: Path) -> dict:
    """Every member's files and datasets.json; returns the clear data the test compares with."""
    clear: dict = {"ledger": {}, "chain": {}}
    regions = ["north", "south", "east"]
    base_refs = {f"PO-{i:05d}": (f"{100 + i}.50", str(i % 9 + 1)) for i in range(400)}
    kinds = {BANK: "contract", P1: "invoice", P2: "logistics", P3: "payment"}
    for i, member in enumerate((BANK, *PROVIDERS)):
        d = root / member
        d.mkdir(parents=True)
        sets = []
        if member != BANK:
            rng = _rng(i)
            n = 2000 + 500 * i
            amount = rng.gamma(2.0, 400.0, n).round(2)
            qty = rng.integers(1, 40, n)
            region = list(rng.choice(regions, n))
            region[9] = CANARIES[member]  # a label outside the public groups: never leaves, never counted
            region[10] = "tiny"           # 1 row per provider in "tiny": below the minimum group size
            with open(d / "ledger.csv", "w") as f:
                f.write("amount,qty,region,note\n")
                for j in range(n):
                    f.write(f"{amount[j]},{qty[j]},{region[j]},{CANARIES[member] if j == 3 else 'ok'}\n")
            clear["ledger"][member] = {"amount": amount, "qty": qty, "region": np.array(region)}
            sets.append({"id": "ledger", "asset": f"{member}.ledger", "format": "csv", "path": "ledger.csv"})
            db = sqlite3.connect(d / "big.db")  # the kill test's input: slow enough to load to be caught mid-job
            db.execute("CREATE TABLE t (amount REAL, region TEXT)")
            rows = 800_000 if member == P3 else 2000  # ~3 s to load and verify
            db.executemany("INSERT INTO t VALUES (?, ?)", ((float(j % 1000), "north") for j in range(rows)))
            db.commit()
            db.close()
            sets.append({"id": "big", "asset": f"{member}.big", "format": "sqlite", "path": "big.db", "table": "t"})
        # supply-chain records: mostly the same, with planted disagreements
        recs = dict(base_refs)
        if member == P1:
            recs["PO-00003"] = ("999.00", recs["PO-00003"][1])
            recs["PO-00004"] = (recs["PO-00004"][0], "77")
            del recs["PO-00005"]
        if member == P2:
            recs = {k: (a, q if k != "PO-00004" else "77") for k, (a, q) in recs.items()}
        if member == P3:
            recs = dict(list(recs.items())[:390])
            recs[CANARIES[P3]] = ("1.00", "1")
        with open(d / "records.csv", "w") as f:
            f.write("reference,amount,quantity\n")
            for k, (a, q) in recs.items():
                f.write(f"{k},{a},{q}\n")
        clear["chain"][member] = recs
        if member == BANK:
            sets.append({"id": "records", "format": "csv", "path": "records.csv"})
            x = _rng(42).normal(0, 1, (9000, 3))
            with open(d / "applicants.csv", "w") as f:
                f.write("id,income,debt,age\n")
                for j, row in enumerate(x):
                    ident = CANARIES[BANK] if j == 1 else f"app-{j}"
                    f.write(f"{ident},{row[0]:.6f},{row[1]:.6f},{row[2]:.6f}\n")
            clear["applicants"] = np.round(x, 6)
            sets.append({"id": "applicants", "format": "csv", "path": "applicants.csv"})
        else:
            sets.append({"id": "records", "asset": f"{member}.records", "format": "csv", "path": "records.csv"})
        if member == P1:
            with open(d / "model.csv", "w") as f:
                f.write("feature,weight\n" + "".join(f"{k},{v}\n" for k, v in WEIGHTS.items()))
            sets.append({"id": "model", "asset": f"{member}.model", "format": "csv", "path": "model.csv"})
        (d / "datasets.json").write_text(json.dumps({"datasets": sets}))
    clear["kinds"] = kinds
    return clear


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def net(chain, kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("compute-jobs")
    clear = _write(root)
    n = await start_net(chain, kafka, root, consumer=BANK, members=[BANK, *PROVIDERS],
                        listings={m: ["ledger", "big", "records"] + (["model"] if m == P1 else []) for m in PROVIDERS},
                        min_group=MIN_GROUP, peer_wait_s=4, psi_batch=1024)
    n.clear = clear
    try:
        yield n
    finally:
        await n.stop()


# --------------------------------------------------------------------------------------------------
# end to end


async def test_secure_aggregation_across_three_providers_equals_numpy(net):
    job = f"agg-{TAG}"
    params = {"columns": ["amount", "qty"], "stats": ["sum", "count", "mean", "variance"],
              "histogram": {"edges": [0, 250, 500, 1000, 100000]}, "group_by": "region",
              "groups": ["north", "south", "east"]}
    before = await net.balance(BANK)
    started = time.monotonic()
    await net.submit(job, "aggregation", [f"{p}.ledger" for p in PROVIDERS], params)
    record = await net.wait_chain(job)
    elapsed = time.monotonic() - started
    await net.settled(job, record, result_holders=record["participants"])
    assert len(record["participants"]) == 4
    assert await net.balance(BANK) <= before - 3 * PRICE
    opened = net.result(job)
    assert opened["type"] == "aggregation"
    got = opened["result"]["groups"]
    for g in params["groups"]:
        for col in ("amount", "qty"):
            vals = np.concatenate([d[col][d["region"] == g] for d in net.clear["ledger"].values()]).astype(float)
            row = got[g][col]
            assert row["count"] == len(vals)
            assert row["sum"] == pytest.approx(vals.sum(), rel=1e-12, abs=1e-5)
            assert row["mean"] == pytest.approx(vals.mean(), rel=1e-10)
            assert row["variance"] == pytest.approx(vals.var(), rel=1e-8)
            assert row["histogram"]["counts"] == list(np.histogram(vals, params["histogram"]["edges"])[0])
    print(f"aggregation 3 providers x {sum(len(d['qty']) for d in net.clear['ledger'].values())} rows, "
          f"2 columns x 3 groups: submit to settled {elapsed:.2f}s")


async def test_an_aggregate_below_the_minimum_group_size_is_refused(net):
    job = f"agg-small-{TAG}"
    before = await net.balance(BANK)
    await net.submit(job, "aggregation", [f"{p}.ledger" for p in PROVIDERS],
                     {"columns": ["amount"], "group_by": "region", "groups": ["north", "tiny"]})
    record = await net.wait_chain(job)
    assert record["status"] == "failed" and "minimum group size" in record["ended_reason"], record
    assert await net.balance(BANK) == before  # refunded in full
    assert net.http(BANK, f"/jobs/{job}/result")[0] in (404, 409)


async def test_he_scoring_matches_the_clear_polynomial(net):
    job = f"he-{TAG}"
    started = time.monotonic()
    await net.submit(job, "he_scoring", [f"{P1}.model"], {"dataset": "applicants", "features": FEATURES, "id": "id"})
    record = await net.wait_chain(job, timeout=180)
    elapsed = time.monotonic() - started
    await net.settled(job, record, result_holders=record["participants"])
    res = net.result(job)["result"]
    w = np.array([WEIGHTS[f] for f in FEATURES])
    clear = he.clear_scores(net.clear["applicants"], w, WEIGHTS["__intercept__"], he.sigmoid_poly(8))
    err = np.abs(np.array(res["scores"]) - clear).max()
    assert res["n"] == 9000 and err < HE_ERROR_BOUND, err
    assert res["ids"][1] == CANARIES[BANK]  # the consumer's own ids, in its own result only
    print(f"he_scoring 9000 x 3 (2 CKKS batches): submit to settled {elapsed:.2f}s, max |error| {err:.2e}")


async def test_he_scoring_runs_of_one_grant_send_the_context_once(net):
    """Two runs under one grant: the second reuses the consumer's keys and sends the public
    context's SHA-256 instead of its 5.6 MB (he_keys.py), measured on the wire between the nodes."""
    grant = f"gk-he-reuse-{TAG}"
    await net.tx(net.ids[BANK], "access.Request", {
        "id": grant, "asset": f"{P1}.model", "operations": net.ops, "purpose": "job tests",
        "expires_at": int(time.time()) + 86_400, "max_runs": 2})
    await net.tx(net.ids[P1], "access.Approve", {"id": grant})
    w = np.array([WEIGHTS[f] for f in FEATURES])
    clear = he.clear_scores(net.clear["applicants"], w, WEIGHTS["__intercept__"], he.sigmoid_poly(8))
    wire = []
    for run in range(2):
        job, before = f"he-reuse-{run}-{TAG}", len(net.proxy.captured)
        await net.tx(net.ids[BANK], "jobs.Submit", {
            "id": job, "type": "he_scoring", "inputs": [{"asset": f"{P1}.model", "grant": grant}],
            "params": {"dataset": "applicants", "features": FEATURES}, "max_price": PRICE + 50, "timeout_s": 180})
        record = await net.wait_chain(job, timeout=180)
        await net.settled(job, record, result_holders=record["participants"])
        assert np.abs(np.array(net.result(job)["result"]["scores"]) - clear).max() < HE_ERROR_BOUND
        wire.append(len(net.proxy.captured) - before)
    assert wire[1] < wire[0] - 5_000_000, wire  # the context (~5.6 MB) went with the first run only


async def test_supply_chain_verification_across_four_parties(net):
    job = f"sc-{TAG}"
    kinds = net.clear["kinds"]
    started = time.monotonic()
    await net.submit(job, "supply_chain", [f"{p}.records" for p in PROVIDERS],
                     {"dataset": "records", "kinds": kinds})
    record = await net.wait_chain(job)
    elapsed = time.monotonic() - started
    await net.settled(job, record, result_holders=record["participants"])
    assert set(record["attestations"]) == {BANK, *PROVIDERS}  # every party's signed attestation
    res = net.result(job)["result"]
    mine = net.clear["chain"][BANK]
    expected = []
    for other in PROVIDERS:
        theirs = net.clear["chain"][other]
        for ref, (a, q) in mine.items():
            if ref not in theirs:
                expected.append((ref, kinds[other], "no_record"))
                continue
            sa, sq = float(a) == float(theirs[ref][0]), float(q) == float(theirs[ref][1])
            if not (sa and sq):
                expected.append((ref, kinds[other], {(False, True): "amount_differs", (True, False): "quantity_differs",
                                                     (False, False): "both_differ"}[(sa, sq)]))
    got = [(d["reference"], d["counterpart"], d["status"]) for d in res["disagreements"]]
    assert got == sorted(expected)
    assert len(got) == 1 + 1 + 1 + 1 + 10  # P1: amount, quantity, missing; P2: quantity; P3: 10 unpaid
    print(f"supply_chain 4 parties x ~400 records: submit to settled {elapsed:.2f}s")


# --------------------------------------------------------------------------------------------------
# a provider killed mid-aggregation


@pytest.mark.parametrize("aligned", [False, True], ids=["plain", "aligned-on-a-key"])
async def test_a_provider_killed_mid_aggregation_fails_the_job_and_refunds(net, aligned):
    job = f"agg-kill-{'aligned' if aligned else 'plain'}-{TAG}"
    before = await net.balance(BANK)
    params = {"columns": ["amount"], **({"align_on": "region"} if aligned else {})}
    await net.submit(job, "aggregation", [f"{p}.big" for p in PROVIDERS], params)
    # the two small providers have loaded and shared (plain), or are in the alignment ring waiting
    # for their key lists to come back round (aligned); the big one is still loading
    def caught(r):
        progress = r["progress"] or {}
        return r["status"] == "running" and (progress.get("phase") == "aligning" if aligned
                                             else progress.get("done", 0) >= 1)
    for m in (P1, P2):
        await net.wait_node(m, job, caught)
    row = await net.node_job(P3, job)
    assert row is not None and row["status"] in ("pending", "running"), row
    killed = time.monotonic()
    net.nodes[P3].kill()
    record = await net.wait_chain(job, timeout=90)
    took = time.monotonic() - killed
    assert record["status"] == "failed" and "peer lost" in record["ended_reason"], record
    assert await net.balance(BANK) == before  # the escrow refunded in full
    assert net.http(BANK, f"/jobs/{job}/result")[0] in (404, 409)
    print(f"aggregation failed {took:.1f}s after a provider's node was killed: {record['ended_reason']}")
    net.nodes[P3].start(timeout=120)
    await net.wait_node(P3, job, lambda r: r["status"] == "failed", timeout=30)


# --------------------------------------------------------------------------------------------------
# canaries, last


async def test_no_canary_in_kafka_logs_chain_or_the_wire(net):
    forms = {}
    for m, value in CANARIES.items():
        raw = value.encode()
        forms[m] = [raw, hashlib.sha256(raw).hexdigest().encode(), base64.b64encode(raw)]
    for topic in (CHAIN_EVENTS, JOB_STATUS):
        blob = await _topic_bytes(net.kafka, topic)
        assert blob
        for m, fs in forms.items():
            assert not any(f in blob for f in fs), (topic, m)
    for m, node in net.nodes.items():
        text = node.process.log_path.read_bytes()
        for who, fs in forms.items():
            assert not any(f in text for f in fs), (m, who)
    txs = await _chain_txs(net.chain)
    for m, fs in forms.items():
        assert not any(f in txs for f in fs), m
    wire = bytes(net.proxy.captured)  # everything between the consumer's node and the providers' nodes
    assert len(wire) > 1_000_000  # the HE ciphertexts went through it
    for m, fs in forms.items():
        assert not any(f in wire for f in fs), m
    sample = [f"{v}" for p in PROVIDERS for v in net.clear["ledger"][p]["amount"][:50] if len(f"{v}") >= 6]
    for v in sample:
        assert v.encode() not in wire
    for ref in ("PO-00003", "999.00", "app-17"):
        assert ref.encode() not in wire


async def test_a_three_provider_aggregation_settles_and_every_party_s_books_add_up(net, tmp_path):
    """The billing bar on real compute: the settling job is a real aggregation across three
    providers' nodes; the billing read model's statements of the consumer, the three providers
    and the association balance to zero for the job, and reconciliation equals the chain."""
    import os
    import subprocess
    import sys

    import httpx

    env = {"RDX_KAFKA_BOOTSTRAP": net.kafka, "RDX_COMETBFT_RPC": net.chain.rpc_url, "RDX_CHAIN_ID": net.chain_id,
           "RDX_STATE_ROOT": str(tmp_path / "state")}
    billing = ServiceProcess("billing", free_port(), env, tmp_path / "logs")
    billing.start()
    try:
        job = f"agg-billed-{TAG}"
        params = {"columns": ["amount"], "stats": ["sum", "count"], "group_by": "region",
                  "groups": ["north", "south", "east"]}
        await net.submit(job, "aggregation", [f"{p}.ledger" for p in PROVIDERS], params)
        record = await net.wait_chain(job)
        await net.settled(job, record, result_holders=record["participants"])
        # The association's book is read first: the settlement's lines are applied in one
        # transaction, so once its payout shows, the others' books read after it show theirs too.
        # (Read last, it raced the settlement: CI saw the others' books from before it.)
        parties = ["association", BANK, *PROVIDERS]
        with httpx.Client(base_url=billing.url, timeout=10) as http:
            for _ in range(300):  # a new read model replays the whole topic, then trails the relay
                books = {m: [e for e in http.get(f"/v1/statements/{m}", params={"since": 0}).json()["entries"]
                             if e["job"] == job] for m in parties}
                if any(e["kind"] == "job_payout" for e in books["association"]):
                    break
                await asyncio.sleep(0.1)
            moved = {m: sum(e["amount"] for e in entries) for m, entries in books.items()}
            assert sum(moved.values()) == 0, moved  # what the consumer paid is exactly what the others got
            assert all(moved[p] > 0 for p in PROVIDERS) and moved["association"] > 0 and moved[BANK] < 0
            invoice = http.get(f"/v1/invoices/{BANK}", params={"since": 0}).json()
            assert sorted(line["asset"] for line in invoice["lines"] if line["job"] == job) == \
                sorted(f"{p}.ledger" for p in PROVIDERS)
            # a new read model replays the session's whole chain topic first: give it time to catch up
            for _ in range(60):
                recon = http.get("/v1/reconcile").json()
                if recon["equal"]:
                    break
            assert recon == {"equal": True, "differences": []}
        cli = subprocess.run([sys.executable, "-m", "services.billing", "reconcile"], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=60)
        assert cli.returncode == 0 and "equals the chain" in cli.stdout
    finally:
        billing.stop()
