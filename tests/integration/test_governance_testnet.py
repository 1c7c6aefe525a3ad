"""Consortium governance on a real 4-validator network whose genesis (rdx genesis) names a board
of three seats, threshold 2, with the default powers (credits, validators, recovery ... need the
board): k-1 approvals do nothing, an expired proposal cannot execute, a member key replaced by
the board stops working at that height, a 5th validator joins by board vote and its vote is
needed, one is removed and the chain continues without it, a validator's key is rotated and the
new key votes (and a light client anchored at genesis verifies a read after all three), and a scheduled upgrade stops every node on the old binary at its height until
the next release takes over. The app hash agrees on every node throughout.

One network serves the module; the tests run in file order (the validator set changes).
Transactions go through validator 0, which no test stops.
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from rdx.testnet import Testnet
from services.common.chain import ChainClient, TxRejected
from services.common.identity import Identity
from services.common.tx import Code
from services.common.verified import Anchor, VerifiedChain
from services.consensus.validators.keeper import address

CHAIN_ID = "rdx-governance-test"
SEATS = [Identity.generate(f"association.board-s{i}") for i in range(3)]


@pytest.fixture(scope="module")
def net(toolchain, kafka, tmp_path_factory) -> Testnet:
    network = Testnet(tmp_path_factory.mktemp("governance"), kafka.bootstrap, validators=4, chain_id=CHAIN_ID,
                      association=Identity.generate("association"), timeout_commit="200ms", toolchain=toolchain,
                      board=SEATS, threshold=2, powers={})  # {}: every power at its default holder
    try:
        network.start()
        yield network
    finally:
        network.stop()


@pytest.fixture
async def client(net):
    async with ChainClient(net.rpc_urls[0], CHAIN_ID) as c:
        yield c


async def _run(fn, *args):
    return await asyncio.to_thread(fn, *args)


async def board_action(client: ChainClient, pid: str, type_: str, payload: dict) -> int:
    """Seat 0 proposes, seat 1 approves: the height at which the action executed."""
    await client.submit(SEATS[0], "board.Propose", {"id": pid, "action": {"type": type_, "payload": payload}})
    done = await client.submit(SEATS[1], "board.Approve", {"id": pid})
    proposal = await client.query(f"/governance/proposals/{pid}")
    assert proposal["status"] == "executed", proposal
    assert proposal["closed_height"] == done.height
    return done.height


def live(net: Testnet) -> list[int]:
    return [i for i in range(len(net.validators)) if net.node_alive(i)]


async def agree(net: Testnet, nodes: list[int]) -> int:
    """Every node in ``nodes`` has the same app hash and results hash at every height they all have."""
    top = min(net.heights()[i] or 0 for i in nodes)
    per_node = {i: await _run(net.headers, 1, top, i) for i in nodes}
    for h in range(1, top + 1):
        seen = {(hs[h]["app_hash"], hs[h]["last_results_hash"]) for hs in per_node.values()}
        assert len(seen) == 1, f"nodes disagree at height {h}: {seen}"
    return top


async def blocks_continue(net: Testnet, nodes: list[int], count: int = 3, timeout: float = 20.0) -> None:
    start = max(net.heights()[i] or 0 for i in nodes)
    await _run(net.wait_for_height, start + count, nodes, timeout)


async def test_k_minus_1_approvals_do_nothing_and_an_expired_proposal_cannot_execute(net, client):
    member = Identity.generate("acme")
    await client.submit(net.association, "members.Register", {  # admitting members: the officer's power
        "id": "acme", "name": "ACME", "roles": ["consumer"], "public_key": member.public_key})
    with pytest.raises(TxRejected) as refused:  # credits: the board's
        await client.submit(net.association, "bank.Deposit", {"to": "acme", "amount": 5, "reference": "r"})
    assert refused.value.code == Code.UNAUTHORIZED

    proposed = await client.submit(SEATS[0], "board.Propose", {"id": "credit-1", "action": {
        "type": "bank.Deposit", "payload": {"to": "acme", "amount": 500, "reference": "wire 1"}}})
    await _run(net.wait_for_height, proposed.height + 5)
    assert await client.query("/bank/balance/acme") is None  # 1 of 2 approvals, 5 blocks on: nothing
    assert (await client.query("/governance/proposals/credit-1"))["status"] == "open"

    expires = int(time.time()) + 3
    await client.submit(SEATS[0], "board.Propose", {"id": "credit-2", "expires_at": expires, "action": {
        "type": "bank.Deposit", "payload": {"to": "acme", "amount": 7, "reference": "wire 2"}}})
    await asyncio.sleep(max(0.0, expires - time.time()) + 1.5)
    with pytest.raises(TxRejected) as late:
        await client.submit(SEATS[2], "board.Approve", {"id": "credit-2"})
    assert late.value.code == Code.INVALID_STATE
    assert (await client.query("/governance/proposals/credit-2"))["status"] == "expired"

    executed = await client.submit(SEATS[2], "board.Approve", {"id": "credit-1"})  # the 2nd approval
    assert await client.query("/bank/balance/acme") == 500
    assert (await client.query("/governance/proposals/credit-1"))["closed_height"] == executed.height
    await agree(net, live(net))


async def test_a_member_key_replaced_by_the_board_stops_working_at_that_height(net, client):
    old, new = Identity.generate("leaky"), Identity.generate("leaky")
    await client.submit(net.association, "members.Register", {
        "id": "leaky", "name": "Leaky", "roles": ["consumer"], "public_key": old.public_key})
    await client.submit(old, "members.RotateKey", {"public_key": old.public_key})  # the old key works
    height = await board_action(client, "recover-leaky", "members.Recover",
                                {"account": "leaky", "public_key": new.public_key, "reason": "key leaked"})
    assert (await client.query("/revoked-keys/leaky")) == [{"public_key": old.public_key, "height": height,
                                                              "reason": "key leaked"}]
    with pytest.raises(TxRejected) as refused:
        await client.submit(old, "members.RotateKey", {"public_key": old.public_key})
    assert refused.value.code == Code.BAD_SIGNATURE
    done = await client.submit(new, "members.RotateKey", {"public_key": new.public_key})
    assert done.height > height
    assert (await client.query("/members/leaky"))["status"] == "active"
    await agree(net, live(net))


async def test_a_fifth_validator_joins_one_is_removed_and_a_key_is_rotated(net, client, capsys):
    # -- join: a 5th node block-syncs as a full node, then the board votes its key in
    fifth = await _run(net.add_node)
    key = net.validator_key(fifth)
    await _run(net.wait_for_height, max(h or 0 for h in net.heights()), [fifth], 60)
    joined = await board_action(client, "join-5th", "validators.Update",
                                {"changes": [{"pub_key": key, "power": 10, "name": "validator-4"}]})
    await _run(net.wait_for_height, joined + 2)
    assert key not in await _run(net.validator_set, joined + 1)
    assert (await _run(net.validator_set, joined + 2))[key] == 10 and len(await _run(net.validator_set, joined + 2)) == 5
    await blocks_continue(net, [0, 1, 2, 3, fifth])
    signed = [h for h in range(joined + 2, joined + 6) if address(key) in await _run(net.signers, h)]
    assert signed, "the new validator signed none of the blocks after it joined"
    # Its vote is needed: with validator 3 down, 0-2 hold 30 of 50 (not over 2/3); only with the 5th do blocks go on.
    await _run(net.stop_validator, 3)
    await blocks_continue(net, [0, 1, 2, fifth])

    # -- removal: validator 3 (down) leaves the set, and the chain no longer counts on it
    removed = await board_action(client, "remove-3", "validators.Update",
                                 {"changes": [{"pub_key": net.validator_key(3), "power": 0}]})
    await _run(net.wait_for_height, removed + 2, [0, 1, 2, fifth])
    after = await _run(net.validator_set, removed + 2)
    assert net.validator_key(3) not in after and sum(after.values()) == 40
    await _run(net.stop_validator, 2)  # 0, 1 and the 5th: 30 of 40, over 2/3 only because 3 is out
    try:
        await blocks_continue(net, [0, 1, fifth])
    finally:
        await _run(net.start_validator, 2)

    # -- rotation: validator 1 gets a new consensus key; the node switches once it is in effect
    new_key_file = net.root / "keys" / "validator-1.new.priv_validator_key.json"
    new_key = Testnet.new_validator_key(new_key_file)
    old_key = net.validator_key(1)
    rotated = await board_action(client, "rotate-1", "validators.Rotate", {"old_pub_key": old_key, "new_pub_key": new_key})
    await _run(net.wait_for_height, rotated + 2, [0, 2, fifth])
    in_effect = await _run(net.validator_set, rotated + 2)
    assert new_key in in_effect and old_key not in in_effect
    await _run(net.replace_validator_key, 1, new_key_file)
    assert net.validator_key(1) == new_key
    await _run(net.stop_validator, 2)  # 0, 1 (new key) and the 5th: blocks go on only if the new key votes
    try:
        await blocks_continue(net, [0, 1, fifth])
        top = max(net.heights()[i] or 0 for i in (0, 1, fifth))
        assert address(new_key) in await _run(net.signers, top - 1)
    finally:
        await _run(net.start_validator, 2)
    # A light client anchored at genesis follows the set through the join, the removal and the
    # rotation (skipping verification: each step needs a third of the power it already trusts).
    genesis = net.validators[0].node.home / "config" / "genesis.json"
    async with VerifiedChain(net.rpc_urls[0], Anchor.from_genesis(genesis)) as reader:
        assert (await reader.query(f"accounts/{SEATS[0].account}"))["public_key"] == SEATS[0].public_key
        trusted = {base64.b64encode(v.pub_key).decode() for v in reader.latest.validators}
        assert reader.latest.height > rotated + 2 and new_key in trusted and old_key not in trusted
        assert net.validator_key(3) not in trusted and key in trusted
    with capsys.disabled():
        print(f"\ngovernance testnet: validator 4 joined at {joined} (in the set from {joined + 2}, signed "
              f"{signed}), validator 3 removed at {removed} (out from {removed + 2}), validator 1's key rotated at "
              f"{rotated} (new key from {rotated + 2})")
    await agree(net, live(net))


async def test_a_scheduled_upgrade_stops_old_binaries_at_its_height_and_the_next_release_goes_on(net, client, capsys):
    running = live(net)
    at = max(net.heights()[i] or 0 for i in running) + 15
    scheduled = await board_action(client, "upgrade-v2", "governance.ScheduleUpgrade",
                                   {"name": "v2", "height": at, "app_version": 2})
    assert scheduled < at
    # Every node stops before `at`: none commits it on the old binary.
    deadline = time.monotonic() + 30
    while max(net.heights()[i] or 0 for i in running) < at - 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)
    heights = net.heights()
    assert all((heights[i] or at - 1) == at - 1 for i in running), heights
    logs = {i: net.validators[i].app.process.log_path.read_text(errors="replace") for i in running}
    stopped = [i for i, text in logs.items() if "UPGRADE NEEDED" in text]
    assert stopped, "no node logged why it stopped"
    assert all(f"upgrade 'v2', scheduled by the board, starts at height {at}" in logs[i] for i in stopped)
    # The next release on every node: the chain goes on from `at`, app version 2 in the headers after it.
    for i in running:
        v = net.validators[i]
        await _run(v.node.stop)
        await _run(v.app.stop)
        v.app.module = "tests.faults.next_release"
    for i in running:
        net.validators[i].app.start(wait=False)
    for i in running:
        await _run(net.validators[i].app.wait_ready, 60.0)
    await asyncio.gather(*(_run(net.validators[i].node.start, 60.0) for i in running))
    await _run(net.wait_for_height, at + 3, running, 60)
    header = (await _run(net.headers, at + 1, at + 1, 0))[at + 1]
    assert header["version"]["app"] == "2"
    assert (await client.query("/governance/app-version")) == 2
    # The removed validator 3 comes back as a full node on the new release and syncs the whole chain.
    net.validators[3].app.module = "tests.faults.next_release"
    await _run(net.start_validator, 3)
    everyone = list(range(len(net.validators)))
    await _run(net.wait_for_height, at + 3, everyone, 60)
    top = await agree(net, everyone)
    assert await _run(net.app_hash_mismatches) == []
    with capsys.disabled():
        print(f"\ngovernance testnet: upgrade scheduled at {scheduled} for height {at}; old binaries stopped at "
              f"{at - 1} (nodes {stopped} logged it); next release on from {at}; {len(everyone)} nodes agree "
              f"on every app hash up to {top}")
