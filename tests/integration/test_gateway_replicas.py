"""Issue 20, part 3: two gateway processes sharing real PostgreSQL and Redis servers (Debian's
packages, rdx/stores.py), on a chain of their own (its audit anchors are this trail's alone). A key
made on one replica works on the other, a revocation holds on both, a signed request — or another
serialisation of the same signature — is refused as a replay by the other, the rate limit is one
bucket, and the one audit trail has unique ids and is anchored once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import re
import time

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer

from conftest import running_chain
from test_gateway import assert_schemathesis_passes
from rdx.components import ServiceProcess, free_port
from rdx.sdk import Gateway
from rdx.stores import PostgresServer, RedisServer
from rdx.toolchain import SetupError
from services.common import httpsig
from services.common.chain import ChainClient
from services.common.events import AUDIT, Event, EventDecodeError
from services.common.identity import Identity

ADMIN_TOKEN = "rdx_bootstrap.replicas-admin-token-not-a-secret"


class World:
    pass


def gateway(w, name: str, **env: str) -> ServiceProcess:
    return ServiceProcess("gateway", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": w.chain.kafka, "RDX_COMETBFT_RPC": w.chain.rpc_url, "RDX_CHAIN_ID": w.chain.chain_id,
        "RDX_STATE_ROOT": str(w.root / name / "state"), "RDX_KEY_FILE": str(w.root / "association.node.json"),
        "RDX_BOOTSTRAP_KEY_SHA256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
        "RDX_GATEWAY_DATABASE_URL": w.pg.url, "RDX_GATEWAY_REDIS_URL": w.redis.url,
        "RDX_ANCHOR_EVERY_S": "0.3", "RDX_ANCHOR_MAX_RECORDS": "7", "RDX_RATE_PER_S": "2", "RDX_RATE_BURST": "30",
        **env}, w.root / name / "logs")


def start_gateway(w, name: str) -> ServiceProcess:
    proc = gateway(w, name)
    proc.start()
    return proc


@pytest.fixture(scope="module")
def w(toolchain, kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    w = World()
    w.root = root
    w.pg, w.redis = PostgresServer(root / "servers"), RedisServer(root / "servers")
    with running_chain(toolchain, kafka, root / "chain") as chain:
        w.chain = chain
        w.pg.start()
        w.redis.start()
        w.gateway_key = Identity.generate("association.node")
        w.gateway_key.save(root / "association.node.json")
        w.bank, w.telco = Identity.generate("bank"), Identity.generate("telco")

        async def setup():
            async with ChainClient(chain.rpc_url, chain.chain_id) as c:
                await c.submit(chain.association, "members.SetNode", {"node": {
                    "public_key": w.gateway_key.public_key, "endpoint": "127.0.0.1:8000"}})
                for who in (w.bank, w.telco):
                    await c.submit(chain.association, "members.Register", {
                        "id": who.account, "name": who.account, "roles": ["consumer"], "public_key": who.public_key})

        asyncio.run(setup())
        w.a, w.b = start_gateway(w, "a"), start_gateway(w, "b")
        w.admin_a = Gateway(w.a.url, api_key=ADMIN_TOKEN, chain_id=chain.chain_id)
        w.admin_b = Gateway(w.b.url, api_key=ADMIN_TOKEN, chain_id=chain.chain_id)
        try:
            yield w
        finally:
            w.admin_a.close()
            w.admin_b.close()
            w.a.stop()
            w.b.stop()
            w.redis.stop()
            w.pg.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_key_made_on_one_replica_works_on_the_other_and_its_revocation_holds_on_both(w):
    made = w.admin_a.create_key("bank", "analyst")
    assert httpx.get(f"{w.b.url}/v1/policy", headers=bearer(made["token"])).status_code == 200
    assert made["key_id"] in [k["key_id"] for k in w.admin_b.request("GET", "/v1/keys")]
    w.admin_b.revoke_key(made["key_id"])
    for replica in (w.a, w.b):  # at once, on both: no cache holds a revoked key
        refused = httpx.get(f"{replica.url}/v1/policy", headers=bearer(made["token"]))
        assert refused.status_code == 401 and refused.json()["title"] == "Invalid API key"


def as_if_to_a(w, headers: dict[str, str]) -> dict[str, str]:
    """What a load balancer forwards to replica B of a request a client addressed (and signed) to the
    gateway's one address, here replica A's."""
    return {**headers, "host": w.a.url.removeprefix("http://")}


def test_a_signed_request_replayed_on_the_other_replica_is_refused(w):
    url = f"{w.a.url}/v1/policy"
    signed = httpsig.sign(w.bank, "GET", url, b"")
    assert httpx.get(url, headers=signed).status_code == 200
    replay = httpx.get(f"{w.b.url}/v1/policy", headers=as_if_to_a(w, signed))
    assert replay.status_code == 401 and replay.json()["title"] == "Replayed signature"
    fresh = httpsig.sign(w.bank, "GET", url, b"")  # the control: B accepts a new signature sent this way
    assert httpx.get(f"{w.b.url}/v1/policy", headers=as_if_to_a(w, fresh)).status_code == 200


def reserialised(h: dict[str, str]) -> dict[str, dict[str, str]]:
    value = h["Signature"].split("=:", 1)[1].rstrip(":")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    respelled = value[:-3] + alphabet[alphabet.index(value[-3]) | 0b1111] + "=="
    return {
        "a parameter added to the Signature member": {**h, "Signature": h["Signature"] + ";by=proxy"},
        "the label renamed": {**h, "Signature-Input": re.sub(r"^\w+=", "x=", h["Signature-Input"]),
                              "Signature": re.sub(r"^\w+=", "x=", h["Signature"])},
        "whitespace in the component list": {**h, "Signature-Input": h["Signature-Input"].replace(" ", "   ")},
        "another base64 spelling": {**h, "Signature": h["Signature"].replace(value, respelled)},
    }


def test_the_same_signature_reserialised_is_refused_as_a_replay_by_either_replica(w):
    url = f"{w.a.url}/v1/policy"
    signed = httpsig.sign(w.bank, "GET", url, b"")
    assert httpx.get(url, headers=signed).status_code == 200
    for name, headers in reserialised(signed).items():
        for target in (w.a.url, w.b.url):
            resp = httpx.get(f"{target}/v1/policy", headers=as_if_to_a(w, headers))
            assert resp.status_code == 401 and resp.json()["title"] == "Replayed signature", (name, target)


def test_one_signature_sent_to_both_replicas_at_once_is_accepted_once(w):
    for _ in range(5):
        signed = httpsig.sign(w.bank, "GET", f"{w.a.url}/v1/policy", b"")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            codes = list(pool.map(lambda base: httpx.get(f"{base}/v1/policy", headers=as_if_to_a(w, signed)).status_code,
                                  (w.a.url, w.b.url)))
        assert sorted(codes) == [200, 401]


def test_the_rate_limit_is_one_bucket_across_replicas(w):
    token = w.admin_a.create_key("telco", "analyst")["token"]

    async def call_both() -> list[httpx.Response]:
        # At once, on kept-alive connections: one by one on a loaded machine, 60 calls took 27 s, in
        # which 2/s refilled 55 and every call passed, shared bucket or not.
        async with httpx.AsyncClient(base_url=w.a.url) as a, httpx.AsyncClient(base_url=w.b.url) as b:
            return await asyncio.gather(*((a, b)[i % 2].get("/v1/policy", headers=bearer(token)) for i in range(60)))

    started = time.monotonic()
    answers = asyncio.run(call_both())
    refilled = 2 * (time.monotonic() - started)
    ok = [r for r in answers if r.status_code == 200]
    # A burst of 30 plus what 2/s refills while the 60 calls run; per-replica buckets would let all 60 pass.
    assert 30 <= len(ok) <= 30 + refilled + 1 and {r.status_code for r in answers} == {200, 429}, (len(ok), refilled)
    assert {i % 2 for i, r in enumerate(answers) if r.status_code == 429} == {0, 1}  # both replicas refuse


def test_one_audit_trail_with_unique_ids_anchored_once(w):
    ids = [f"replica-call-{i}" for i in range(12)]
    for i, request_id in enumerate(ids):
        replica = (w.a, w.b)[i % 2]
        assert httpx.get(f"{replica.url}/v1/policy", headers={**bearer(ADMIN_TOKEN), "x-request-id": request_id}
                         ).status_code == 200
    records = w.admin_b.audit(limit=1000)
    assert {r.request_id for r in records} >= set(ids)  # each replica's calls in the one trail
    assert [r.seq for r in records] == list(range(1, len(records) + 1))  # unique and gap-free
    last = records[-1].seq
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        anchors = w.admin_a.request("GET", "/v1/audit/anchors")
        if anchors and max(a["last_seq"] for a in anchors) >= last:
            break
        time.sleep(0.3)
    anchored = sorted(s for a in anchors for s in range(a["first_seq"], a["last_seq"] + 1))
    assert anchored == list(range(1, max(anchored) + 1)) and max(anchored) >= last  # every record once
    assert len(anchors) >= 2  # batches of at most 7: several anchors, by whichever replica held the lock
    assert w.admin_a.verify_audit() == [] and w.admin_b.verify_audit() == []
    for replica in (w.a, w.b):  # the anchoring lock and a fresh nonce: no replica's anchor was refused
        assert "audit anchoring failed" not in replica.process.log_path.read_text()


def _event(message) -> Event | None:
    try:
        return Event.decode(message.value)
    except EventDecodeError:  # another test's hostile record (test_audit_restore.py): the topic is shared
        return None


async def audit_events(bootstrap: str, instance: str, want: int) -> list[Event]:
    """Every record of trail ``instance`` on rdx.audit.v1 (other tests' gateways share the topic),
    read until ``want`` records are there and a second more."""
    consumer = AIOKafkaConsumer(AUDIT, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    found: list[Event] = []
    try:
        deadline, settle = time.monotonic() + 30, None
        while time.monotonic() < (settle or deadline):
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                found += [e for e in map(_event, messages) if e is not None and e.data.get("instance") == instance]
            if settle is None and len({e.data["seq"] for e in found}) >= want:
                settle = time.monotonic() + 1.0
        return found
    finally:
        await consumer.stop()


def test_each_record_of_the_shared_trail_is_published_once_under_its_own_id(w):
    for i in range(6):
        httpx.get(f"{(w.a, w.b)[i % 2].url}/v1/policy", headers={**bearer(ADMIN_TOKEN), "x-request-id": f"kafka-call-{i}"})
    with psycopg.connect(w.pg.url) as db:
        [(instance,)] = db.execute("SELECT name FROM instance").fetchall()
        stored = dict(db.execute("SELECT seq, hash FROM audit").fetchall())
    events = asyncio.run(audit_events(w.chain.kafka, instance, len(stored)))
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))  # no record published twice, no two records under one id
    assert {e.data["seq"] for e in events} >= set(stored)  # every stored record, from either replica
    assert all(e.id == f"audit/{instance}/{e.data['seq']}" and e.data["hash"] == stored.get(e.data["seq"], e.data["hash"])
               for e in events)
    assert {f"kafka-call-{i}" for i in range(6)} <= {e.data["request_id"] for e in events}


def test_hostile_input_on_the_shared_stores(w):
    # A NUL from a decoded path or a query parameter: PostgreSQL text holds none; no 500.
    assert httpx.get(f"{w.a.url}/v1/%00", headers=bearer(ADMIN_TOKEN)).status_code == 404
    assert w.admin_b.audit(member="bank\x00", limit=5) == []
    stored = w.admin_b.audit(limit=1000)
    assert any(r.route == "/v1/\ufffd" for r in stored)
    assert w.admin_a.verify_audit() == []
    for token in ("rdx_\x7f.x", "rdx_" + "a" * 5000 + ".x", "rdx_.", "rdx_a;DROP TABLE api_keys;.x", "rdx_bootstrap.wrong"):
        try:
            resp = httpx.get(f"{w.b.url}/v1/policy", headers=bearer(token))
        except httpx.LocalProtocolError:
            continue  # the client itself refuses to send it
        assert resp.status_code == 401
    garbage = {"signature-input": 'sig1=("@method");keyid="bank";nonce=5', "signature": "sig1=:AAAA:;;"}
    assert httpx.get(f"{w.a.url}/v1/policy", headers=garbage).status_code == 401
    assert w.admin_a.request("GET", "/v1/keys") is not None  # the stores still answer


def test_schemathesis_finds_no_server_error_on_a_replica(w):
    """The API's generated inputs (strings into every audit filter and key path, among others)
    against the PostgreSQL and Redis stores."""
    def start(**upstreams: str) -> ServiceProcess:
        proc = gateway(w, "fuzzed", RDX_RATE_PER_S="10000", RDX_RATE_BURST="10000", **upstreams)
        proc.start()
        return proc

    assert_schemathesis_passes(w.chain, w.root / "fuzzed", ADMIN_TOKEN, start)


def test_bad_store_settings_fail_at_start_with_a_clear_error_and_no_password(w):
    for env, says in (({"RDX_GATEWAY_DATABASE_URL": "mysql://u:hunter2@127.0.0.1/x"}, "must be a postgresql:// URL"),
                      ({"RDX_GATEWAY_REDIS_URL": "http://u:hunter2@127.0.0.1/"}, "must be a redis://"),
                      ({"RDX_GATEWAY_REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}, "Redis did not answer"),
                      ({"RDX_GATEWAY_DATABASE_URL": f"postgresql://rdx:hunter2@127.0.0.1:{free_port()}/x"},
                       "PostgreSQL did not answer")):
        name = f"bad-{hashlib.sha256(str(env).encode()).hexdigest()[:6]}"
        proc = gateway(w, name, RDX_UPSTREAM_TIMEOUT_S="2", **env)
        with pytest.raises(SetupError):
            proc.start(timeout=30)
        proc.stop()
        log = proc.process.log_path.read_text()
        assert says in log and "hunter2" not in log, log[-2000:]


def until_ok(call, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if call().status_code == 200:
                return
        except httpx.TimeoutException:  # a request held by the store's pool (up to its 10 s) past httpx's 5 s: not yet
            pass
        time.sleep(0.5)
    pytest.fail(f"the gateway did not use {what} again after it came back")


def test_postgresql_away_is_a_503_and_the_replicas_recover_when_it_returns(w):
    token = w.admin_a.create_key("bank", "auditor")["token"]
    w.pg.process.stop()  # the server only: its data stays
    try:
        # The gateway answers 503 once its pool gives up waiting for a connection (up to its 10 s
        # store timeout), which can be past httpx's default 5 s.
        resp = httpx.get(f"{w.b.url}/v1/policy", headers={**bearer(token), "x-request-id": "while-pg-away"},
                         timeout=30)
        assert resp.status_code == 503 and resp.json()["title"] == "Service unavailable"
        assert w.a.healthy() and w.b.healthy()
    finally:
        w.pg.process.start()
    until_ok(lambda: httpx.get(f"{w.b.url}/v1/policy", headers=bearer(token)), "PostgreSQL")
    until_ok(lambda: httpx.get(f"{w.a.url}/v1/policy", headers=bearer(token)), "PostgreSQL")
    log = w.b.process.log_path.read_text()
    assert "while-pg-away" in log and token not in log and w.pg.password not in log
    assert w.admin_a.verify_audit() == []


def test_redis_away_is_a_503_and_the_replicas_recover_when_it_returns(w):
    w.redis.stop()
    try:
        signed = httpsig.sign(w.bank, "GET", f"{w.a.url}/v1/policy", b"")
        resp = httpx.get(f"{w.a.url}/v1/policy", headers=signed)
        assert resp.status_code == 503 and resp.headers["content-type"].startswith("application/problem+json")
        assert w.a.healthy() and w.b.healthy()
    finally:
        w.redis.start()
    for replica in (w.a, w.b):
        url = f"{replica.url}/v1/policy"
        until_ok(lambda: httpx.get(url, headers=httpsig.sign(w.bank, "GET", url, b"")), "Redis")
