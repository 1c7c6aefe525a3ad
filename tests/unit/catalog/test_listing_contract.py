"""The listing contract (services/common/listing.py), and that the chain applies the same one."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.common.identity import Identity
from services.common.listing import (MAX_METADATA_BYTES, ListingDraft, ListingMetadata, canonical_json, example_metadata,
                                     explain)
from services.common.tx import MAX_TX_BYTES, Tx
from services.consensus.assets.messages import List as ChainList

COMMIT = "ab" * 32


def draft(level="L3", **md_changes) -> dict:
    return {"id": "telco.subs", "level": level, "operations": ["psi"], "commitment": COMMIT,
            "price": {"model": "fixed", "amount": 100}, "metadata": example_metadata(**md_changes)}


def problems_of(payload: dict) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as exc:
        ListingDraft.model_validate(payload)
    return explain(exc.value)


def test_example_validates_and_round_trips_as_the_same_json():
    md = example_metadata()
    parsed = ListingMetadata.model_validate(md)
    dumped = parsed.model_dump()
    assert {k: v for k, v in dumped.items() if k in md} == md  # nothing coerced or reordered in values
    assert dumped["metadata_version"] == 1 and dumped["sample"] is None
    assert ListingMetadata.model_validate(dumped) == parsed  # what the chain stores validates again
    json.dumps(dumped, allow_nan=False)  # JSON-native: no dates, no floats


BAD_FIELDS = [
    ({"title": "   "}, "metadata.title", "blank"),
    ({"title": "x" * 201}, "metadata.title", "200"),
    ({"title": "two\nlines"}, "metadata.title", "one line"),
    ({"description": "bell\x07"}, "metadata.description", "printable"),
    ({"industry": []}, "metadata.industry", "at least 1"),
    ({"industry": ["Finance"]}, "metadata.industry[0]", "lower-case"),
    ({"tags": ["ok", "ok"]}, "metadata.tags", "repeat"),
    ({"region": "CN/GD"}, "metadata.region", "ISO 3166"),
    ({"data_start": "2024-02-30"}, "metadata.data_start", "calendar date"),
    ({"data_start": "01/02/2024"}, "metadata.data_start", "YYYY-MM-DD"),
    ({"update_cycle": "sometimes"}, "metadata.update_cycle", "daily"),
    ({"last_updated": "2020-01-01"}, "metadata.last_updated", "before data_start"),
    ({"row_count": "5"}, "metadata.row_count", "integer"),
    ({"row_count": True}, "metadata.row_count", "integer"),
    ({"row_count": -1}, "metadata.row_count", "greater than or equal to 0"),
    ({"columns": []}, "metadata.columns", "at least 1"),
    ({"columns": [{"name": "1bad", "type": "string", "sensitivity": "public"}]}, "metadata.columns[0].name",
     "column name"),
    ({"columns": [{"name": "a", "type": "blob", "sensitivity": "public"}]}, "metadata.columns[0].type", "string"),
    ({"columns": [{"name": "a", "type": "string", "sensitivity": "secret-ish"}]}, "metadata.columns[0].sensitivity",
     "identifier"),
    ({"columns": [{"name": "a", "type": "string"}]}, "metadata.columns[0].sensitivity", "required"),
    ({"columns": [{"name": "a", "type": "string", "sensitivity": "public"}] * 2}, "metadata.columns[1].name",
     "twice"),
    ({"licence": "my licence"}, "metadata.licence", "licence id"),
    ({"licence_url": "ftp://x"}, "metadata.licence_url", "http"),
    ({"contact": "nobody"}, "metadata.contact", "email"),
    ({"usage_terms": ""}, "metadata.usage_terms", "blank"),
    ({"colour": "blue"}, "metadata.colour", "not a field"),
    ({"metadata_version": 2}, "metadata.metadata_version", "1"),
    ({"sample": {"kind": "synthetic", "rows": [{"nope": 1}]}}, "metadata.sample.rows[0]", "no column"),
    ({"sample": {"kind": "real", "rows": [{"phone_hash": "ab12"}]}}, "metadata.sample.rows[0]", "real sample"),
    ({"sample": {"kind": "guess", "rows": [{"district": "x"}]}}, "metadata.sample.kind", "synthetic"),
]


@pytest.mark.parametrize("changes, field, words", BAD_FIELDS, ids=[f for _, f, _ in BAD_FIELDS])
def test_each_invalid_field_is_rejected_with_a_message_naming_it(changes, field, words):
    found = problems_of(draft(level="L1", **changes))
    assert [p["field"] for p in found] == [field], found
    assert words.lower() in found[0]["message"].lower(), found


def test_top_level_fields_are_named_too():
    bad = draft()
    bad.update(level="L5", operations=["psi", "psi"], commitment="XYZ", price={"model": "free", "amount": 3},
               min_group_size=0, extra=1)
    fields = {p["field"] for p in problems_of(bad)}
    assert fields == {"level", "operations", "commitment", "price.amount", "min_group_size", "extra"}


def test_every_problem_is_reported_at_once_and_no_value_is_echoed():
    secret = "SECRET-VALUE-123"
    found = problems_of(draft(title="", region=secret + "/", row_count=secret, industry=[secret]))
    assert {"metadata.title", "metadata.region", "metadata.row_count", "metadata.industry[0]"} <= {
        p["field"] for p in found}
    assert secret not in json.dumps(found)


def test_a_sample_only_at_l1_and_l2():
    sample = {"kind": "synthetic", "rows": [{"phone_hash": "00ff", "district": "Futian", "tenure_months": 12}]}
    for level in ("L1", "L2"):
        ListingDraft.model_validate(draft(level=level, sample=sample))
        ChainList.model_validate(draft(level=level, sample=sample))
    for level in ("L3", "L4"):
        assert problems_of(draft(level=level, sample=sample)) == [
            {"field": "metadata.sample", "message": f"a sample may be attached only to L1 or L2 listings; "
                                                    f"this one is {level}"}]
        with pytest.raises(ValidationError, match="sample"):
            ChainList.model_validate(draft(level=level, sample=sample))


def test_a_real_sample_may_show_public_columns_and_null_out_the_rest():
    sample = {"kind": "real", "rows": [{"phone_hash": None, "district": "Futian", "tenure_months": None}]}
    ListingDraft.model_validate(draft(level="L2", sample=sample))


def test_join_keys_are_declared_per_column_and_never_on_a_sensitive_one():
    from services.compute.policy import join_keys

    assert join_keys(ListingMetadata.model_validate(example_metadata()).model_dump()) == {"phone_hash"}
    columns = [{"name": "phone_hash", "type": "string", "sensitivity": "identifier"},  # join_key defaults to false
               {"name": "income", "type": "integer", "sensitivity": "sensitive", "join_key": True}]
    found = problems_of(draft(columns=columns))
    assert found == [{"field": "metadata.columns[1].join_key", "message": "a sensitive column cannot be a join key"}]
    assert join_keys(ListingMetadata.model_validate(example_metadata(columns=columns[:1])).model_dump()) == set()
    with pytest.raises(ValidationError):
        ChainList.model_validate(draft(columns=columns))  # the chain refuses it too
    with pytest.raises(ValidationError):  # strict: "yes" is not true
        ListingMetadata.model_validate(example_metadata(columns=[{**columns[0], "join_key": "yes"}]))


def test_the_chain_applies_the_same_contract():
    ok = draft()
    assert ChainList.model_validate(ok).metadata == ListingMetadata.model_validate(ok["metadata"])
    for changes, field, _ in BAD_FIELDS:
        with pytest.raises(ValidationError) as exc:
            ChainList.model_validate(draft(level="L1", **changes))
        text = str(exc.value)
        leaf = field.split(".")[-1].split("[")[0]
        assert "metadata" in text and leaf in text, (field, text)


def test_metadata_is_bounded_so_a_listing_always_fits_a_transaction():
    column = {"name": "c", "type": "string", "description": "字" * 500, "sensitivity": "public"}  # ~1.5 KB
    columns = [dict(column, name=f"c{i}") for i in range(256)]
    found = problems_of(draft(columns=columns))
    assert [p["field"] for p in found] == ["metadata"] and str(MAX_METADATA_BYTES) in found[0]["message"]

    def accepted(n: int) -> bool:
        try:
            ListingDraft.model_validate(draft(columns=columns[:n]))
            return True
        except ValidationError:
            return False

    low, high = 1, 256  # the largest number of such columns the contract accepts
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if accepted(mid) else (low, mid - 1)
    payload = ListingDraft.model_validate(draft(columns=columns[:low])).payload()
    assert len(canonical_json(payload["metadata"])) > MAX_METADATA_BYTES - 2000  # really near the bound
    tx = Tx.build(Identity.generate("telco"), "rdx-local", "assets.List", 1, payload)
    assert len(tx.encode()) <= MAX_TX_BYTES


def test_payload_is_canonical():
    body = draft()
    body["operations"] = ["psi", "aggregation"]
    payload = ListingDraft.model_validate(body).payload()
    assert payload["operations"] == ["aggregation", "psi"]
    assert "sample" not in payload["metadata"] and payload["metadata"]["metadata_version"] == 1
    assert ListingDraft.model_validate(payload).payload() == payload
