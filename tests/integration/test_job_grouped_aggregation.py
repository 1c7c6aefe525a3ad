"""Secure aggregation aligned on a private key (``align_on``) on the real chain and broker: three
providers (hospitals, or banks with trades) whose key sets overlap partially, each with a real
node process, and a consumer's node. The aggregate over the keys all three hold, grouped by a
public column among the aligned rows, and grouped by the aligned key itself, is checked against
numpy over the intersection in the clear; groups below the listings' minimum group size are
refused with the escrow refunded; and a key held by one provider only, and the shared keys, appear
nowhere outside their nodes: Kafka topics, node logs, chain transactions, the consumer's result,
and every byte between the nodes (every peer endpoint that is dialled sits behind a recording
proxy, so every link of the ring and to the consumer is captured).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

import numpy as np
import pytest
import pytest_asyncio

from jobkit import PRICE, start_net
from services.common.events import CHAIN_EVENTS, JOB_STATUS
from test_compute import TcpProxy, _chain_txs, _topic_bytes

TAG = os.urandom(3).hex()
PROVIDERS = [f"ga-hosp-a-{TAG}", f"ga-hosp-b-{TAG}", f"ga-hosp-c-{TAG}"]
A, B, C = PROVIDERS
CONS = f"gz-cons-{TAG}"  # sorts after the providers: they dial it, through its recording proxy
MIN_GROUP = 5
WARDS = ["cardio", "onco", "neuro"]
CANARY_PATIENT = f"CANARY-PATIENT-{TAG}"  # held by B only
CANARY_FIRM = f"CANARY-FIRM-{TAG}"        # held by C only
CANARY_NOTE = f"CANARY-NOTE-{TAG}"        # a column no job reads


def _patients():
    shared = [f"P-{i:04d}" for i in range(300)]
    return {A: shared + [f"P-{i:04d}" for i in range(300, 350)] + [f"P-A{i:03d}" for i in range(80)],
            B: shared + [f"P-{i:04d}" for i in range(300, 400)] + [f"P-B{i:03d}" for i in range(60)] + [CANARY_PATIENT],
            C: shared + [f"P-{i:04d}" for i in range(350, 400)] + [f"P-C{i:03d}" for i in range(90)]}


def _firms():
    shared = [f"F-{i:03d}" for i in range(25)]
    return {A: shared + [f"F-A{i:02d}" for i in range(10)], B: shared + [f"F-{i:03d}" for i in range(25, 40)],
            C: shared + [f"F-{i:03d}" for i in range(25, 30)] + [CANARY_FIRM]}


def _write(root):
    """Each provider's visits (patient, cost, ward, note) and trades (firm, amount); the clear rows."""
    clear = {"visits": {}, "trades": {}}
    patients, firms = _patients(), _firms()
    for i, m in enumerate(PROVIDERS):
        rng = np.random.default_rng(100 + i)
        d = root / m
        d.mkdir(parents=True)
        visits = []
        for p in patients[m]:
            times = 1 if p == "P-0000" else int(rng.integers(1, 4))  # P-0000: one visit per hospital
            for _ in range(times):
                visits.append((p, round(float(rng.gamma(2.0, 400.0)), 2), str(rng.choice(WARDS))))
        if m == A:
            visits[5] = (visits[5][0], visits[5][1], "rare")  # one aligned row in ward "rare"
        with open(d / "visits.csv", "w") as f:
            f.write("patient,cost,ward,note\n")
            for j, (p, cost, ward) in enumerate(visits):
                f.write(f"{p},{cost},{ward},{CANARY_NOTE if j % 97 == 3 else 'ok'}\n")
        trades = [(firm, round(float(rng.normal(5000, 1500)), 2)) for firm in firms[m]
                  for _ in range(int(rng.integers(2, 5)))]
        with open(d / "trades.csv", "w") as f:
            f.write("firm,amount\n" + "".join(f"{firm},{amount}\n" for firm, amount in trades))
        (d / "datasets.json").write_text(json.dumps({"datasets": [
            {"id": "visits", "asset": f"{m}.visits", "format": "csv", "path": "visits.csv", "key": "patient"},
            {"id": "trades", "asset": f"{m}.trades", "format": "csv", "path": "trades.csv", "key": "firm"}]}))
        clear["visits"][m], clear["trades"][m] = visits, trades
    (root / CONS).mkdir(parents=True)
    (root / CONS / "datasets.json").write_text(json.dumps({"datasets": []}))
    return clear


def _aligned(rows_by_provider):
    """The rows whose key (first field) every provider holds."""
    common = set.intersection(*({r[0] for r in rows} for rows in rows_by_provider.values()))
    return common, [r for rows in rows_by_provider.values() for r in rows if r[0] in common]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gnet(chain, kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("grouped-aggregation")
    clear = _write(root)
    net = await start_net(chain, kafka, root, consumer=CONS, members=[*PROVIDERS, CONS],
                          listings={p: ["visits", "trades"] for p in PROVIDERS}, min_group=MIN_GROUP, psi_batch=256)
    net.clear = clear
    # B and C are dialled by the providers before them: put a recording proxy in front of each too
    # (the members move their endpoints on chain), so the proxies see every link of the ring.
    net.link_proxies = []
    try:
        for m in (B, C):
            node = (await net.chain.query(f"/members/{m}"))["node"]
            proxy = TcpProxy(int(node["endpoint"].rsplit(":", 1)[1])).start()
            net.link_proxies.append(proxy)
            await net.tx(net.ids[m], "members.SetNode", {
                "node": {"public_key": net.node_ids[m].public_key, "endpoint": f"127.0.0.1:{proxy.port}"}})
        yield net
    finally:
        await net.stop()  # the nodes first, so no proxied connection is open when its proxy stops
        for proxy in net.link_proxies:
            proxy.stop()


async def _run(net, job, dataset, params):
    await net.submit(job, "aggregation", [f"{p}.{dataset}" for p in PROVIDERS], params)
    return await net.wait_chain(job, timeout=240)


async def test_aligned_on_patient_grouped_by_ward_equals_numpy_over_the_intersection(gnet):
    job = f"galign-{TAG}"
    params = {"columns": ["cost"], "align_on": "patient", "group_by": "ward", "groups": WARDS,
              "histogram": {"edges": [0, 500, 1000, 100000]}}
    before = await gnet.balance(CONS)
    record = await _run(gnet, job, "visits", params)
    await gnet.settled(job, record)
    assert await gnet.balance(CONS) == before - 3 * PRICE
    # records used (public on chain) is what each provider read, as without alignment
    assert {m: a["records_used"] for m, a in record["attestations"].items() if m != CONS} == \
        {m: len(rows) for m, rows in gnet.clear["visits"].items()}
    res = gnet.result(job)["result"]
    common, rows = _aligned(gnet.clear["visits"])
    assert len(common) == 300 and res["aligned_on"] == "patient" and res["providers"] == 3
    for ward in WARDS:
        vals = np.array([cost for _, cost, w in rows if w == ward])
        got = res["groups"][ward]["cost"]
        assert got["count"] == len(vals) > MIN_GROUP
        assert got["sum"] == pytest.approx(vals.sum(), rel=1e-12, abs=1e-5)
        assert got["mean"] == pytest.approx(vals.mean(), rel=1e-10)
        assert got["variance"] == pytest.approx(vals.var(), rel=1e-8)
        assert got["histogram"]["counts"] == np.histogram(vals, params["histogram"]["edges"])[0].tolist()
    print(f"aligned aggregation, 3 providers x ~{len(rows) // 3} aligned rows of "
          f"{sum(map(len, gnet.clear['visits'].values()))}: {len(common)} shared patients")


async def test_grouped_by_the_aligned_firm_gives_each_shared_firm_without_its_id(gnet):
    job = f"gfirm-{TAG}"
    params = {"columns": ["amount"], "stats": ["count", "sum", "mean"], "align_on": "firm", "group_by": "firm"}
    record = await _run(gnet, job, "trades", params)
    await gnet.settled(job, record)
    opened = gnet.result(job)
    res = opened["result"]
    common, rows = _aligned(gnet.clear["trades"])
    per_firm = {}
    for firm, amount in rows:
        per_firm.setdefault(firm, []).append(amount)
    assert len(res["groups"]) == len(common) == 25
    got = sorted((g["amount"]["count"], round(g["amount"]["sum"], 4)) for g in res["groups"])
    assert got == sorted((len(v), round(float(np.sum(v)), 4)) for v in per_firm.values())
    text = json.dumps(opened)
    assert not any(firm in text for firm in common) and CANARY_FIRM not in text  # the consumer never sees an id


async def test_per_patient_groups_and_a_small_ward_below_the_minimum_are_refused_and_refunded(gnet):
    before = await gnet.balance(CONS)
    per_key = f"gpatient-{TAG}"  # P-0000 has one visit per hospital: 3 rows < 5
    record = await _run(gnet, per_key, "visits", {"columns": ["cost"], "align_on": "patient", "group_by": "patient"})
    assert record["status"] == "failed" and "minimum group size" in record["ended_reason"], record
    rare = f"grare-{TAG}"  # one aligned visit in ward "rare"
    record = await _run(gnet, rare, "visits", {"columns": ["cost"], "align_on": "patient", "group_by": "ward",
                                               "groups": ["cardio", "rare"]})
    assert record["status"] == "failed" and "minimum group size" in record["ended_reason"], record
    assert await gnet.balance(CONS) == before  # both refunded in full
    for job in (per_key, rare):
        assert gnet.http(CONS, f"/jobs/{job}/result")[0] in (404, 409)


async def test_no_key_or_canary_outside_its_node(gnet):
    secrets = [CANARY_PATIENT, CANARY_FIRM, CANARY_NOTE, "P-0001", "P-0399", "F-007", "F-A03"]
    forms = [f for s in secrets for f in (s.encode(), hashlib.sha256(s.encode()).hexdigest().encode(),
                                         base64.b64encode(s.encode()))]
    for topic in (CHAIN_EVENTS, JOB_STATUS):
        blob = await _topic_bytes(gnet.kafka, topic)
        assert blob and not any(f in blob for f in forms), topic
    for m, node in gnet.nodes.items():
        text = node.process.log_path.read_bytes()
        assert not any(f in text for f in forms), m
    txs = await _chain_txs(gnet.chain)
    assert not any(f in txs for f in forms)
    wires = [bytes(gnet.proxy.captured)] + [bytes(p.captured) for p in gnet.link_proxies]
    assert all(len(w) > 10_000 for w in wires)  # each link carried the ring (B, C) or the tags (consumer)
    for wire in wires:
        assert not any(f in wire for f in forms)
        for cost in [c for _, c, _ in gnet.clear["visits"][A][:40] if len(str(c)) >= 6]:
            assert str(cost).encode() not in wire


async def test_under_a_privacy_budget_results_are_noisy_and_the_budget_runs_out_on_chain(gnet):
    """Last in the module: it gives the trades listings a budget. Each provider's node clamps to
    params.bounds and adds OpenDP Laplace noise for the ε charged; a job without bounds is aborted
    by the providers' policy; the job that would overspend is refused on chain."""
    from budgetkit import budget, set_budget
    from services.common.chain import TxRejected
    from services.common.tx import Code

    for p in PROVIDERS:
        await set_budget(gnet, f"{p}.trades", 2_000)
    rows = [amount for m in PROVIDERS for _, amount in gnet.clear["trades"][m]]
    params = {"columns": ["amount"], "bounds": {"amount": [0, 20_000]}, "epsilon_milli": 1_000}
    record = await _run(gnet, f"gdp-{TAG}", "trades", params)
    await gnet.settled(f"gdp-{TAG}", record)
    res = gnet.result(f"gdp-{TAG}")["result"]
    got = res["columns"]["amount"]
    assert res["differential_privacy"]["epsilon_milli"] == 1_000
    # each of 3 providers: Laplace of scale 3 (count) and 60,000 (sum) at ε/3 per kind; 25 scales is e^-25
    assert abs(got["count"] - len(rows)) <= 3 * 25 * 3
    assert abs(got["sum"] - float(np.sum(np.clip(rows, 0, 20_000)))) <= 3 * 25 * 60_000
    assert got["sum"] != pytest.approx(float(np.sum(rows)), abs=1e-3)  # noisy: not the exact sum
    # no bounds: every provider's own policy refuses to release a sum whose sensitivity it cannot state
    record = await _run(gnet, f"gdp-nobounds-{TAG}", "trades", {"columns": ["amount"], "epsilon_milli": 500})
    assert record["status"] == "aborted" and "params.bounds.amount" in record["ended_reason"], record
    for p in PROVIDERS:
        assert (await budget(gnet, f"{p}.trades", CONS))["remaining_milli"] == 500
    with pytest.raises(TxRejected) as refused:
        await gnet.submit(f"gdp-over-{TAG}", "aggregation", [f"{p}.trades" for p in PROVIDERS], params)
    assert refused.value.code == Code.PRIVACY_BUDGET_EXCEEDED and "500 of 2000 left" in refused.value.log
    assert await gnet.chain.query(f"/jobs/gdp-over-{TAG}") is None
