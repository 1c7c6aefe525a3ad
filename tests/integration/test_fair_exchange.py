"""Issue 16 on real nodes: no result without payment, no payment without a result, and charges
nobody can inflate. A consumer's compute node that tries to walk away with the provider's last
message (tests/faults/dishonest_consumer.py) and a provider's node that inflates its records,
keeps its release key, or seals garbage under the key it shows (tests/faults/dishonest_provider.py),
each against an honest counterpart, on the session's real CometBFT chain and Kafka broker; a
consumer's node restarted between its attestation and the release; and the price rules and a
huge charge on the real chain with the billing service reconciling it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from jobkit import PRICE, start_net
from services.common.chain import ChainClient, TxRejected
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Code, Tx
from services.consensus.jobs.messages import MAX_PRICE
from test_billing import billing  # noqa: F401 - the billing service fixture, on this session's chain

TAG = os.urandom(3).hex()
PROV = f"fx-prov-{TAG}"
CONS = f"zfx-cons-{TAG}"  # sorts after the provider: the provider dials it
PROVIDER_KEYS = [f"+86-2{i:010d}" for i in range(300)]
CONSUMER_KEYS = [f"+86-2{i:010d}" for i in range(200, 360)]


def _write(root: Path) -> None:
    (root / PROV).mkdir(parents=True)
    (root / CONS).mkdir(parents=True)
    (root / PROV / "subs.csv").write_text("phone\n" + "\n".join(PROVIDER_KEYS) + "\n")
    (root / PROV / "datasets.json").write_text(json.dumps({"datasets": [
        {"id": "subs", "asset": f"{PROV}.subs", "format": "csv", "path": "subs.csv", "key": "phone"}]}))
    (root / CONS / "mine.csv").write_text("phone\n" + "\n".join(CONSUMER_KEYS) + "\n")
    (root / CONS / "datasets.json").write_text(json.dumps({"datasets": [
        {"id": "mine", "format": "csv", "path": "mine.csv", "key": "phone"}]}))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def net(chain, kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("fair")
    _write(root)
    member_key = root / "keys" / f"{CONS}.member.json"
    n = await start_net(chain, kafka, root, consumer=CONS, members=[CONS, PROV], listings={PROV: ["subs"]},
                        ops=["psi", "psi_cardinality"], modules={CONS: "tests.faults.dishonest_consumer",
                                              PROV: "tests.faults.dishonest_provider"},
                        node_env={CONS: {"RDX_ATTACK_LOG": str(root / "attack"),
                                         "RDX_CHEAT_MEMBER_KEY": str(member_key)}}, psi_batch=64)
    n.ids[CONS].save(member_key)  # read by the consumer's node only when it cheats
    n.attack_log = root / "attack"
    try:
        yield n
    finally:
        await n.stop()


async def _run(net, job: str, params: dict, timeout_s: int = 60, type_: str = "psi") -> tuple[dict, dict]:
    before = {m: await net.balance(m) for m in (CONS, PROV)}
    await net.submit(job, type_, [f"{PROV}.subs"], {"dataset": "mine", **params}, timeout_s=timeout_s)
    record = await net.wait_chain(job, timeout=timeout_s + 60)
    assert await net.chain.query(f"/bank/escrow/{job}") is None
    after = {m: await net.balance(m) for m in (CONS, PROV)}
    return record, {m: after[m] - before[m] for m in after}


def held(net, job: str) -> int:
    """Result envelopes the consumer's node holds for ``job`` (its own database, read-only)."""
    db_path = net.root / "state" / f"compute-{net.consumer}" / "node.sqlite"
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM results WHERE job = ?", (job,)).fetchone()[0]


async def answers(net, job: str) -> list[dict]:
    """The chain's answers to the cheating node, as it logged them. It logs once its last answer is
    in, which can be after the test has seen the job end on chain."""
    path, deadline = net.attack_log / f"{job}.json", time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, f"the cheating node logged no answers for {job}"
        await asyncio.sleep(0.1)
    logged = json.loads(path.read_text())
    assert logged["held_result"] is False, "the consumer's node held a result when it cheated"
    return logged["answers"]


def refused_too_late(answer: dict) -> bool:
    """The chain's answer to a consumer's Fail or Abort sent after its attestation locked the job:
    refused as locked or, when it landed after the provider's release had completed the job (sent
    at once, the two can still straddle that block), as completed. Either way no refund."""
    return answer["code"] == Code.INVALID_STATE and (
        "locked for release" in answer["log"] or answer["log"].endswith("is not running: it is completed"))


async def _unpaid_and_unreleased(net, job: str, record: dict, moved: dict) -> None:
    assert moved == {CONS: 0, PROV: 0}, moved  # refunded in full, the provider paid nothing
    assert not record.get("releases"), "a release key reached the chain"
    await net.wait_node(CONS, job, lambda r: r["status"] in ("failed", "aborted"), timeout=20)
    assert net.http(CONS, f"/jobs/{job}/result")[0] in (404, 409) and held(net, job) == 0


async def test_an_honest_psi_job_is_locked_then_released_and_settles_with_the_result(net):
    job = f"fx-honest-{TAG}"
    record, moved = await _run(net, job, {})
    assert record["status"] == "completed", record.get("ended_reason")
    assert record["locked_height"] and set(record["releases"]) == {PROV}
    for member in (CONS, PROV):
        assert record["attestations"][member]["releases"] == {PROV: hashlib.sha256(
            bytes.fromhex(record["releases"][PROV])).hexdigest()}
    assert record["attestations"][CONS]["records"] == {f"{PROV}.subs": len(PROVIDER_KEYS)}
    assert moved[CONS] < 0 and moved[PROV] > 0
    await net.settled(job, record)
    await net.wait_node(CONS, job, lambda r: r["status"] == "completed", timeout=20)
    assert net.result(job)["result"]["intersection"] == sorted(set(CONSUMER_KEYS) & set(PROVIDER_KEYS))
    # 3 txs: the provider's node sent its key with the last attestation, which locked, released and settled
    assert await _job_txs(net.chain, record) == [("jobs.Submit", CONS), ("jobs.Attest", f"{CONS}.node"),
                                                 ("jobs.Attest", f"{PROV}.node")]
    assert record["locked_height"] == record["ended_height"] == record["attestations"][PROV]["height"]
    assert await _event_types(net, record) >= {"JobAttested", "JobLocked", "JobReleased", "JobCompleted", "JobSettled"}


async def _job_txs(c: ChainClient, record: dict) -> list[tuple[str, str]]:
    """(type, signer) of every tx naming ``record``'s job, from its submission's block to its end's."""
    out = []
    for height in range(record["submitted_height"], record["ended_height"] + 1):
        block = await c.rpc("block", height=str(height))
        for raw in block["block"]["data"]["txs"] or []:
            tx = Tx.decode(base64.b64decode(raw))
            if record["id"] in (tx.payload.get("id"), tx.payload.get("job")):
                out.append((tx.type, tx.signer))
    return out


async def test_a_consumer_aborting_before_the_lock_is_refunded_and_gets_no_result(net):
    """It holds every message the provider sent, the last one held back under a key the chain never saw."""
    job = f"fx-walk-{TAG}"
    record, moved = await _run(net, job, {"cheat": "abort_before_lock"})
    assert record["status"] == "aborted" and record["ended_reason"] == "the consumer changed its mind", record
    assert await answers(net, job) == [{"type": "jobs.Abort", "code": 0, "log": ""}]
    assert CONS not in record["attestations"]
    await _unpaid_and_unreleased(net, job, record, moved)


async def test_a_consumer_aborting_after_the_lock_is_refused_pays_and_still_gets_its_result(net):
    job = f"fx-late-{TAG}"
    record, moved = await _run(net, job, {"cheat": "abort_after_lock"})
    told = await answers(net, job)
    assert [a["type"] for a in told] == ["jobs.Fail", "jobs.Abort"]
    for answer in told:  # by its node key and by its member's own key: refused, never refunded
        assert refused_too_late(answer), answer
    assert record["status"] == "completed" and set(record["releases"]) == {PROV}, record
    assert moved[CONS] <= -(PRICE - PRICE // 100) and moved[PROV] > 0  # no refund: the quoted price was paid
    await net.wait_node(CONS, job, lambda r: r["status"] == "completed", timeout=20)
    assert net.result(job)["result"]["intersection"] == sorted(set(CONSUMER_KEYS) & set(PROVIDER_KEYS))


async def test_a_provider_inflating_its_records_fails_the_job_unpaid_and_the_dispute_is_recorded(net):
    job = f"fx-inflate-{TAG}"
    record, moved = await _run(net, job, {"cheat_provider": "inflate_records"})
    assert record["status"] == "failed" and "different records used" in record["ended_reason"], record
    asset = f"{PROV}.subs"
    assert record["attestations"][PROV]["records"] == {asset: 10 * len(PROVIDER_KEYS)}
    assert record["attestations"][CONS]["records"] == {asset: len(PROVIDER_KEYS)}  # what the consumer saw
    await _unpaid_and_unreleased(net, job, record, moved)
    assert record["records_disputed"] == {asset: {PROV: 10 * len(PROVIDER_KEYS), CONS: len(PROVIDER_KEYS)}}
    assert await _event_types(net, record) >= {"JobRecordsDisputed", "JobFailed"}


async def test_a_provider_keeping_its_release_key_is_never_paid_and_the_consumer_is_refunded(net):
    job = f"fx-keep-{TAG}"
    # Long enough to start outside the nodes' release margin (a shorter job is refused, below).
    record, moved = await _run(net, job, {"cheat_provider": "withhold_key"}, timeout_s=45)
    assert record["status"] == "failed" and "release key" in record["ended_reason"], record
    assert record["locked_height"]  # it was locked: the consumer could not have ended it
    await _unpaid_and_unreleased(net, job, record, moved)


async def test_a_job_too_near_its_deadline_to_settle_is_refused_at_once_and_refunded(net):
    """timeout_s 20, which the chain accepts: no provider would release its key within 30 s of the
    deadline, so the nodes refuse the job before computing instead of letting the deadline end it."""
    job = f"fx-short-{TAG}"
    started = time.monotonic()
    record, moved = await _run(net, job, {}, timeout_s=20)
    took = time.monotonic() - started
    assert record["status"] == "failed" and "could never settle" in record["ended_reason"], record
    assert took < 15, took  # ended by a node, not by the deadline
    assert not record["attestations"]
    await _unpaid_and_unreleased(net, job, record, moved)


OVERLAP = sorted(set(CONSUMER_KEYS) & set(PROVIDER_KEYS))


def restart(net, member: str, module: str | None = None) -> None:
    """Stops ``member``'s node and starts it again, as ``module`` if given ("": the honest node)."""
    net.nodes[member].stop()
    if module is not None:
        net.nodes[member].module = module
    net.nodes[member].start(timeout=120)


def _unopened(net, job: str) -> list[str]:
    """The consumer's node's log lines saying the released keys did not open its result of ``job``."""
    log = net.nodes[CONS].process.log_path.read_text(errors="replace")
    return [line for line in log.splitlines() if job in line and "did not open a result" in line]


@pytest.mark.parametrize("type_", ["psi", "psi_cardinality"])
async def test_a_provider_sealing_garbage_under_the_key_it_shows_is_paid_and_the_consumer_keeps_what_opens(net, type_):
    """docs/compute.md: the chain checks that the key is the one whose hash the consumer saw, not
    what it opens. In psi garbage opens to an empty intersection, which the consumer's node keeps as
    its result (it cannot tell garbage from no overlap); in psi_cardinality it opens to a count
    beyond either set, which the opening step refuses: release_unopened, and no result kept."""
    job = f"fx-garbage-{type_.replace('_', '-')}-{TAG}"
    record, moved = await _run(net, job, {"cheat_provider": "seal_garbage"}, type_=type_)
    assert record["status"] == "completed" and set(record["releases"]) == {PROV}, record
    assert moved[CONS] == -PRICE and moved[PROV] > 0, moved  # the quote, paid once
    await net.wait_node(CONS, job, lambda r: r["status"] == "completed", timeout=20)
    if type_ == "psi":
        assert net.result(job)["result"] == {"intersection": [], "consumer_set_size": len(CONSUMER_KEYS),
                                             "provider_set_size": len(PROVIDER_KEYS)}
        assert _unopened(net, job) == []
    else:
        assert net.http(CONS, f"/jobs/{job}/result")[0] == 404 and held(net, job) == 0
        assert len(_unopened(net, job)) == 1 and "ProtocolError" in _unopened(net, job)[0]


@pytest.mark.parametrize("type_", ["psi", "psi_cardinality"])
async def test_a_consumer_node_restarted_between_its_attestation_and_the_release_gets_its_result_paid_once(net, type_):
    """The provider's node (``stall_release``) keeps its key back while the job is locked; the
    consumer's node is restarted, then the provider's (now honest) publishes its key: the restarted
    consumer's node opens its result from what it kept (0600, in its own state, no key of its set)."""
    job = f"fx-restart-{type_.replace('_', '-')}-{TAG}"
    before = {m: await net.balance(m) for m in (CONS, PROV)}
    await net.submit(job, type_, [f"{PROV}.subs"], {"dataset": "mine", "cheat_provider": "stall_release"},
                     timeout_s=150)
    deadline = asyncio.get_running_loop().time() + 90
    while ((record := await net.chain.query(f"/jobs/{job}")) or {}).get("status") != "locked":
        assert asyncio.get_running_loop().time() < deadline and (record or {}).get("status") in (None, "running"), record
        await asyncio.sleep(0.2)
    assert set(record["attestations"]) == {CONS, PROV} and not record["releases"], record
    kept = net.root / "state" / f"compute-{CONS}" / "held" / f"{job}.pending"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert not any(k.encode() in kept.read_bytes() for k in CONSUMER_KEYS)  # the kept state holds no key of its set
    try:
        restart(net, CONS)
        restart(net, PROV, "")  # now honest: it publishes the key it kept
        record = await net.wait_chain(job, timeout=120)
        assert record["status"] == "completed" and set(record["releases"]) == {PROV}, record
        moved = {m: await net.balance(m) - before[m] for m in before}
        assert moved[CONS] == -PRICE and moved[PROV] > 0, moved  # paid once
        await net.wait_node(CONS, job, lambda r: r["status"] == "completed", timeout=60)
        result = net.result(job)["result"]
        assert result == ({"intersection": OVERLAP} if type_ == "psi" else {"cardinality": len(OVERLAP)}) | {
            "consumer_set_size": len(CONSUMER_KEYS), "provider_set_size": len(PROVIDER_KEYS)}, result
        assert not kept.exists()  # the job ended: nothing of it is kept
    finally:  # the provider's node as the other tests expect it
        restart(net, PROV, "tests.faults.dishonest_provider")


async def _event_types(net, record: dict) -> set[str]:
    """The types of the chain events about ``record``'s job in the block that ended it (block_results)."""
    results = await net.chain.rpc("block_results", height=str(record["ended_height"]))
    return {e["type"] for tx in results.get("txs_results") or [] for e in tx.get("events") or []
            if any(a.get("key") == "entity" and a.get("value") == f"job:{record['id']}" for a in e.get("attributes", []))}


# --------------------------------------------------------------------------------------------------
# the price rules and a huge charge, on the real chain (no compute nodes: the test signs as them)


async def _members(c: ChainClient, chain, tag: str, deposit: int):
    consumer, cn = Identity.generate(f"{tag}-c"), Identity.generate(f"{tag}-c.node")
    provider, pn = Identity.generate(f"{tag}-p"), Identity.generate(f"{tag}-p.node")
    for who, node in ((consumer, cn), (provider, pn)):
        await c.submit(chain.association, "members.Register", {
            "id": who.account, "name": who.account, "roles": ["consumer", "provider"], "public_key": who.public_key,
            "node": {"public_key": node.public_key, "endpoint": "127.0.0.1:1"}})
    await c.submit(chain.association, "bank.Deposit", {"to": consumer.account, "amount": deposit, "reference": tag})
    return consumer, cn, provider, pn


async def _listed(c: ChainClient, consumer, provider, asset: str, price: dict, rows: int = 400) -> str:
    await c.submit(provider, "assets.List", {"id": asset, "level": "L2", "operations": ["aggregation"],
                                             "commitment": "ab" * 32, "price": price,
                                             "metadata": example_metadata(asset, row_count=rows)})
    grant = f"g-{asset}"
    await c.submit(consumer, "access.Request", {"id": grant, "asset": asset, "operations": ["aggregation"],
                                                "purpose": "fair exchange", "expires_at": int(time.time()) + 3600,
                                                "max_runs": 5})
    await c.submit(provider, "access.Approve", {"id": grant})
    return grant


async def _refused(c, who, payload) -> TxRejected:
    with pytest.raises(TxRejected) as caught:
        await c.submit(who, "jobs.Submit", payload)
    return caught.value


async def test_a_max_price_below_the_quote_and_a_cheap_subscription_are_refused_with_the_quote(chain):
    tag = f"fxq{TAG}"
    async with ChainClient(chain.rpc_url, chain.chain_id) as c:
        consumer, _, provider, _ = await _members(c, chain, tag, 10_000)
        fixed = await _listed(c, consumer, provider, f"{tag}.fixed", {"model": "fixed", "amount": 300})
        sub = await _listed(c, consumer, provider, f"{tag}.sub", {"model": "subscription", "amount": 2_000,
                                                                 "period_s": 86_400})
        for asset, grant, quote in ((f"{tag}.fixed", fixed, 300), (f"{tag}.sub", sub, 2_000)):
            assert await c.query(f"/quote/{asset}") == quote
            for low in (0, quote - 1):
                exc = await _refused(c, consumer, {"id": f"{tag}-{asset[-3:]}-{low}", "type": "aggregation",
                                                   "inputs": [{"asset": asset, "grant": grant}], "max_price": low})
                assert exc.code == Code.PRICE_TOO_LOW and f"below the quote {quote}" in exc.log, exc.log
        assert await c.query(f"/bank/balance/{consumer.account}") == 10_000  # nothing held
        assert (await c.query(f"/access/{sub}"))["runs_used"] == 0 and "paid_until" not in await c.query(f"/access/{sub}")


async def test_a_consumer_that_attested_cannot_end_the_job_and_a_key_settles_only_with_the_last_attestation(chain):
    """On the real chain, signed as the nodes: a provider's key before the consumer attested is
    refused at admission (nothing stored); the consumer, once attested, cannot abort or fail the job
    by either key; the provider's attestation with its key then locks, releases and settles it."""
    tag = f"fxa{TAG}"
    key = os.urandom(32)
    async with ChainClient(chain.rpc_url, chain.chain_id) as c:
        consumer, cn, provider, pn = await _members(c, chain, tag, 10_000)
        asset = f"{tag}.fixed"
        grant = await _listed(c, consumer, provider, asset, {"model": "fixed", "amount": 300})
        job = f"{tag}-job"
        await c.submit(consumer, "jobs.Submit", {"id": job, "type": "aggregation", "max_price": 300,
                                                 "inputs": [{"asset": asset, "grant": grant}]})
        held = {"result_hash": "cd" * 32, "records_used": 5, "releases": {provider.account: hashlib.sha256(key).hexdigest()}}
        with pytest.raises(TxRejected) as early:
            await c.submit(pn, "jobs.Attest", {"job": job, "input_commitments": {asset: "ab" * 32}, **held,
                                               "key": key.hex()})
        assert early.value.code == Code.INVALID_STATE and "last missing attestation" in early.value.log
        assert (await c.query(f"/jobs/{job}"))["attestations"] == {}
        await c.submit(cn, "jobs.Attest", {"job": job, "input_commitments": {}, **held})
        for who, tx in ((consumer, "jobs.Abort"), (cn, "jobs.Fail")):
            with pytest.raises(TxRejected) as refused:
                await c.submit(who, tx, {"job": job, "reason": "the provider's key is in the mempool"})
            assert refused.value.code == Code.INVALID_STATE and "consumer has attested" in refused.value.log
        assert await c.query(f"/bank/balance/{consumer.account}") == 10_000 - 300  # still held
        done = await c.submit(pn, "jobs.Attest", {"job": job, "input_commitments": {asset: "ab" * 32}, **held,
                                                  "key": key.hex()})
        record = await c.query(f"/jobs/{job}")
        assert record["status"] == "completed" and record["releases"] == {provider.account: key.hex()}
        assert record["locked_height"] == record["ended_height"] == done.height
        assert await c.query(f"/bank/balance/{consumer.account}") == 10_000 - 300 + 1  # its node's compute fee back
        assert await c.query(f"/bank/escrow/{job}") is None


async def test_the_largest_charge_settles_on_chain_and_the_billing_read_model_reconciles(chain, billing):  # noqa: F811
    """10^15 credits (a per-record price of 10^12 over 1000 declared rows) in one job: the read
    model stores it and every total exactly, and equals the chain."""
    proc, _ = billing
    tag = f"fxh{TAG}"
    async with ChainClient(chain.rpc_url, chain.chain_id) as c:
        consumer, cn, provider, pn = await _members(c, chain, tag, MAX_PRICE)
        asset = f"{tag}.max"
        grant = await _listed(c, consumer, provider, asset, {"model": "per_record", "amount": 10**12}, rows=1_000)
        job = f"{tag}-job"
        await c.submit(consumer, "jobs.Submit", {"id": job, "type": "aggregation", "max_price": MAX_PRICE,
                                                 "inputs": [{"asset": asset, "grant": grant}]})
        for node, mine in ((pn, {asset: "ab" * 32}), (cn, {})):
            await c.submit(node, "jobs.Attest", {"job": job, "result_hash": "cd" * 32, "records_used": 1_000,
                                                 "input_commitments": mine, "records": {asset: 1_000}})
        record = await c.query(f"/jobs/{job}")
        assert record["status"] == "completed", record.get("ended_reason")
        provider_balance = await c.query(f"/bank/balance/{provider.account}")
        assert provider_balance > MAX_PRICE * 9 // 10
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        for _ in range(100):
            recon = (await http.get("/v1/reconcile")).json()
            if recon["equal"]:
                break
            await asyncio.sleep(0.3)
        assert recon == {"equal": True, "differences": []}
        statement = (await http.get(f"/v1/statements/{provider.account}", params={"since": 0})).json()
        assert statement["closing_balance"] == provider_balance
        invoice = (await http.get(f"/v1/invoices/{consumer.account}", params={"since": 0})).json()
        assert [line["charge"] for line in invoice["lines"]] == [MAX_PRICE]
