"""Only the chain speaks for the chain (issue 15): a chain event that anyone (a faulty
validator's relay, a client with write access) publishes to ``rdx.chain.events.v1`` changes
nothing unless the consumer's own chain node holds it, as it reads, in that block's results.

On the session's real chain and broker: the verifier against ``block_results``; then the real
billing service, fed forged deposits (a squatted run of future ids, and a past real event's id
with another amount) before a real deposit: its books show the real deposit only, the forged
records are dead letters with reason ``not_on_chain``, and the real event applies although a
forged record came first under its id.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from datetime import datetime, timezone

import pytest
from aiokafka import AIOKafkaConsumer
from kafkakit import send_raw

from rdx.components import ServiceProcess, free_port
from services.common.chain import ChainClient
from services.common.chainevents import ChainEventVerifier, ChainUnavailable, NotOnChain
from services.common.deadletter import Reason
from services.common.events import CHAIN_EVENTS, Event, EventDecodeError
from services.common.identity import Identity

pytestmark = pytest.mark.timeout(300)


def _events(messages) -> list[Event]:
    """The events among ``messages``: the topic also holds the hostile records tests send, not events."""
    out = []
    for m in messages:
        try:
            out.append(Event.decode(m.value))
        except EventDecodeError:
            pass
    return out


async def _committed_events(bootstrap: str, type_: str, pred) -> list[Event]:
    """Every record of that type on the topic now that ``pred`` accepts."""
    consumer = AIOKafkaConsumer(CHAIN_EVENTS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    found = []
    try:
        while batches := await consumer.getmany(timeout_ms=1000):
            for messages in batches.values():
                found += [e for e in _events(messages) if e.type == type_ and pred(e)]
        return found
    finally:
        await consumer.stop()


async def _committed_event(bootstrap: str, type_: str, pred) -> Event:
    """The relay's record of a committed event, read back from the topic."""
    consumer = AIOKafkaConsumer(CHAIN_EVENTS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for event in _events(messages):
                    if event.type == type_ and pred(event):
                        return event
        raise AssertionError(f"no {type_} on the topic")
    finally:
        await consumer.stop()


async def _deposit_to_new_member(client: ChainClient, association: Identity, bootstrap: str, who: Identity,
                                 amount: int, reference: str) -> tuple[int, Event]:
    """Register ``who``, deposit to it; the deposit's height and the relay's record of it."""
    await client.submit(association, "members.Register", {
        "id": who.account, "name": who.account, "roles": ["consumer"], "public_key": who.public_key})
    committed = await client.submit(association, "bank.Deposit", {"to": who.account, "amount": amount,
                                                                   "reference": reference})
    event = await _committed_event(bootstrap, "CreditsDeposited", lambda e: e.data.get("reference") == reference)
    assert event.data["height"] == committed.height
    return committed.height, event


async def _booked_deposits(billing: ServiceProcess, member: Identity, want: int) -> list[tuple[str, int]]:
    """(event id, amount) of the member's deposits in billing's statement, once there are ``want`` (or 60 s)."""
    deadline, deposits = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{billing.url}/v1/statements/{member.account}?since=0", timeout=5) as resp:
            statement = json.loads(resp.read())
        deposits = [(e["event_id"], e["amount"]) for e in statement["entries"] if e["kind"] == "deposit"]
        if len(deposits) >= want:
            break
        await asyncio.sleep(0.3)
    return deposits


def _forged(event_id: str, type_: str, entity: str, data: dict) -> Event:
    height = int(event_id.split("/")[0])
    return Event(id=event_id, type=type_, entity=entity, source="consensus",
                 occurred_at=datetime.now(timezone.utc).replace(microsecond=0), data={**data, "height": height})


async def test_the_verifier_accepts_the_chains_event_and_refuses_every_alteration(chain, kafka):
    async with ChainClient(chain.rpc_url, chain.chain_id) as client:
        height, real = await _deposit_to_new_member(client, chain.association, kafka.bootstrap,
                                                    Identity.generate("verified-member"), 5, "verifier-real")
        verifier = ChainEventVerifier(client)
        await verifier.verify(real)
        # A block's own events (FinalizeBlock's) are checked too: of the genesis policies on the topic
        # (other tests' chains publish to this broker as well), this chain's passes, the others do not.
        verdicts = []
        for genesis in await _committed_events(kafka.bootstrap, "PolicyPublished", lambda e: e.id == "1/-1/1"):
            try:
                await verifier.verify(genesis)
                verdicts.append(True)
            except NotOnChain:
                verdicts.append(False)
        assert verdicts.count(True) >= 1, verdicts

        def altered(**changes) -> Event:
            return real.model_copy(update=changes)

        for name, forged in {
            "another amount": altered(data={**real.data, "amount": 5_000}),
            "another member": altered(entity="member:someone-else"),
            "another type": altered(type="CreditsWithdrawn"),
            "another time": altered(occurred_at=datetime(2030, 1, 1, tzinfo=timezone.utc)),
            "an id the block does not hold": altered(id=f"{height}/7/0"),
            "a height that does not match its id": altered(data={**real.data, "height": height + 1}),
            "not a chain id": altered(id="forged"),
        }.items():
            with pytest.raises(NotOnChain):
                await verifier.verify(forged)
            print(f"refused: {name}")
        far = _forged(f"{height + 1000}/0/0", "CreditsDeposited", real.entity, real.data)
        started = time.monotonic()
        with pytest.raises(NotOnChain, match="not committed"):
            await verifier.verify(far)
        assert time.monotonic() - started < 2  # a far-future id is refused at once, not waited for

    async with ChainClient(f"http://127.0.0.1:{free_port()}", chain.chain_id, timeout=1) as nowhere:
        with pytest.raises(ChainUnavailable):
            await ChainEventVerifier(nowhere).verify(real)


async def test_billing_books_only_deposits_the_chain_made_and_a_squatted_id_does_not_suppress_the_real_one(
        chain, kafka, tmp_path):
    member = Identity.generate("squatted-member")
    billing = ServiceProcess("billing", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": kafka.bootstrap, "RDX_COMETBFT_RPC": chain.rpc_url, "RDX_CHAIN_ID": chain.chain_id,
        "RDX_STATE_ROOT": str(tmp_path / "state")}, tmp_path / "logs")
    billing.start()

    async def forge(event: Event) -> int:
        return await send_raw(kafka.bootstrap, CHAIN_EVENTS, event.encode(), key=event.entity.encode())

    try:
        async with ChainClient(chain.rpc_url, chain.chain_id) as client:
            first_height, real_first = await _deposit_to_new_member(client, chain.association, kafka.bootstrap,
                                                                    member, 3, "real-1")
            # A conflicting copy of a real, already published event: same id, another amount.
            offsets = [await forge(real_first.model_copy(update={"data": {**real_first.data, "amount": 999_999}}))]
            # Squatting: forged deposits under every id the next blocks' first tx will have.
            top = await client.height()
            squatted = [f"{h}/0/0" for h in range(top + 1, top + 31)]
            for event_id in squatted:
                offsets.append(await forge(_forged(event_id, "CreditsDeposited", f"member:{member.account}",
                                                   {"member": member.account, "amount": 999, "reference": "forged"})))
            second = await client.submit(chain.association, "bank.Deposit",
                                         {"to": member.account, "amount": 7, "reference": "real-2"})
        real_id = f"{second.height}/0/0"
        assert real_id in squatted, (real_id, squatted[0], squatted[-1])  # a forged record came first under its id

        deposits = await _booked_deposits(billing, member, 2)
        assert sorted(amount for _, amount in deposits) == [3, 7], deposits
        assert (real_id, 7) in deposits and (f"{first_height}/0/0", 3) in deposits

        # Every forged record is a dead letter (the topic also holds other tests' chains' events, which
        # this chain does not hold either: only the records sent here are counted).
        db = sqlite3.connect(tmp_path / "state" / "billing" / "ledger.sqlite")
        deadline, refused = time.monotonic() + 60, {}
        while time.monotonic() < deadline and set(refused) != set(offsets):
            refused = dict(db.execute(f'SELECT "offset", reason FROM dead_letters WHERE topic = ? AND "offset" IN '
                                      f'({",".join("?" * len(offsets))})', (CHAIN_EVENTS, *offsets)).fetchall())
            await asyncio.sleep(0.3)
        assert set(refused) == set(offsets) and set(refused.values()) == {Reason.NOT_ON_CHAIN}, refused
        with urllib.request.urlopen(f"{billing.url}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert f'reason="{Reason.NOT_ON_CHAIN}"' in metrics
    finally:
        billing.stop()


async def test_billing_skips_ignored_types_unproven_and_neither_they_nor_a_lying_header_suppress_a_real_event(
        chain, kafka, tmp_path):
    """Billing skips, unproven and unrecorded, the event types its ledger does not act on, and when the
    relay's ``rdx-event-type`` header names one, skips the record unread (services/billing/events.py).
    Hostile records for each path, on the real chain and broker: ignored-type records squatting the ids
    of the next blocks' first txs, a forged deposit whose header calls it an ignored type, and bytes
    that are no event under an ignored, an applied and no header. The real deposit that lands under a
    squatted id applies; only the unreadable records that claim an applied type, or none, are dead
    letters; the skipped ones leave no trace at all."""
    member = Identity.generate("ignored-squat-member")
    billing = ServiceProcess("billing", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": kafka.bootstrap, "RDX_COMETBFT_RPC": chain.rpc_url, "RDX_CHAIN_ID": chain.chain_id,
        "RDX_STATE_ROOT": str(tmp_path / "state")}, tmp_path / "logs")
    billing.start()

    async def send(value: bytes, type_header: str | None, event_id: str = "x") -> int:
        headers = [("rdx-event-id", event_id.encode())]
        if type_header is not None:
            headers.append(("rdx-event-type", type_header.encode()))
        return await send_raw(kafka.bootstrap, CHAIN_EVENTS, value, key=b"forged", headers=headers)

    try:
        async with ChainClient(chain.rpc_url, chain.chain_id) as client:
            first_height, _ = await _deposit_to_new_member(client, chain.association, kafka.bootstrap,
                                                           member, 3, "ignored-real-1")
            top = await client.height()
            squatted = [f"{h}/0/0" for h in range(top + 1, top + 31)]
            skipped = []
            for event_id in squatted:  # ignored types under the ids, each with its true header and without
                forged = _forged(event_id, "JobCompleted", "job:forged",
                                 {"job": "forged", "type": "psi", "consumer": member.account, "reason": None,
                                  "result_hash": None})
                skipped.append(await send(forged.encode(), "JobCompleted", event_id))
                skipped.append(await send(forged.encode(), None, event_id))
            lying = _forged(f"{top + 1}/0/0", "CreditsDeposited", f"member:{member.account}",
                            {"member": member.account, "amount": 500, "reference": "lying-header"})
            skipped.append(await send(lying.encode(), "JobAttested", lying.id))
            skipped.append(await send(b"not json", "JobReleased"))
            dead = [await send(b"not json", "CreditsDeposited"), await send(b"not json", None)]
            second = await client.submit(chain.association, "bank.Deposit",
                                         {"to": member.account, "amount": 7, "reference": "ignored-real-2"})
        real_id = f"{second.height}/0/0"
        assert real_id in squatted, (real_id, squatted[0], squatted[-1])

        deposits = await _booked_deposits(billing, member, 2)
        # The real deposit applied although ignored-type records (and a lying one) came first under its id.
        assert sorted(deposits) == sorted([(f"{first_height}/0/0", 3), (real_id, 7)]), deposits

        db = sqlite3.connect(tmp_path / "state" / "billing" / "ledger.sqlite")
        sent = skipped + dead
        marks = ",".join("?" * len(sent))
        letters = dict(db.execute(f'SELECT "offset", reason FROM dead_letters WHERE topic = ? AND "offset" IN ({marks})',
                                  (CHAIN_EVENTS, *sent)).fetchall())
        assert letters == {offset: Reason.NOT_JSON for offset in dead}, letters
        recorded = {i for (i,) in db.execute(f'SELECT event_id FROM applied_events WHERE event_id IN '
                                              f'({",".join("?" * len(squatted))})', squatted)}
        assert recorded == {real_id}, recorded
    finally:
        billing.stop()
