"""Issue 17's harness: a consumer running a modified compute node (tests/faults/malicious_consumer.py,
the node's ``job_types`` seam) against an honest provider's node, on the real chain and broker.

Each attack must fail on the provider's own node: the job ends aborted on chain with the
provider's policy as the reason, the consumer is refunded in full and holds no result, the
provider's node stays up, and no form of the provider's canary is in anything the consumer's
node received (every decrypted message is in its attack log).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from jobkit import start_net
from services.compute import psi_kernel

TAG = os.urandom(3).hex()
PROV = f"prov-m-{TAG}"
PROV2 = f"prov-n-{TAG}"  # the second counterpart of a supply_chain job
EVIL = f"zevil-{TAG}"  # sorts after the provider: the provider dials it
CANARY = f"CANARY-{TAG}"
MIN_GROUP = 5
OPS = ["psi", "psi_cardinality", "supply_chain_verification", "aggregation", "he_scoring"]
WEIGHTS = {"f1": "0.731", "f2": "-1.204", "f3": "0.377", "__intercept__": "0.25"}
ORDERS = {f"PO-{i:05d}": (f"{100 + i}.50", str(i % 7 + 1)) for i in range(60)}


def _ledger(path: Path, extra: str) -> None:
    with open(path, "w") as f:
        f.write("reference,amount,quantity\n")
        for ref, (amount, qty) in {**ORDERS, extra: ("5.00", "1")}.items():
            f.write(f"{ref},{amount},{qty}\n")


def _write(root: Path) -> None:
    p, c, p2 = root / PROV, root / EVIL, root / PROV2
    p.mkdir(parents=True)
    c.mkdir(parents=True)
    p2.mkdir(parents=True)
    _ledger(p / "ledger.csv", CANARY)
    _ledger(p2 / "ledger.csv", f"{CANARY}-2")
    (p2 / "datasets.json").write_text(json.dumps({"datasets": [
        {"id": "ledger", "asset": f"{PROV2}.ledger", "format": "csv", "path": "ledger.csv"}]}))
    # the probe: one reference, 40 amounts around its real one (PO-00003 is 103.50 at both providers)
    with open(c / "probe.csv", "w") as f:
        f.write("reference,amount,quantity\n")
        for i in range(40):
            f.write(f"PO-00003,{84 + i}.50,4\n")
    provider_keys = [f"+86-1{i:010d}" for i in range(0, 400)] + [CANARY]
    with open(p / "subs.csv", "w") as f:
        f.write("phone,tenure_months\n")
        for i, key in enumerate(provider_keys):
            f.write(f"{key},{i % 97}\n")
    (p / "model.csv").write_text("feature,weight\n" + "".join(f"{k},{v}\n" for k, v in WEIGHTS.items()))
    (p / "datasets.json").write_text(json.dumps({"datasets": [
        {"id": "subs", "asset": f"{PROV}.subs", "format": "csv", "path": "subs.csv", "key": "phone"},
        {"id": "ledger", "asset": f"{PROV}.ledger", "format": "csv", "path": "ledger.csv"},
        {"id": "model", "asset": f"{PROV}.model", "format": "csv", "path": "model.csv"}]}))
    # chosen rows for HE scoring: 0 gives the intercept, each unit vector one weight (d + 1 = 4 rows)
    (c / "chosen.csv").write_text("f1,f2,f3\n0,0,0\n1,0,0\n0,1,0\n0,0,1\n")
    (c / "three.csv").write_text("f1,f2,f3\n0.5,0.1,-0.2\n-1.0,0.3,0.8\n0.2,0.2,0.2\n")
    # the consumer's guesses: some of the provider's keys and the canary itself
    with open(c / "guesses.csv", "w") as f:
        f.write("phone\n")
        for key in [f"+86-1{i:010d}" for i in range(380, 420)] + [CANARY]:
            f.write(f"{key}\n")
    (c / "datasets.json").write_text(json.dumps({"datasets": [
        {"id": "guesses", "format": "csv", "path": "guesses.csv", "key": "phone"},
        {"id": "probe", "format": "csv", "path": "probe.csv"},
        {"id": "chosen", "format": "csv", "path": "chosen.csv"},
        {"id": "three", "format": "csv", "path": "three.csv"}]}))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def net(chain, kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("malicious")
    _write(root)
    n = await start_net(chain, kafka, root, consumer=EVIL, members=[EVIL, PROV, PROV2],
                        listings={PROV: ["subs", "ledger", "model"], PROV2: ["ledger"]},
                        min_group=MIN_GROUP, ops=OPS, modules={EVIL: "tests.faults.malicious_consumer"},
                        node_env={EVIL: {"RDX_ATTACK_LOG": str(root / "attack")}}, psi_batch=64)
    n.attack_log = root / "attack"
    try:
        yield n
    finally:
        await n.stop()


def _canary_forms() -> list[bytes]:
    raw = CANARY.encode()
    point = psi_kernel.hash_to_curve([raw])[0]
    return [raw, hashlib.sha256(raw).digest(), hashlib.sha256(raw).hexdigest().encode(), point, point[:16]]


async def _attack(net, job: str, type_: str, params: dict, assets=(f"{PROV}.subs",), max_runs=10) -> tuple[dict, bytes]:
    before = await net.balance(EVIL)
    await net.submit(job, type_, list(assets), {"dataset": "guesses", **params}, timeout_s=60, max_runs=max_runs)
    record = await net.wait_chain(job, timeout=90)
    received = (net.attack_log / f"{job}.bin").read_bytes() if (net.attack_log / f"{job}.bin").exists() else b""
    for form in _canary_forms():
        assert form not in received, "a form of the provider's canary reached the consumer"
    assert await net.chain.query(f"/bank/escrow/{job}") is None
    assert await net.balance(EVIL) == before  # refunded in full
    assert net.http(EVIL, f"/jobs/{job}/result")[0] in (404, 409)  # nothing released ...
    with sqlite3.connect(f"file:{net.root / 'state' / f'compute-{EVIL}' / 'node.sqlite'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM results WHERE job = ?", (job,)).fetchone()[0] == 0  # ... nor held
    assert net.http(PROV, "/healthz")[0] == 200
    return record, received


def _aborted_by_provider(record: dict, words: str, providers=(PROV,)) -> None:
    assert record["status"] == "aborted", (record["status"], record.get("ended_reason"), record.get("ended_height"))
    assert any(record["ended_reason"].startswith(f"{p}'s policy: ") for p in providers), record["ended_reason"]
    assert words in record["ended_reason"], record["ended_reason"]
    assert CANARY not in record["ended_reason"]


@pytest.mark.parametrize("type_", ["psi", "psi_cardinality"])
async def test_a_huge_announced_set_aborts_the_job_and_the_provider_allocates_nothing(net, type_):
    record, received = await _attack(net, f"mal-huge-{type_.replace('_', '-')}-{TAG}", type_, {"attack": "huge_set"})
    _aborted_by_provider(record, "the consumer's set size announced is above this node's bound")
    assert received == b""  # the provider did not even send its own start
    row = await net.node_job(PROV, record["id"])
    assert row["status"] == "aborted"


async def test_matching_on_a_column_that_is_not_a_join_key_is_aborted_before_the_provider_reads_it(net):
    record, received = await _attack(net, f"mal-col-{TAG}", "psi", {"attack": "non_key_column", "key": "tenure_months"})
    _aborted_by_provider(record, f"column tenure_months is not a join key of {PROV}.subs")
    assert received == b""


async def test_a_consumer_that_skips_its_own_minimum_group_check_is_stopped_by_the_provider(net):
    record, received = await _attack(net, f"mal-min-{TAG}", "psi", {"attack": "below_min_group"})
    _aborted_by_provider(record, f"the consumer's set is smaller than the minimum group size of {PROV}.subs")
    assert received == b""


async def test_per_element_masking_in_cardinality_mode_reveals_no_membership(net):
    record, received = await _attack(net, f"mal-mask-{TAG}", "psi_cardinality", {"attack": "mask_each"})
    learned = json.loads(received.rsplit(b"LEARNED:", 1)[1])
    assert learned == [], f"the consumer told {len(learned)} members from non-members"
    # its own exponents match nothing of H(y)^ba: a count of 0, held back like any count below k
    _aborted_by_provider(record, f"the intersection is below the minimum group size of {PROV}.subs ({MIN_GROUP})")


async def test_an_honest_cardinality_job_still_completes_with_the_provider_counting(net):
    """The same consumer node, following the protocol (no attack): 21 of its 41 guesses are the provider's."""
    job = f"mal-honest-{TAG}"
    await net.submit(job, "psi_cardinality", [f"{PROV}.subs"], {"dataset": "guesses"}, timeout_s=60)
    record = await net.wait_chain(job, timeout=90)
    await net.settled(job, record)
    assert net.result(job)["result"] == {"cardinality": 21, "consumer_set_size": 41, "provider_set_size": 401}


async def test_repeated_references_in_supply_chain_are_aborted_before_any_comparison(net):
    """40 records of PO-00003 with amounts 84.50 .. 123.50: the one that agrees would be the
    counterparts' amount. Each provider's node sees one masked reference repeated and stops."""
    kinds = {EVIL: "contract", PROV: "invoice", PROV2: "payment"}
    record, received = await _attack(net, f"mal-dup-{TAG}", "supply_chain",
                                     {"attack": "repeat_reference", "dataset": "probe", "kinds": kinds},
                                     assets=(f"{PROV}.ledger", f"{PROV2}.ledger"))
    _aborted_by_provider(record, f"{EVIL}'s records repeat a reference", providers=(PROV, PROV2))
    assert b"back" not in received  # no doubly-masked key of its own came back to compare


# --------------------------------------------------------------------------------------------------
# the privacy budget (issue 17, part 3): last, since it gives the ledgers and the model a budget


async def test_chosen_rows_to_a_budgeted_model_are_aborted_and_d_honest_rows_are_scored(net):
    """Four chosen rows (0, e1, e2, e3) would give the intercept and all three weights. The model is
    listed under a privacy budget, so the provider's node scores at most d = 3 rows per grant."""
    from budgetkit import set_budget
    from services.compute.jobtypes import he_scoring as he

    await set_budget(net, f"{PROV}.model", 5_000)
    params = {"dataset": "chosen", "features": ["f1", "f2", "f3"]}
    record, received = await _attack(net, f"mal-chosen-{TAG}", "he_scoring", params, assets=(f"{PROV}.model",),
                                     max_runs=1)
    _aborted_by_provider(record, f"{PROV}.model is a model under a privacy budget: at most 3 scores per grant")
    assert b"score" not in received  # not one score came back
    # the same consumer, three rows, one run: scored (the provider floods the slots it did not declare)
    job = f"mal-three-{TAG}"
    await net.submit(job, "he_scoring", [f"{PROV}.model"], {"dataset": "three", "features": ["f1", "f2", "f3"]},
                     timeout_s=120, max_runs=1)
    record = await net.wait_chain(job, timeout=150)
    await net.settled(job, record)
    x = np.array([[0.5, 0.1, -0.2], [-1.0, 0.3, 0.8], [0.2, 0.2, 0.2]])
    w = np.array([float(WEIGHTS[f]) for f in ("f1", "f2", "f3")])
    want = he.clear_scores(x, w, float(WEIGHTS["__intercept__"]), he.sigmoid_poly(8))
    assert np.abs(np.array(net.result(job)["result"]["scores"]) - want).max() < 1e-3


async def test_differencing_aggregations_are_noisy_and_the_next_one_is_refused_on_chain(net):
    """Histograms whose first edge moves by one record (105.00 -> 105.60 takes in the 105.50 rows)
    would, exact, tell by their difference that such a record exists. Under a 2.0 budget each
    provider's node adds Laplace noise at ε = 1, and the third query is refused by the chain."""
    from budgetkit import budget, set_budget
    from services.common.chain import TxRejected
    from services.common.tx import Code

    ledgers = [f"{PROV}.ledger", f"{PROV2}.ledger"]
    for asset in ledgers:
        await set_budget(net, asset, 2_000)
    results = []
    for i, edge in enumerate((105, 106)):
        job = f"mal-diff-{i}-{TAG}"
        params = {"columns": ["amount"], "stats": ["count", "sum"], "histogram": {"edges": [0, edge, 1000]},
                  "bounds": {"amount": [0, 1000]}, "epsilon_milli": 1_000}
        await net.submit(job, "aggregation", ledgers, params, timeout_s=120)
        record = await net.wait_chain(job, timeout=150)
        await net.settled(job, record)
        results.append(net.result(job)["result"])
        received = (net.attack_log / f"{job}.bin").read_bytes()
        assert received and not any(form in received for form in _canary_forms())
    for res in results:
        assert res["differential_privacy"]["epsilon_milli"] == 1_000
    for asset in ledgers:
        assert (await budget(net, asset, EVIL))["remaining_milli"] == 0
    with pytest.raises(TxRejected) as refused:
        await net.submit(f"mal-diff-2-{TAG}", "aggregation", ledgers,
                         {"columns": ["amount"], "histogram": {"edges": [0, 107, 1000]},
                          "bounds": {"amount": [0, 1000]}, "epsilon_milli": 1}, timeout_s=120)
    assert refused.value.code == Code.PRIVACY_BUDGET_EXCEEDED and "has 0 of 2000 left" in refused.value.log
    assert await net.chain.query(f"/jobs/mal-diff-2-{TAG}") is None
