"""The peer handshake and frame encryption, without a network."""

from __future__ import annotations

import pytest

from services.common.identity import Identity
from services.compute import handshake as hs

CHAIN = "rdx-test"


def run(client_id: Identity, server_id: Identity, *, server_key_seen=None, client_key_seen=None, job="j-1"):
    client = hs.ClientHandshake(client_id, CHAIN, job, server_id.account)
    hello = hs.parse_hello(client.hello())
    server = hs.ServerHandshake(server_id, hello)
    auth, ckeys = client.finish(server.welcome(), server_key_seen or server_id.public_key)
    skeys = server.finish(auth, client_key_seen or client_id.public_key)
    return ckeys, skeys


def test_both_sides_derive_matching_keys_bound_to_one_session():
    a, b = Identity.generate("bank.node"), Identity.generate("telco.node")
    ck, sk = run(a, b)
    assert ck.send == sk.recv and ck.recv == sk.send and ck.send != ck.recv
    assert ck.session_id == sk.session_id
    ck2, _ = run(a, b)
    assert ck2.session_id != ck.session_id and ck2.send != ck.send  # fresh nonces and ephemeral keys


def test_a_server_without_the_registered_key_is_refused_by_the_client():
    a, b = Identity.generate("bank.node"), Identity.generate("telco.node")
    impostor = Identity.generate("telco.node")
    with pytest.raises(hs.HandshakeError, match="did not prove"):
        run(a, impostor, server_key_seen=b.public_key)


def test_a_client_without_the_registered_key_is_refused_by_the_server():
    a, b = Identity.generate("bank.node"), Identity.generate("telco.node")
    impostor = Identity.generate("bank.node")
    with pytest.raises(hs.HandshakeError, match="did not prove"):
        run(impostor, b, client_key_seen=a.public_key)


def test_a_replayed_auth_does_not_open_a_new_session():
    a, b = Identity.generate("bank.node"), Identity.generate("telco.node")
    client = hs.ClientHandshake(a, CHAIN, "j-1", b.account)
    hello_frame = client.hello()
    server1 = hs.ServerHandshake(b, hs.parse_hello(hello_frame))
    auth, _ = client.finish(server1.welcome(), b.public_key)
    server2 = hs.ServerHandshake(b, hs.parse_hello(hello_frame))  # the same hello replayed: a new server nonce
    server2.welcome()
    with pytest.raises(hs.HandshakeError):
        server2.finish(auth, a.public_key)


def test_the_transcript_binds_job_and_accounts():
    a, b = Identity.generate("bank.node"), Identity.generate("telco.node")
    client = hs.ClientHandshake(a, CHAIN, "j-1", b.account)
    hello = hs.parse_hello(client.hello())
    forged = hs.Hello(hello.chain_id, "j-2", hello.client, hello.server, hello.nonce, hello.eph)
    server = hs.ServerHandshake(b, forged)  # a man in the middle changed the job id
    with pytest.raises(hs.HandshakeError):
        client.finish(server.welcome(), b.public_key)


def test_frames_are_confidential_ordered_and_tamper_evident():
    a, b = Identity.generate("bank.node"), Identity.generate("telco.node")
    ck, sk = run(a, b)
    tx, rx = hs.FrameCipher(ck), hs.FrameCipher(sk)
    f1, f2 = tx.seal(hs.encode("xa", {"off": 0}, b"secret-bytes")), tx.seal(hs.encode("xa", {"off": 1}, b"more"))
    assert b"secret-bytes" not in f1
    with pytest.raises(hs.FrameError):
        rx.open(f2)  # out of order
    assert hs.decode(rx.open(f1)) == ("xa", {"off": 0}, b"secret-bytes")
    tampered = bytearray(f2)
    tampered[5] ^= 1
    with pytest.raises(hs.FrameError):
        rx.open(bytes(tampered))
    assert hs.decode(rx.open(f2))[2] == b"more"
    with pytest.raises(hs.FrameError):
        rx.open(f2)  # replayed


def test_frames_are_the_ietf_construction_a_node_of_the_libsodium_version_reads():
    """The frame cipher moved from libsodium to OpenSSL (cryptography): the bytes must not change, or
    nodes of the two versions could not run a job together during a rolling upgrade."""
    from nacl import bindings as sodium

    a, b = Identity.generate("bank.node"), Identity.generate("telco.node")
    ck, sk = run(a, b)
    tx, rx = hs.FrameCipher(ck), hs.FrameCipher(sk)
    for counter, size in enumerate((0, 1, 63, 64, 65, 4096, 855_075)):
        frame = hs.encode("ct", {"n": counter}, bytes(range(256)) * (size // 256) + bytes(size % 256))
        nonce = bytes(4) + counter.to_bytes(8, "big")
        sealed = tx.seal(frame)
        assert sealed == sodium.crypto_aead_chacha20poly1305_ietf_encrypt(frame, ck.session_id, nonce, ck.send)
        assert sodium.crypto_aead_chacha20poly1305_ietf_decrypt(sealed, sk.session_id, nonce, sk.recv) == frame
        assert rx.open(sealed) == frame


@pytest.mark.parametrize("sealed", [b"", b"\x00" * 15, b"\x00" * 16, b"\xff" * 1000])
def test_a_short_or_forged_frame_is_a_frame_error(sealed):
    a, b = Identity.generate("bank.node"), Identity.generate("telco.node")
    _, sk = run(a, b)
    with pytest.raises(hs.FrameError, match="failed authentication"):
        hs.FrameCipher(sk).open(sealed)


def test_malformed_hellos_are_refused():
    for frame in (b"", b"\x00\x00\x00\x05{}", hs.encode("hello", {"v": 2}), hs.encode("welcome")):
        with pytest.raises(hs.HandshakeError):
            hs.parse_hello(frame)
