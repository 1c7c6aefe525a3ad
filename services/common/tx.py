"""The one transaction envelope of the rdx chain (wire contract shared by every signer).

    {"chain_id", "type", "signer", "nonce", "payload", "sig"}

``sig`` is Ed25519 by the signer's registered key over the canonical encoding of every other
field. The canonical encoding is JSON with sorted keys, no whitespace and UTF-8; floats are
refused (amounts are integers), which makes that encoding unique for the values a tx can
hold, so no extra canonicalisation library is needed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.identity import Identity

MAX_TX_BYTES = 64 * 1024


class Code:
    """ABCI result codes of rdx transactions (0 is success). Clients map them to errors."""

    OK = 0
    UNDECODABLE = 1
    OVERSIZE = 2
    WRONG_CHAIN = 3
    UNKNOWN_SIGNER = 4
    SUSPENDED_SIGNER = 5
    BAD_SIGNATURE = 6
    BAD_NONCE = 7
    UNKNOWN_TYPE = 8
    UNAUTHORIZED = 9
    INVALID_PAYLOAD = 10
    NOT_FOUND = 11
    CONFLICT = 12
    INSUFFICIENT_FUNDS = 13
    INVALID_STATE = 14


class TxError(ValueError):
    """A transaction that cannot be decoded; ``code`` is its ABCI result code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def canonical(value: Any) -> bytes:
    def check(v: Any) -> None:
        if isinstance(v, float):
            raise TxError(Code.UNDECODABLE, "floats are not allowed in transactions; use integers")
        if isinstance(v, dict):
            for item in v.values():
                check(item)
        elif isinstance(v, list):
            for item in v:
                check(item)

    check(value)
    return _dumps(value)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _refuse_float(text: str) -> float:
    raise TxError(Code.UNDECODABLE, "floats are not allowed in transactions; use integers")


class Tx(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    chain_id: str = Field(min_length=1, max_length=50)
    type: str = Field(min_length=1, max_length=64, pattern=r"^[a-z]+\.[A-Za-z]+$")
    signer: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    nonce: int = Field(ge=1)
    payload: dict[str, Any]
    sig: str = Field(default="", max_length=100)

    def signing_bytes(self) -> bytes:
        return canonical(self.model_dump(exclude={"sig"}))

    def encode(self) -> bytes:
        return canonical(self.model_dump())

    @property
    def hash(self) -> str:
        """Hex SHA-256 of the bytes on chain: CometBFT's tx hash."""
        return hashlib.sha256(self.encode()).hexdigest().upper()

    @classmethod
    def build(cls, identity: Identity, chain_id: str, type_: str, nonce: int, payload: dict[str, Any]) -> "Tx":
        unsigned = cls(chain_id=chain_id, type=type_, signer=identity.account, nonce=nonce, payload=payload)
        return unsigned.model_copy(update={"sig": identity.sign(unsigned.signing_bytes())})

    @classmethod
    def decode(cls, raw: bytes) -> "Tx":
        if len(raw) > MAX_TX_BYTES:
            raise TxError(Code.OVERSIZE, f"transaction is {len(raw)} bytes; the limit is {MAX_TX_BYTES}")
        try:
            data = json.loads(raw, parse_float=_refuse_float)  # floats are refused while parsing
            tx = cls.model_validate(data)
        except TxError:
            raise
        except (ValueError, ValidationError) as exc:
            fields = ""
            if isinstance(exc, ValidationError):
                fields = ": " + ", ".join(".".join(map(str, e["loc"])) or "envelope" for e in exc.errors()[:5])
            raise TxError(Code.UNDECODABLE, f"undecodable transaction{fields}") from None
        if raw != _dumps(tx.model_dump()):  # no float can be left: the parser refused them
            raise TxError(Code.UNDECODABLE, "transaction is not canonically encoded")
        return tx

    def signing_bytes_of_decoded(self) -> bytes:
        """``signing_bytes`` for a tx that came from ``decode`` (known float-free)."""
        return _dumps(self.model_dump(exclude={"sig"}))

