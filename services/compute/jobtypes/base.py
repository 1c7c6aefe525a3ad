"""The job-type plug-in interface: what a privacy-preserving computation implements, and what
the node's lifecycle hands it. A job type knows its protocol and nothing about Kafka, the
chain, the journal, retries or the kill switch; the lifecycle knows no protocol.

A job type is a class with a ``name`` (the chain's job type) and two methods::

    class MyJob(JobType):
        name = "aggregation"

        def check(self, spec: JobSpec) -> None:
            # stateless: is this job's shape (inputs, participants, params) one I can run?
            # raise JobRefused("...") if not; nothing has been read yet.

        async def run(self, ctx: JobContext) -> Outcome:
            # this node's part of the protocol, for the member ctx.member:
            data = await ctx.load_input(ctx.my_inputs[0], ["amount"])   # verified against the listing
            chan = await ctx.channel("other-member")                      # authenticated, encrypted
            await chan.send("shares", body=...)
            msg = await chan.recv()
            ... heavy arithmetic: await ctx.compute(fn, *args)          # on the worker processes
            ctx.progress("summing", done, total)                        # status events, never values
            if ctx.is_consumer:                                          # whoever the protocol gives a result
                commitment = await ctx.commit_result(result_bytes)       # sealed to this node's member's key
            return Outcome(result_hash=..., records_used=...)

Rules a job type keeps (the privacy tests check them):

- what leaves the node goes through ``ctx.channel`` only, and is what the protocol says;
- a result exists in the clear only on the node of the member it is for (the consumer's, or
  in supply_chain each party's own), and is handed to ``ctx.commit_result`` (which seals it
  to that node's own member and stores it); a consumer's result is computed only after the
  chain locked the payment (fair exchange, docs/compute.md): the providers send what it is
  computed from under a release key (``Outcome.release_key``, services/compute/release.py), and
  the consumer returns ``Outcome.releases`` and ``Outcome.pending``, the bytes its ``finish``
  opens with the released keys (kept by the node across a restart);
- every participant must return the same ``result_hash`` (usually a hash of the protocol
  transcript and the consumer's result commitment, which everyone saw), or the chain fails it;
- nothing that derives from data values is logged, raised in an exception message, or put in
  progress (counts and phases only);
- on cancellation (kill switch) it just lets ``asyncio.CancelledError`` through.

Register the class in ``services/compute/jobtypes/__init__.py``'s ``JOB_TYPES``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from services.compute.datasets import ARROW_COLUMNS, Loaded


class JobRefused(Exception):
    """This node will not run the job (bad shape, unknown dataset, commitment mismatch ...).
    The message becomes the on-chain failure reason: it names things, never values."""


class PeerLost(Exception):
    """The peer went away (or never came) mid-protocol; the lifecycle may run the job again."""


class PeerRefused(Exception):
    """The peer refused us, or we refused it (authentication, membership): not retried."""


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow."""


@dataclass(frozen=True)
class InputRef:
    asset: str
    provider: str
    version: int
    commitment: str
    min_group_size: int = 1
    grant: str = ""  # the access grant the input runs under, as the chain's job record names it


@dataclass(frozen=True)
class NodeRef:
    account: str
    endpoint: str


@dataclass(frozen=True)
class JobSpec:
    """A job as the chain authorised it (the chain's job record is the source, not the event)."""

    job: str
    type: str
    consumer: str
    inputs: tuple[InputRef, ...]
    participants: tuple[str, ...]
    nodes: Mapping[str, NodeRef]
    params: Mapping[str, Any]
    max_price: int
    deadline: int

    def inputs_of(self, member: str) -> list[InputRef]:
        return [i for i in self.inputs if i.provider == member]

    @property
    def providers(self) -> list[str]:
        return sorted({i.provider for i in self.inputs})

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "type": self.type, "consumer": self.consumer,
                "inputs": [i.__dict__ for i in self.inputs], "participants": list(self.participants),
                "nodes": {m: n.__dict__ for m, n in self.nodes.items()}, "params": dict(self.params),
                "max_price": self.max_price, "deadline": self.deadline}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "JobSpec":
        return cls(job=raw["job"], type=raw["type"], consumer=raw["consumer"],
                   inputs=tuple(InputRef(**{k: i[k] for k in ("asset", "provider", "version", "commitment")},
                                         min_group_size=i.get("min_group_size", 1), grant=i.get("grant", ""))
                          for i in raw["inputs"]),
                   participants=tuple(raw["participants"]),
                   nodes={m: NodeRef(n["account"], n["endpoint"]) for m, n in (raw.get("nodes") or {}).items()},
                   params=dict(raw.get("params") or {}), max_price=int(raw.get("max_price", 0)),
                   deadline=int(raw["deadline"]))


@dataclass(frozen=True)
class Outcome:
    """What this node attests: the same ``result_hash`` on every participant, and its records used."""

    result_hash: str
    records_used: int
    summary: Mapping[str, Any] = field(default_factory=dict)  # kept in this node's journal only; no values
    # Fair exchange (docs/compute.md): each input's record count this node saw used; the release-key
    # hashes it knows of (member -> SHA-256 hex); a provider's key it holds back until the chain has
    # locked the job; what the consumer needs to finish once the keys are released, as bytes the
    # node keeps across a restart (0600, journal.py): the lifecycle then calls the job type's ``finish``.
    records: Mapping[str, int] = field(default_factory=dict)
    releases: Mapping[str, str] = field(default_factory=dict)
    release_key: bytes | None = None
    pending: bytes | None = None


@dataclass(frozen=True)
class Message:
    kind: str
    header: dict[str, Any]
    body: bytes


class Channel(Protocol):
    """An authenticated, encrypted, ordered message channel to one peer node for one job."""

    peer: str

    async def send(self, kind: str, body: bytes = b"", **header: Any) -> None: ...

    async def recv(self) -> Message:
        """The next message; raises PeerLost if the peer went away."""
        ...

    def transcript(self) -> tuple[str, str]:
        """(SHA-256 of everything sent, of everything received) so far, hex; both start from the session id."""
        ...

    async def close(self) -> None: ...


class JobContext:
    """What the lifecycle gives a running job type. Built per protocol run (attempt)."""

    def __init__(self, spec: JobSpec, member: str, *, attempt: int = 1,
                 channel: Callable[[str], Awaitable[Channel]],
                 load_input: Callable[[InputRef, Sequence[str]], Awaitable[Loaded]],
                 load_local: Callable[[str, Sequence[str]], Awaitable[Loaded]],
                 dataset_key: Callable[[str], str | None],
                 commit_result: Callable[[bytes], Awaitable[str]],
                 progress: Callable[[str, int, int], None],
                 compute: Callable[..., Awaitable[Any]],
                 workers: int = 1, batch: int = 16_384, log: logging.Logger | None = None,
                 policy: Any = None, node_cache: MutableMapping[str, Any] | None = None):
        from services.compute.policy import InputPolicy, Policy  # policy.py builds on this module

        self.spec, self.member, self.attempt = spec, member, attempt
        # This node's own limits (services/compute/policy.py): the protocol asks it about every
        # size a peer announces and every column a peer names, before it allocates or sends.
        # Without one from the lifecycle: the job's minimum group sizes and this node's configured keys.
        self.policy: Policy = policy if policy is not None else Policy(inputs={
            i.asset: InputPolicy(i.asset, i.min_group_size, frozenset(), dataset_key(i.asset))
            for i in spec.inputs_of(member)})
        self._channel, self._load_input, self._load_local = channel, load_input, load_local
        self._dataset_key, self._commit_result, self._progress, self._compute = dataset_key, commit_result, progress, compute
        self.workers, self.batch = workers, batch
        self.log = log or logging.getLogger("rdx.compute.job")
        # What a job type may reuse across the runs this node makes (he_scoring's CKKS keys): one
        # mapping for the node's process, shared by its jobs, never persisted or sent; each job type
        # bounds its own entries. Without one from the lifecycle, nothing outlives this run.
        self.node_cache: MutableMapping[str, Any] = {} if node_cache is None else node_cache

    @property
    def is_consumer(self) -> bool:
        return self.member == self.spec.consumer

    @property
    def my_inputs(self) -> list[InputRef]:
        return self.spec.inputs_of(self.member)

    async def channel(self, peer: str) -> Channel:
        """The channel to ``peer``'s node for this job (connects or accepts, as the node decides)."""
        return await self._channel(peer)

    async def load_input(self, ref: InputRef, columns: Sequence[str], *, arrow: bool = False) -> Loaded:
        """This member's dataset behind ``ref``, checked against the listing's commitment (JobRefused if not).
        ``arrow``: the columns may come as pyarrow arrays instead of lists (datasets.ARROW_COLUMNS)."""
        return await _with_arrow(arrow, self._load_input(ref, columns))

    async def load_local(self, dataset_id: str, columns: Sequence[str], *, arrow: bool = False) -> Loaded:
        """One of this member's own, unlisted datasets (a consumer's input), by its local id."""
        return await _with_arrow(arrow, self._load_local(dataset_id, columns))

    def dataset_key(self, asset_or_dataset: str) -> str | None:
        """The default match column configured for a dataset (by asset id or local id)."""
        return self._dataset_key(asset_or_dataset)

    async def commit_result(self, result: bytes) -> str:
        """Seal ``result`` for this node's own member (to the key the chain holds for
        ``<member>.node``; there is no other recipient) and store it on this node, released to
        the member once the job completes; returns the hex commitment to share. On any
        participant's node: which members get a result is the job type's protocol."""
        return await self._commit_result(result)

    def progress(self, phase: str, done: int = 0, total: int = 0) -> None:
        self._progress(phase, done, total)

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (picklable, top-level) on the runner's worker processes."""
        return await self._compute(fn, *args)


async def _with_arrow(arrow: bool, load: Awaitable[Loaded]) -> Loaded:
    """Await ``load`` with datasets.ARROW_COLUMNS set as asked (the thread the node loads on inherits it)."""
    if not arrow:
        return await load
    token = ARROW_COLUMNS.set(True)
    try:
        return await load
    finally:
        ARROW_COLUMNS.reset(token)


class JobType(ABC):
    name: ClassVar[str]

    def check(self, spec: JobSpec) -> None:
        """Stateless validation before anything is read; raise JobRefused."""

    @abstractmethod
    async def run(self, ctx: JobContext) -> Outcome:
        """This node's part of the protocol."""

    async def finish(self, ctx: JobContext, pending: bytes, released: Mapping[str, bytes]) -> None:
        """The consumer's last step of a job whose ``run`` returned ``Outcome.pending``: open the
        held-back messages with the released keys (member -> key) and ``ctx.commit_result``.
        Called once every key is on chain, possibly by a restarted node from the kept bytes."""
        raise NotImplementedError(f"{self.name} keeps nothing to finish after a restart")


async def goodbye(member: str, chans) -> None:
    """End every channel so that no frame is lost when the lifecycle closes it.

    Of a pair of nodes, the one whose member id sorts first dials (the gRPC client); a client that
    cancels its call right after writing may lose what it wrote last, a server ending its side
    does not. So on every link the client sends ``end`` and waits for the server's ``end_ack``:
    the client's last frame is acknowledged, and the last frame on the link goes server to client.
    Clients send first on all their links, then servers answer, then clients read: no cycle waits."""
    chans = list(chans)
    clients = [c for c in chans if member < c.peer]
    servers = [c for c in chans if member >= c.peer]
    for c in clients:
        await c.send("end")
    for c in servers:
        await expect(c, "end")
        await c.send("end_ack")
    for c in clients:
        await expect(c, "end_ack")


async def expect(chan, kind: str):
    """The next message, which must be ``kind``; a peer's abort becomes JobRefused."""
    msg = await chan.recv()
    if msg.kind == "abort":
        raise JobRefused(f"{chan.peer} stopped the protocol: {str(msg.header.get('reason'))[:200]}")
    if msg.kind != kind:
        raise ProtocolError(f"expected {kind}, got {msg.kind}")
    return msg


async def expect_finish(chan) -> str:
    """The consumer's ``finish``, which must carry its result commitment; returns the commitment."""
    commitment = (await expect(chan, "finish")).header.get("commitment")
    if not isinstance(commitment, str):
        raise ProtocolError("finish without a commitment")
    return commitment
