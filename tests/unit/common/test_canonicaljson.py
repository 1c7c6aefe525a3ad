"""orjson stands in for json.dumps in rdx's canonical text only because it writes the same bytes:
a difference would change signing bytes, state digests and app hashes."""
import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import canonicaljson


def reference(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_every_code_point_is_escaped_as_the_standard_library_does():
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        value = {c: [c, "a" + c + "b"]}
        assert canonicaljson.dumps(value) == reference(value), hex(cp)


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
    max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(values)
def test_rdx_values_are_written_byte_for_byte_as_json_dumps_and_read_back(value):
    assert canonicaljson.dumps(value) == reference(value)
    assert canonicaljson.dump_bytes(value) == reference(value).encode()
    assert canonicaljson.loads(canonicaljson.dumps(value)) == value


def test_keys_sort_by_code_point_not_utf16():
    value = {"\uffff": 1, "\U00010000": 2, "B": 3, "a": 4, "é": 5}
    assert canonicaljson.dumps(value) == reference(value)
    assert list(json.loads(canonicaljson.dumps(value))) == ["B", "a", "é", "\uffff", "\U00010000"]


@pytest.mark.parametrize("value", [{"n": 2**70}, {"n": -(2**64)}, {1: "int key"}])
def test_what_orjson_refuses_is_written_as_the_standard_library_writes_it(value):
    assert canonicaljson.dumps(value) == reference(value)
    assert canonicaljson.loads(canonicaljson.dumps(value)) == json.loads(reference(value))


def test_a_lone_surrogate_fails_as_before():
    with pytest.raises(UnicodeEncodeError):
        canonicaljson.dump_bytes({"x": "\ud800"})
