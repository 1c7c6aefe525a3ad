"""Issue 16 for every job type on real nodes: aggregation, he_scoring, he_scoring's statistics mode
and supply_chain hold the consumer's result back until the chain has locked the payment, as psi
does (tests/integration/test_fair_exchange.py). For each, the consumer's node is the cheating one
of tests/faults/dishonest_consumer.py against honest providers, on the session's real CometBFT
chain and Kafka broker:

- ``abort_before_lock``: it holds every message the providers sent and aborts without attesting:
  refunded in full, no release key ever reaches the chain, and its node holds no result;
- ``abort_after_lock``: it attests (which locks the job) and at once fails and aborts: both
  refused ("locked for release", or "completed" when one lands after the last release), the
  providers release their keys, the job settles (the consumer pays) and its node opens its
  result only then.

A provider (tests/faults/dishonest_provider.py, ``inflate_records``) attesting ten times the rows it
announced in he_scoring's statistics mode, which its consumer's node states as it saw them.

And a restart in the middle of the exchange (issue 16), in each job type: with the job locked, one
provider's node (tests/faults/dishonest_provider.py, ``stall_release``) holding its key back, the consumer's node
and then that provider's are restarted: the provider's node publishes the key it kept (0600, in its
own state), and the consumer's opens the result from the held-back messages it kept. With two
providers, the other one's key came with the job's last attestation (the 3-tx settlement's tx, which
locked the job), the stalled one's by jobs.Release after the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
import pytest_asyncio

from jobkit import PRICE, start_net
from test_fair_exchange import answers, held, refused_too_late, restart

TAG = os.urandom(3).hex()
PA, PB = f"fj-pa-{TAG}", f"fj-pb-{TAG}"
CONS = f"zfj-cons-{TAG}"  # sorts after the providers: they dial it
REFS = [f"PO-{i:04d}" for i in range(40)]

JOBS = {  # job type, inputs, params: one of each job type that holds its result back
    "aggregation": ("aggregation", [f"{PA}.amounts", f"{PB}.amounts"], {"columns": ["amount"]}),
    "he_scoring": ("he_scoring", [f"{PA}.model"], {"dataset": "applicants", "features": ["income"], "id": "id"}),
    "he_statistics": ("he_scoring", [f"{PA}.accounts"], {"mode": "statistics", "dataset": "watch",
                                                          "key": "customer_id", "column": "balance"}),
    "supply_chain": ("supply_chain", [f"{PA}.invoices", f"{PB}.logistics"],
                     {"dataset": "contracts", "kinds": {CONS: "contract", PA: "invoice", PB: "logistics"}}),
}


def _csv(path, header: str, rows) -> None:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def _write(root) -> None:
    for m in (PA, PB, CONS):
        (root / m).mkdir(parents=True)
    sets = {PA: [], PB: [], CONS: []}
    for i, m in enumerate((PA, PB)):
        _csv(root / m / "amounts.csv", "amount", [[10 * i + j] for j in range(30)])
        sets[m].append({"id": "amounts", "asset": f"{m}.amounts", "format": "csv", "path": "amounts.csv"})
    _csv(root / PA / "model.csv", "feature,weight", [["income", 0.5], ["__intercept__", -1.0]])
    sets[PA].append({"id": "model", "asset": f"{PA}.model", "format": "csv", "path": "model.csv"})
    _csv(root / PA / "accounts.csv", "customer_id,balance", [[f"C-{j:03d}", 100 + j] for j in range(60)])
    sets[PA].append({"id": "accounts", "asset": f"{PA}.accounts", "format": "csv", "path": "accounts.csv",
                     "key": "customer_id"})
    records = "reference,amount,quantity"
    _csv(root / PA / "invoices.csv", records, [[r, "10.00", 1] for r in REFS])
    sets[PA].append({"id": "invoices", "asset": f"{PA}.invoices", "format": "csv", "path": "invoices.csv"})
    _csv(root / PB / "logistics.csv", records, [[r, "10.00", 2 if j == 3 else 1] for j, r in enumerate(REFS)])
    sets[PB].append({"id": "logistics", "asset": f"{PB}.logistics", "format": "csv", "path": "logistics.csv"})
    _csv(root / CONS / "applicants.csv", "id,income", [[f"A-{j}", j / 10] for j in range(20)])
    _csv(root / CONS / "watch.csv", "customer_id", [[f"C-{j:03d}"] for j in range(0, 60, 2)])
    _csv(root / CONS / "contracts.csv", records, [[r, "10.00", 1] for r in REFS])
    sets[CONS] = [{"id": d, "format": "csv", "path": f"{d}.csv"} for d in ("applicants", "watch", "contracts")]
    for m, s in sets.items():
        (root / m / "datasets.json").write_text(json.dumps({"datasets": s}))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def net(chain, kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("fair-jobtypes")
    _write(root)
    member_key = root / "keys" / f"{CONS}.member.json"
    n = await start_net(chain, kafka, root, consumer=CONS, members=[PA, PB, CONS],
                        listings={PA: ["amounts", "model", "accounts", "invoices"], PB: ["amounts", "logistics"]},
                        modules={CONS: "tests.faults.dishonest_consumer", PA: "tests.faults.dishonest_provider"},
                        node_env={CONS: {"RDX_ATTACK_LOG": str(root / "attack"),
                                         "RDX_CHEAT_MEMBER_KEY": str(member_key)}})
    n.ids[CONS].save(member_key)  # read by the consumer's node only when it cheats
    n.attack_log = root / "attack"
    try:
        yield n
    finally:
        await n.stop()


async def _run(net, job: str, name: str, **cheats: str) -> tuple[dict, dict, list[str]]:
    type_, assets, params = JOBS[name]
    providers = sorted({a.rsplit(".", 1)[0] for a in assets})
    before = {m: await net.balance(m) for m in (CONS, *providers)}
    net.chain._nonces.pop(CONS, None)  # the cheating node may have signed with the member's key since
    await net.submit(job, type_, assets, {**params, **cheats}, timeout_s=90)
    record = await net.wait_chain(job, timeout=150)
    assert await net.chain.query(f"/bank/escrow/{job}") is None
    after = {m: await net.balance(m) for m in before}
    return record, {m: after[m] - before[m] for m in after}, providers


@pytest.mark.parametrize("name", sorted(JOBS))
async def test_a_consumer_aborting_before_the_lock_is_refunded_and_holds_nothing_it_can_open(net, name):
    job = f"fj-walk-{name.replace('_', '-')}-{TAG}"
    record, moved, _ = await _run(net, job, name, cheat="abort_before_lock")
    assert record["status"] == "aborted" and record["ended_reason"] == "the consumer changed its mind", record
    assert await answers(net, job) == [{"type": "jobs.Abort", "code": 0, "log": ""}]
    assert CONS not in record["attestations"] and not record.get("releases"), record
    assert set(moved.values()) == {0}, moved  # refunded in full, no provider paid
    await net.wait_node(CONS, job, lambda r: r["status"] in ("failed", "aborted"), timeout=20)
    assert net.http(CONS, f"/jobs/{job}/result")[0] in (404, 409) and held(net, job) == 0


@pytest.mark.parametrize("name", sorted(JOBS))
async def test_a_consumer_aborting_after_the_lock_is_refused_pays_and_gets_its_result(net, name):
    job = f"fj-late-{name.replace('_', '-')}-{TAG}"
    record, moved, providers = await _run(net, job, name, cheat="abort_after_lock")
    told = await answers(net, job)
    assert [a["type"] for a in told] == ["jobs.Fail", "jobs.Abort"]
    for answer in told:  # by its node key and by its member's own key: refused, never refunded
        assert refused_too_late(answer), answer
    assert record["status"] == "completed" and record["locked_height"], record
    assert set(record["releases"]) == set(providers), record  # every provider's key, released on chain
    assert moved[CONS] <= -(PRICE - PRICE // 100) and all(moved[p] > 0 for p in providers), moved  # no refund
    await net.wait_node(CONS, job, lambda r: r["status"] == "completed", timeout=30)
    _assert_result(name, net.result(job)["result"])


def _assert_result(name: str, result: dict) -> None:
    """The consumer's result of a job of ``JOBS[name]``, as the clear computation gives it."""
    if name == "aggregation":
        assert result["columns"]["amount"]["count"] == 60 and result["columns"]["amount"]["sum"] == sum(range(30)) \
            + sum(range(10, 40)), result
    elif name == "he_scoring":
        assert result["n"] == 20 and result["ids"][:2] == ["A-0", "A-1"], result
    elif name == "he_statistics":
        assert result["statistics"]["count"] == 30, result
    else:
        assert [d["reference"] for d in result["disagreements"]] == [REFS[3]], result


async def test_a_provider_inflating_its_rows_in_he_statistics_fails_the_job_unpaid_and_the_dispute_is_recorded(net):
    """In he_scoring's statistics mode the provider announces its rows (``start {n}``) and sends one
    masked id for each: the consumer's node states that count, so an inflated one fails the job
    before the lock, unpaid, and the dispute is on chain (as in psi, tests/integration/test_fair_exchange.py)."""
    job = f"fj-inflate-{TAG}"
    record, moved, _ = await _run(net, job, "he_statistics", cheat_provider="inflate_records")
    asset, rows = f"{PA}.accounts", 60
    assert record["status"] == "failed" and "different records used" in record["ended_reason"], record
    assert record["attestations"][PA]["records_used"] == 10 * rows
    assert record["attestations"][CONS]["records"] == {asset: rows}  # what the provider announced and sent
    assert record["records_disputed"] == {asset: {PA: 10 * rows, CONS: rows}}
    assert set(moved.values()) == {0} and not record.get("releases"), (moved, record)  # unpaid, nothing released
    await net.wait_node(CONS, job, lambda r: r["status"] in ("failed", "aborted"), timeout=20)
    assert net.http(CONS, f"/jobs/{job}/result")[0] in (404, 409) and held(net, job) == 0


@pytest.mark.parametrize("name", sorted(JOBS))
async def test_a_node_restarted_between_the_lock_and_the_release_still_releases_and_opens(net, name):
    job = f"fj-restart-{name.replace('_', '-')}-{TAG}"
    type_, assets, params = JOBS[name]
    providers = sorted({a.rsplit(".", 1)[0] for a in assets})
    before = {m: await net.balance(m) for m in (CONS, *providers)}
    net.chain._nonces.pop(CONS, None)
    await net.submit(job, type_, assets, {**params, "cheat_provider": "stall_release"}, timeout_s=150)
    deadline = asyncio.get_running_loop().time() + 120
    while not ((record := await net.chain.query(f"/jobs/{job}")) or {}).get("status") == "locked" \
            or set(record["releases"]) != set(providers) - {PA}:  # every other provider's key, PA's kept back
        assert asyncio.get_running_loop().time() < deadline and (record or {}).get("status") in (None, "running",
                                                                                                  "locked"), record
        await asyncio.sleep(0.2)
    if PB in providers:  # two providers: PB, the last to attest, sent its key with its attestation (locked and
        # released in one tx); PA attested without one and keeps it for jobs.Release
        assert record["attestations"][PB]["height"] == record["locked_height"], record
        assert record["attestations"][PA]["height"] < record["locked_height"], record
    kept = {m: net.root / "state" / f"compute-{m}" / "held" / f"{job}.{what}"
            for m, what in ((PA, "release_key"), (CONS, "pending"))}
    for path in kept.values():  # each node's own state, readable by its own user only
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    try:
        restart(net, CONS)
        restart(net, PA, "")  # now honest: it publishes the key it kept
        record = await net.wait_chain(job, timeout=120)
        assert record["status"] == "completed" and set(record["releases"]) == set(providers), record
        moved = {m: await net.balance(m) - before[m] for m in before}
        assert moved[CONS] == -PRICE * len(assets) and all(moved[p] > 0 for p in providers), moved  # paid once
        await net.wait_node(CONS, job, lambda r: r["status"] == "completed", timeout=60)
        _assert_result(name, net.result(job)["result"])
        for path in kept.values():  # the job ended: nothing of it is kept
            assert not path.exists(), path
    finally:  # PA's node as the other tests expect it
        restart(net, PA, "tests.faults.dishonest_provider")
