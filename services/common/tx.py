"""The one transaction envelope of the rdx chain (wire contract shared by every signer).

    {"chain_id", "type", "signer", "nonce", "payload", "sig"}

``sig`` is Ed25519 by the signer's registered key over the canonical encoding of every other
field but ``trace``.

``trace`` (optional, absent unless set) is a W3C traceparent that lets tracing follow the tx from
the gateway through the chain to the events it causes (services/common/tracing.py). The state
machine never reads it: it is not signed, not stored in state and not in any result, so it cannot
make validators disagree; it is only copied beside the tx's events in the relay's outbox. Being
unsigned, whoever relays a tx can add, change or drop it, which changes the tx's bytes and so its
CometBFT hash (the nonce still lets only one form commit): a client that sets it, or a gateway that
traces, must report the hash of the bytes it broadcast (docs/operations.md, "Tracing"). The canonical encoding is JSON with sorted keys, no whitespace and UTF-8; floats are
refused (amounts are integers), which makes that encoding unique for the values a tx can
hold, so no extra canonicalisation library is needed.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common import canonicaljson
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
    INVALID_QUERY = 15  # an ABCI query path the app does not serve (too long, bad page parameters)
    MEMPOOL_SHARE_FULL = 16  # the signer already has its share of the mempool waiting; retry after a block
    PRICE_TOO_LOW = 17  # a job's max_price does not cover its quote (the log says the quote)
    PRIVACY_BUDGET_EXCEEDED = 18  # a noisy job would overspend a listing's privacy budget (the log says what is left)


class TxError(ValueError):
    """A transaction that cannot be decoded; ``code`` is its ABCI result code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


MAX_DEPTH = 16
"""Deepest nesting of objects and lists a tx may hold (the envelope is depth 1). Far above any
message's schema; it keeps every later reader (validation, state, Kafka consumers) clear of
recursion limits."""

INT_MIN, INT_MAX = -(2**53 - 1), 2**53 - 1
"""Integers a tx may hold: those a JavaScript number (an IEEE double) holds exactly, so a signer in
any language encodes the same bytes, and within int64 for SQLite, Go and protobuf. Every amount
rdx defines is far below (at most 10^15 credits)."""


def canonical(value: Any) -> bytes:
    """The canonical encoding of ``value``; refuses what a decoded tx could never hold."""
    _check_values(value)
    try:
        return canonicaljson.dump_bytes(value)
    except UnicodeEncodeError:
        raise TxError(Code.UNDECODABLE, "text holds a lone surrogate, which UTF-8 cannot encode") from None


def _check_values(value: Any) -> None:
    """Depth, integer range and no floats, checked iteratively (a recursive walk is what deep
    nesting attacks). The exact types JSON decodes to are answered first (a third of the time the
    isinstance chain took, for every tx the chain checks); any other type takes that chain, and the
    values are visited in the same order, so the same first problem is reported."""
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        v, depth = pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if not INT_MIN <= v <= INT_MAX:
                raise TxError(Code.UNDECODABLE, _INT_RANGE)
            continue
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise TxError(Code.UNDECODABLE, f"nested deeper than {MAX_DEPTH} levels")
            depth += 1
            for item in (v.values() if isinstance(v, dict) else v):
                push((item, depth))
        elif isinstance(v, float):
            raise TxError(Code.UNDECODABLE, "floats are not allowed in transactions; use integers")
        elif isinstance(v, int) and not isinstance(v, bool) and not INT_MIN <= v <= INT_MAX:
            raise TxError(Code.UNDECODABLE, _INT_RANGE)


_INT_RANGE = "an integer is outside +-(2^53 - 1), the range every signer can encode"
_ENVELOPE = frozenset({"chain_id", "type", "signer", "nonce", "payload", "sig"})
_TRACED_ENVELOPE = _ENVELOPE | {"trace"}


def _canonical_value(raw: bytes) -> Any | None:
    """The value of ``raw`` when ``raw`` is already the canonical text of a value a tx may hold (a
    well-formed tx's case), read by orjson; else None, and the strict reader decides and words the
    refusal. The canonical text of a value repeats no key and has no NaN and no whitespace: the
    strict reader would read the same value from it, so the two paths accept and refuse alike
    (tests/unit/common/test_tx_fast_path.py)."""
    try:
        value = orjson.loads(raw)
        if canonicaljson.dump_bytes(value) != raw:
            return None
        _check_values(value)
    except (orjson.JSONDecodeError, TypeError, UnicodeEncodeError, TxError):
        return None
    return value


def _refuse_float(text: str) -> float:
    raise TxError(Code.UNDECODABLE, "floats are not allowed in transactions; use integers")


def _refuse_constant(text: str) -> float:
    raise TxError(Code.UNDECODABLE, f"{text} is not a JSON value")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise TxError(Code.UNDECODABLE, "an object repeats a key")
    return obj


ACCOUNT = re.compile(r"[a-z0-9][a-z0-9.\-]{0,63}")
"""An account id, as a tx's signer: also what the gateway takes as a key id and a key file as its account."""


class Tx(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    chain_id: str = Field(min_length=1, max_length=50)
    type: str = Field(min_length=1, max_length=64, pattern=r"^[a-z]+\.[A-Za-z]+$")
    signer: str = Field(min_length=1, max_length=64, pattern=f"^{ACCOUNT.pattern}$")
    nonce: int = Field(ge=1)
    payload: dict[str, Any]
    sig: str = Field(default="", max_length=100)
    # exclude: model_dump (drafts, answers, signing) never shows it; ``wire`` adds it when set.
    trace: str | None = Field(default=None, exclude=True, pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

    def signing_bytes(self) -> bytes:
        return canonical(self.model_dump(exclude={"sig"}))

    def wire(self) -> dict[str, Any]:
        """The fields as they go on chain: every one, ``trace`` only when set."""
        fields = self.model_dump()
        if self.trace is not None:
            fields["trace"] = self.trace
        return fields

    def encode(self) -> bytes:
        return canonical(self.wire())

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
        """The tx in ``raw``, or a TxError with a short reason; nothing else escapes for any bytes.

        A tx is accepted only in its canonical encoding (UTF-8 JSON, sorted keys, no
        whitespace), so one tx has exactly one byte form and one hash."""
        return cls._decode(raw)[0]

    @classmethod
    def decode_signed(cls, raw: bytes) -> tuple["Tx", bytes]:
        """``decode``, and the tx's ``signing_bytes``: for a well-formed tx, the canonical text of
        the decoded fields but ``sig`` and ``trace`` (the very fields and values ``model_dump``
        gives, since strict validation converts nothing), without a second serialisation."""
        tx, fields = cls._decode(raw)
        if fields is None:
            return tx, tx.signing_bytes_of_decoded()
        return tx, canonicaljson.dump_bytes({k: v for k, v in fields.items() if k != "sig" and k != "trace"})

    @classmethod
    def _decode(cls, raw: bytes) -> tuple["Tx", dict[str, Any] | None]:
        """The tx, and its decoded fields when ``raw`` is their canonical text and they are every
        field ``wire`` gives (else None)."""
        if len(raw) > MAX_TX_BYTES:
            raise TxError(Code.OVERSIZE, f"transaction is {len(raw)} bytes; the limit is {MAX_TX_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TxError(Code.UNDECODABLE, "transaction is not UTF-8") from None
        data = _canonical_value(raw)
        fast = data is not None
        if data is None:
            try:
                data = json.loads(text, parse_float=_refuse_float, parse_constant=_refuse_constant,
                                  object_pairs_hook=_refuse_duplicates)
            except TxError:
                raise
            except RecursionError:  # the C parser recurses per level: far too deep, whatever the limit
                raise TxError(Code.UNDECODABLE, f"nested deeper than {MAX_DEPTH} levels") from None
            except ValueError:  # not JSON; also an integer of more digits than Python will parse
                raise TxError(Code.UNDECODABLE, "transaction is not JSON") from None
            _check_values(data)
        try:
            tx = cls.model_validate(data)
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) or "envelope" for e in exc.errors()[:5])
            raise TxError(Code.UNDECODABLE, f"undecodable transaction: {fields}") from None
        # raw is the canonical text of data (the fast path checked it), and data holds every field
        # wire() gives, each as validated (strict: nothing converted, no default filled in): so
        # wire()'s canonical text is raw, and need not be written again to be compared.
        if fast and (data.keys() == _ENVELOPE or (data.keys() == _TRACED_ENVELOPE and data["trace"] is not None)):
            return tx, data
        try:
            canonical_form = canonicaljson.dump_bytes(tx.wire())
        except UnicodeEncodeError:  # JSON's \ud800 escapes decode to text UTF-8 cannot hold
            raise TxError(Code.UNDECODABLE, "text holds a lone surrogate, which UTF-8 cannot encode") from None
        if raw != canonical_form:
            raise TxError(Code.UNDECODABLE, "transaction is not canonically encoded")
        return tx, None

    def signing_bytes_of_decoded(self) -> bytes:
        """``signing_bytes`` for a tx that came from ``decode`` (known float-free)."""
        return canonicaljson.dump_bytes(self.model_dump(exclude={"sig"}))

