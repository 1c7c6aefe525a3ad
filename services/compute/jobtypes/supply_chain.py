"""Supply-chain cross-verification: three or more parties' records (contract, invoice, logistics,
payment ...) matched by their shared reference and compared on amount and quantity, without
any party disclosing a record.

Parties: every participant of the job — the consumer (its records in a local dataset,
params.dataset) and each provider (its one listed input). Params::

    {"dataset": "contracts",                                   # the consumer's local dataset
     "kinds": {"<member>": "contract", "<member>": "invoice", ...},   # one per participant
     "columns": {"reference": "ref", "amount": "amount", "quantity": "qty"}}   # optional names

Every record is canonicalised (reference stripped; amount and quantity as normalised decimals,
so "100.50" and "100.5" agree) into three keys: R = (ref), A = (ref, amount), Q = (ref, quantity).

Protocol, for every pair of parties (X, Y), with fresh Curve25519 scalars x, y per pair (the
ECDH-PSI of jobtypes/psi.py, run in both directions at once; H hashes to the curve)::

    X: permutes its records uniformly at random (kept locally)
    X → Y   keys     H(R_i)^x, H(A_i)^x, H(Q_i)^x   for X's records, in X's permuted order
    Y → X   keys     the same for Y's records, in Y's permuted order
    Y → X   back     (H(·)^x)^y, first 16 bytes, in X's order  — X maps them back to its records
    X → Y   back     (H(·)^y)^x, first 16 bytes, in Y's order
            a provider's back to the consumer goes out held back (XORed with an AES-256-CTR keystream of
            its fresh release key K, services/compute/release.py), then held {release: SHA-256(K)}
    X       the set of Y's doubly-masked R, A and Q keys (the 'back' values X computed for Y);
            for each own record: R in Y's set? A? Q?  → agrees / amount differs / quantity differs /
            both differ / no record at Y
    all     each party: outcome commitment c_P = SHA-256("rdx/result/v1\\n" ‖ salt ‖ own outcome)
            (results.py) and its data commitment d_P (the listing's commitment, or the Merkle root
            of the consumer's dataset)
    P → all outcome  {c_P, d_P}     (the consumer's c_P is "": it has no outcome before the release)
    all     result hash = SHA-256 over (job, sorted (member, kind, d_P, c_P))
    all     attest (the consumer naming every provider's SHA-256(K)); the chain locks the job; each
            provider publishes K (jobs.Release), the last settles; the consumer opens the back values
            with the keys on chain and only then compares and seals its outcome

Each party attests that result hash on chain (signed by its node key), binding what it
submitted (d_P) and what it concluded (c_P; the consumer's outcome, which comes after the
attestations, is not bound): a party cannot later deny either. Every party —
consumer and providers alike — hands its own outcome to ctx.commit_result, which seals it to
that party's own node key and stores it on that party's node only, and c_P is the commitment
commit_result returns: the envelope the member fetches from its node opens exactly the c_P
bound into the attested result hash. A party's outcome (JSON)::

    {"records": n, "counterparts": [kinds of the others, sorted],
     "by_counterpart": {kind: {status: count}},
     "disagreements": [{"reference", "counterpart": kind, "status"}] (sorted; status != agrees),
     "per_record": [{"reference", "status": {kind: status}}] (every own record, in dataset order)}

with status one of agrees / amount_differs / quantity_differs / both_differ / no_record (a kind
with two counterparts: the better status per record). The node's journal summary and status
events carry only the number of disagreements.

Security model: semi-honest; no honest majority needed (pairwise protocols). Under DDH on
Curve25519 with H a random oracle, a party sees of another's records only masked points.

Leakage: each party learns, for each of its own records and each counterpart kind, whether the
counterpart holds the same reference and whether amount and quantity agree (so, where a field
disagrees, only that it does); and each counterpart's record count. It does not learn which of
the counterpart's records matched (their order is a fresh random permutation), nor any value.
Two colluding parties learn nothing about a third beyond what each learns alone (fresh scalars
per pair). A party's outcome is stored only on its own node, sealed to its own node key; the
other parties and the chain see only c_P (hiding: a fresh 32-byte salt). The chain sees the
params (member kinds, column names), counts and hashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from services.compute import psi_kernel as kernel
from services.compute.commitment import canonical_value
from services.compute.jobtypes.base import (JobContext, JobRefused, JobSpec, JobType, Outcome, ProtocolError, expect,
                                            goodbye)
from services.compute.jobtypes.psi import match_positions
from services.compute.release import held_back, key_hash, new_key, open_held_back, release_hash, released_key
from services.compute import policy  # the module, not its names: policy.py imports jobtypes.base

MATCH = 16
KEYS = 3  # R, A, Q per record
KINDS = {"contract", "invoice", "logistics", "payment", "delivery", "order", "receipt"}
DEFAULT_COLUMNS = {"reference": "reference", "amount": "amount", "quantity": "quantity"}
STATUSES = ("agrees", "amount_differs", "quantity_differs", "both_differ", "no_record")


def canonical_number(v: Any, column: str, row: int) -> str:
    text = canonical_value(v)
    if text is None or not text.strip():
        return ""
    try:
        d = Decimal(text.strip()).normalize()
    except InvalidOperation:
        raise JobRefused(f"column {column} has a non-numeric value in row {row}") from None
    return format(d, "f") if d != 0 else "0"


def record_keys(refs: list[Any], amounts: list[Any], qtys: list[Any]) -> list[bytes]:
    """3 keys per record, in record order: R, A, Q (length-prefixed fields, domain separated)."""
    out: list[bytes] = []
    for i, (r, a, q) in enumerate(zip(refs, amounts, qtys), start=1):
        ref = (canonical_value(r) or "").strip()
        if not ref:
            raise JobRefused(f"row {i} has no reference")
        ref_b = ref.encode()
        head = len(ref_b).to_bytes(4, "big") + ref_b
        out += [b"R" + head, b"A" + head + canonical_number(a, "amount", i).encode(),
                b"Q" + head + canonical_number(q, "quantity", i).encode()]
    return out


def permutation(n: int) -> np.ndarray:
    if n < 2:
        return np.arange(n)
    return np.argsort(np.frombuffer(os.urandom(8 * n), dtype=np.uint64), kind="stable")


def classify(own_back: bytes, their_back: bytes) -> np.ndarray:
    """own_back: this party's records' doubly-masked keys (R, A, Q per record, 16 bytes each), in
    record order; their_back: the counterpart's. Returns per record an index into STATUSES."""
    n = len(own_back) // (MATCH * KEYS)
    mine = np.frombuffer(own_back, dtype="V16").reshape(n, KEYS) if n else np.zeros((0, KEYS), dtype="V16")
    theirs = np.frombuffer(their_back, dtype="V16").reshape(-1, KEYS) if their_back else np.zeros((0, KEYS), dtype="V16")
    hit = np.zeros((n, KEYS), dtype=bool)
    for k in range(KEYS):
        pos = match_positions(mine[:, k].tobytes(), theirs[:, k].tobytes())
        hit[pos, k] = True
    status = np.full(n, 4, dtype=np.int64)  # no_record
    r, a, q = hit[:, 0], hit[:, 1], hit[:, 2]
    status[r & a & q] = 0
    status[r & ~a & q] = 1
    status[r & a & ~q] = 2
    status[r & ~a & ~q] = 3
    return status


def outcome_of(refs: list[str], kinds: dict[str, np.ndarray]) -> dict[str, Any]:
    """This party's outcome: per own record and counterpart kind, its status; the disagreeing
    ones (differs, or missing at the counterpart) listed apart, and counts per kind."""
    disagreements = []
    counts: dict[str, dict[str, int]] = {}
    names = {kind: [STATUSES[i] for i in status.tolist()] for kind, status in sorted(kinds.items())}
    for kind, status in sorted(kinds.items()):
        counts[kind] = {s: int((status == i).sum()) for i, s in enumerate(STATUSES)}
        for i in np.nonzero(status != 0)[0].tolist():
            disagreements.append({"reference": refs[i], "counterpart": kind, "status": names[kind][i]})
    disagreements.sort(key=lambda d: (d["reference"], d["counterpart"]))
    per_record = [{"reference": ref, "status": {kind: names[kind][i] for kind in names}} for i, ref in enumerate(refs)]
    return {"records": len(refs), "counterparts": sorted(kinds), "by_counterpart": counts,
            "disagreements": disagreements, "per_record": per_record}


def result_hash(spec: JobSpec, entries: dict[str, tuple[str, str, str]]) -> str:
    lines = "\n".join(f"{m}|{k}|{d}|{c}" for m, (k, d, c) in sorted(entries.items()))
    return hashlib.sha256(f"rdx/supply_chain/v1/result\n{spec.job}\n{lines}".encode()).hexdigest()


def _kinds(spec: JobSpec) -> dict[str, str]:
    kinds = spec.params.get("kinds")
    if not isinstance(kinds, dict) or set(kinds) != set(spec.participants) \
            or not all(isinstance(k, str) and k in KINDS for k in kinds.values()):
        raise JobRefused(f"supply_chain needs params.kinds: one of {sorted(KINDS)} for every participant")
    return kinds


def _columns(spec: JobSpec) -> dict[str, str]:
    cols = dict(DEFAULT_COLUMNS)
    given = spec.params.get("columns") or {}
    if not isinstance(given, dict) or not set(given) <= set(DEFAULT_COLUMNS) \
            or not all(isinstance(v, str) and v for v in given.values()):
        raise JobRefused("params.columns maps reference, amount and quantity to column names")
    cols.update(given)
    return cols


def _mask_own(scalar: bytes, keys: list[bytes]) -> bytes:
    return kernel.hash_and_mask(scalar, keys)


class SupplyChainJob(JobType):
    """``supply_chain``: every party learns which of its own records disagree, and with which
    kind; each party's outcome is committed (sealed) on its own node."""

    name = "supply_chain"

    def check(self, spec: JobSpec) -> None:
        if len(spec.participants) < 3:
            raise JobRefused("supply_chain needs three or more parties")
        if spec.consumer in spec.providers:
            raise JobRefused("in supply_chain the consumer's records are its local dataset, not an input")
        if any(len(spec.inputs_of(p)) != 1 for p in spec.providers):
            raise JobRefused("supply_chain takes exactly one input per provider")
        if not isinstance(spec.params.get("dataset"), str):
            raise JobRefused("supply_chain needs params.dataset: the consumer's local dataset id")
        _kinds(spec)
        _columns(spec)

    def _check_own(self, refs: list[str]) -> None:
        """This party's own records: one per reference (every counterpart checks it too)."""
        if len(set(refs)) != len(refs):
            raise JobRefused("supply_chain needs one record per reference; the dataset repeats one")

    async def run(self, ctx: JobContext) -> Outcome:
        spec = ctx.spec
        self.check(spec)
        kinds, cols = _kinds(spec), _columns(spec)
        others = [p for p in spec.participants if p != ctx.member]
        ctx.progress("loading", 0, len(others) + 2)
        names = [cols["reference"], cols["amount"], cols["quantity"]]
        if ctx.is_consumer:
            loaded = await ctx.load_local(spec.params["dataset"], names)
            data_commitment = loaded.commitment
        else:
            ref = ctx.my_inputs[0]
            loaded = await ctx.load_input(ref, names)
            data_commitment = ref.commitment
        refs_raw, amounts, qtys = (loaded.columns[c] for c in names)
        keys = await asyncio.to_thread(record_keys, refs_raw, amounts, qtys)
        refs = [(canonical_value(r) or "").strip() for r in refs_raw]
        self._check_own(refs)
        del loaded, refs_raw, amounts, qtys
        n = len(refs)
        perm = permutation(n)  # the order this party's records go out in
        sent_keys = [keys[KEYS * i + k] for i in perm.tolist() for k in range(KEYS)]
        del keys
        chans = dict(zip(others, await asyncio.gather(*(ctx.channel(p) for p in others))))
        counts = {ctx.member: n}  # every party's record count as this node saw it: what it attests (issue 16)
        # Fair exchange: each provider's back values to the consumer go out under its release key, so
        # the consumer's outcome exists only once the chain has locked the job and holds the keys.
        release_key = None if ctx.is_consumer else new_key()
        backs: dict[str, tuple[bytes, bytes]] = {}  # other -> (own back, their back), the consumer's sealed
        releases: dict[str, str] = {}
        for step, other in enumerate(others, start=1):  # the same order on every node: sorted participants
            backs[other] = await self._pair(ctx, chans[other], sent_keys, n, counts,
                                            seal=release_key if other == spec.consumer else None)
            if ctx.is_consumer:
                releases[other] = release_hash((await expect(chans[other], "held")).header)
            ctx.progress("comparing", step, len(others) + 2)

        summary: dict[str, int] = {}
        commitment = "" if ctx.is_consumer else await _conclude(ctx, kinds, refs, perm, backs, summary)
        entries = {ctx.member: (kinds[ctx.member], data_commitment, commitment)}
        for other in others:
            await chans[other].send("outcome", commitment=commitment, data=data_commitment)
        for other in others:
            msg = await expect(chans[other], "outcome")
            c, d = msg.header.get("commitment"), msg.header.get("data")
            if not isinstance(c, str) or not isinstance(d, str):
                raise ProtocolError("outcome without its commitments")
            if other in spec.providers and d != spec.inputs_of(other)[0].commitment:
                raise ProtocolError(f"{other}'s data commitment is not its listing's")
            entries[other] = (kinds[other], d, c)
        await goodbye(ctx.member, chans.values())
        ctx.progress("done", len(others) + 2, len(others) + 2)
        records = {i.asset: counts[i.provider] for i in spec.inputs}
        if ctx.is_consumer:  # its outcome after the release, from what the node keeps (0600) across a restart
            pending = json.dumps({"refs": refs, "perm": perm.tolist(), "releases": releases,
                                  "backs": {o: [own.hex(), their.hex()] for o, (own, their) in backs.items()}})
            return Outcome(result_hash(spec, entries), records_used=n, summary=summary, records=records,
                           releases=releases, pending=pending.encode())
        return Outcome(result_hash(spec, entries), records_used=n, summary=summary, records=records,
                       release_key=release_key)

    async def finish(self, ctx: JobContext, pending: bytes, released) -> None:
        """The consumer's outcome: each provider's back values opened with the key the chain released."""
        state = json.loads(pending)
        backs = {o: (open_held_back(released_key(released, o, state["releases"][o]), bytes.fromhex(own)),
                     bytes.fromhex(their)) for o, (own, their) in state["backs"].items()}
        await _conclude(ctx, _kinds(ctx.spec), state["refs"], np.asarray(state["perm"], dtype=np.int64), backs, {})

    async def _pair(self, ctx: JobContext, chan, sent_keys: list[bytes], n: int,
                    counts: dict[str, int] | None = None, seal: bytes | None = None) -> tuple[bytes, bytes]:
        """One pairwise exchange; returns (own back, their back): ``classify`` of them is the status of
        each record in this party's sent order (and notes the peer's record count in ``counts``).
        With ``seal`` (a provider's release key, towards the consumer) the back values this party
        sends go out held back under it, followed by ``held {release}``."""
        scalar = kernel.new_scalar()
        mine = await _chunked(ctx, _mask_own, scalar, sent_keys, ctx.batch * KEYS)
        await chan.send("start", n=n)
        msg = await expect(chan, "start")
        m = ctx.policy.peer_size(msg.header.get("n"), f"{chan.peer}'s record count")  # bounded before receiving
        if counts is not None:
            counts[chan.peer] = m
        _, theirs = await asyncio.gather(_send_blob(chan, "keys", mine, kernel.POINT * KEYS * ctx.batch),
                                         _recv_blob(chan, "keys", kernel.POINT * KEYS * m))
        if _repeats_reference(theirs):  # many records of one reference would reveal a counterpart's values
            raise policy.PolicyViolation(f"{chan.peer}'s records repeat a reference")
        their_back = await _chunked_blob(ctx, scalar, theirs, kernel.POINT * KEYS * ctx.batch)
        out = their_back if seal is None else await asyncio.to_thread(held_back, seal, 0, their_back)
        _, own_back = await asyncio.gather(_send_blob(chan, "back", out, MATCH * KEYS * ctx.batch),
                                           _recv_blob(chan, "back", MATCH * KEYS * n))
        if seal is not None:
            await chan.send("held", release=key_hash(seal))
        return own_back, their_back


async def _conclude(ctx: JobContext, kinds: dict[str, str], refs: list[str], perm: np.ndarray,
                    backs: dict[str, tuple[bytes, bytes]], summary: dict[str, int]) -> str:
    """This party's outcome from each pair's (own back, their back), sealed on its own node: c_P."""
    statuses: dict[str, np.ndarray] = {}
    for other, (own_back, their_back) in backs.items():
        status = np.empty(len(refs), dtype=np.int64)
        status[perm] = await asyncio.to_thread(classify, own_back, their_back)
        statuses[other] = status
    by_kind: dict[str, np.ndarray] = {}
    for other, status in statuses.items():  # two counterparts of one kind: the best status per record
        kind = kinds[other]
        by_kind[kind] = status if kind not in by_kind else np.minimum(by_kind[kind], status)
    summary["disagreements"] = int(sum((s != 0).sum() for s in by_kind.values()))
    return await ctx.commit_result(json.dumps(outcome_of(refs, by_kind), sort_keys=True).encode())


def _repeats_reference(blob: bytes) -> bool:
    """Whether two records of a peer's masked keys (R, A, Q per record) share their R: one
    reference masked with one scalar is one point."""
    n = len(blob) // (kernel.POINT * KEYS)
    if n < 2:
        return False
    refs = np.frombuffer(blob, dtype=f"V{kernel.POINT}").reshape(n, KEYS)[:, 0]
    return len(np.unique(refs)) != n


async def _chunked(ctx: JobContext, fn, scalar: bytes, keys: list[bytes], step: int) -> bytes:
    parts = await asyncio.gather(*(ctx.compute(fn, scalar, keys[o:o + step]) for o in range(0, len(keys), step)))
    return b"".join(parts)


async def _chunked_blob(ctx: JobContext, scalar: bytes, blob: bytes, step: int) -> bytes:
    parts = await asyncio.gather(*(ctx.compute(kernel.mask_blob, scalar, blob[o:o + step], MATCH)
                                   for o in range(0, len(blob), step)))
    return b"".join(parts)


async def _send_blob(chan, kind: str, blob: bytes, step: int) -> None:
    for off in range(0, len(blob), step):
        await chan.send(kind, blob[off:off + step])
    await chan.send(f"{kind}_done", size=len(blob))


async def _recv_blob(chan, kind: str, expected: int) -> bytes:
    out = bytearray()
    while True:
        msg = await chan.recv()
        if msg.kind == kind:
            out += msg.body
            if len(out) > expected:
                raise ProtocolError(f"more {kind} than announced")
        elif msg.kind == f"{kind}_done":
            break
        elif msg.kind == "abort":
            raise JobRefused(f"{chan.peer} stopped the protocol: {str(msg.header.get('reason'))[:200]}")
        else:
            raise ProtocolError(f"expected {kind}, got {msg.kind}")
    if len(out) != expected:
        raise ProtocolError(f"the {kind} do not add up to the announced records")
    return bytes(out)

