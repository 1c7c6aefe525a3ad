"""Results held back until payment is locked (issue 16, docs/compute.md "Fair exchange").

A provider sends its last protocol message sealed under a fresh release key K and shows
SHA-256(K); both parties attest that hash; once the chain has locked the escrow the provider's
node publishes K (``jobs.Release``), which settles the job, and the consumer opens the message
with the K the chain holds. Nothing here depends on a job type.

The seal is a SHAKE-256 keystream XOR (no authentication of its own: the held-back bytes are
already part of the attested transcript, so the consumer only needs K to be the one whose hash it
saw, which ``released_key`` checks).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from services.compute.jobtypes.base import Channel, JobContext, JobRefused, ProtocolError, expect, goodbye

ELEMENT = 16  # bytes of one element: ``held_back``'s offsets count these
_STREAM_BLOCK = 1024  # elements per keystream block


def new_key() -> bytes:
    """A fresh release key (32 random bytes)."""
    return os.urandom(32)


def key_hash(key: bytes) -> str:
    """What the provider shows and both parties attest: SHA-256 of the key, hex."""
    return hashlib.sha256(key).hexdigest()


def held_back(key: bytes, off: int, blob: bytes) -> bytes:
    """``blob``, from element ``off`` on (16-byte elements), XORed with a SHAKE-256 keystream of the
    release key (block j: SHAKE-256(label || key || j), ``_STREAM_BLOCK`` elements): meaningless
    until the key is released. Seekable by element, so any batching opens the same way; XOR is its
    own inverse. A blob whose length is not a multiple of 16 bytes is sealed as well (its last
    element is partial)."""
    if not blob:
        return blob
    first, last = off // _STREAM_BLOCK, (off + -(-len(blob) // ELEMENT) - 1) // _STREAM_BLOCK
    stream = b"".join(hashlib.shake_256(b"rdx/psi/release/v1\n" + key + j.to_bytes(8, "big"))
                      .digest(ELEMENT * _STREAM_BLOCK) for j in range(first, last + 1))
    skip = ELEMENT * (off - first * _STREAM_BLOCK)
    pad = np.frombuffer(stream, dtype=np.uint8)[skip:skip + len(blob)]
    return (np.frombuffer(blob, dtype=np.uint8) ^ pad).tobytes()


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


def released_key(released, provider: str, release: str) -> bytes:
    """The provider's key as the chain released it, checked against the hash the protocol showed."""
    key = released.get(provider)
    if key is None or hashlib.sha256(key).hexdigest() != release:
        raise JobRefused(f"{provider}'s released key does not match the hash it sent")
    return key


async def close_held_back(chan: Channel, ctx: JobContext) -> tuple[str, str]:
    """The consumer closes a run whose last message is held back: it has no result to commit yet."""
    await chan.send("finish", commitment="")
    c2p, p2c = chan.transcript()
    await expect(chan, "finished")
    await goodbye(ctx.member, [chan])
    return c2p, p2c
