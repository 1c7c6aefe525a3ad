"""docs/asyncapi.yaml against the code's wire contract and against the events a real broker carries:
chain events relayed from a real chain and the gateway's audit records, read back from Kafka and
validated with the document's JSON Schemas."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from test_gateway import ADMIN_TOKEN, start_gateway

from rdx.sdk import Gateway
from services.common.chain import ChainClient
from services.common.events import AUDIT, CHAIN_EVENTS, EVENT_TOPICS, EVENT_TYPES, JOB_STATUS, Event
from services.common.identity import Identity
from services.common.listing import example_metadata

DOC = yaml.safe_load((Path(__file__).parents[2] / "docs" / "asyncapi.yaml").read_text())
SCHEMA_OF = {CHAIN_EVENTS: "ChainEvent", AUDIT: "ApiCall", JOB_STATUS: "JobStatusEvent"}


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": DOC["components"]})


def test_document_states_the_code_contract():
    assert {c["address"] for c in DOC["channels"].values()} == set(EVENT_TOPICS)
    schemas = DOC["components"]["schemas"]
    assert set(schemas["Envelope"]["required"]) == set(Event.model_fields)
    assert set(schemas["ChainEvent"]["allOf"][1]["properties"]["type"]["enum"]) == EVENT_TYPES[CHAIN_EVENTS]
    assert set(schemas["JobStatusEvent"]["allOf"][1]["properties"]["type"]["enum"]) == EVENT_TYPES[JOB_STATUS]
    assert {schemas["ApiCall"]["allOf"][1]["properties"]["type"]["const"]} == EVENT_TYPES[AUDIT]


def test_schemas_refuse_what_the_contract_refuses():
    good = {"id": "5/0/0", "type": "AccessApproved", "version": 1, "entity": "access:g1", "source": "consensus",
            "occurred_at": "2026-12-02T07:00:00Z", "data": {"grant": "g1", "by": "provider"}}
    validator("ChainEvent").validate(good)
    for bad in ({**good, "type": "Invented"}, {**good, "data": {"grant": "g1"}}, {**good, "version": 2},
                {**good, "extra": 1}, {**good, "id": "audit/x/1"}, {k: v for k, v in good.items() if k != "entity"}):
        assert not validator("ChainEvent").is_valid(bad), bad


async def read_all(bootstrap: str, topics: list[str]) -> dict[str, list[bytes]]:
    """Every record now on ``topics``, from the first offset to the end (no consumer group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or
                                                                 await _partitions(consumer, t))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        found: dict[str, list[bytes]] = {t: [] for t in topics}
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                found[tp.topic] += [m.value for m in messages if m.offset < ends[tp]]
        return found
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # the first look-up of a topic fills the metadata
    return consumer.partitions_for_topic(topic) or set()


def test_real_events_from_the_broker_match_the_document(chain, tmp_path):
    tag = f"aa{int(time.time()) % 100000}"
    bank, telco = Identity.generate(f"bank-{tag}"), Identity.generate(f"telco-{tag}")
    asset = f"{tag}.l3"

    async def activity():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for who, roles in ((bank, ["consumer"]), (telco, ["provider"])):
                await c.submit(chain.association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key})
            await c.submit(telco, "assets.List", {
                "id": asset, "level": "L3", "operations": ["psi"], "commitment": "ab" * 32,
                "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata(f"Data {asset}")})
            for n in (1, 2):
                await c.submit(bank, "access.Request", {"id": f"{asset}.g{n}", "asset": asset, "operations": ["psi"],
                                                        "purpose": "schema test", "expires_at": int(time.time()) + 3600,
                                                        "max_runs": 1})
            await c.submit(telco, "access.Approve", {"id": f"{asset}.g1"})
            await c.submit(telco, "access.Reject", {"id": f"{asset}.g2", "reason": "no"})
            await c.submit(bank, "access.Revoke", {"id": f"{asset}.g1", "reason": "done"})

    asyncio.run(activity())
    gateway = start_gateway(chain, tmp_path, RDX_ANCHOR_EVERY_S="0.5")
    try:
        with Gateway(gateway.url, api_key=ADMIN_TOKEN, chain_id=chain.chain_id) as admin:
            admin.request("GET", "/v1/policy")
            deadline, seen = time.monotonic() + 60, {}
            while time.monotonic() < deadline:
                seen = asyncio.run(read_all(chain.kafka, list(EVENT_TOPICS)))
                types = {json.loads(v)["type"] for vs in seen.values() for v in vs if v}
                if {"ApiCall", "AccessRevoked", "AccessRejected"} <= types:
                    break
                time.sleep(1)
    finally:
        gateway.stop()

    checked: dict[str, int] = {}
    for topic, values in seen.items():
        check = validator(SCHEMA_OF[topic])
        for value in values:
            event = json.loads(value)
            errors = [e.message[:200] for e in check.iter_errors(event)]
            assert not errors, (topic, event["type"], errors)
            checked[event["type"]] = checked.get(event["type"], 0) + 1
    assert {"MemberRegistered", "AssetListed", "AccessRequested", "AccessApproved", "AccessGranted",
            "AccessRejected", "AccessRevoked", "ApiCall"} <= set(checked), checked
