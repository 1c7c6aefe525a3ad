"""Supply-chain verification on the real chain and broker, from every party's side: each of the
four parties fetches its own per-record outcome from its own node's API, opens it with its own
node key, and finds exactly the clear comparison of ITS records; no party can open another's;
every provider's stored outcome opens the commitment that is bound into the result hash on chain
(the consumer's comes after the attestations: issue 16); an
aborted job leaves no stored outcome on any node; and the canaries (one reference per party that
no one else holds) appear nowhere outside their owners' nodes, sealed even there.

Four real node processes (``python -m services.compute``). The consumer ("zbuyer") sorts last,
so every provider dials it; its peer port is reached through a recording TCP proxy and its chain
RPC through a proxy that can hold its transactions back (to catch a job between the providers'
attestations and the consumer's). The harness is jobkit's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import pytest_asyncio
from nacl.exceptions import CryptoError

from jobkit import start_net
from rdx.components import LOOPBACK, free_port
from services.common.events import CHAIN_EVENTS, JOB_STATUS
from services.compute import results
from services.compute.datasets import Datasets
from services.compute.jobtypes import supply_chain as sc
from test_compute import _chain_txs, _topic_bytes

TAG = os.urandom(3).hex()
BUYER = f"zbuyer-{TAG}"  # sorts after the providers: they dial it
SELLER, CARRIER, PAYER = f"sa-{TAG}", f"sb-{TAG}", f"sc-{TAG}"
PROVIDERS = (SELLER, CARRIER, PAYER)
PARTIES = (BUYER, *PROVIDERS)
KINDS = {BUYER: "contract", SELLER: "invoice", CARRIER: "logistics", PAYER: "payment"}
CANARIES = {m: f"CANARY-{i}-{TAG}" for i, m in enumerate(PARTIES)}  # a reference only its owner holds
OPS = ["supply_chain_verification"]


def _records() -> dict[str, dict[str, tuple[str, str]]]:
    """Every party's records {reference: (amount, quantity)}, mostly the same, with planted differences."""
    base = {f"PO-{i:05d}": (f"{200 + i}.50", str(i % 7 + 1)) for i in range(300)}
    recs = {m: dict(base) for m in PARTIES}
    recs[SELLER]["PO-00003"] = ("999.00", base["PO-00003"][1])           # the invoice's amount differs
    recs[SELLER]["PO-00004"] = (base["PO-00004"][0], "77")               # ... its quantity on another
    del recs[SELLER]["PO-00005"]                                          # ... and one has no invoice
    recs[SELLER]["PO-00006"] = ("206.5", "7.0")                           # 206.50 / 7 written otherwise: agrees
    recs[CARRIER]["PO-00007"] = ("1.00", "99")                            # both differ at the carrier
    recs[PAYER] = dict(list(base.items())[:290])                          # the last 10 unpaid
    for m in PARTIES:
        recs[m][CANARIES[m]] = ("1.00", "1")
    return recs


def _status(mine: tuple[str, str], theirs: tuple[str, str] | None) -> str:
    if theirs is None:
        return "no_record"
    same_a, same_q = float(mine[0]) == float(theirs[0]), float(mine[1]) == float(theirs[1])
    return {(True, True): "agrees", (False, True): "amount_differs", (True, False): "quantity_differs",
            (False, False): "both_differ"}[(same_a, same_q)]


def clear_outcome(recs, member: str) -> list[dict]:
    """The clear computation: per own record, in file order, its status at each counterpart kind."""
    return [{"reference": ref, "status": {KINDS[o]: _status(v, recs[o].get(ref)) for o in PARTIES if o != member}}
            for ref, v in recs[member].items()]


class RpcHold:
    """An HTTP proxy in front of CometBFT's RPC that, while ``held``, answers broadcast_tx_* with
    an RPC error (the node's chain client retries): reads pass. Standard library only: a test
    helper that forwards one JSON POST at a time needs no framework."""

    def __init__(self, target: str):
        self.target, self.port, self.held = target, free_port(), threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if proxy.held.is_set() and b'"broadcast_tx' in body:
                    out = json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "held"}}).encode()
                else:
                    req = urllib.request.Request(proxy.target, data=body, headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        out = resp.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def envelope(net, member: str, job: str) -> tuple[int, dict]:
    """GET /jobs/{job}/result on ``member``'s own node."""
    return net.http(member, f"/jobs/{job}/result")


def stored_results(net, member: str, job: str) -> list[bytes]:
    """The sealed rows in the node's own database (read-only)."""
    path = net.root / "state" / f"compute-{member}" / "node.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in db.execute("SELECT envelope FROM results WHERE job = ?", (job,))]
    finally:
        db.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def net(chain, kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("sc-outcomes")
    recs = _records()
    for m in PARTIES:
        d = root / m
        d.mkdir(parents=True)
        rows = "".join(f"{k},{a},{q}\n" for k, (a, q) in recs[m].items())
        (d / "records.csv").write_text("reference,amount,quantity\n" + rows)
        entry = {"id": "records", "format": "csv", "path": "records.csv"}
        if m != BUYER:
            entry["asset"] = f"{m}.records"
        (d / "datasets.json").write_text(json.dumps({"datasets": [entry]}))
    rpc_hold = RpcHold(chain.rpc_url)  # the consumer's node reaches the chain through it
    try:
        n = await start_net(chain, kafka, root, consumer=BUYER, members=list(PARTIES), ops=OPS,
                            listings={m: ["records"] for m in PROVIDERS}, psi_batch=1024,
                            node_env={BUYER: {"RDX_COMETBFT_RPC": rpc_hold.url}})
    except BaseException:
        rpc_hold.stop()
        raise
    n.clear, n.rpc_hold = {"records": recs}, rpc_hold
    n.data_commitments = {m: Datasets.from_path(root / m / "datasets.json").get("records").summary()[0]
                          for m in PARTIES}
    try:
        yield n
    finally:
        await n.stop()
        rpc_hold.stop()


PARAMS = {"dataset": "records", "kinds": KINDS}


async def test_every_party_fetches_and_opens_exactly_its_own_outcome(net):
    job = f"sco-{TAG}"
    started = time.monotonic()
    await net.submit(job, "supply_chain", [f"{p}.records" for p in PROVIDERS], PARAMS)
    record = await net.wait_chain(job, timeout=180)
    elapsed = time.monotonic() - started
    assert record["status"] == "completed", record
    assert set(record["attestations"]) == set(PARTIES)
    recs = net.clear["records"]
    opened = {}
    for m in PARTIES:
        await net.wait_node(m, job, lambda r: r["status"] == "completed")
        status, body = envelope(net, m, job)
        assert status == 200, (m, body)
        assert body["sealed_to"] == f"{m}.node" and body["result_hash"] == record["result_hash"]
        opened[m] = results.open_envelope(net.node_ids[m], body["envelope"])  # its own node key opens it
        assert opened[m]["member"] == m and opened[m]["job"] == job and opened[m]["type"] == "supply_chain"
        out = opened[m]["result"]
        assert out["per_record"] == clear_outcome(recs, m)  # ITS records only, each against the clear comparison
        assert out["records"] == len(recs[m])
        expected = sorted(({"reference": r["reference"], "counterpart": kind, "status": s}
                           for r in clear_outcome(recs, m) for kind, s in r["status"].items() if s != "agrees"),
                          key=lambda d: (d["reference"], d["counterpart"]))
        assert out["disagreements"] == expected
        text = json.dumps(out)
        assert CANARIES[m] in text and not any(CANARIES[o] in text for o in PARTIES if o != m)
        # no other party's key opens it
        for other in PARTIES:
            if other != m:
                with pytest.raises(CryptoError):
                    results.open_envelope(net.node_ids[other], body["envelope"])
    # the planted differences, as each side sees them
    seller = {r["reference"]: r["status"] for r in opened[SELLER]["result"]["per_record"]}
    buyer = {r["reference"]: r["status"] for r in opened[BUYER]["result"]["per_record"]}
    assert buyer["PO-00003"]["invoice"] == "amount_differs" and seller["PO-00003"]["contract"] == "amount_differs"
    assert buyer["PO-00004"]["invoice"] == "quantity_differs" and seller["PO-00004"]["logistics"] == "quantity_differs"
    assert buyer["PO-00005"]["invoice"] == "no_record" and "PO-00005" not in seller
    assert buyer["PO-00006"]["invoice"] == "agrees"
    assert buyer["PO-00007"]["logistics"] == "both_differ"
    assert sum(s["payment"] == "no_record" for s in buyer.values()) == 11  # 10 unpaid + its canary
    # the stored commitments are the ones on chain: the result hash recomputed from them (the
    # consumer's outcome comes after the attestations, issue 16: its c_P there is empty)
    entries = {m: (KINDS[m], net.data_commitments[m], opened[m]["commitment"] if m != BUYER else "") for m in PARTIES}
    assert sc.result_hash(SimpleNamespace(job=job), entries) == record["result_hash"]
    assert {a["result_hash"] for a in record["attestations"].values()} == {record["result_hash"]}
    assert {i["commitment"] for i in record["inputs"]} == {net.data_commitments[p] for p in PROVIDERS}
    print(f"supply_chain 4 parties x ~300 records, every party's outcome stored: submit to settled {elapsed:.2f}s")


async def test_a_party_cannot_fetch_another_party_s_outcome(net):
    job = f"sco-{TAG}"
    envelopes = {m: envelope(net, m, job)[1]["envelope"] for m in PARTIES}
    assert len(set(envelopes.values())) == 4
    for m in PARTIES:
        # each node holds exactly one sealed row for the job: its own member's
        assert [base64.b64encode(e).decode() for e in stored_results(net, m, job)] == [envelopes[m]]
        assert (await net.node_job(m, job))["result_hash"] is not None
    # a job this node's member is not part of: nothing to fetch
    assert envelope(net, SELLER, f"agg-nope-{TAG}")[0] == 404


async def test_an_aborted_job_leaves_no_outcome_on_any_node(net):
    job = f"sco-abort-{TAG}"
    before = await net.balance(BUYER)
    net.rpc_hold.held.set()  # the consumer's attestation cannot reach the chain: the job stays running
    try:
        await net.submit(job, "supply_chain", [f"{p}.records" for p in PROVIDERS], PARAMS)
        for m in PROVIDERS:
            await net.wait_node(m, job, lambda r: r["status"] == "attested", timeout=120)
        await net.wait_node(BUYER, job, lambda r: r["status"] == "computed", timeout=60)
        for m in PARTIES:  # every provider's outcome is stored, sealed; the consumer's is held back (issue 16) ...
            assert len(stored_results(net, m, job)) == (0 if m == BUYER else 1), m
            assert envelope(net, m, job)[0] == 409, m        # ... and not released before the chain completes
        assert (await net.chain.query(f"/jobs/{job}"))["status"] == "running"
        await net.tx(net.association, "jobs.Abort", {"job": job, "reason": "the association stops it"})
        for m in PARTIES:
            await net.wait_node(m, job, lambda r: r["status"] == "aborted", timeout=30)
    finally:
        net.rpc_hold.held.clear()
    for m in PARTIES:
        assert stored_results(net, m, job) == [], m
        assert envelope(net, m, job)[0] == 409, m
    assert (await net.wait_chain(job))["status"] == "aborted"
    assert await net.balance(BUYER) == before  # refunded in full


async def test_no_canary_outside_its_owner_s_node(net):
    forms = {}
    for m, value in CANARIES.items():
        raw = value.encode()
        forms[m] = [raw, hashlib.sha256(raw).hexdigest().encode(), base64.b64encode(raw)]
    for topic in (CHAIN_EVENTS, JOB_STATUS):
        blob = await _topic_bytes(net.kafka, topic)
        assert blob
        for m, fs in forms.items():
            assert not any(f in blob for f in fs), (topic, m)
    txs = await _chain_txs(net.chain)
    for m, fs in forms.items():
        assert not any(f in txs for f in fs), m
    wire = bytes(net.proxy.captured)  # every byte between the consumer's node and the providers' nodes
    assert len(wire) > 100_000
    for m, fs in forms.items():
        assert not any(f in wire for f in fs), m
    for member in PARTIES:  # every node's logs and state (journal, applied events, sealed results): not even its own
        files = [p for p in (net.root / "logs" / member).rglob("*") if p.is_file()]
        files += [p for p in (net.root / "state" / f"compute-{member}").rglob("*") if p.is_file()]
        assert files
        for path in files:
            data = path.read_bytes()
            for m, fs in forms.items():
                assert not any(f in data for f in fs), (member, path.name, m)
    for ref in (b"PO-00003", b"999.00"):
        assert ref not in wire
