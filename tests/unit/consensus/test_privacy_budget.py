"""The on-chain privacy budget through FinalizeBlock/Commit: a noisy job spends ε from each
budgeted input inside jobs.Submit, a job past the budget is refused with nothing spent or held,
the budget renews each period, and the ABCI query answers spent and remaining per consumer."""

from __future__ import annotations

import json

import pytest
from chainsim import Harness, register
from tendermint.abci import types_pb2 as abci

from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Code

COMMIT = "ab" * 32
BUDGET = {"epsilon_milli": 2_500, "period_s": 3_600}


class Chain:
    def __init__(self, tmp_path):
        self.assoc = Identity.generate("association")
        self.bank, self.telco = Identity.generate("bank"), Identity.generate("telco")
        self.h = Harness(tmp_path / "chain.sqlite", self.assoc, balances={"bank": 100_000})
        results = self.h.block(register(self.h, self.bank, ("consumer",), Identity.generate("bank.node")),
                               register(self.h, self.telco, ("provider",), Identity.generate("telco.node")))
        assert all(r.code == Code.OK for r in results)

    def send(self, who, type_, payload) -> tuple[int, str]:
        [r] = self.h.block(self.h.tx(who, type_, payload))
        return r.code, r.log

    def listed(self, asset="telco.credit", budget=BUDGET, ops=("aggregation", "he_scoring", "psi")):
        body = {"id": asset, "level": "L3", "operations": list(ops), "commitment": COMMIT,
                "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata("Credit")}
        if budget is not None:
            body["privacy_budget"] = budget
        assert self.send(self.telco, "assets.List", body) == (Code.OK, "")
        assert self.send(self.bank, "access.Request", {
            "id": f"g.{asset}", "asset": asset, "operations": list(ops), "purpose": "credit statistics",
            "expires_at": self.h.t0 + 10**6, "max_runs": 100})[0] == Code.OK
        assert self.send(self.telco, "access.Approve", {"id": f"g.{asset}"})[0] == Code.OK

    def submit(self, job, type_="aggregation", params=None, asset="telco.credit"):
        return self.send(self.bank, "jobs.Submit", {"id": job, "type": type_, "max_price": 10, "params": params or {},
                                                    "inputs": [{"asset": asset, "grant": f"g.{asset}"}]})

    def state(self, key):
        raw = self.h.state().get(key)
        return None if raw is None else json.loads(raw)

    def query(self, path):
        resp = self.h.app.query(abci.RequestQuery(path=path))
        return resp.code, (json.loads(resp.value) if resp.code == Code.OK else resp.log)


@pytest.fixture
def c(tmp_path):
    return Chain(tmp_path)


def test_noisy_jobs_spend_the_budget_and_the_one_past_it_is_refused_on_chain(c):
    c.listed()
    assert c.submit("agg-1") == (Code.OK, "")  # the default ε = 1
    assert c.submit("agg-2", params={"epsilon_milli": 1_000}) == (Code.OK, "")
    code, log = c.submit("agg-3")
    assert code == Code.PRIVACY_BUDGET_EXCEEDED
    assert "has 500 of 2500 left" in log and "telco.credit" in log
    assert c.state("jobs/agg-3") is None and c.state("bank/escrow/agg-3") is None  # nothing held, nothing runs
    assert c.state("access/g.telco.credit")["runs_used"] == 2  # the refused job's run is not used either
    assert c.submit("agg-4", params={"epsilon_milli": 500}) == (Code.OK, "")  # exactly the rest fits
    code, budget = c.query("/privacy-budget/telco.credit/bank")
    assert code == Code.OK
    assert budget["spent_milli"] == 2_500 and budget["remaining_milli"] == 0 and budget["budget"] == BUDGET
    assert budget["period_end"] - budget["period_start"] == 3_600


def test_statistics_spend_and_other_job_types_do_not(c):
    c.listed()
    assert c.submit("psi-1", type_="psi") == (Code.OK, "")
    assert c.submit("score-1", type_="he_scoring", params={"dataset": "a"}) == (Code.OK, "")
    assert c.query("/privacy-budget/telco.credit/bank")[1]["spent_milli"] == 0
    assert c.submit("stats-1", type_="he_scoring", params={"mode": "statistics", "epsilon_milli": 2_000}) == (Code.OK, "")
    assert c.query("/privacy-budget/telco.credit/bank")[1]["remaining_milli"] == 500


def test_the_budget_renews_at_the_next_period(c):
    c.listed()
    assert c.submit("agg-1", params={"epsilon_milli": 2_500}) == (Code.OK, "")
    assert c.submit("agg-2")[0] == Code.PRIVACY_BUDGET_EXCEEDED
    start = c.query("/privacy-budget/telco.credit/bank")[1]["period_end"]
    while c.h.t0 + (c.h.height + 1) * 10 < start:
        c.h.block()
    assert c.submit("agg-3") == (Code.OK, "")
    assert c.query("/privacy-budget/telco.credit/bank")[1]["spent_milli"] == 1_000


def test_a_listing_without_a_budget_spends_nothing_and_says_so(c):
    c.listed(budget=None)
    for i in range(4):
        assert c.submit(f"agg-{i}", params={"epsilon_milli": 1_000_000}) == (Code.OK, "")
    code, budget = c.query("/privacy-budget/telco.credit/bank")
    assert code == Code.OK and budget["budget"] is None and "spent_milli" not in budget


def test_an_update_can_add_and_remove_the_budget(c):
    c.listed(budget=None)
    body = {"id": "telco.credit", "level": "L3", "operations": ["aggregation"], "commitment": COMMIT,
            "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata("Credit")}
    assert c.send(c.telco, "assets.Update", {**body, "privacy_budget": {"epsilon_milli": 100}}) == (Code.OK, "")
    assert c.state("assets/telco.credit")["privacy_budget"] == {"epsilon_milli": 100, "period_s": 86_400}
    assert c.submit("agg-1")[0] == Code.PRIVACY_BUDGET_EXCEEDED  # ε = 1 > 0.1
    assert c.send(c.telco, "assets.Update", body) == (Code.OK, "")
    assert "privacy_budget" not in c.state("assets/telco.credit")


@pytest.mark.parametrize("budget", [{"epsilon_milli": 0}, {"epsilon_milli": "1000"},
                                    {"epsilon_milli": 1000, "period_s": 60}, {"epsilon_milli": 10**7},
                                    {"epsilon_milli": 1000, "extra": 1}, [], "1000"])
def test_a_malformed_budget_is_refused_with_a_code(c, budget):
    body = {"id": "telco.bad", "level": "L3", "operations": ["aggregation"], "commitment": COMMIT,
            "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata("Credit"), "privacy_budget": budget}
    code, _ = c.send(c.telco, "assets.List", body)
    assert code in (Code.INVALID_PAYLOAD, Code.UNDECODABLE)
    assert c.state("assets/telco.bad") is None


@pytest.mark.parametrize("epsilon", [0, -1, 10**7, "1000", True, None, [1]])
def test_a_malformed_job_epsilon_is_refused_with_a_code_and_spends_nothing(c, epsilon):
    c.listed()
    code, log = c.submit("agg-bad", params={"epsilon_milli": epsilon})
    assert code == Code.INVALID_PAYLOAD and "epsilon_milli" in log
    assert c.query("/privacy-budget/telco.credit/bank")[1]["spent_milli"] == 0
    assert c.submit("agg-ok") == (Code.OK, "")  # and the chain goes on


@pytest.mark.parametrize("path", ["/privacy-budget/telco.credit", "/privacy-budget/telco.credit/bank/x",
                                  "/privacy-budget/UNKNOWN/bank", "/privacy-budget/nope.asset/bank",
                                  "/privacy-budget/telco.credit/" + "b" * 200, "/privacy-budget/telco.credit/ba?nk",
                                  "/privacy-budget/../bank", "/privacy-budget/telco.credit/\u0000"])
def test_hostile_budget_queries_are_answered_with_a_code(c, path):
    c.listed()
    assert c.query(path)[0] in (Code.NOT_FOUND, Code.INVALID_QUERY)
    assert c.query("/privacy-budget/telco.credit/bank")[0] == Code.OK  # and the next query is answered


def test_a_job_over_one_input_s_budget_spends_nothing_on_the_others(c):
    """Two inputs: the first has room, the second not; the tx is refused whole, so the first
    input's spend is discarded with it (a handler's writes are kept only if it succeeds)."""
    c.listed("telco.a", budget={"epsilon_milli": 5_000})
    c.listed("telco.b", budget={"epsilon_milli": 500})
    c.listed("telco.c", budget=None)
    code, log = c.send(c.bank, "jobs.Submit", {
        "id": "agg-multi", "type": "aggregation", "max_price": 30,
        "inputs": [{"asset": a, "grant": f"g.{a}"} for a in ("telco.a", "telco.b", "telco.c")]})
    assert code == Code.PRIVACY_BUDGET_EXCEEDED and "telco.b" in log
    assert c.query("/privacy-budget/telco.a/bank")[1]["spent_milli"] == 0
    code, _ = c.send(c.bank, "jobs.Submit", {
        "id": "agg-two", "type": "aggregation", "max_price": 30, "params": {"epsilon_milli": 400},
        "inputs": [{"asset": a, "grant": f"g.{a}"} for a in ("telco.a", "telco.b", "telco.c")]})
    assert code == Code.OK
    assert [c.query(f"/privacy-budget/telco.{x}/bank")[1].get("spent_milli") for x in "abc"] == [400, 400, None]


def test_each_consumer_has_its_own_budget(c):
    c.listed()
    other = Identity.generate("rival")
    assert all(r.code == Code.OK for r in c.h.block(register(c.h, other, ("consumer",), Identity.generate("rival.node"))))
    assert c.send(c.assoc, "bank.Deposit", {"to": "rival", "amount": 1_000, "reference": "r"})[0] == Code.OK
    assert c.send(other, "access.Request", {"id": "g.rival", "asset": "telco.credit", "operations": ["aggregation"],
                                            "purpose": "p", "expires_at": c.h.t0 + 10**6, "max_runs": 5})[0] == Code.OK
    assert c.send(c.telco, "access.Approve", {"id": "g.rival"})[0] == Code.OK
    assert c.submit("agg-1", params={"epsilon_milli": 2_500}) == (Code.OK, "")
    assert c.send(other, "jobs.Submit", {"id": "agg-r", "type": "aggregation", "max_price": 10,
                                         "inputs": [{"asset": "telco.credit", "grant": "g.rival"}]}) == (Code.OK, "")
    assert c.query("/privacy-budget/telco.credit/rival")[1]["spent_milli"] == 1_000
