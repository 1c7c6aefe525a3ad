"""The gateway and the chain decide alike on every grant-dependent case: for each level × job
type × grant state, the gateway's `run` decision (before relaying) equals the chain's CheckTx of
the same jobs.Submit on the same state. Both evaluate the on-chain Cedar policy."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from chainsim import Harness, register

from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.policy import Policy
from services.common.tx import Code
from services.gateway.auth import Principal
from services.gateway.authz import authorize_run
from services.gateway.chainview import ChainView

JOB_TYPES = {"psi": "psi", "psi_cardinality": "psi_cardinality", "aggregation": "aggregation",
             "he_scoring": "he_scoring", "supply_chain": "supply_chain_verification"}
STATES = ("granted", "pending", "provider_only", "revoked", "rejected", "expired", "runs_used_up", "no_grant")


class StateView(ChainView):
    """The gateway's chain view, reading the same committed state the chain's CheckTx reads."""

    def __init__(self, harness: Harness):
        self.h = harness

    async def get(self, path: str, fresh: bool = False):
        return self.h.db.get(path.lstrip("/"))

    async def policy(self) -> Policy:
        doc = self.h.db.get("policy/current")
        return Policy(doc["text"], doc["version"])


def build(tmp: Path, level: str, job_type: str, state: str) -> tuple[Harness, Identity]:
    assoc, bank, telco = Identity.generate("association"), Identity.generate("bank"), Identity.generate("telco")
    h = Harness(tmp / "c.sqlite", assoc, balances={"bank": 1_000_000})
    h.block(register(h, bank, ("consumer",), Identity.generate("bank.node")),
            register(h, telco, ("provider",), Identity.generate("telco.node")))
    op = JOB_TYPES[job_type]
    h.block(h.tx(telco, "assets.List", {"id": "telco.data", "level": level, "operations": sorted(set(JOB_TYPES.values())),
                                        "commitment": "ab" * 32, "price": {"model": "free", "amount": 0},
                                        "metadata": example_metadata("Data")}))
    if state == "no_grant":
        return h, bank
    [requested] = h.block(h.tx(bank, "access.Request", {"id": "g-1", "asset": "telco.data", "operations": [op],
                                                        "purpose": "p", "expires_at": h.t0 + 3600,
                                                        "max_runs": 1}))
    if requested.code != Code.OK:  # the policy forbids this use at this level: there is no grant
        assert requested.code == Code.UNAUTHORIZED, requested.log
        return h, bank
    if state in ("granted", "revoked", "expired", "runs_used_up", "provider_only"):
        h.block(h.tx(telco, "access.Approve", {"id": "g-1"}))
        if state != "provider_only":
            h.block(h.tx(assoc, "access.Approve", {"id": "g-1"}))  # refused where not needed: harmless
    if state == "rejected":
        h.block(h.tx(telco, "access.Reject", {"id": "g-1", "reason": "no"}))
    if state == "revoked":
        h.block(h.tx(telco, "access.Revoke", {"id": "g-1", "reason": "no"}))
    if state == "expired":
        h.t0 += 7200
        h.block()
    if state == "runs_used_up":
        h.block(h.tx(bank, "jobs.Submit", {"id": "first", "type": job_type, "max_price": 0,
                                           "inputs": [{"asset": "telco.data", "grant": "g-1"}]}))
    return h, bank


@pytest.mark.parametrize("level,job_type", list(itertools.product(("L1", "L2", "L3", "L4"), JOB_TYPES)))
def test_gateway_and_chain_agree(tmp_path, level, job_type):
    outcomes = set()
    for i, state in enumerate(STATES):
        h, bank = build(tmp_path / f"{i}", level, job_type, state)
        payload = {"id": "j-1", "type": job_type, "max_price": 0, "inputs": [{"asset": "telco.data", "grant": "g-1"}]}
        chain_says = h.check(h.tx(bank, "jobs.Submit", payload)).code
        assert chain_says in (Code.OK, Code.UNAUTHORIZED), (state, chain_says)
        principal = Principal("bank", "member_admin", "bank", "signature", ("consumer",))
        gateway_says = asyncio.run(authorize_run(principal, payload, StateView(h), now=h.t0 + h.height * 10 + 10))
        assert gateway_says.allowed == (chain_says == Code.OK), (level, job_type, state, gateway_says.reason)
        outcomes.add(chain_says)
    if level != "L4" or job_type in ("aggregation", "he_scoring"):
        assert outcomes == {Code.OK, Code.UNAUTHORIZED}  # both answers occur: the cases discriminate
