"""`make test-deploy`: the exchange of five organisations in containers built here from Debian only
(rdx/images.py, docker/exchange.yaml), the demo's scenarios through its gateway, and the borders
between the organisations' networks tried from inside a member's site.

Needs root (it apt-installs docker.io, docker-compose and debootstrap when missing, and starts
dockerd when it is not running). Cold (no image cache) the images take most of the time.
"""

from __future__ import annotations

import time

import httpx
import pytest

from rdx import deploy

pytestmark = pytest.mark.timeout(3600)  # the first test's fixture builds the images (minutes, cold)


@pytest.fixture(scope="module")
def exchange():
    with deploy.running() as deployment:
        yield deployment


def test_demo_scenarios_through_the_containerised_gateway(exchange):
    ok = exchange.demo.main()
    assert ok, exchange.demo.summary() + "\n" + exchange.logs(lines=20)
    assert len(exchange.demo.steps) == 12


PROBE = """
import socket, sys
def reach(host, port):
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        return "no-name"
    try:
        socket.create_connection((addr, port), timeout=3).close()
        return "open"
    except OSError:
        return "closed"
print(" ".join(reach(h, int(p)) for h, p in (a.split(":") for a in sys.argv[1:])))
"""


def probe(exchange, service: str, *targets: str) -> list[str]:
    result = exchange.exec(service, "python", "-c", PROBE, *targets)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_member_site_reaches_others_only_through_the_exposed_ports(exchange):
    # From the bank's compute node: the other sites' P2P and peer gRPC and Kafka's members' listener ...
    assert probe(exchange, "compute-bank", "p2p.telco:26656", "node.telco:50051", "kafka.exchange:9094",
                 "validator.bank:26657") == ["open"] * 4
    # ... but not another site's RPC or node API, nor the association's services or Kafka's plaintext listener
    assert probe(exchange, "compute-bank", "validator.telco:26657", "compute.telco:8002", "kafka.association:9092",
                 "catalog.association:8001", "billing.association:8003", "validator.association:26657") == \
        ["no-name"] * 6
    # Not by address either: the telco's RPC and node API by their IPs, from the bank's site.
    telco_rpc = deploy.address("consensus-telco", "site-telco")
    telco_node = deploy.address("compute-telco", "site-telco")
    kafka_plain = deploy.address("kafka", "association")
    assert probe(exchange, "compute-bank", f"{telco_rpc}:26657", f"{telco_node}:8002", f"{kafka_plain}:9092") == \
        ["closed"] * 3
    # On `exchange`, a validator's RPC and a node's HTTP API are not listening (bound to their site only).
    telco_p2p = deploy.address("consensus-telco", "exchange")
    telco_peer = deploy.address("compute-telco", "exchange")
    assert probe(exchange, "compute-bank", f"{telco_p2p}:26657", f"{telco_p2p}:8004", f"{telco_peer}:8002") == \
        ["closed"] * 3


KAFKA_LOGIN = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer
async def main(user, password):
    consumer = AIOKafkaConsumer(bootstrap_servers="kafka.exchange:9094", security_protocol="SASL_PLAINTEXT",
                                sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=user,
                                sasl_plain_password=password, request_timeout_ms=5000)
    try:
        await consumer.start()
        print("accepted", sorted(t for t in await consumer.topics() if t.startswith("rdx.")))
    except Exception as exc:
        print("refused", type(exc).__name__)
    finally:
        await consumer.stop()
asyncio.run(main(sys.argv[1], open(sys.argv[2]).read() if sys.argv[2].startswith("/") else sys.argv[2]))
"""


def test_kafka_members_listener_wants_the_members_own_password(exchange):
    own = exchange.exec("compute-bank", "python", "-c", KAFKA_LOGIN, "bank", "/run/secrets/kafka-password")
    assert own.stdout.startswith("accepted") and "rdx.chain.events.v1" in own.stdout, own.stdout + own.stderr
    for user, password in (("bank", "not-the-password"), ("telco", "/run/secrets/kafka-password"), ("nobody", "x")):
        other = exchange.exec("compute-bank", "python", "-c", KAFKA_LOGIN, user, password)
        assert other.stdout.startswith("refused"), (user, other.stdout, other.stderr)


# -- backup and restore (docs/operations.md "Back up and restore", "In containers") ----------------
def rpc(exchange, org: str, path: str) -> dict:
    network = "association" if org == "association" else f"site-{org}"
    with httpx.Client(timeout=10) as client:
        return client.get(f"http://{deploy.address(f'consensus-{org}', network)}:26657{path}").json()["result"]


def height(exchange, org: str) -> int:
    try:
        return int(rpc(exchange, org, "/status")["sync_info"]["latest_block_height"])
    except (httpx.HTTPError, KeyError, ValueError):
        return 0


def statements(exchange) -> dict:
    admin = exchange.demo.gw("association")
    return {m: admin.request("GET", f"/v1/billing/statements/{m}", params={"since": 0})
            for m in ("association", *deploy.MEMBERS)}


def until(what: str, check, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(1)


def test_a_validator_and_billing_restored_from_backup_on_fresh_containers(exchange, tmp_path):
    backup = tmp_path / "backup"
    # Back up the manufacturer's validator and the billing read model, each stopped (rdx/deploy.py
    # backup: app state first, then the chain), while the other four validators go on.
    deploy.backup(exchange.directory, "validator", "manufacturer", backup)
    deploy.backup(exchange.directory, "billing", None, backup)
    # After the backup the chain moves on, with a transaction both must catch up on.
    admin = exchange.demo.gw("association")
    deposit = admin.send("bank.Deposit", {"to": "telco", "amount": 777, "reference": f"after-backup-{time.time()}"})
    # Both are lost; fresh containers start from the backup.
    deploy.restore(exchange.directory, "validator", "manufacturer", backup, tip=height(exchange, "association"))
    deploy.restore(exchange.directory, "billing", None, backup)
    # The restored validator replays from its peers to the others' height, with the same app hash.
    target = max(height(exchange, "association"), deposit["height"]) + 1
    until("the restored validator catches up", lambda: height(exchange, "manufacturer") >= target)
    ours = rpc(exchange, "manufacturer", f"/block?height={target}")["block"]["header"]
    theirs = rpc(exchange, "association", f"/block?height={target}")["block"]["header"]
    assert ours["app_hash"] == theirs["app_hash"] and ours["last_block_id"] == theirs["last_block_id"]
    # The restored billing read model reads on from where its backup was and gives the same answers
    # as the chain: the deposit made after the backup is in the telco's statement, and it reconciles.
    got = until("the restored billing sees the deposit", lambda: (
        s := statements(exchange))["telco"]["totals_by_kind"].get("deposit", 0) >= 777 and s)
    assert sum(st["closing_balance"] for st in got.values()) == sum(
        st["totals_by_kind"].get("deposit", 0) for st in got.values())
    with httpx.Client(timeout=60) as client:  # not on the gateway: the association's own check
        reconcile = client.get(f"http://{deploy.address('billing', 'association')}:8003/v1/reconcile").json()
    assert reconcile == {"equal": True, "differences": []}
