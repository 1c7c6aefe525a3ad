"""The only code that reads or writes the validator set (prefix ``validators/``).

The set here is the one CometBFT will have once the updates already returned take effect: a
change is applied here in the block that makes it and returned in that block's FinalizeBlock, and
CometBFT uses it from two blocks later. Every change must be one CometBFT accepts, or the node
would halt: a removed key must be in the set, each key changes once per block, the set never
empties. And no block may move a third of the power or more (``MAX_SHARE``): adding or removing
that much at once could hand the chain to keys that were not voting a moment ago, and a light
client trusting the previous set could no longer follow.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from services.common.tx import Code
from services.consensus.context import Context, Rejected

SET = "validators/set/"  # <address> -> {address, pub_key, power, name, height}
RECORDED = "validators/recorded"
BLOCK = "validators/block"  # this block's changes; never committed (end_block discards it)
MAX_VALIDATORS = 100


def address(pub_key: str) -> str:
    """CometBFT's address of an Ed25519 key: the first 20 bytes of its SHA-256, upper-case hex."""
    return hashlib.sha256(base64.b64decode(pub_key)).digest()[:20].hex().upper()


class ValidatorsKeeper:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def recorded(self) -> bool:
        return bool(self.store.get(RECORDED))

    def record_genesis(self, validators: list[tuple[str, int]], names: dict[str, str]) -> None:
        """The set CometBFT starts with (InitChain's validators)."""
        for pub_key, power in validators:
            self._put({"address": address(pub_key), "pub_key": pub_key, "power": power,
                       "name": names.get(pub_key), "height": 0})
        self.store.set(RECORDED, True)

    def get(self, pub_key: str) -> dict[str, Any] | None:
        return self.store.get(f"{SET}{address(pub_key)}")

    def all(self) -> list[dict[str, Any]]:
        return [v for _, v in self.store.scan(SET)]

    def total(self) -> int:
        return sum(v["power"] for v in self.all())

    def _put(self, validator: dict[str, Any]) -> None:
        self.store.set(f"{SET}{validator['address']}", validator)

    def change(self, pub_key: str, power: int, name: str | None = None) -> None:
        """Set ``pub_key``'s power (0 removes it) for the set two blocks on; raises Rejected for a
        change CometBFT would refuse or that breaks the block's share bound (``check_share``)."""
        if not self.recorded():
            raise Rejected(Code.INVALID_STATE, "this chain's genesis did not record its validator set "
                                               "(made before validator governance): it cannot be changed on chain")
        current = self.get(pub_key)
        block = self.store.get(BLOCK) or {"total": self.total(), "before": {}, "updates": {}}
        addr = address(pub_key)
        if current is None and power == 0:
            raise Rejected(Code.NOT_FOUND, f"validator {addr} is not in the set")
        if current is None and len(self.all()) >= MAX_VALIDATORS:
            raise Rejected(Code.INVALID_STATE, f"the set already has {MAX_VALIDATORS} validators")
        block["before"].setdefault(addr, current["power"] if current else 0)
        block["updates"][addr] = {"pub_key": pub_key, "power": power}
        if power == 0:
            self.store.delete(f"{SET}{addr}")
        else:
            self._put({"address": addr, "pub_key": pub_key, "power": power,
                       "name": name if name is not None else (current or {}).get("name"), "height": self.ctx.height})
        self.store.set(BLOCK, block)
        self.check_share(block)
        self.ctx.emit("ValidatorUpdated", f"validator:{addr}", address=addr, pub_key=pub_key, power=power,
                      previous_power=current["power"] if current else 0, effective_height=self.ctx.height + 2)

    def check_share(self, block: dict[str, Any]) -> None:
        added = sum(max(0, u["power"] - block["before"][a]) for a, u in block["updates"].items())
        removed = sum(max(0, block["before"][a] - u["power"]) for a, u in block["updates"].items())
        total = block["total"]
        for what, amount in (("adds", added), ("removes", removed)):
            if 3 * amount >= total:
                raise Rejected(Code.INVALID_STATE, f"this block's validator changes {what} {amount} of {total} voting "
                                                   "power: at most under a third may change per block")
        if not self.all():
            raise Rejected(Code.INVALID_STATE, "the validator set may not be empty")

    def end_block(self) -> list[tuple[str, int]]:
        """The block's validator updates (pub_key, power) in address order, once per key. The
        changes themselves are in the set already; the per-block record is dropped, never committed."""
        block = self.store.get(BLOCK)
        self.store.discard(BLOCK)
        if not block:
            return []
        return [(u["pub_key"], u["power"]) for addr, u in sorted(block["updates"].items())
                if u["power"] != block["before"][addr]]  # a change undone in the same block is none
