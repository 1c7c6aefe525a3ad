"""Supply-chain cross-verification between four in-process parties: every party's view of its own
records against the clear comparison, the same result hash everywhere, and no value on the wire."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.compute import psi_kernel
from services.compute.jobtypes import job_type
from services.compute.jobtypes import supply_chain as sc
from services.compute.jobtypes.base import JobRefused
from services.compute.policy import PolicyViolation
from test_jobtypes_aggregation import contexts, make_spec, mesh, release, run_member

KINDS = {"buyer": "contract", "seller": "invoice", "carrier": "logistics", "bankx": "payment"}


def records(n=60):
    base = {f"PO-{i:05d}": (f"{100 + i}.50", str(i % 7 + 1)) for i in range(n)}
    contract = dict(base)
    invoice = dict(base)
    invoice["PO-00003"] = ("999.00", invoice["PO-00003"][1])            # amount differs
    invoice["PO-00004"] = (invoice["PO-00004"][0], "42")                # quantity differs
    invoice["PO-00005"] = ("1.00", "99")                                # both differ
    invoice["PO-00006"] = (base["PO-00006"][0].rstrip("0"), base["PO-00006"][1])  # 106.5 == 106.50
    del invoice["PO-00007"]                                              # no invoice
    logistics = {k: ("0", q) for k, (a, q) in base.items()}             # logistics carries no amount...
    payment = {k: (a, q) for k, (a, q) in list(base.items())[:50]}      # only 50 paid
    payment["PO-CANARY-77"] = ("5.00", "1")
    return {"buyer": contract, "seller": invoice, "carrier": logistics, "bankx": payment}


def table(recs):
    return {"reference": list(recs), "amount": [a for a, _ in recs.values()],
            "quantity": [q for _, q in recs.values()]}


def clear_status(mine, theirs):
    out = {}
    for ref, (a, q) in mine.items():
        if ref not in theirs:
            out[ref] = "no_record"
            continue
        ta, tq = theirs[ref]
        same_a, same_q = float(a) == float(ta), float(q) == float(tq)
        out[ref] = {(True, True): "agrees", (False, True): "amount_differs", (True, False): "quantity_differs",
                    (False, False): "both_differ"}[(same_a, same_q)]
    return out


def test_keys_canonicalise_numbers_and_separate_fields():
    k1 = sc.record_keys(["R1"], ["106.50"], ["2"])
    k2 = sc.record_keys([" R1 "], [106.5], ["2.0"])
    assert k1 == k2
    assert sc.record_keys(["R1"], ["1"], ["23"]) != sc.record_keys(["R1"], ["12"], ["3"])
    with pytest.raises(JobRefused, match="row 1"):
        sc.record_keys(["R1"], ["abc"], ["1"])


def test_check_needs_three_parties_and_a_kind_for_each():
    job = job_type("supply_chain")
    spec = make_spec("supply_chain", "buyer", ["seller", "carrier"], {"dataset": "d", "kinds": {
        "buyer": "contract", "seller": "invoice", "carrier": "logistics"}})
    job.check(spec)
    with pytest.raises(JobRefused, match="three"):
        job.check(make_spec("supply_chain", "buyer", ["seller"], {"dataset": "d", "kinds": {
            "buyer": "contract", "seller": "invoice"}}))
    with pytest.raises(JobRefused, match="kinds"):
        job.check(make_spec("supply_chain", "buyer", ["seller", "carrier"], {"dataset": "d", "kinds": {
            "buyer": "contract", "seller": "invoice"}}))


async def test_four_parties_each_learn_their_own_disagreements_like_the_clear_comparison():
    recs = records()
    spec = make_spec("supply_chain", "buyer", ["seller", "carrier", "bankx"], {"dataset": "contracts", "kinds": KINDS})
    chans, sent, _ = mesh(spec.participants)
    results = {}
    data = {"contracts": table(recs["buyer"]), "seller.data": table(recs["seller"]),
            "carrier.data": table(recs["carrier"]), "bankx.data": table(recs["bankx"])}
    ctxs = contexts(spec, chans, data, results)
    job = job_type("supply_chain")
    outs = await asyncio.gather(*(run_member(job, c, chans[m]) for m, c in ctxs.items()))
    assert len({o.result_hash for o in outs}) == 1
    # every party states every input's record count as it saw it, the same everywhere (issue 16)
    assert all(o.records == {f"{p}.data": len(recs[p]) for p in ("seller", "carrier", "bankx")} for o in outs)
    await release(dict(zip(ctxs, outs)), results, ctxs)  # the consumer's outcome: only with the released keys
    assert set(results) == set(KINDS)  # every party commits its own outcome
    got = json.loads(results["buyer"])
    expected = []
    for other in ("seller", "carrier", "bankx"):
        for ref, status in clear_status(recs["buyer"], recs[other]).items():
            if status != "agrees":
                expected.append({"reference": ref, "counterpart": KINDS[other], "status": status})
    assert got["disagreements"] == sorted(expected, key=lambda d: (d["reference"], d["counterpart"]))
    assert got["by_counterpart"]["invoice"] == {"agrees": 56, "amount_differs": 1, "quantity_differs": 1,
                                                "both_differ": 1, "no_record": 1}
    assert got["by_counterpart"]["payment"]["no_record"] == 10
    # the providers' outcomes are counts only in their journals' summary
    by_member = dict(zip(ctxs, outs))
    seller_expected = sum(s != "agrees" for other in ("buyer", "carrier", "bankx")
                          for s in clear_status(recs["seller"], recs[other]).values())
    assert by_member["seller"].summary == {"disagreements": seller_expected}
    wire = b"".join(b"".join(f) for f in sent.values())
    for value in (b"PO-CANARY-77", b"PO-00003", b"999.00", b"106.50"):
        assert value not in wire
    for key in sc.record_keys(["PO-CANARY-77"], ["5.00"], ["1"]):
        assert psi_kernel.hash_to_curve([key])[0] not in wire



class SkipsItsOwnCheck(sc.SupplyChainJob):
    """A consumer node with its own one-record-per-reference check removed."""

    def _check_own(self, refs):
        pass


async def test_a_party_that_repeats_a_reference_is_refused_before_anything_about_it_is_revealed():
    """Issue 17's attack: many records of one reference with amounts 1..N would tell a counterpart's
    exact amount. Every honest counterpart sees the repeated masked reference and stops before it
    sends the doubly-masked keys ('back') that the comparison needs; no party gets an outcome."""
    recs = records(20)
    probe = {"reference": ["PO-00003"] * 40, "amount": [f"{100 + i}.50" for i in range(40)], "quantity": ["4"] * 40}
    spec = make_spec("supply_chain", "buyer", ["seller", "carrier", "bankx"], {"dataset": "contracts", "kinds": KINDS})
    data = {"contracts": probe, "seller.data": table(recs["seller"]), "carrier.data": table(recs["carrier"]),
            "bankx.data": table(recs["bankx"])}
    chans, sent, _ = mesh(spec.participants)
    results = {}
    ctxs = contexts(spec, chans, data, results)
    honest = await asyncio.gather(run_member(job_type("supply_chain"), ctxs["buyer"], chans["buyer"]),
                                  return_exceptions=True)
    assert isinstance(honest[0], JobRefused) and "repeats one" in str(honest[0])  # its own node stops it

    wire: list = []
    chans, sent, _ = mesh(spec.participants, wire)
    ctxs = contexts(spec, chans, data, results)
    jobs = {m: SkipsItsOwnCheck() if m == "buyer" else job_type("supply_chain") for m in ctxs}
    outs = await asyncio.gather(*(asyncio.wait_for(run_member(jobs[m], c, chans[m]), 20) for m, c in ctxs.items()),
                                return_exceptions=True)
    by_member = dict(zip(ctxs, outs))
    for provider in ("seller", "carrier", "bankx"):
        if isinstance(by_member[provider], PolicyViolation):
            assert str(by_member[provider]) == "buyer's records repeat a reference"
    assert any(isinstance(by_member[p], PolicyViolation) for p in ("seller", "carrier", "bankx"))
    assert results == {}  # nobody computed an outcome
    assert [k for _, dst, k, _ in wire if dst == "buyer" and k == "back"] == []
