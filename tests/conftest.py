"""The test harness: real Kafka and a real CometBFT node (with rdx's ABCI app), started once
per test run on free loopback ports in temporary directories, and stopped even when tests fail.

Unit tests (``-m unit``) use none of these fixtures and need no servers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rdx import toolchain as tc
from rdx.components import CometNode, KafkaBroker, ServiceProcess, free_port
from rdx.supervisor import BLOCK_TIMING, genesis_app_state
from services.common.events import TOPICS
from services.common.identity import Identity

CHAIN_ID = "rdx-test"


def pytest_configure(config):
    # A SIGTERM (CI's timeout, a developer's kill) unwinds like Ctrl-C, so fixtures stop their servers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_collection_modifyitems(items):
    """Tests under tests/<kind>/ carry the marker of their kind, so `-m unit` etc. select them.
    Tests marked ``built_tools`` run last, in their order: on a fresh machine `make test` builds
    those tools in the background while the others run (Makefile), and each waits for its build."""
    for item in items:
        kind = Path(item.fspath).relative_to(Path(__file__).parent).parts[0]
        if kind in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, kind))
    items.sort(key=lambda item: item.get_closest_marker("built_tools") is not None)


@pytest.fixture(scope="session")
def toolchain() -> tc.Toolchain:
    try:
        return tc.installed()
    except tc.SetupError as exc:
        pytest.exit(f"{exc} (`make test` does this for you)", returncode=2)


@pytest.fixture(scope="session")
def kafka(toolchain, tmp_path_factory) -> KafkaBroker:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), toolchain, port=free_port(), controller_port=free_port())
    broker.prepare()
    try:
        broker.start()
        broker.create_topics(TOPICS)
        yield broker
    finally:
        broker.stop()


@dataclass
class Chain:
    rpc_url: str
    chain_id: str
    association: Identity
    kafka: str
    node: CometNode
    consensus: ServiceProcess
    state: Path


def start_chain(toolchain, kafka: KafkaBroker, root: Path, association: Identity) -> Chain:
    abci_port = free_port()
    consensus = ServiceProcess("consensus", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": kafka.bootstrap, "RDX_STATE_ROOT": str(root / "state"),
        "RDX_CHAIN_ID": CHAIN_ID, "RDX_ABCI_PORT": str(abci_port),
    }, root / "logs")
    # The local exchange's block timing: blocks on demand, one a second at least. A block every 100 ms
    # whether or not anything happened cost each idle chain ~10% of a core for the whole run.
    node = CometNode(root / "node", toolchain, chain_id=CHAIN_ID, rpc_port=free_port(), p2p_port=free_port(),
                     abci_port=abci_port, app_state=genesis_app_state(association), **BLOCK_TIMING)
    chain = Chain(node.rpc_url, CHAIN_ID, association, kafka.bootstrap, node, consensus, root)
    consensus.start()
    node.prepare()
    try:
        node.start()
    except BaseException:
        consensus.stop()
        raise
    return chain


@contextmanager
def running_chain(toolchain, kafka: KafkaBroker, root: Path) -> Iterator[Chain]:
    """A chain of its own with a fresh association, stopped however the block ends."""
    c = start_chain(toolchain, kafka, root, Identity.generate("association"))
    try:
        yield c
    finally:
        c.node.stop()
        c.consensus.stop()


@pytest.fixture(scope="session")
def chain(toolchain, kafka, tmp_path_factory) -> Chain:
    with running_chain(toolchain, kafka, tmp_path_factory.mktemp("chain")) as c:
        yield c
