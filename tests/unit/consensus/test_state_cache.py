"""The consensus database keeps recent committed values in memory: reads agree with the file
after every commit, a deletion and a failed (rolled back) commit included, whatever the bound."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainsim import Harness
from tendermint.abci import types_pb2 as abci

from services.common.identity import Identity
from services.common.tx import Code
from services.consensus import state
from services.consensus.state import _DELETED, ChainEvent, Database

pytestmark = pytest.mark.unit

KEYS = [f"accounts/m{i}" for i in range(6)]
# A block: some keys set (a value's text of 1-3 characters) or deleted; and whether its commit fails.
blocks = st.lists(st.tuples(st.dictionaries(st.sampled_from(KEYS), st.one_of(st.integers(0, 999), st.none()),
                                            max_size=4), st.booleans()), max_size=12)


def commit(db: Database, height: int, writes: dict[str, int | None], fail: bool) -> None:
    texts = {k: _DELETED if v is None else str(v) for k, v in writes.items()}
    # An event whose data cannot be serialised fails the transaction after the kv rows are written.
    events = [ChainEvent(height, 0, 0, 0, "Failing", "x", {"bad": object()})] if fail else []
    if fail:
        with pytest.raises(TypeError):
            db.commit_block(height, b"\x01" * 32, texts, events)
    else:
        db.commit_block(height, b"\x01" * 32, texts, events)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=blocks, bound=st.sampled_from([2, 5, 50_000]), bytes_bound=st.sampled_from([15, 40, 1 << 20]))
def test_reads_agree_with_the_file_after_every_commit_and_every_rolled_back_one(tmp_path_factory, blocks, bound,
                                                                                bytes_bound):
    path = tmp_path_factory.mktemp("db") / "chain.sqlite"
    with mock.patch.object(state, "_CACHED_TEXTS", bound), mock.patch.object(state, "_CACHED_BYTES", bytes_bound):
        db = Database(path)
        for height, (writes, fail) in enumerate(blocks, start=1):
            for key in KEYS[:3]:
                db.get_text(key)  # reads between blocks fill the cache with these keys (absent ones too)
            commit(db, height, writes, fail)
            disk = Database(path)  # a fresh connection: no cache, only the file
            assert {k: db.get_text(k) for k in KEYS} == {k: disk.get_text(k) for k in KEYS}
            assert len(db._texts) <= bound
            held = sum(len(k) + len(t or "") for k, t in db._texts.items())
            assert db._text_bytes == held and (held <= bytes_bound or len(db._texts) == 1)
            disk.close()
        db.close()


def test_a_committed_value_is_read_again_without_a_query(tmp_path):
    db = Database(tmp_path / "chain.sqlite")
    db.commit_block(1, b"\x01" * 32, {"accounts/a": '{"balance":1}', "accounts/b": '{"balance":2}'}, [])
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    assert db.get_text("accounts/a") == '{"balance":1}'
    db.commit_block(2, b"\x02" * 32, {"accounts/a": _DELETED}, [])
    statements.clear()
    assert (db.get_text("accounts/a"), db.get("accounts/b")) == (None, {"balance": 2})
    assert not [s for s in statements if s.startswith("SELECT")]


def test_a_flood_of_queries_for_absent_keys_keeps_the_cache_bounded_and_blocks_right(tmp_path):
    """Anyone who can query chooses the keys: 2,000 absent 500-character paths, proven and not."""
    people = [Identity.generate("m0"), Identity.generate("m1")]
    with mock.patch.object(state, "_CACHED_BYTES", 100_000):
        chain = Harness(tmp_path / "chain.sqlite", Identity.generate("association"), balances={people[0].account: 50})
        for p in people:
            assert chain.block(chain.tx(chain.association, "members.Register", {
                "id": p.account, "name": p.account, "roles": ["consumer"], "public_key": p.public_key}))[0].code == 0
        for i in range(2000):
            answer = chain.app.query(abci.RequestQuery(path=f"/accounts/{i:0500d}", prove=bool(i % 2)))
            assert answer.code == Code.NOT_FOUND
            assert chain.db._text_bytes <= 100_000
        sent = chain.block(chain.tx(people[0], "bank.Transfer", {"to": people[1].account, "amount": 5}))
        assert sent[0].code == Code.OK, sent[0].log
        assert [chain.db.get(f"bank/balance/{p.account}") for p in people] == [45, 5]
