"""Which Ed25519 verification decides a tx's signature: the chain's rule, recorded in its state.

- ``libsodium``: libsodium's ``crypto_sign_open`` (PyNaCl), the rule chains were made with.
- ``zip215``: ZIP-215's rules (native/ed25519, on ed25519-zebra), which every implementation
  can reach the same verdict by, and whose batch verification gives the same verdicts as
  verifying one by one: in batches of 64 a signature cost 20-26 us, against PyNaCl's 57, on the
  machine the bench runs on (docs/architecture.md). rdx refuses keys of small order under it as libsodium does (anyone
  can sign for such a key). It accepts every signature libsodium accepts, and more: signatures
  whose R, or key, is encoded non-canonically or carries a small-order component, which only
  the key's holder can make, and which prove its consent all the same.

A chain's genesis names its rule (``rdx genesis`` writes ``zip215``; a genesis without one is of a
chain made before it, and keeps ``libsodium``). Such a chain switches at an applied upgrade to app
version ``ZIP215_APP_VERSION`` or later, from that block on, on every validator at once: a node
replaying old blocks judges them by the rule of their time. Only tx signatures follow the rule;
what the chain verifies inside payloads keeps libsodium (services.common.identity). The light
client checks validators' votes by ZIP-215 always, as CometBFT does (services.common.lightclient).
"""

from __future__ import annotations

from typing import Any

import rdx_ed25519

from services.common import identity

LIBSODIUM, ZIP215 = "libsodium", "zip215"
RULES = (LIBSODIUM, ZIP215)
RULE_KEY = "chain/signatures"  # the rule, once a chain has one other than libsodium
ZIP215_APP_VERSION = 2


def rule_of(store: Any) -> str:
    """The rule recorded in ``store`` (an Overlay)."""
    return store.get(RULE_KEY) or LIBSODIUM


def verify(rule: str, public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Does ``signature`` sign ``message`` under ``public_key``, by ``rule``?"""
    if rule == ZIP215:
        return rdx_ed25519.verify(public_key, message, signature)
    return identity.verify_raw(public_key, message, signature)


def verify_many(rule: str, items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """``verify``'s verdict on each (public key, message, signature): by ZIP-215, one batch."""
    if rule == ZIP215:
        return rdx_ed25519.verify_batch(items)
    return [verify(rule, *item) for item in items]
