"""The chain's signature rules (services/consensus/signatures.py, native/ed25519): ZIP-215's
verdicts, one by one and batched alike, refusing small-order keys; libsodium's for chains made
before; and the switch at genesis or at an upgrade, judged on signatures only the key's holder
can make (R with a small-order component, tests/torsion.py), which ZIP-215 accepts and libsodium
refuses."""

from __future__ import annotations

import json
import random

import pytest
import rdx_ed25519
from chainsim import Harness, NextRelease, register
from nacl.signing import SigningKey
from torsion import L, T8, encode, key_with_torsion, sign_with_torsion

from services.common.identity import Identity, b64
from services.common.tx import Code, Tx
from services.consensus import signatures
from services.consensus.signatures import LIBSODIUM, ZIP215

pytestmark = pytest.mark.unit

KEY = SigningKey(bytes(range(32)))
PUBLIC = bytes(KEY.verify_key)
MESSAGE = b"a tx's signing bytes"


def cases() -> list[tuple[str, bytes, bytes, bytes, bool, bool]]:
    """(name, key, message, signature, libsodium's verdict, ZIP-215's)."""
    good = KEY.sign(MESSAGE).signature
    s = int.from_bytes(good[32:], "little")
    identity_point = bytes([1] + [0] * 31)
    torsioned_key, torsioned_key_signature = key_with_torsion(KEY, MESSAGE)
    return [
        ("valid", PUBLIC, MESSAGE, good, True, True),
        ("valid, empty message", PUBLIC, b"", KEY.sign(b"").signature, True, True),
        ("message changed", PUBLIC, MESSAGE + b"!", good, False, False),
        ("signature bit flipped", PUBLIC, MESSAGE, good[:5] + bytes([good[5] ^ 1]) + good[6:], False, False),
        ("another key", bytes(SigningKey(bytes(32)).verify_key), MESSAGE, good, False, False),
        ("s not reduced (s + L)", PUBLIC, MESSAGE, good[:32] + (s + L).to_bytes(32, "little"), False, False),
        ("R with a small-order component", PUBLIC, MESSAGE, sign_with_torsion(KEY, MESSAGE), False, True),
        ("key with a small-order component, its holder's signature", torsioned_key, MESSAGE, torsioned_key_signature,
         False, True),
        # Anyone can sign for a small-order key (here R = identity, s = 0): refused by both.
        ("small-order key", identity_point, MESSAGE, identity_point + bytes(32), False, False),
        ("order-8 key", encode(T8), MESSAGE, identity_point + bytes(32), False, False),
        ("key not on the curve", bytes([2] + [0] * 31), MESSAGE, good, False, False),
        ("all zeros", bytes(32), MESSAGE, bytes(64), False, False),
        ("short signature", PUBLIC, MESSAGE, good[:63], False, False),
        ("short key", PUBLIC[:31], MESSAGE, good, False, False),
    ]


@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_each_rule_s_verdict(case):
    _, key, message, signature, by_libsodium, by_zip215 = case
    assert signatures.verify(LIBSODIUM, key, message, signature) is by_libsodium
    assert signatures.verify(ZIP215, key, message, signature) is by_zip215


def test_a_batch_s_verdicts_are_the_single_verdicts_whatever_it_mixes():
    rng = random.Random(7)
    keys = [SigningKey(bytes([i]) * 32) for i in range(5)]
    pool = [c[1:4] for c in cases()]
    for n in (1, 2, 16, 64, 100):
        items = []
        for _ in range(n):
            if rng.random() < 0.7:
                key, message = rng.choice(keys), rng.randbytes(rng.randrange(0, 300))
                items.append((bytes(key.verify_key), message, key.sign(message).signature))
            else:
                items.append(rng.choice(pool))
        expected = [signatures.verify(ZIP215, *item) for item in items]
        assert signatures.verify_many(ZIP215, items) == expected
        assert rdx_ed25519.verify_batch(items) == expected
        assert signatures.verify_many(LIBSODIUM, items) == [signatures.verify(LIBSODIUM, *i) for i in items]
    assert rdx_ed25519.verify_batch([]) == []


def test_zip215_accepts_everything_libsodium_accepts():
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(20)]
    for i, key in enumerate(keys):
        message = b"m%d" % i
        item = (bytes(key.verify_key), message, key.sign(message).signature)
        assert signatures.verify(LIBSODIUM, *item) and signatures.verify(ZIP215, *item)


# -- on the chain ----------------------------------------------------------------------------------

def torsion_signed(chain: Harness, who: Identity, type_: str, payload: dict) -> bytes:
    """``who``'s tx, its signature's R carrying a small-order component."""
    raw = chain.tx(who, type_, payload)
    _, signing_bytes = Tx.decode_signed(raw)
    out = json.loads(raw)
    out["sig"] = b64(sign_with_torsion(who.signing_key, signing_bytes))
    return json.dumps(out, separators=(",", ":"), sort_keys=True).encode()


def test_a_new_chain_judges_tx_signatures_by_zip215(tmp_path):
    chain = Harness(tmp_path / "new.sqlite", Identity.generate("association"))
    bank = Identity.generate("bank-a")
    chain.block(register(chain, bank))
    assert chain.db.get(signatures.RULE_KEY) == ZIP215
    tx = torsion_signed(chain, bank, "members.RotateKey", {"public_key": bank.public_key})
    assert chain.check(tx).code == Code.OK
    assert [r.code for r in chain.block(tx)] == [Code.OK]


def test_a_chain_made_before_zip215_keeps_libsodium_s_rule_until_its_upgrade(tmp_path):
    seat = Identity.generate("association.board-s0")
    bank = Identity.generate("bank-a")
    chain = Harness(tmp_path / "old.sqlite", Identity.generate("association"), board=[seat],
                    without=("signatures",), app_class=NextRelease)
    chain.block(register(chain, bank))
    assert chain.db.get(signatures.RULE_KEY) is None
    refused = torsion_signed(chain, bank, "members.RotateKey", {"public_key": bank.public_key})
    chain.nonces[bank.account] -= 1  # the refused tx spends no nonce
    assert chain.check(refused).code == Code.BAD_SIGNATURE
    at = chain.height + 3
    [scheduled] = chain.block(chain.tx(seat, "board.Propose", {"id": "p-zip215", "action": {
        "type": "governance.ScheduleUpgrade", "payload": {"name": "zip215", "height": at, "app_version": 2}}}))
    assert scheduled.code == Code.OK, scheduled.log
    while chain.height < at - 1:
        [result] = chain.block(refused)  # a proposer that let it in: failed, by the old rule, before the upgrade
        assert result.code == Code.BAD_SIGNATURE
    # The upgrade's own block judges its txs by the new rule.
    [result] = chain.block(refused)
    assert result.code == Code.OK and chain.db.get(signatures.RULE_KEY) == ZIP215
    chain.nonces[bank.account] += 1
    after = torsion_signed(chain, bank, "members.RotateKey", {"public_key": bank.public_key})
    assert chain.check(after).code == Code.OK



def test_a_genesis_naming_an_unknown_rule_is_refused_at_init_chain(tmp_path):
    from chainsim import CHAIN, local_app_spec
    from pydantic import ValidationError
    from tendermint.abci import types_pb2 as abci

    from services.consensus.app import RdxApp
    from services.consensus.state import Database

    spec = dict(local_app_spec(Identity.generate("association")), signatures="ed448")
    app = RdxApp(Database(tmp_path / "bad.sqlite"), CHAIN)
    with pytest.raises(ValidationError, match="signatures"):
        app.init_chain(abci.RequestInitChain(chain_id=CHAIN, app_state_bytes=json.dumps(spec).encode()))
