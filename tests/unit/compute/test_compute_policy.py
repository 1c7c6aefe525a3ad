"""A provider's own policy on its own node (services/compute/policy.py): the grant and listing
re-read from the chain, the match column, peer-announced sizes; a violation aborts the job on
chain with the reason and nothing more of the job leaves the node."""

from __future__ import annotations

import asyncio

import pytest

from services.compute import handshake as hs
from services.compute.jobtypes.base import JobSpec
from services.compute.jobtypes.psi import PsiCardinalityJob, PsiJob
from services.compute.policy import InputPolicy, Policy, PolicyViolation, check_grants
from test_compute_lifecycle import ME, OTHER, _settle, authorized, echo_type, manager, record  # noqa: F401 (fixture)
from test_compute_psi import context, pair, phones, spec_for

NOW = 1_000_000


def grant(**changes):
    g = {"id": "g-1", "asset": "telco.subs", "provider": ME, "consumer": OTHER, "status": "granted",
         "operations": ["psi"], "expires_at": NOW + 60, "max_runs": 2, "runs_used": 1}
    g.update(changes)
    return g


def listing(**changes):
    lst = {"id": "telco.subs", "version": 1, "operations": ["psi"], "min_group_size": 1, "metadata": {"columns": []}}
    lst.update(changes)
    return lst


@pytest.mark.parametrize("g, lst, words", [
    (None, listing(), "names no grant"),
    (grant(consumer="someone-else"), listing(), "is not a grant of telco.subs to"),
    (grant(asset="telco.other"), listing(), "is not a grant of telco.subs"),
    (grant(status="revoked"), listing(), "grant g-1 is revoked"),
    (grant(operations=["psi_cardinality"]), listing(), "does not allow psi"),
    (grant(expires_at=NOW - 1), listing(), "has expired"),
    (grant(runs_used=3), listing(), "has no runs left"),
    (grant(), None, "is not on chain"),
    (grant(), listing(operations=["aggregation"]), "does not offer psi"),
])
def test_every_grant_and_listing_problem_is_a_violation_naming_it(g, lst, words):
    rec = record(type_="psi")
    spec = JobSpec.from_json({**rec, "job": rec["id"]})
    with pytest.raises(PolicyViolation, match=words):
        check_grants(spec, rec, ME, {"g-1": g}, {"telco.subs": lst}, now=NOW)


def test_a_live_grant_passes_and_other_providers_inputs_are_not_this_nodes_business():
    rec = record(type_="psi")
    spec = JobSpec.from_json({**rec, "job": rec["id"]})
    check_grants(spec, rec, ME, {"g-1": grant()}, {"telco.subs": listing()}, now=NOW)
    check_grants(spec, rec, "third", {}, {}, now=NOW)


def test_sizes_and_columns():
    p = Policy(max_peer_set=1000, inputs={"a.x": InputPolicy("a.x", 5, frozenset({"phone_hash"}), "phone")})
    assert p.peer_size(1000, "set size") == 1000
    for bad in (1001, 10**18, -1, "5", 2.0, True, None):
        with pytest.raises(PolicyViolation):
            p.peer_size(bad, "set size")
    p.match_column("a.x", "phone_hash")
    p.match_column("a.x", "phone")  # this node's own configured key
    with pytest.raises(PolicyViolation, match="column tenure_months is not a join key of a.x"):
        p.match_column("a.x", "tenure_months")
    p.consumer_set("a.x", 0)  # an empty set reveals nothing
    p.consumer_set("a.x", 5)
    with pytest.raises(PolicyViolation, match="smaller than the minimum group size of a.x"):
        p.consumer_set("a.x", 4)


async def test_a_violation_aborts_the_job_on_chain_before_the_job_type_runs():
    rec = record()
    m, chain, pub = manager(rec)

    async def revoked(gid):
        return grant(status="revoked", operations=["echo"])
    m.view.grant = revoked
    m.on_event(authorized(rec), None)
    await _settle(m)
    row = m.journal.get("j-1")
    assert row.status == "aborted" and "grant g-1 is revoked" in row.reason
    assert [(t, p["reason"]) for _, t, p in chain.txs] == [("jobs.Abort", f"{ME}'s policy: grant g-1 is revoked")]
    assert not any(d.get("phase") == "working" for _, _, d in pub.events)  # the job type never started


async def _provider_alone(spec, announce: dict, provider_keys):
    """The provider's side against a consumer that only says ``start`` with ``announce``."""
    c_chan, p_chan, sent_by = pair("bank", "telco")
    p = context(spec, "telco", p_chan, {"telco.subs": provider_keys}, {})
    job = PsiCardinalityJob() if spec.type == "psi_cardinality" else PsiJob()
    task = asyncio.ensure_future(job.run(p))
    await c_chan.send("start", **announce)
    with pytest.raises(PolicyViolation) as exc:
        await asyncio.wait_for(task, 10)
    return str(exc.value), [hs.decode(f)[0] for f in sent_by["telco"]]


@pytest.mark.parametrize("type_", ["psi", "psi_cardinality"])
async def test_a_huge_announced_set_is_refused_before_anything_is_allocated_or_sent(type_):
    reason, sent = await _provider_alone(spec_for(type_), {"n": 10**15}, phones(0, 50))
    assert "consumer's set size announced is above this node's bound" in reason
    assert sent == []  # not even the provider's own start


async def test_a_consumer_set_below_the_minimum_group_is_refused_before_the_provider_sends():
    reason, sent = await _provider_alone(spec_for("psi", min_group=5), {"n": 1}, phones(0, 50))
    assert "smaller than the minimum group size" in reason and sent == []


async def test_matching_on_a_column_that_is_not_a_join_key_is_refused_before_loading():
    spec = spec_for("psi", params={"dataset": "customers", "key": "tenure_months"})
    c_chan, p_chan, sent_by = pair("bank", "telco")
    loaded = []

    p = context(spec, "telco", p_chan, {"telco.subs": phones(0, 5)}, {})
    real_load = p._load_input

    async def load(ref, cols):
        loaded.append(cols)
        return await real_load(ref, cols)
    p._load_input = load
    with pytest.raises(PolicyViolation, match="column tenure_months is not a join key of telco.subs"):
        await PsiJob().run(p)
    assert loaded == [] and sent_by["telco"] == []
