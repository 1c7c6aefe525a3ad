"""Results held back until payment is locked (issue 16, docs/compute.md "Fair exchange").

A provider sends its last protocol message sealed under a fresh release key K and shows
SHA-256(K); both parties attest that hash; once the chain has locked the escrow the provider's
node publishes K (``jobs.Release``), which settles the job, and the consumer opens the message
with the K the chain holds. Or, the 3-tx settlement, the provider's node sends K with its own
attestation when that is the job's last and every other party's agrees with it
(``completes_agreed``): the chain locks, releases and settles in that one tx. Nothing here
depends on a job type.

The seal is AES-256 in counter mode keyed by K, the counter block of element i (16 bytes each)
being i itself (a 128-bit big-endian number): a keystream XOR, seekable by element, computed by
OpenSSL (through ``cryptography``) over a whole blob in one call at several GB/s. Until issue 17's
bench it was SHAKE-256 blocks hashed in Python, ~0.3 s for the 16 MB of a 1M-element PSI on each
side; AES-CTR does it in ~10 ms. K is fresh for every run and sealing is its only use, so the
keystream is never reused under one key; K's SHA-256, which is public, tells nothing about the
keystream. No authentication of its own: the held-back bytes are already part of the attested
transcript, so the consumer only needs K to be the one whose hash it saw, which ``released_key``
checks.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from services.compute.jobtypes.base import Channel, JobContext, JobRefused, ProtocolError, expect, goodbye

ELEMENT = 16  # bytes of one element (one AES block): ``held_back``'s offsets count these


def new_key() -> bytes:
    """A fresh release key (32 random bytes)."""
    return os.urandom(32)


def key_hash(key: bytes) -> str:
    """What the provider shows and both parties attest: SHA-256 of the key, hex."""
    return hashlib.sha256(key).hexdigest()


def held_back(key: bytes, off: int, blob: bytes) -> bytes:
    """``blob``, from element ``off`` on (16-byte elements), XORed with the AES-256-CTR keystream of
    the release key (element i under counter block i): meaningless until the key is released.
    Seekable by element, so any batching opens the same way; XOR is its own inverse. A blob whose
    length is not a multiple of 16 bytes is sealed as well (its last element is partial)."""
    if not blob:
        return blob
    if len(key) != 32:  # new_key's size, which the chain's jobs.Release also requires
        raise ValueError("a release key is 32 bytes")
    if not 0 <= off < 1 << 64:  # far beyond any blob; keeps the 128-bit counter from wrapping
        raise ValueError("element offset out of range")
    stream = Cipher(algorithms.AES(key), modes.CTR(off.to_bytes(ELEMENT, "big"))).encryptor()
    return stream.update(bytes(blob)) + stream.finalize()


def elements(blob: bytes) -> int:
    """The keystream elements a held-back blob takes: a message held back after it starts there."""
    return -(-len(blob) // ELEMENT)


def open_held_back(key: bytes, blob: bytes) -> bytes:
    """A whole held-back blob opened with the released key."""
    return held_back(key, 0, blob)


def release_hash(header: dict) -> str:
    """The SHA-256 (hex) of the key the provider held its last message back under, as it sent it."""
    release = header.get("release")
    if not isinstance(release, str) or len(release) != 64 or set(release) - set("0123456789abcdef"):
        raise ProtocolError("the provider's last message came without the hash of the key it is held back under")
    return release


def completes_agreed(record: dict, member: str, mine: dict) -> bool:
    """Whether ``member``'s attestation ``mine`` ({result_hash, records_used, records, releases}),
    added to the others in the chain's ``record`` of a running job, is the last one and locks the
    job: one result hash, every input's count as its provider states it (``records``, else its
    ``records_used``) stated alike by every party naming one, one hash per provider's key, and
    ``member``'s own among them. The chain's rule (services/consensus/jobs/handlers.py ``_attested``)
    as a provider's node checks it before its key goes out with its attestation: a refused tx's
    bytes are public in its block too."""
    everyone = {**(record.get("attestations") or {}), member: mine}
    if record.get("status") != "running" or set(everyone) != set(record.get("participants") or ()):
        return False
    if len({a.get("result_hash") for a in everyone.values()}) != 1:
        return False
    for item in record.get("inputs") or ():
        own = everyone.get(item.get("provider")) or {}
        count = (own.get("records") or {}).get(item.get("asset"), own.get("records_used"))
        if any((a.get("records") or {}).get(item.get("asset"), count) != count for a in everyone.values()):
            return False
    hashes: dict[str, str] = {}
    if any(hashes.setdefault(p, h) != h for a in everyone.values() for p, h in (a.get("releases") or {}).items()):
        return False
    return member in hashes


def released_key(released, provider: str, release: str) -> bytes:
    """The provider's key as the chain released it, checked against the hash the protocol showed."""
    key = released.get(provider)
    if key is None or key_hash(key) != release:
        raise JobRefused(f"{provider}'s released key does not match the hash it sent")
    return key


async def close_held_back(chan: Channel, ctx: JobContext) -> tuple[str, str]:
    """The consumer closes a run whose last message is held back: it has no result to commit yet."""
    await chan.send("finish", commitment="")
    c2p, p2c = chan.transcript()
    await expect(chan, "finished")
    await goodbye(ctx.member, [chan])
    return c2p, p2c
