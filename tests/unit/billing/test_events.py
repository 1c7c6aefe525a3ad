"""Billing's consumer acts on the ledger's types only; what it does with the others, and with hostile
records of every kind, is tested on the real chain and broker in
tests/integration/test_forged_chain_events.py."""

from __future__ import annotations

from services.billing import ledger
from services.billing.events import SKIPPED_HEADERS
from services.common.events import CHAIN_EVENTS, EVENT_TYPES


def test_applied_types_are_chain_event_types_and_no_applied_type_is_skipped_by_header():
    assert ledger.APPLIED_TYPES <= EVENT_TYPES[CHAIN_EVENTS]
    assert not {t.encode() for t in ledger.APPLIED_TYPES} & SKIPPED_HEADERS
    assert {t.decode() for t in SKIPPED_HEADERS} | ledger.APPLIED_TYPES == EVENT_TYPES[CHAIN_EVENTS]
