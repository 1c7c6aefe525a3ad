"""Wires one compute node: the chain-event consumer and journal, the job manager, the runner,
the peer channel, the status publisher and the HTTP API, onto the service chassis.

Without RDX_MEMBER_ID the node serves health and metrics only (the local exchange starts one
such placeholder until members configure theirs).
"""

from __future__ import annotations

import asyncio
import logging

from services.common.chain import ChainClient
from services.common.chainevents import ChainEventVerifier
from services.common.events import CHAIN_EVENTS
from services.common.files import load_identity, reason, warn_if_world_readable
from services.common.identity import Identity
from services.common.kafka import IdempotentConsumer
from services.common.service import Service
from services.compute import api, events, peer
from services.compute.chainview import ChainUnavailable, ChainView
from services.compute.datasets import DatasetError, Datasets
from services.compute.jobtypes.base import JobType
from services.compute.journal import Journal
from services.compute.lifecycle import JobManager
from services.compute.runner import make_runner
from services.compute.settings import ComputeSettings

log = logging.getLogger("rdx.compute")


class _Registration:
    """Whether this node's key is the one the chain has for ``<member>.node`` (a readiness check)."""

    def __init__(self, view: ChainView, identity: Identity):
        self.view, self.identity = view, identity
        self.ok = False
        self._said = None

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                account = await self.view.account(self.identity.account)
                state = ("unregistered" if account is None else
                         "ok" if account.get("public_key") == self.identity.public_key else "key-mismatch")
            except ChainUnavailable:
                state = "chain-unreachable"
            self.ok = state == "ok"
            if state != self._said:
                (log.info if self.ok else log.warning)("node account %s on chain: %s", self.identity.account, state)
                self._said = state
            try:
                await asyncio.wait_for(stop.wait(), 10.0 if self.ok else 1.0)
            except asyncio.TimeoutError:
                pass


def build(settings: ComputeSettings, job_types: dict[str, type[JobType]] | None = None) -> Service:
    """The node; ``job_types`` replaces the registry of protocols (jobtypes.JOB_TYPES), the seam a
    test's wrapper process uses to run a deviating party (tests/faults/malicious_consumer.py)."""
    svc = Service(settings, title="rdx compute")
    producer = svc.producer()
    if not settings.member_id:
        svc.on_startup(_unconfigured)
        return svc
    if settings.node_key_file is None:
        raise SystemExit("RDX_NODE_KEY_FILE is required when RDX_MEMBER_ID is set")
    member = settings.member_id
    identity = _node_identity(settings)
    try:
        datasets = Datasets.from_path(settings.datasets, copies=settings.copies_dir)
    except DatasetError as exc:  # its messages name files and fields, never their values
        raise SystemExit(f"RDX_DATASETS: {exc}") from None
    chain = ChainClient(settings.cometbft_rpc, settings.chain_id)
    view = ChainView(chain)
    runner = make_runner(settings.runner, settings.workers, settings)
    hub = peer.SessionHub()

    holder: dict[str, JobManager] = {}
    # A kill switch or an authorisation acts only once this member's own chain node confirms it.
    consumer = IdempotentConsumer(settings.kafka_bootstrap, "compute", [CHAIN_EVENTS], f"compute-{member}",
                                  settings.state_dir / "node.sqlite", lambda e, c: holder["m"].on_event(e, c),
                                  verifier=ChainEventVerifier(chain, reader=view.reader),  # one light client, shared
                                  verify_if=lambda e: holder["m"].acts_on(e))
    journal = Journal(consumer.conn)
    # The journal's database and this start name the status ids' numbering (services/compute/events.py).
    publisher = events.StatusPublisher(producer, member, journal.next_seq, consumer.store.model_id)
    manager = JobManager(member=member, identity=identity, chain_id=settings.chain_id, chain=chain, view=view,
                         datasets=datasets, journal=journal, runner=runner, hub=hub, publisher=publisher,
                         peer_wait_s=settings.peer_wait_s, max_attempts=settings.max_attempts, batch=settings.psi_batch,
                         max_peer_set=settings.max_peer_set, job_types=job_types)
    holder["m"] = manager
    server = peer.PeerServer(identity, settings.chain_id, view, hub, manager.admit, settings.grpc_bind)
    registration = _Registration(view, identity)

    svc.app.include_router(api.router(
        member=member, node_account=identity.account, public_key=identity.public_key,
        peer_endpoint=settings.grpc_bind, runner=runner.name, workers=runner.workers, datasets=datasets,
        journal=journal, registered=lambda: registration.ok))

    async def consume(stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():  # a broker that is away delays the consumer, not the node
            try:
                await consumer.start()
                break
            except Exception as exc:  # noqa: BLE001 - KafkaError and friends: retried
                log.warning("chain-event consumer cannot start (%s); retrying", type(exc).__name__)
                await _sleep(stop, delay)
                delay = min(delay * 2, 10.0)
        await consumer.run(stop)

    async def summarise_datasets() -> None:
        for d in datasets.all():  # commitments for the API, computed off the event loop
            try:
                await asyncio.to_thread(d.summary)
            except Exception as exc:  # noqa: BLE001 - shown by /datasets; a job would refuse it anyway
                log.warning("dataset %s cannot be summarised: %s", d.id, type(exc).__name__)

    async def node(stop: asyncio.Event) -> None:
        """The node's own loops, supervised together: they run until stop, and one that fails stops the
        node. Recovery does not wait for Kafka: a restarted node resumes its journaled jobs at once."""
        await _supervise(stop, {"chain-events": consume(stop), "status-events": publisher.run(stop),
                                "registration": registration.watch(stop), "recover": manager.recover(),
                                "datasets": summarise_datasets()})

    svc.on_startup(runner.start)
    svc.on_startup(server.start)
    svc.task("node", node)
    svc.on_shutdown(chain.close)
    svc.on_shutdown(consumer.stop)
    svc.on_shutdown(runner.stop)
    svc.on_shutdown(server.stop)
    svc.on_shutdown(manager.shutdown)  # runs first: shutdown hooks run in reverse order
    svc.readiness("chain-events", lambda: consumer.ready)
    svc.readiness("peer-channel", lambda: server.port > 0)
    svc.readiness("registered", lambda: registration.ok)

    async def announce() -> None:
        log.info("compute node of %s: %d datasets, runner %s with %d workers, peer channel %s", member,
                 len(datasets.all()), runner.name, runner.workers, settings.grpc_bind)

    svc.on_startup(announce)
    return svc


def _node_identity(settings: ComputeSettings) -> Identity:
    """The node's key from RDX_NODE_KEY_FILE, or SystemExit saying what is wrong with the file (never
    its contents): a missing, unreadable or malformed file, one that is no regular file (a FIFO would
    hold the start forever, /dev/zero fill its memory), or the key of another account (another
    member's node key mounted by mistake would otherwise run until the chain refused its every signature)."""
    path = settings.node_key_file
    try:
        loaded = load_identity(path)
    except OSError as exc:
        raise SystemExit(f"RDX_NODE_KEY_FILE: {path} {reason(exc)}") from None
    if loaded.account != settings.node_account:
        raise SystemExit(f"RDX_NODE_KEY_FILE: {path} is the key of {loaded.account}, not of {settings.node_account}")
    warn_if_world_readable(path, "RDX_NODE_KEY_FILE", log)
    return Identity(settings.node_account, loaded.signing_key)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def _supervise(stop: asyncio.Event, coros: dict) -> None:
    tasks = {asyncio.create_task(c, name=name): name for name, c in coros.items()}
    waiting = asyncio.create_task(stop.wait())
    pending = set(tasks)
    try:
        while not stop.is_set():
            done, pending = await asyncio.wait(pending | {waiting}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(waiting)
            for t in done - {waiting}:
                if t.exception() is not None:
                    log.error("%s failed: %r", tasks[t], t.exception())
                    raise t.exception()
        await asyncio.wait(pending, timeout=10.0)  # each sees stop and ends
    finally:
        waiting.cancel()
        for t in tasks:
            t.cancel()


async def _unconfigured() -> None:
    log.warning("RDX_MEMBER_ID is not set: this compute node serves health and metrics only")
