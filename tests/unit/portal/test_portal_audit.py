"""The audit page's check of records against anchors (services/portal/audit.py), on a hash chain
made here with the shared record format, and the page's refusals through the TestClient."""

from __future__ import annotations

import pytest

from services.common.audit import GENESIS, AuditRecord, record_hash
from services.portal import audit as trail
from tests.unit.portal.test_portal_routes import Site

pytestmark = pytest.mark.unit


def chain(n: int) -> list[AuditRecord]:
    records, prev = [], GENESIS
    for seq in range(1, n + 1):
        fields = dict(seq=seq, ts=1_700_000_000.0 + seq, request_id=f"r{seq}", member="bank", role="analyst",
                      key_id="k1", method="GET", route="/v1/listings", decision="allow", reason="", status=200,
                      latency_ms=1.0, prev_hash=prev)
        unhashed = AuditRecord(**fields)
        record = unhashed.model_copy(update={"hash": record_hash(unhashed.body())})
        records.append(record)
        prev = record.hash
    return records


def anchored(records: list[AuditRecord], first: int, last: int) -> dict:
    return {"first_seq": first, "last_seq": last, "digest": records[last - 1].hash, "height": 10 + last, "time": 1.0}


def verdicts(rows) -> dict[int, str]:
    return {row.record.seq: row.verdict for row in rows}


def test_an_anchor_whole_on_the_page_is_verified_and_the_others_say_why_not():
    records = chain(12)
    anchors = [anchored(records, 1, 4), anchored(records, 5, 8), anchored(records, 9, 11)]
    checks, rows = trail.check(records[2:10], anchors)  # records 3..10
    assert [(c.first_seq, c.verdict) for c in checks] == [(1, "partly_shown"), (5, "verified"), (9, "partly_shown")]
    assert verdicts(rows) == {3: "partly_shown", 4: "partly_shown", 5: "verified", 6: "verified", 7: "verified",
                              8: "verified", 9: "partly_shown", 10: "partly_shown"}
    assert all(row.intact for row in rows)
    _, rows = trail.check(records, anchors)
    assert verdicts(rows)[12] == "not_anchored"


def test_a_record_changed_after_its_anchor_is_found():
    records = chain(8)
    anchors = [anchored(records, 1, 4), anchored(records, 5, 8)]
    changed = records[5].model_copy(update={"decision": "deny"})  # record 6, its stored hash kept
    checks, rows = trail.check(records[:5] + [changed] + records[6:], anchors)
    assert [(c.verdict, c.bad) for c in checks] == [("verified", None), ("mismatch", 6)]
    assert [row.record.seq for row in rows if not row.intact] == [6]
    # hashed again to look whole: the next record's link to it breaks instead
    fields = changed.body()
    rehashed = changed.model_copy(update={"hash": record_hash(fields)})
    checks, rows = trail.check(records[:5] + [rehashed] + records[6:], anchors)
    assert checks[1].verdict == "mismatch" and all(row.intact for row in rows)
    # the whole batch rewritten and chained again: its last hash is not the digest on chain
    rewritten, prev = [], records[3].hash
    for r in records[4:]:
        fields = {**r.body(), "status": 500, "prev_hash": prev}
        rewritten.append(AuditRecord(**fields, hash=record_hash(fields)))
        prev = rewritten[-1].hash
    checks, _ = trail.check(records[:4] + rewritten, anchors)
    assert [(c.verdict, c.bad) for c in checks] == [("verified", None), ("mismatch", 8)]


def test_a_record_dropped_from_a_batch_is_found():
    records = chain(8)
    anchors = [anchored(records, 1, 4), anchored(records, 5, 8)]
    checks, _ = trail.check(records[:5] + records[6:], anchors, after=0)
    assert [(c.verdict, c.missing) for c in checks] == [("verified", ()), ("mismatch", (6,))]
    # the first record after the page's start dropped: still inside the page, still found
    checks, _ = trail.check(records[1:], anchors, after=0)
    assert [(c.verdict, c.missing) for c in checks] == [("mismatch", (1,)), ("verified", ())]
    # a page that starts inside a batch cannot check it
    checks, _ = trail.check(records[2:], anchors, after=2)
    assert [c.verdict for c in checks] == ["partly_shown", "verified"]


@pytest.mark.parametrize("records", (["x"], [{"seq": 1}], None, [{"seq": "a"}]))
def test_malformed_records_are_refused(records):
    with pytest.raises(trail.BadTrail):
        trail.parse_records(records)


@pytest.mark.parametrize("anchors", ([{"first_seq": "a"}], [{}], None, ["x"]))
def test_malformed_anchors_are_refused(anchors):
    with pytest.raises(trail.BadTrail):
        trail.parse_anchors(anchors)


def ends(*last_seqs: int) -> list[dict]:
    return [{"last_seq": n} for n in last_seqs]


@pytest.mark.parametrize("after, anchors, expected", (
    (0, ends(40, 90, 130), 90),      # the last batch end within 100 records
    (0, ends(250, 700), 250),        # none within 100: the first within 1000, so the batch is whole
    (90, ends(90, 130, 300), 130),   # an anchor ending at `after` itself is the page before's
    (0, ends(1500), 100),            # a batch larger than the gateway's page: 100 records, unchecked
    (500, [], 600),                  # records not anchored yet
))
def test_a_page_ends_where_an_anchored_batch_ends(after, anchors, expected):
    assert trail.page_end(after, anchors, 100, 1000) == expected


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("bank", "auditor"), ("bank", "analyst")))
def test_the_audit_page_is_the_association_s(site, member, role):
    site.sign_in(member, role)
    assert site.client.get("/audit").status_code == 403
    assert site.calls == []


@pytest.mark.parametrize("after", ("-1", "abc", "1e3", "9" * 30, str(2**63), "１２", "12\n"))
def test_the_audit_page_refuses_a_bad_record_number(site, after):
    site.sign_in("association", "auditor")
    assert site.client.get("/audit", params={"after": after}).status_code == 400
    assert site.calls == []


def test_the_audit_page_shows_each_record_s_check(site):
    records = chain(6)
    site.answers["/v1/audit"] = [r.model_dump() for r in records]
    site.answers["/v1/audit/anchors"] = [anchored(records, 1, 4)]
    site.sign_in("association", "auditor")
    page = site.client.get("/audit", headers={"accept-language": "en"})
    assert page.status_code == 200
    assert 'id="anchor-4" data-verdict="verified"' in page.text
    assert 'id="record-5" data-verdict="not_anchored" data-intact="yes"' in page.text
    assert "Not checked here" in page.text
    limits = [c.url.params["limit"] for c in site.seen if c.url.path == "/v1/audit"]
    assert limits == ["4"]  # the page ended with the anchored batch
    site.answers["/v1/audit"] = [r.model_dump() for r in records if r.seq != 2]  # one dropped from the store
    page = site.client.get("/audit", headers={"accept-language": "zh-CN"})
    assert 'id="anchor-4" data-verdict="mismatch"' in page.text and "缺少记录：2" in page.text
    site.answers["/v1/audit"] = [{"seq": "not a record"}]
    assert site.client.get("/audit").status_code == 502
