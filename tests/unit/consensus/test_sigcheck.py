"""The signature helper process (services/consensus/sigcheck.py): the same verdicts as in-process
verification by each rule, in order, and a helper that dies, stalls or answers wrongly only ends
the offload."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from nacl.signing import SigningKey

from services.common import identity
from services.consensus import signatures, sigcheck
from services.consensus.sigcheck import HELPER_UP, SignatureHelper

pytestmark = pytest.mark.unit

KEY = SigningKey(bytes(range(32)))
PUBLIC = bytes(KEY.verify_key)
L = 2**252 + 27742317777372353535851937790883648493  # the group order: s must be below it


@pytest.fixture
def helper():
    started: list[SignatureHelper] = []

    def _start(command: list[str] | None = None) -> tuple[SignatureHelper, list]:
        """The helper, and the contexts of the signatures it found valid; every answer in ``h.answers``."""
        reported: list = []

        def on_answer(context, ok: bool) -> None:
            h.answers.append((context, ok))
            if ok:
                reported.append(context)

        h = SignatureHelper(on_answer, command)
        h.answers = []
        h.start()
        started.append(h)
        return h, reported

    yield _start
    for h in started:
        h.close()


def cases() -> list[tuple[str, bytes, bytes, bytes]]:
    """(name, public key, message, signature): valid ones and what libsodium refuses."""
    message = b"a tx's signing bytes"
    good = KEY.sign(message).signature
    s = int.from_bytes(good[32:], "little")
    small_order = bytes([1] + [0] * 31)  # the identity point
    other = SigningKey(bytes(32)).verify_key
    return [
        ("valid", PUBLIC, message, good),
        ("valid, empty message", PUBLIC, b"", KEY.sign(b"").signature),
        ("message changed", PUBLIC, message + b"!", good),
        ("signature bit flipped", PUBLIC, message, good[:5] + bytes([good[5] ^ 1]) + good[6:]),
        ("another key", bytes(other), message, good),
        ("s not reduced (s + L)", PUBLIC, message, good[:32] + (s + L).to_bytes(32, "little")),
        ("small-order key", small_order, message, good),
        ("all zeros", bytes(32), message, bytes(64)),
    ]


@pytest.mark.parametrize("rule", signatures.RULES)
def test_the_helper_s_verdicts_are_the_in_process_verification_s(helper, rule):
    """By each rule; tests/unit/consensus/test_signatures.py has the cases on which the rules differ."""
    h, reported = helper()
    for name, public_key, message, signature in cases():
        assert h.submit(name.encode(), public_key, message, signature, name, rule)
    h.send()
    h.settle(cases()[-1][0].encode())
    expected = [name for name, pk, m, sig in cases() if signatures.verify(rule, pk, m, sig)]
    assert expected == ["valid", "valid, empty message"]  # the cases are what they say
    if rule == signatures.LIBSODIUM:  # the rule of services.common.identity, which the app verified with first
        assert expected == [name for name, pk, m, sig in cases() if identity.verify(identity.b64(pk), m, identity.b64(sig))]
    assert reported == expected
    assert [context for context, ok in h.answers] == [name for name, *_ in cases()]


def test_answers_come_back_in_order_over_many_requests_and_settle_waits_for_the_one_asked(helper):
    h, reported = helper()
    messages = [b"m%d" % i for i in range(5 * sigcheck.CHUNK + 3)]
    for i, m in enumerate(messages):
        h.submit(m, PUBLIC, m, KEY.sign(m).signature if i % 3 else bytes(64), i)
    h.send()
    valid = [i for i in range(len(messages)) if i % 3]
    h.settle(messages[sigcheck.CHUNK + 1])  # in the second request: whatever arrived with it is in too
    assert reported == valid[:len(reported)] and reported[-1] >= sigcheck.CHUNK + 1
    h.settle(messages[-1])
    assert reported == valid
    h.settle(b"never asked")  # returns at once


def test_a_signature_asked_twice_or_beyond_the_bound_is_not_queued(helper, monkeypatch):
    monkeypatch.setattr(sigcheck, "MAX_IN_FLIGHT", 3)
    h, _ = helper()
    sig = KEY.sign(b"x").signature
    assert h.submit(b"a", PUBLIC, b"x", sig, 0)
    assert not h.submit(b"a", PUBLIC, b"x", sig, 0)
    assert h.submit(b"b", PUBLIC, b"x", sig, 0) and h.submit(b"c", PUBLIC, b"x", sig, 0)
    assert not h.submit(b"d", PUBLIC, b"x", sig, 0)
    assert not h.submit(b"e", PUBLIC[:31], b"x", sig, 0) and not h.submit(b"f", PUBLIC, b"x", sig[:63], 0)
    h.send()
    h.settle(b"c")
    assert h.submit(b"d", PUBLIC, b"x", sig, 0)  # room again once answered


def test_the_bytes_in_flight_stay_under_what_the_pipe_holds(helper):
    h, _ = helper()
    big = bytes(60_000)
    sig = KEY.sign(big).signature
    accepted = sum(h.submit(b"%d" % i, PUBLIC, big, sig, i) for i in range(100))
    assert 0 < accepted < 100 and h._bytes_in_flight <= h._max_bytes
    h.send()
    h.settle(b"%d" % (accepted - 1))
    assert h._bytes_in_flight == 0 and h.up


def stopped(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rdx.consensus.sigcheck" and r.levelno == logging.ERROR]


@pytest.mark.parametrize(("why", "command"), [
    ("it exited", [sys.executable, "-c", "import sys; sys.stdin.buffer.read(12)"]),
    ("does not match", [sys.executable, "-c",
                        "import sys; sys.stdin.buffer.read(12); sys.stdout.buffer.write(b'x' * 40); "
                        "sys.stdout.flush(); import time; time.sleep(30)"]),
    ("no answer", [sys.executable, "-c", "import time; time.sleep(30)"]),
])
def test_a_helper_that_exits_answers_wrongly_or_stalls_ends_the_offload_and_reports_nothing(
        helper, monkeypatch, caplog, why, command):
    monkeypatch.setattr(sigcheck, "TIMEOUT_S", 0.5)
    h, reported = helper(command)
    secret_message = b"raw tx bytes that must not be logged"
    assert h.submit(b"k", PUBLIC, secret_message, KEY.sign(secret_message).signature, 1)
    h.send()
    h.settle(b"k")
    assert h.answers == [] and not h.up and HELPER_UP._value.get() == 0
    [line] = stopped(caplog)
    assert why in line and "in this process from now on" in line and "raw tx" not in line
    assert not h.submit(b"k2", PUBLIC, b"m", KEY.sign(b"m").signature, 2)
    h.settle(b"k2")  # nothing asked, nothing to wait for


def test_a_killed_helper_is_noticed_at_the_next_write_or_read(helper, caplog):
    h, reported = helper()
    h._proc.kill()
    h._proc.wait()
    h.submit(b"k", PUBLIC, b"m", KEY.sign(b"m").signature, 1)
    h.send()
    h.settle(b"k")
    assert h.answers == [] and not h.up and len(stopped(caplog)) == 1


def request(seq: int, items: list[tuple[bytes, bytes, bytes]], rule: int = 1) -> bytes:
    out = sigcheck._HEAD.pack(seq, len(items))
    for public_key, signature, message in items:
        out += sigcheck._ITEM.pack(public_key, signature, len(message), rule) + message
    return out


def test_the_helper_side_answers_each_request_with_its_seq_and_stops_at_a_truncated_one():
    m = b"hello"
    good = (PUBLIC, KEY.sign(m).signature, m)
    bad = (PUBLIC, bytes(64), m)
    whole = request(7, [good, bad, good]) + request(8, [bad]) + request(9, [good, good], rule=0)
    answers = io.BytesIO()
    sigcheck.serve(io.BytesIO(whole + request(10, [good])[:-2]), answers)
    assert answers.getvalue() == (sigcheck._HEAD.pack(7, 3) + b"\x01\x00\x01" + sigcheck._HEAD.pack(8, 1) + b"\x00"
                                  + sigcheck._HEAD.pack(9, 2) + b"\x01\x01")


def test_the_helper_side_verifies_nothing_by_a_rule_it_does_not_know():
    m = b"hello"
    good = (PUBLIC, KEY.sign(m).signature, m)
    answers = io.BytesIO()
    sigcheck.serve(io.BytesIO(request(1, [good], rule=0) + request(2, [good], rule=7)), answers)
    assert answers.getvalue() == sigcheck._HEAD.pack(1, 1) + b"\x01" + sigcheck._HEAD.pack(2, 1) + b"\x00"


# -- the app with its helper --------------------------------------------------------------------

from chainsim import Harness, register  # noqa: E402

from services.common.identity import Identity  # noqa: E402
from services.common.tx import Code  # noqa: E402


@pytest.fixture
def chain(tmp_path):
    h = Harness(tmp_path / "chain.sqlite", Identity.generate("association"))
    h.bank = Identity.generate("bank-a")
    h.block(register(h, h.bank))
    h.app.start_signature_helper()
    yield h
    h.app.stop_signature_helper()


def no_verification_here(monkeypatch):
    def refuse(*_):
        raise AssertionError("verified in process")
    monkeypatch.setattr(signatures, "verify", refuse)


def rotate(chain, key: Identity | None = None, **kw) -> bytes:
    return chain.tx(chain.bank, "members.RotateKey", {"public_key": (key or chain.bank).public_key}, **kw)


def test_txs_hinted_ahead_are_admitted_on_the_helper_s_verification_alone(chain, monkeypatch):
    txs = [rotate(chain) for _ in range(5)]
    before = dict(sigcheck.VERIFIED_BY)
    chain.app.verify_ahead(txs)
    no_verification_here(monkeypatch)
    assert [chain.check(t).code for t in txs] == [Code.OK] * 5
    assert sigcheck.VERIFIED_BY["helper"] - before["helper"] == 5 and sigcheck.VERIFIED_BY["app"] == before["app"]


def test_a_bad_signature_hinted_ahead_is_refused_on_the_helper_s_verdict_alone(chain, monkeypatch):
    tx = json.loads(rotate(chain))
    tx["sig"] = identity.b64(bytes(64))
    raw = json.dumps(tx, separators=(",", ":"), sort_keys=True).encode()
    chain.app.verify_ahead([raw])
    no_verification_here(monkeypatch)
    assert chain.check(raw).code == Code.BAD_SIGNATURE
    assert raw not in chain.app._verified and chain.app._unverified_ahead == {}


def test_a_refusal_under_a_key_rotated_since_is_judged_again_with_the_new_key(chain):
    """Both txs are hinted while the old key is registered: the helper refuses the second, signed
    with the new key. The first, checked, rotates the key in the mempool's state, so the second's
    refusal no longer stands: it is verified again, with the new key, and admitted."""
    new_key = Identity.generate("bank-a")
    first = rotate(chain, new_key)
    chain.bank = new_key
    second = rotate(chain)
    chain.app.verify_ahead([first, second])
    chain.app._helper.settle(second)
    assert first in chain.app._verified and second in chain.app._unverified_ahead
    assert [chain.check(t).code for t in (first, second)] == [Code.OK, Code.OK]


def test_a_tx_verified_ahead_under_a_key_rotated_since_is_refused(chain):
    """The helper said yes with the old key; by the time the tx is checked, its signer's key is
    another one, so the tx is verified again, against that key, and refused."""
    new_key = Identity.generate("bank-a")
    first, stale = rotate(chain, new_key), rotate(chain)  # the second still signed with the old key
    chain.app.verify_ahead([stale])
    chain.app._helper.settle(stale)
    assert stale in chain.app._verified
    assert [r.code for r in chain.block(first)] == [Code.OK]
    assert chain.check(stale).code == Code.BAD_SIGNATURE


def test_junk_hinted_ahead_is_decoded_once(chain, monkeypatch):
    """A tx from a signer the chain does not know, and one whose signature the helper refuses:
    each is decoded once, ahead, and refused with its own code on that decoding."""
    from services.common.tx import Tx

    stranger = Identity.generate("stranger")
    unknown = chain.tx(stranger, "members.RotateKey", {"public_key": stranger.public_key})
    forged = json.loads(rotate(chain))
    forged["sig"] = identity.b64(bytes(64))
    forged = json.dumps(forged, separators=(",", ":"), sort_keys=True).encode()
    decoded = []
    original = Tx.decode_signed.__func__

    def counting(cls, raw):
        decoded.append(raw)
        return original(cls, raw)
    monkeypatch.setattr(Tx, "decode_signed", classmethod(counting))
    chain.app.verify_ahead([unknown, forged])
    assert [chain.check(t).code for t in (unknown, forged)] == [Code.UNKNOWN_SIGNER, Code.BAD_SIGNATURE]
    assert decoded == [unknown, forged]


def test_a_block_s_unchecked_txs_are_verified_by_the_helper(chain, monkeypatch):
    txs = [rotate(chain) for _ in range(20)]
    no_verification_here(monkeypatch)
    assert [r.code for r in chain.block(*txs)] == [Code.OK] * 20


def test_with_its_helper_gone_the_app_verifies_in_process(chain, caplog):
    chain.app._helper._proc.kill()
    chain.app._helper._proc.wait()
    txs = [rotate(chain) for _ in range(3)]
    before = sigcheck.VERIFIED_BY["app"]
    chain.app.verify_ahead(txs)
    assert [chain.check(t).code for t in txs] == [Code.OK] * 3
    assert sigcheck.VERIFIED_BY["app"] - before == 3
    assert not chain.app._helper.up and "signature helper stopped" in caplog.text


def test_the_helper_exits_when_the_app_that_started_it_dies(tmp_path):
    """No orphan: the helper's requests end when its parent goes, however it goes (here SIGKILL)."""
    import os
    import signal
    import subprocess
    import time

    script = ("import os, sys, time\n"
              "from services.consensus.sigcheck import SignatureHelper\n"
              "h = SignatureHelper(print); h.start()\n"
              "print(h._proc.pid, flush=True); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    helper_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{helper_pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    break  # exited; a zombie until init reaps it
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(helper_pid, signal.SIGKILL)
        pytest.fail("the helper outlived its parent")


def test_a_flood_of_txs_from_unknown_signers_keeps_what_is_decoded_ahead_bounded(chain, monkeypatch):
    from services.consensus import app as app_module

    monkeypatch.setattr(app_module, "MAX_UNVERIFIED_AHEAD", 5)
    strangers = [Identity.generate(f"stranger-{i}") for i in range(12)]
    junk = [chain.tx(s, "members.RotateKey", {"public_key": s.public_key}) for s in strangers]
    chain.app.verify_ahead(junk)
    assert 0 < len(chain.app._unverified_ahead) <= 5
    assert {chain.check(t).code for t in junk} == {Code.UNKNOWN_SIGNER}
