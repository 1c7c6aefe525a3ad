"""Kafka authentication and ACLs (issue 15, part 3) on a real broker, with the services' own clients.

A second broker, started here, has only SASL client listeners with SCRAM-SHA-512 (SASL_PLAINTEXT,
and SASL_SSL with a certificate signed by a CA made for the run) and KRaft's StandardAuthorizer. Its users and ACLs are read from the KafkaUsers in infra/ (base/kafka-users.yaml,
member/kafka-user.yaml for member "example"), so what is tested is what is deployed; their
passwords are made at run time and never printed. Then: the relay, as the relay's user, publishes a
block's events; the catalog's and billing's consumers read them in their own groups and forward a
dead letter to the dead-letter topic, which the operators' user lists; nobody else may write the
chain topic, a consumer may not use another's group, and a client without credentials, or with a
wrong password, gets nothing; over TLS, as deployed, the relay publishes with the CA file, and a
client that does not trust that CA is refused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (ClusterAuthorizationFailedError, GroupAuthorizationFailedError, KafkaError,
                             TopicAuthorizationFailedError)
from aiokafka.protocol.admin import CreateAclsRequest

from rdx import deadletters
from rdx.components import LOOPBACK, KafkaBroker, free_port
from services.common.deadletter import Reason
from services.common.events import AUDIT, CHAIN_EVENTS, JOB_STATUS, TOPICS, Event
from services.common.kafka import EventProducer, IdempotentConsumer
from services.common.settings import KafkaSecurity
from services.consensus.relay import Relay, to_event
from services.consensus.state import ChainEvent, Database
from services.gateway import audit
from services.gateway.db import SqliteDatabase

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MEMBER = "example"
MECHANISM = "SCRAM-SHA-512"

# Kafka's wire codes (org.apache.kafka.common.resource / acl).
RESOURCE = {"topic": 2, "group": 3, "cluster": 4, "transactionalId": 5}
PATTERN = {"literal": 3, "prefix": 4}
OPERATION = {"All": 2, "Read": 3, "Write": 4, "Create": 5, "Delete": 6, "Alter": 7, "Describe": 8,
             "ClusterAction": 9, "DescribeConfigs": 10, "AlterConfigs": 11, "IdempotentWrite": 12}
PERMISSION = {"deny": 2, "allow": 3}


def infra_users() -> dict[str, list[dict]]:
    """Every KafkaUser in infra/ and its ACL rules, the member's as the overlay instantiates it."""
    users = {}
    for path in (ROOT / "infra/base/kafka-users.yaml", ROOT / "infra/member/kafka-user.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "KafkaUser":
                assert doc["spec"]["authentication"]["type"] == "scram-sha-512"
                assert doc["spec"]["authorization"]["type"] == "simple"
                name, acls = doc["metadata"]["name"], doc["spec"]["authorization"]["acls"]
                if path.parent.name == "member":  # nameSuffix and the group patch of members/<member>
                    name = f"{name}-{MEMBER}"
                    acls = yaml.safe_load(yaml.safe_dump(acls).replace("compute-MEMBER", f"compute-{MEMBER}"))
                users[name] = acls
    return users


@dataclass
class SecureBroker(KafkaBroker):
    """The real broker with SCRAM on its only client listener; ``admin`` is its super user."""

    admin: KafkaSecurity | None = field(default=None)

    def healthy(self) -> bool:
        async def probe() -> bool:
            client = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000,
                                         **self.admin.client_options())
            try:
                await asyncio.wait_for(client.start(), 3)
                return bool((await asyncio.wait_for(client.describe_cluster(), 3)).get("brokers"))
            finally:
                await client.close()
        try:
            return asyncio.run(probe())
        except Exception:  # noqa: BLE001 - not up yet
            return False


@dataclass
class Secured:
    bootstrap: str
    users: dict[str, KafkaSecurity]  # the infra's users, and "admin"
    password_files: dict[str, Path]
    tls_bootstrap: str  # SASL_SSL, the broker's certificate signed by ca_file
    ca_file: Path


def make_tls(home: Path) -> tuple[Path, Path]:
    """A CA made for this run and the broker's certificate for 127.0.0.1 signed by it: (the CA's
    certificate, the broker's key and certificate chain as one PEM file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rdx test cluster CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, keystore = home / "ca.crt", home / "broker.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keystore.touch(mode=0o600)
    keystore.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
                         + cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    return ca_file, keystore


def security(user: str, password: str) -> KafkaSecurity:
    return KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism=MECHANISM, sasl_username=user,
                         sasl_password=password)


async def create_acls(bootstrap: str, admin: KafkaSecurity, users: dict[str, list[dict]]) -> int:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **admin.client_options())
    await client.start()
    created = 0
    try:
        for user, rules in users.items():
            for rule in rules:
                resource = rule["resource"]
                for op in rule["operations"]:
                    request = CreateAclsRequest(
                        RESOURCE[resource["type"]],
                        resource.get("name", "kafka-cluster"), PATTERN[resource.get("patternType", "literal")],
                        f"User:{user}", rule.get("host", "*"), OPERATION[op], PERMISSION[rule.get("type", "allow")])
                    response = await client._send_request(request)
                    for error_code, error_message in response.creation_responses:
                        assert error_code == 0, (user, resource, op, error_message)
                    created += 1
        await client.create_topics([NewTopic(t, 1, 1) for t in TOPICS])
    finally:
        await client.close()
    return created


@pytest.fixture(scope="module")
def secured(toolchain, tmp_path_factory) -> Secured:
    users = infra_users()
    passwords = {name: secrets.token_hex(16) for name in [*users, "admin"]}  # never printed
    port, tls_port, controller = free_port(), free_port(), free_port()
    home = tmp_path_factory.mktemp("kafka-auth")
    ca_file, keystore = make_tls(home)
    jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
            f'username="admin" password="{passwords["admin"]}";')
    broker = SecureBroker(
        home, toolchain, port=port, controller_port=controller,
        admin=security("admin", passwords["admin"]),
        extra_config={
            "listeners": f"SASL_PLAINTEXT://{LOOPBACK}:{port},SASL_SSL://{LOOPBACK}:{tls_port},"
                         f"CONTROLLER://{LOOPBACK}:{controller}",
            "advertised.listeners": f"SASL_PLAINTEXT://{LOOPBACK}:{port},SASL_SSL://{LOOPBACK}:{tls_port}",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": jaas,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": str(keystore),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The broker itself; ANONYMOUS is only the controller listener's (the node talking to itself).
            "super.users": "User:admin;User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
            "auto.create.topics.enable": "false",
        },
        format_args=tuple(arg for name, pw in passwords.items()
                          for arg in ("--add-scram", f"{MECHANISM}=[name={name},password={pw}]")))
    broker.prepare()
    try:
        broker.start()
        assert asyncio.run(create_acls(broker.bootstrap, broker.admin, users)) >= 2 * len(users)
        files = {}
        for name, pw in passwords.items():
            path = broker.home / f"{name}.password"
            path.touch(mode=0o600)
            path.write_text(pw + "\n")  # as a mounted Secret may end
            files[name] = path
        yield Secured(broker.bootstrap, {n: security(n, p) for n, p in passwords.items()}, files,
                      f"{LOOPBACK}:{tls_port}", ca_file)
    finally:
        broker.stop()


def chain_event(height: int, i: int = 0) -> ChainEvent:
    return ChainEvent(height, 0, i, 1_700_000_000 + height, "MemberRegistered", f"member/m{height}-{i}",
                      {"member": f"m{height}-{i}"})


def env_for(monkeypatch, secured: Secured, user: str) -> None:
    """The environment a deployed pod gets (infra/base/kustomization.yaml), SASL without TLS here."""
    monkeypatch.setenv("RDX_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("RDX_KAFKA_SASL_MECHANISM", MECHANISM)
    monkeypatch.setenv("RDX_KAFKA_SASL_USERNAME", user)
    monkeypatch.setenv("RDX_KAFKA_SASL_PASSWORD_FILE", str(secured.password_files[user]))


async def consume(consumer: IdempotentConsumer, done, timeout: float = 30.0) -> None:
    """Run the consumer until ``done(consumer)`` holds, or ``timeout``."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline and not done(consumer):
            if task.done():
                task.result()  # raises what stopped it
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


def recording(conn_setup) -> None:
    conn_setup.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")


def record(event: Event, conn) -> None:
    conn.execute("INSERT INTO seen VALUES (?)", (event.id,))


def test_relay_publishes_consumers_read_in_their_groups_and_forward_dead_letters(secured, tmp_path, monkeypatch):
    """The relay, configured only by the environment as its pod is, publishes a committed block as
    rdx-relay; catalog and billing read it in their own groups, dead-letter a tombstone to the
    chain topic's .dlq, and the operators' user lists that dead letter."""
    height = 1000 + secrets.randbelow(10**6)
    db = Database(tmp_path / "chain.sqlite")
    db.commit_block(height, b"\x01" * 32, {}, [chain_event(height, 0), chain_event(height, 1)])
    db.close()

    async def scenario() -> None:
        env_for(monkeypatch, secured, "rdx-relay")
        relay = Relay(tmp_path / "chain.sqlite", tmp_path / "relay.sqlite", secured.bootstrap)
        assert relay.producer.security.sasl_username == "rdx-relay"
        await relay.producer.start()
        try:
            assert await relay.publish_pending() == 2
        finally:
            await relay.producer.stop()
            relay.chain.close()
        # A record no consumer can apply, from the relay's user (the only one that may write here).
        raw = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, **secured.users["rdx-relay"].client_options())
        await raw.start()
        try:
            await raw.send_and_wait(CHAIN_EVENTS, None, key=b"poison")
        finally:
            await raw.stop()

        for service, user, group in (("catalog", "rdx-catalog", f"catalog-{uuid.uuid4().hex[:8]}"),
                                     ("billing", "rdx-billing", None)):
            env_for(monkeypatch, secured, user)
            consumer = IdempotentConsumer(secured.bootstrap, service, [CHAIN_EVENTS], group,
                                          tmp_path / f"{service}.sqlite", record)
            recording(consumer.conn)
            await consumer.start()
            try:
                ours = {to_event(chain_event(height, i)).id for i in (0, 1)}

                def seen(c: IdempotentConsumer) -> set[str]:
                    return {r[0] for r in c.conn.execute("SELECT id FROM seen")}

                def forwarded(c: IdempotentConsumer) -> list[tuple[str, int]]:
                    return c.conn.execute("SELECT reason, forwarded FROM dead_letters").fetchall()

                await consume(consumer, lambda c: ours <= seen(c) and (Reason.TOMBSTONE.value, 1) in forwarded(c))
                assert ours <= seen(consumer), (service, "did not read the relay's events")
                kept = forwarded(consumer)
                assert (Reason.TOMBSTONE.value, 1) in kept, (service, kept)  # forwarded to the .dlq
                assert consumer.store.count_unforwarded() == 0
            finally:
                await consumer.stop()

        env_for(monkeypatch, secured, "rdx-operator")
        listed = await deadletters.read(secured.bootstrap, [CHAIN_EVENTS], timeout_s=30)
        assert {d.service for _, d in listed if d.reason == Reason.TOMBSTONE} >= {"catalog", "billing"}

    asyncio.run(scenario())


def test_catalog_ingest_catches_up_as_its_user(secured, tmp_path, monkeypatch):
    """The catalog's own ingest, as rdx-catalog from the environment: the topic's end offsets (admin
    and consumer without a group), its group catalog-<read model>, and the watcher that reads the
    group's committed offsets until the read model has caught up."""
    from services.catalog.ingest import Ingest

    async def scenario() -> bool:
        producer = EventProducer(secured.bootstrap, "consensus", security=secured.users["rdx-relay"])
        await producer.start()
        try:
            await producer.publish(CHAIN_EVENTS, to_event(chain_event(7, secrets.randbelow(10**6))))
        finally:
            await producer.stop()
        env_for(monkeypatch, secured, "rdx-catalog")
        ingest = Ingest(secured.bootstrap, tmp_path / "catalog.sqlite")
        assert ingest.group.startswith("catalog-") and ingest.security.sasl_username == "rdx-catalog"
        await ingest.start()
        assert sum(ingest._target.values()) > 0  # there is something to catch up with
        stop = asyncio.Event()
        task = asyncio.create_task(ingest.run(stop))
        try:
            for _ in range(300):
                if ingest.caught_up or task.done():
                    break
                await asyncio.sleep(0.1)
            return ingest.caught_up
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await ingest.stop()

    assert asyncio.run(scenario())


# Who may write which topic: the ACL matrix of infra/, each cell tried with the real producer.
WRITERS = {
    CHAIN_EVENTS: {"rdx-relay"},
    AUDIT: {"rdx-gateway"},
    JOB_STATUS: {f"rdx-compute-{MEMBER}"},
    f"{CHAIN_EVENTS}.dlq": {"rdx-catalog", "rdx-billing", f"rdx-compute-{MEMBER}", "rdx-gateway"},
    f"{AUDIT}.dlq": set(),
    f"{JOB_STATUS}.dlq": set(),
}


def test_each_user_writes_only_its_own_topics(secured):
    users = [u for u in secured.users if u != "admin"]
    assert set(users) == {"rdx-relay", "rdx-gateway", "rdx-catalog", "rdx-billing", "rdx-operator",
                          f"rdx-compute-{MEMBER}"}

    async def try_all() -> dict[tuple[str, str], str]:
        outcome = {}
        for user in users:
            producer = EventProducer(secured.bootstrap, user, request_timeout_ms=5000, security=secured.users[user])
            try:
                await producer.start()
            except ClusterAuthorizationFailedError:
                # An idempotent producer needs Write on some topic for its producer id: a user
                # that may write nothing (the operators') cannot even start one.
                await producer.stop()
                outcome.update({(user, topic): "refused" for topic in WRITERS})
                continue
            try:
                for topic in WRITERS:
                    event = Event(id=f"auth/{uuid.uuid4().hex}", type="MemberRegistered", entity="member/x",
                                  source="test", data={})
                    try:
                        await asyncio.wait_for(producer.publish(topic, event), 15)
                        outcome[(user, topic)] = "written"
                    except TopicAuthorizationFailedError:
                        outcome[(user, topic)] = "refused"
            finally:
                await producer.stop()
        return outcome

    outcome = asyncio.run(try_all())
    expected = {(u, t): "written" if u in WRITERS[t] else "refused" for u in users for t in WRITERS}
    assert outcome == expected


def test_consumers_only_in_their_own_groups(secured, tmp_path):
    """A consumer's user reads the chain topic in its groups and in no other: not another service's,
    not another member's (which would let it commit offsets past a kill switch for that node)."""

    async def join(user: str, group: str, topic: str = CHAIN_EVENTS) -> str:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=secured.bootstrap, group_id=group,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    **secured.users[user].client_options())
        try:
            await consumer.start()
            await asyncio.wait_for(consumer.getmany(timeout_ms=2000), 20)
            await asyncio.wait_for(consumer.commit(), 20)
            return "allowed"
        except (GroupAuthorizationFailedError, TopicAuthorizationFailedError):
            return "refused"
        finally:
            await consumer.stop()

    async def scenario() -> dict:
        cases = {
            ("rdx-catalog", "catalog-1a2b"): None, ("rdx-catalog", "billing-1a2b"): None,
            ("rdx-billing", "billing-3c4d"): None, ("rdx-billing", "catalog-3c4d"): None,
            (f"rdx-compute-{MEMBER}", f"compute-{MEMBER}"): None,
            (f"rdx-compute-{MEMBER}", "compute-other"): None,
            ("rdx-catalog", f"compute-{MEMBER}"): None,
            ("rdx-gateway", "gateway-1"): None, ("rdx-gateway", "gateway-webhooks-5e6f"): None,
            ("rdx-relay", "catalog-relay"): None,
        }
        for user, group in cases:
            cases[(user, group)] = await join(user, group)
        return cases

    outcome = asyncio.run(scenario())
    assert outcome == {
        ("rdx-catalog", "catalog-1a2b"): "allowed", ("rdx-catalog", "billing-1a2b"): "refused",
        ("rdx-billing", "billing-3c4d"): "allowed", ("rdx-billing", "catalog-3c4d"): "refused",
        (f"rdx-compute-{MEMBER}", f"compute-{MEMBER}"): "allowed",
        (f"rdx-compute-{MEMBER}", "compute-other"): "refused",
        ("rdx-catalog", f"compute-{MEMBER}"): "refused",
        ("rdx-gateway", "gateway-1"): "refused", ("rdx-gateway", "gateway-webhooks-5e6f"): "allowed",
        ("rdx-relay", "catalog-relay"): "refused",
    }


def test_the_gateway_reads_its_audit_records_back_without_a_group_and_another_service_cannot(secured, tmp_path,
                                                                                           monkeypatch):
    """What a gateway restored from a backup does at its start (restore_anchored): as rdx-gateway it
    reads rdx.audit.v1 back, without a consumer group; rdx-catalog may not read it."""
    async def scenario() -> dict[str, int | str]:
        env_for(monkeypatch, secured, "rdx-gateway")
        trail = await audit.AuditLog.open(SqliteDatabase(tmp_path / "audit.sqlite"))
        producer = EventProducer(secured.bootstrap, "gateway", security=secured.users["rdx-gateway"])
        await producer.start()
        try:
            records = [await trail.append(dict(ts=1.0, request_id="r", member="bank", role="analyst", key_id="k",
                                                method="GET", route="/v1/listings", decision="allow", reason="ok",
                                                status=200, latency_ms=1.0)) for _ in range(3)]
            await producer.publish_many(AUDIT, [audit.to_event(r, trail.instance) for r in records])
        finally:
            await producer.stop()
        outcome: dict[str, int | str] = {}
        for user in ("rdx-gateway", "rdx-catalog"):
            env_for(monkeypatch, secured, user)
            try:
                found = await asyncio.wait_for(audit._published(trail.instance, 0, 3, secured.bootstrap), 30)
                outcome[user] = len(found)
            except (KafkaError, asyncio.TimeoutError) as exc:
                outcome[user] = type(exc).__name__
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome == {"rdx-gateway": 3, "rdx-catalog": 0}  # the catalog's user does not even see the topic


def test_without_credentials_or_with_a_wrong_password_nothing(secured):
    async def attempt(sec: KafkaSecurity) -> str:
        producer = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, request_timeout_ms=5000,
                                    **sec.client_options())
        try:
            await asyncio.wait_for(producer.start(), 20)
            await asyncio.wait_for(producer.send_and_wait(CHAIN_EVENTS, b"{}"), 20)
            return "written"
        except (KafkaError, asyncio.TimeoutError) as exc:
            return type(exc).__name__
        finally:
            await producer.stop()

    plaintext = asyncio.run(attempt(KafkaSecurity()))  # today's local default: no credentials
    wrong = asyncio.run(attempt(security("rdx-relay", secrets.token_hex(16))))
    assert plaintext != "written" and wrong != "written", (plaintext, wrong)
    assert wrong in {"KafkaConnectionError", "AuthenticationFailedError"}, wrong
    assert plaintext in {"KafkaConnectionError", "TimeoutError"}, plaintext
    # And the same call with the right password works, so the refusals are the credentials'.
    assert asyncio.run(attempt(secured.users["rdx-relay"])) == "written"


def test_sasl_ssl_with_the_cluster_ca_as_deployed(secured, monkeypatch, caplog):
    """The deployed settings (infra/base/kustomization.yaml): SASL_SSL, SCRAM, a password file and
    the CA file. The relay's producer publishes over TLS; a client that does not trust that CA
    (the system's CAs only) never gets to authenticate."""
    env_for(monkeypatch, secured, "rdx-relay")
    monkeypatch.setenv("RDX_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RDX_KAFKA_CA_FILE", str(secured.ca_file))

    async def publish(producer: EventProducer) -> str:
        try:
            await asyncio.wait_for(producer.start(), 20)
            await producer.publish(CHAIN_EVENTS, Event(id=f"tls/{uuid.uuid4().hex}", type="MemberRegistered",
                                                       entity="member/tls", source="test", data={}))
            return "written"
        except (KafkaError, asyncio.TimeoutError) as exc:
            return type(exc).__name__
        finally:
            await producer.stop()

    assert asyncio.run(publish(EventProducer(secured.tls_bootstrap, "consensus", request_timeout_ms=5000))) == "written"
    monkeypatch.delenv("RDX_KAFKA_CA_FILE")
    caplog.clear()
    # rdx.components quiets aiokafka in this process (its broker start-up polls); hear it here again
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    untrusting = asyncio.run(publish(EventProducer(secured.tls_bootstrap, "consensus", request_timeout_ms=5000)))
    assert untrusting != "written", untrusting
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text  # refused for the broker's certificate, not anything else
