"""The tx envelope's unsigned ``trace`` changes nothing the validators agree on: the same signed tx
with or without it (or with another) gives the same results, state and app hash; only the relay's
outbox keeps it beside the tx's events. A malformed one is refused like any undecodable tx."""

from __future__ import annotations

from chainsim import Harness, register

from services.common.identity import Identity
from services.common.tx import Code, Tx

TRACE_A = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_B = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _chain(path, association: Identity, telco: Identity) -> Harness:
    h = Harness(path, association)
    h.block(register(h, telco))
    return h


def test_the_trace_changes_no_result_no_state_and_no_app_hash(tmp_path):
    association, telco = Identity.generate("association"), Identity.generate("telco")
    runs = {}
    for name, trace in (("none", None), ("a", TRACE_A), ("b", TRACE_B)):
        h = _chain(tmp_path / f"{name}.sqlite", association, telco)
        tx = Tx.build(telco, "rdx-test", "members.SetNode", 1, {"node": {"public_key": telco.public_key,
                                                                            "endpoint": "127.0.0.1:50051"}})
        raw = tx.model_copy(update={"trace": trace}).encode()
        assert h.check(raw).code == Code.OK
        results = h.block(raw)
        outbox = h.db.events_after((h.height, -2, -1))
        runs[name] = ([(r.code, r.log, list(r.events)) for r in results], h.state(), h.last_response.app_hash,
                      [(e.id, e.type, e.data) for e in outbox], {e.trace for e in outbox})
    assert runs["none"][0][0][0] == Code.OK and runs["none"][3]  # the tx did something, and emitted events
    for name in ("a", "b"):
        assert runs[name][:4] == runs["none"][:4]
    assert runs["none"][4] == {None} and runs["a"][4] == {TRACE_A} and runs["b"][4] == {TRACE_B}


def test_a_malformed_trace_is_refused_as_undecodable(tmp_path):
    association, telco = Identity.generate("association"), Identity.generate("telco")
    h = _chain(tmp_path / "c.sqlite", association, telco)
    good = Tx.build(telco, "rdx-test", "members.SetNode", 1, {"node": {"public_key": telco.public_key,
                                                                         "endpoint": "127.0.0.1:50051"}}).encode()
    for bad in (b'"trace":null,', b'"trace":"garbage",', b'"trace":"' + TRACE_A.upper().encode() + b'",',
                b'"trace":"' + TRACE_A.encode() + b'x",', b'"trace":1,'):
        raw = good.replace(b'"type":', bad + b'"type":')
        assert h.check(raw).code == Code.UNDECODABLE, raw
    assert h.check(good).code == Code.OK
