"""A mixed workload of every transaction type, in an order that succeeds, for determinism,
fault and benchmark runs. Each step is (signer, tx type, payload); steps run in order."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

from rdx.genesis import local_seat, seat_name
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.policy import DEFAULT_POLICY_TEXT

Step = tuple[Identity, str, dict]
COMMIT = "ab" * 32
RESULT = "cd" * 32


def mixed_workload(association: Identity, members: int = 4, tag: str = "w", policy_version: int = 2,
                   now: int | None = None) -> Iterator[Step]:
    """Every tx type the chain accepts appears at least once; ``tag`` keeps ids unique per run,
    ``policy_version`` is the next policy version of the chain it runs on, ``now`` its time (a
    delegate's expiry is bounded by it; by default the clock's)."""
    people = [Identity.generate(f"{tag}-m{i}") for i in range(members)]
    nodes = [Identity.generate(f"{p.account}.node") for p in people]
    far = int(time.time()) + 10 * 365 * 86_400
    for i, (m, node) in enumerate(zip(people, nodes)):
        yield association, "members.Register", {
            "id": m.account, "name": f"Member {i}", "roles": ["provider", "consumer"], "public_key": m.public_key,
            "node": {"public_key": node.public_key, "endpoint": f"127.0.0.1:{50051 + i}"}}
        yield association, "bank.Deposit", {"to": m.account, "amount": 100_000, "reference": f"{tag}-dep-{i}"}
    consumer, providers = people[0], people[1:]
    for m in people:
        yield m, "members.RotateKey", {"public_key": m.public_key}
    for i, p in enumerate(providers):
        yield p, "assets.List", {
            "id": f"{tag}.a{i}", "level": ["L2", "L3", "L4"][i % 3], "operations": ["aggregation", "he_scoring"],
            "commitment": COMMIT, "price": {"model": "fixed", "amount": 100 + i}, "metadata": example_metadata(f"Asset {i}")}
        yield p, "assets.Update", {
            "id": f"{tag}.a{i}", "level": ["L2", "L3", "L4"][i % 3], "operations": ["aggregation", "he_scoring"],
            "commitment": COMMIT, "price": {"model": "per_record", "amount": 2},
            "metadata": example_metadata(f"Asset {i} v2", row_count=500)}
        yield consumer, "access.Request", {"id": f"{tag}.g{i}", "asset": f"{tag}.a{i}", "operations": ["aggregation"],
                                           "purpose": "joint credit statistics", "expires_at": far, "max_runs": 3}
        yield p, "access.Approve", {"id": f"{tag}.g{i}"}
        if i % 3 == 2:  # L4: the association approves too
            yield association, "access.Approve", {"id": f"{tag}.g{i}"}
    inputs = [{"asset": f"{tag}.a{i}", "grant": f"{tag}.g{i}"} for i in range(len(providers))]
    # a job that completes and settles
    yield consumer, "jobs.Submit", {"id": f"{tag}.j1", "type": "aggregation", "inputs": inputs, "max_price": 5_000}
    for i, node in enumerate(nodes):
        mine = {f"{tag}.a{i - 1}": COMMIT} if i else {}
        yield node, "jobs.Attest", {"job": f"{tag}.j1", "result_hash": RESULT, "records_used": 100,
                                    "input_commitments": mine}
    # one that fails, one that is aborted
    yield consumer, "jobs.Submit", {"id": f"{tag}.j2", "type": "aggregation", "inputs": inputs[:1], "max_price": 1_000}
    yield nodes[1], "jobs.Fail", {"job": f"{tag}.j2", "reason": "dataset unavailable"}
    yield consumer, "jobs.Submit", {"id": f"{tag}.j3", "type": "aggregation", "inputs": inputs[:1], "max_price": 1_000}
    yield association, "jobs.Abort", {"job": f"{tag}.j3", "reason": "kill switch drill"}
    # one whose provider holds back a release key: locked when both attest, settled at the release
    key = hashlib.sha256(f"{tag}.j4 release key".encode()).hexdigest()
    released = {people[2].account: hashlib.sha256(bytes.fromhex(key)).hexdigest()}
    yield consumer, "jobs.Submit", {"id": f"{tag}.j4", "type": "aggregation", "inputs": inputs[1:2], "max_price": 1_000}
    yield nodes[2], "jobs.Attest", {"job": f"{tag}.j4", "result_hash": RESULT, "records_used": 50,
                                    "input_commitments": {f"{tag}.a1": COMMIT}, "releases": released,
                                    "records": {f"{tag}.a1": 50}}
    yield nodes[0], "jobs.Attest", {"job": f"{tag}.j4", "result_hash": RESULT, "records_used": 7,
                                    "input_commitments": {}, "releases": released, "records": {f"{tag}.a1": 50}}
    yield nodes[2], "jobs.Release", {"job": f"{tag}.j4", "key": key}
    # access that is rejected and revoked
    yield consumer, "access.Request", {"id": f"{tag}.g-rej", "asset": f"{tag}.a0", "operations": ["he_scoring"],
                                       "purpose": "scoring", "expires_at": far, "max_runs": 1}
    yield providers[0], "access.Reject", {"id": f"{tag}.g-rej", "reason": "not this purpose"}
    yield providers[0], "access.Revoke", {"id": f"{tag}.g0", "reason": "contract ended"}
    yield consumer, "bank.Transfer", {"to": providers[0].account, "amount": 10, "memo": "thanks"}
    analyst = Identity.generate(f"{consumer.account}.delegate-analyst")
    yield consumer, "members.Delegate", {"label": "analyst", "public_key": analyst.public_key, "powers": ["jobs.Submit"],
                                         "expires_at": (int(time.time()) if now is None else now) + 30 * 86_400}
    yield consumer, "members.Undelegate", {"account": analyst.account}
    yield association, "bank.Withdraw", {"member": providers[0].account, "amount": 5, "reference": f"{tag}-wd"}
    yield providers[0], "members.SetNode", {"node": {"public_key": nodes[1].public_key, "endpoint": "127.0.0.1:50999"}}
    yield providers[0], "assets.Delist", {"id": f"{tag}.a0", "reason": "retired"}
    if len(providers) > 1:
        yield association, "assets.Suspend", {"id": f"{tag}.a1", "reason": "audit"}
    yield association, "members.Suspend", {"member": people[-1].account, "reason": "audit"}
    yield association, "members.Reinstate", {"member": people[-1].account}
    gateway = Identity.generate("association.node")
    yield association, "members.SetNode", {"node": {"public_key": gateway.public_key, "endpoint": "127.0.0.1:8000"}}
    yield gateway, "audit.Anchor", {"first_seq": 1, "last_seq": 10, "digest": "ef" * 32}
    yield association, "governance.PublishPolicy", {
        "version": policy_version, "text": DEFAULT_POLICY_TEXT + f"\n// v{policy_version}: republished unchanged\n"}
    yield from governance(association, people, tag)


def governance(association: Identity, people: list[Identity], tag: str) -> Iterator[Step]:
    """On a chain made by ``rdx genesis`` for this machine (a board of one seat, ``local_seat``, the
    officer holding every power it may): parameters, a key recovered, a validator that joins, is
    rotated and leaves (power 1, so the chain never waits for it), an upgrade scheduled and
    cancelled, and the board growing to two seats, acting 2 of 2, and shrinking back to one."""
    seat = local_seat(association)
    yield association, "governance.SetParams", {"params": {"max_pending_txs_per_signer": 500}}
    yield association, "members.Recover", {"account": people[-1].account, "reason": "key leaked (drill)",
                                           "public_key": Identity.generate(people[-1].account).public_key}
    joining, rotated = Identity.generate("validator"), Identity.generate("validator")
    yield association, "validators.Update", {"changes": [{"pub_key": joining.public_key, "power": 1, "name": tag}]}
    yield association, "validators.Rotate", {"old_pub_key": joining.public_key, "new_pub_key": rotated.public_key}
    yield association, "validators.Update", {"changes": [{"pub_key": rotated.public_key, "power": 0}]}
    yield seat, "governance.ScheduleUpgrade", {"name": f"{tag}-drill", "height": 10**12, "app_version": 2}
    yield seat, "governance.CancelUpgrade", {"name": f"{tag}-drill"}
    second = Identity.generate(f"{association.account}.board-{tag}-second")
    one = [{"name": seat_name(association.account, seat), "public_key": seat.public_key}]
    two = one + [{"name": seat_name(association.account, second), "public_key": second.public_key}]
    yield seat, "board.Propose", {"id": f"{tag}.p1", "action": {"type": "governance.ConfigureBoard",
                                                                 "payload": {"seats": two, "threshold": 2}}}
    yield seat, "board.Propose", {"id": f"{tag}.p2", "action": {"type": "bank.Deposit", "payload": {
        "to": people[0].account, "amount": 1, "reference": f"{tag}-board"}}}
    yield second, "board.Approve", {"id": f"{tag}.p2"}
    yield second, "board.Propose", {"id": f"{tag}.p3", "action": {"type": "governance.ConfigureBoard",
                                                                   "payload": {"seats": one, "threshold": 1}}}
    yield seat, "board.Approve", {"id": f"{tag}.p3"}
    yield seat, "governance.ConfigureBoard", {"seats": one, "threshold": 1}
