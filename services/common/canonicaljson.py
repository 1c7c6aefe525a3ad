"""rdx's canonical JSON text: keys sorted by code point, no whitespace, UTF-8 as is (only what
JSON must escape is escaped). Signing bytes, state values and event digests are this text, so
every validator and every signer must produce it byte for byte.

orjson writes it ten times faster than the standard library's ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` and, for the values rdx stores and signs (strings,
integers, booleans, null, lists, objects with string keys; never floats), writes the same bytes:
tests/unit/common/test_canonicaljson.py holds it to that, every code point's escaping included.
What orjson refuses (integers past 64 bits, non-string keys, lone surrogates) goes to the
standard library, so the answer, or the error, is the one rdx always gave.
"""
from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return _standard(value)


def dump_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _standard(value).encode()  # a lone surrogate raises UnicodeEncodeError here, as it always did


def _standard(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> Any:
    """Parse text this module wrote (state, not untrusted input: a tx is decoded by tx.py's
    stricter reader)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # an integer past 64 bits, which json.dumps wrote
        return json.loads(text)
