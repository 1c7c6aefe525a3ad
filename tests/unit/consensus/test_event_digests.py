"""Every event a block emits is attested in the block's results: its ABCI event carries the id and
the digest of exactly what the relay publishes, so a Kafka consumer's check
(services/common/chainevents.py) accepts the relay's record and nothing else."""

from __future__ import annotations

from chainsim import Harness
from google.protobuf.timestamp_pb2 import Timestamp
from tendermint.abci import types_pb2 as abci
from workload import mixed_workload

from services.common.chainevents import digest_of
from services.common.events import Event
from services.common.identity import Identity
from services.consensus.relay import to_event


def _attested(events) -> dict[str, tuple[str, str, str]]:
    out = {}
    for e in events:
        attrs = {a.key: a.value for a in e.attributes}
        out[attrs["id"]] = (e.type, attrs["entity"], attrs["digest"])
    return out


def test_every_published_event_matches_its_attestation_in_the_block(tmp_path):
    association = Identity.generate("association")
    chain = Harness(tmp_path / "c.sqlite", association)
    seen = 0
    for who, type_, payload in mixed_workload(association, members=3):
        raw = chain.tx(who, type_, payload)
        height = chain.height + 1
        resp = chain.app.finalize_block(abci.RequestFinalizeBlock(
            height=height, txs=[raw], time=Timestamp(seconds=chain.t0 + height * 10)))
        chain.app.commit(abci.RequestCommit())
        chain.height = height
        attested = _attested(list(resp.events) + [e for r in resp.tx_results for e in r.events])
        published = [Event.decode(to_event(e).encode()) for e in chain.db.events_after((height, -2, -1))]
        assert {e.id for e in published} == set(attested), type_
        for event in published:  # as a consumer decodes it from Kafka
            assert attested[event.id] == (event.type, event.entity, digest_of(event)), (type_, event.id)
            seen += 1
            forged = event.model_copy(update={"data": {**event.data, "forged": True}})
            assert digest_of(forged) != attested[event.id][2]
    assert seen > 40
