"""Fuzzing the tx decoder and CheckTx: whatever the bytes, a clear rejection, never a crash,
never a state change."""

from __future__ import annotations

import json

import pytest
from chainsim import Harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tendermint.abci import types_pb2 as abci

from services.common.identity import Identity
from services.common.tx import Code, Tx, TxError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries({
    "chain_id": st.sampled_from(["rdx-test", "other"]) | st.text(max_size=5),
    "type": st.sampled_from(["members.Register", "jobs.Submit", "assets.List", "bank.Transfer", "x.Y"]),
    "signer": st.sampled_from(["association", "nobody"]) | st.text(max_size=5),
    "nonce": st.integers(min_value=-2, max_value=3) | st.text(max_size=3),
    "payload": st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    "sig": st.text(max_size=90),
})

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@given(st.binary(max_size=512))
@FUZZ
def test_decoder_never_crashes_on_bytes(raw):
    try:
        Tx.decode(raw)
    except TxError as exc:
        assert exc.code in (Code.UNDECODABLE, Code.OVERSIZE)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return Harness(tmp_path_factory.mktemp("fuzz") / "c.sqlite", Identity.generate("association"))


@given(raw=st.binary(max_size=512) | envelopes.map(lambda e: json.dumps(e, sort_keys=True, separators=(",", ":")).encode()))
@FUZZ
def test_checktx_rejects_garbage_cleanly_and_changes_nothing(chain, raw):
    before = dict(chain.app.check_state.writes), chain.state()
    resp = chain.app.check_tx(abci.RequestCheckTx(tx=raw))
    assert resp.code != Code.OK and resp.log  # unsigned garbage is never accepted
    assert resp.code != 99, resp.log  # and never reaches a handler's internal error
    assert (dict(chain.app.check_state.writes), chain.state()) == before
