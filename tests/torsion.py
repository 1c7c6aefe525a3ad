"""Ed25519 signatures that ZIP-215 accepts and libsodium refuses, for the tests of both
(tests/unit/consensus/test_signatures.py, tests/unit/common/test_lightclient.py): affine Edwards
arithmetic, slow and plain, written from RFC 8032 section 5.1, to put a small-order component in R."""

from __future__ import annotations

import hashlib

from nacl.signing import SigningKey

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def add(a, b):
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)


def mul(k, point):
    out = (0, 1)
    while k:
        if k & 1:
            out = add(out, point)
        point, k = add(point, point), k >> 1
    return out


def decode(b: bytes):
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != b[31] >> 7:
        x = -x % P
    return x, y


def encode(point) -> bytes:
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


B = decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def torsion_of_order_8():
    for i in range(2, 200):
        point = decode(hashlib.sha256(b"%d" % i).digest())
        if point is not None:
            t = mul(L, point)  # in the small-order subgroup
            if mul(4, t) != (0, 1):
                return t
    raise AssertionError("no point of order 8 found")


T8 = torsion_of_order_8()


def sign_with_torsion(key: SigningKey, message: bytes) -> bytes:
    """A signature whose R is r*B plus a point of order 8: [s]B - [k]A is r*B, not R, so the
    cofactorless check (libsodium's) refuses it; eight times the difference is the identity, so
    ZIP-215's accepts it. Only the holder of the secret scalar can make it."""
    h = hashlib.sha512(bytes(key)).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    public = encode(mul(a, B))
    assert public == bytes(key.verify_key)
    r = int.from_bytes(hashlib.sha512(h[32:] + message).digest(), "little") % L
    big_r = encode(add(mul(r, B), T8))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % L
    return big_r + ((r + k * a) % L).to_bytes(32, "little")


def key_with_torsion(key: SigningKey, message: bytes) -> tuple[bytes, bytes]:
    """(public key, signature): the key is a*B plus a point of order 8, which a hostile member
    could register, and the signature is its holder's, made as RFC 8032 signs: [s]B - [k]A' is
    R - [k]T, not R, unless 8 divides k (asserted not to, for the message given), so libsodium
    refuses it and ZIP-215 accepts it."""
    h = hashlib.sha512(bytes(key)).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    public = encode(add(mul(a, B), T8))
    r = int.from_bytes(hashlib.sha512(h[32:] + message).digest(), "little") % L
    big_r = encode(mul(r, B))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % L
    assert k % 8, "a message whose k is a multiple of 8 makes a signature both rules accept"
    return public, big_r + ((r + k * a) % L).to_bytes(32, "little")
