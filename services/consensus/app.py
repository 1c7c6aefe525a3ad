"""rdx's ABCI 2.0 application: the chain's state machine, written plainly.

Info reports the last committed height and app hash; InitChain loads the genesis members;
CheckTx validates a tx against the mempool's check state without touching committed state;
PrepareProposal and ProcessProposal execute a proposed block ahead of time, so that a block
holding a tx that could never be valid (undecodable, oversize, another chain's, badly signed,
a wrong nonce) is refused before any validator votes for it; FinalizeBlock applies the decided
block (reusing that execution when it has one); Commit writes the block's state, its events
and the new height in one SQLite transaction.

Every method is total for outside input: any bytes in a tx or a query get a result code and a
short log, never an exception (an exception ends the ABCI connection and halts the node).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import UnionType
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin
from urllib.parse import parse_qs

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ValidationError
from tendermint.abci import types_pb2 as abci
from tendermint.crypto.keys_pb2 import PublicKey
from tendermint.crypto.proof_pb2 import ProofOp, ProofOps
from tendermint.types.params_pb2 import ConsensusParams, VersionParams

from services.common import identity
from services.common.chainevents import STATE_TREE_KEY as STATE_TREE
from services.common.chainevents import digest, events_key
from services.common.policy import DEFAULT_POLICY_TEXT
from services.common.proofs import CHANGED_SINCE, PROOF_TYPE
from services.common.tx import Code, Tx, TxError
from services.consensus.abci.application import Application, proto_tx_size
from services.consensus import params as chain_params
from services.consensus import signatures
from services.consensus.access import handlers as access
from services.consensus.assets import handlers as assets
from services.consensus.audit import handlers as audit
from services.consensus.bank import handlers as bank
from services.consensus.bank.keeper import BankKeeper
from services.consensus.context import Context, Rejected
from services.consensus.governance import handlers as governance
from services.consensus.governance import messages as governance_messages
from services.consensus.governance.keeper import GovernanceKeeper
from services.consensus.jobs import handlers as jobs
from services.consensus.pricing import PricingKeeper
from services.consensus.sigcheck import VERIFIED_BY, SignatureHelper
from services.consensus.privacy import handlers as privacy
from services.consensus.members import handlers as members
from services.consensus.members.keeper import MembersKeeper
from services.consensus.members.messages import Register
from services.consensus.merkle import NONE as NO_TREE
from services.consensus.merkle import StateTree
from services.consensus.state import ChainEvent, Database, Overlay, next_app_hash
from services.consensus.validators import handlers as validators
from services.consensus.validators.keeper import BLOCK as VALIDATORS_BLOCK
from services.consensus.validators.keeper import ValidatorsKeeper

log = logging.getLogger("rdx.consensus.app")

APP_VERSION = 1  # the highest app version this binary applies blocks with (governance.ScheduleUpgrade)
CHAIN_HEIGHT = Gauge("rdx_chain_height", "height of the last block this app committed")
TXS_REFUSED = Counter("rdx_tx_refused_total",
                      "transactions refused: at check (mempool admission), prepare (dropped from this "
                      "validator's proposal), proposal (in a proposal this validator rejected) or block",
                      ["stage", "reason"])
PROPOSALS_REJECTED = Counter("rdx_proposals_rejected_total",
                             "proposed blocks this validator voted against (they held a tx that may not be in a block)")
Handler = tuple[type[BaseModel], Callable[[Context, Any], None]]
HANDLERS: dict[str, Handler] = {**members.HANDLERS, **assets.HANDLERS, **access.HANDLERS, **jobs.HANDLERS,
                                 **bank.HANDLERS, **governance.HANDLERS, **validators.HANDLERS, **audit.HANDLERS}
HANDLERS.update(governance.board_handlers(HANDLERS))  # a proposal's action runs through this same table
BEGIN_BLOCK = (access.begin_block, jobs.begin_block, governance.begin_block)  # expiries and timeouts, by block time
INTERNAL_ERROR = 99
REASONS = {value: name.lower() for name, value in vars(Code).items() if name.isupper()} | {INTERNAL_ERROR: "internal"}

MAX_QUERY_PATH = 512
# STATE_TREE (chainevents.STATE_TREE_KEY) is present once the app hash is the state tree's root (merkle.py):
# {"spec": PROOF_TYPE, "since": height, "events_since": height}. An applied upgrade to this app version or later
# switches a chain made before the tree to it.
STATE_TREE_APP_VERSION = 2
PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
MAX_PAGE_BYTES = 1 << 20  # a page stops early rather than answer more than this much JSON
QUOTE = re.compile(r"quote/([^/?]+)(?:/([0-9]{1,15}))?")  # ASCII digits only: "²".isdigit() is True
PAGE_QUERY = re.compile(r"[A-Za-z0-9_.=&%/\-]*")
MAX_EXECUTIONS = 8  # proposals executed ahead of FinalizeBlock, kept per height (one per round)

# Txs whose signature was verified, by their exact bytes: CheckTx, every mempool recheck,
# PrepareProposal/ProcessProposal and FinalizeBlock see the same tx, and decoding plus verifying
# is most of a small tx's cost (~80 of ~130 us). Only txs that passed the signature check are
# kept, and the cache is bounded by the bytes it holds (an entry's parsed form is estimated at
# 4x its raw size), so a flood of junk costs no memory.
VERIFIED_CACHE_BYTES = 32 << 20
MAX_UNVERIFIED_AHEAD = 10_000  # txs decoded ahead and not found validly signed, kept for their CheckTx


@lru_cache(maxsize=4096)
def _key_bytes(public_key: str) -> bytes:
    return identity.unb64(public_key)


def _signed(rule: str, public_key: str, message: bytes, signature: str) -> bool:
    try:
        return signatures.verify(rule, _key_bytes(public_key), message, identity.unb64(signature))
    except (ValueError, TypeError):  # not base64
        return False


class Genesis(BaseModel):
    """``app_state`` of genesis.json (written by ``rdx genesis``): the association, its board, the
    founding members, balances, chain parameters and the policy.

    ``board`` absent is the shape of chains made before boards existed: such a genesis initialises
    exactly as it always did (so replaying those chains gives the same app hashes), its board is
    the association's own key alone (1 of 1), and its validator set is not recorded, so it cannot be
    changed on chain. With a board, InitChain also records the genesis validators."""

    association: Register
    board: governance_messages.ConfigureBoard | None = None
    validator_names: dict[str, str] = {}  # consensus public key (base64) -> a name, for people
    members: list[Register] = []
    balances: dict[str, int] = {}
    params: chain_params.Params = chain_params.Params()
    policy: str = DEFAULT_POLICY_TEXT
    # True: the app hash is the state tree's root from genesis on (what `rdx genesis` writes now).
    # Absent in the genesis of chains made before the tree: they keep their hash chain, so replaying
    # them gives the same app hashes, until their state-tree upgrade (RdxApp._app_hash).
    state_tree: bool = False
    # How tx signatures are verified (services/consensus/signatures.py): absent in the genesis of chains
    # made before ZIP-215, which keep libsodium's rule until their upgrade.
    signatures: Literal["libsodium", "zip215"] = "libsodium"


class UpgradeRequired(RuntimeError):
    """The chain reached an upgrade height that needs a newer app than this binary: the node stops."""


class Verified(NamedTuple):
    tx: Tx
    signing_bytes: bytes
    public_key: str  # the key it verified against: a rotated key must be checked again
    rule: str  # and the rule it was verified by (signatures.RULES): a verdict stands only under the same
    payload: BaseModel | None = None  # its validated payload, kept only for a type in SHARED_PAYLOADS


def _immutable(annotation: Any) -> bool:
    """Does a field of this type hold only values no handler can change (so one validated model
    can serve every execution of the same bytes)?"""
    if annotation in (str, int, bool, type(None)) or get_origin(annotation) is Literal:
        return True
    if get_origin(annotation) in (Union, UnionType):
        return all(map(_immutable, get_args(annotation)))
    return (isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation.model_config.get("frozen")
            and annotation.model_config.get("extra") != "allow"
            and all(_immutable(f.annotation) for f in annotation.model_fields.values()))


# Tx types whose payload model is deeply immutable: validated once per raw tx, not at every
# recheck and block execution (~3 us each). A list or dict field could be mutated by a handler.
SHARED_PAYLOADS = frozenset(t for t, (model, _) in HANDLERS.items() if _immutable(model))


class VerifiedCache:
    """``Verified`` by raw tx, at most ``limit`` bytes (4x each tx's signing bytes), the oldest
    evicted first. An OrderedDict rather than cachetools' LRUCache, whose Python-level get and set
    cost ~7 us a CheckTx, or a plain dict, whose ``next(iter(d))`` walks past every entry deleted
    since its last resize (~12 us a put once the cache is full, 5.8% of the app's CPU under
    `make bench-consensus`). A tx is used again within a few blocks of its first check, so age
    order suffices."""

    def __init__(self, limit: int) -> None:
        self._entries: OrderedDict[bytes, Verified] = OrderedDict()
        self._limit, self._size = limit, 0

    def get(self, raw: bytes) -> Verified | None:
        return self._entries.get(raw)

    def put(self, raw: bytes, verified: Verified) -> None:
        old = self._entries.get(raw)
        if old is not None:
            self._size -= 4 * len(old.signing_bytes)
        self._entries[raw] = verified
        self._size += 4 * len(verified.signing_bytes)
        while self._size > self._limit:
            _, evicted = self._entries.popitem(last=False)
            self._size -= 4 * len(evicted.signing_bytes)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, raw: bytes) -> bool:
        return raw in self._entries


class Outcome(NamedTuple):  # a tuple, not a frozen dataclass: made for every tx in CheckTx and in blocks
    """One tx's result. ``admissible`` is False when the tx failed authentication (decoding,
    chain, type, signer, signature, a delegate's powers, nonce or payload schema): such a tx may
    not be in a block."""

    code: int
    log: str
    events: list[tuple[str, str, dict]]
    admissible: bool
    trace: str | None = None  # the tx's traceparent, for the relay alone: never state or a result


@dataclass
class Execution:
    """A block executed on an overlay of committed state, not yet committed."""

    height: int
    time: int
    txs: list[bytes]
    block: Overlay
    events: list[ChainEvent]
    app_hash: bytes
    inadmissible: list[tuple[int, int]]  # kept in the block: (index, code)
    dropped: list[int]  # left out of a proposal being prepared: their codes
    # FinalizeBlock's answer, whole: the txs' results, the block's own events, validator updates
    # (effective two blocks later) and, at an upgrade's height, the app version.
    response: abci.ResponseFinalizeBlock


class RdxApp(Application):
    app_version = APP_VERSION  # a class attribute: the seam a test's "next release" subclass overrides

    def __init__(self, db: Database, chain_id: str, on_commit: Callable[[int], None] | None = None):
        self.db, self.chain_id, self.on_commit = db, chain_id, on_commit
        self.check_state = Overlay(db)
        # The committed height, which CheckTx needs for every tx: the database's meta row changes
        # only in ``commit`` (which updates this too); reading it was a SQLite query per CheckTx.
        self._committed_height = db.height
        self.tree = StateTree(db.tree_node)
        self._genesis_writes: dict[str, Any] = {}  # genesis state waits here for the first block's Commit
        self._genesis_events: list[tuple[str, str, dict]] = []
        self._executions: dict[tuple, Execution] = {}
        self._pending: Execution | None = None
        self._before: tuple[int, tuple[bytes, int], dict[str, str | None]] | None = None  # see ``commit``
        self._last_time = 0
        self._verified = VerifiedCache(VERIFIED_CACHE_BYTES)
        self._params = self._read_params()
        self._rule = signatures.rule_of(self.check_state)  # CheckTx's: the committed state's
        self._pending_bytes: dict[str, int] = {}  # per signer, of the txs admitted since the last Commit
        self._committed_nonces: dict[str, int] = {}  # per signer checked since the last Commit
        self._helper: SignatureHelper | None = None  # see start_signature_helper
        # Txs decoded ahead (verify_ahead) and not found validly signed, until CheckTx reaches them or
        # the next Commit: refused by the helper under ``public_key``, or not asked ("": no such signer).
        self._unverified_ahead: dict[bytes, Verified] = {}

    def start_signature_helper(self) -> None:
        """Verify the signatures of txs ahead (``verify_ahead``) in a helper process from now on."""
        self._helper = SignatureHelper(self._answered_by_helper)
        self._helper.start()

    def stop_signature_helper(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None

    def _answered_by_helper(self, context: tuple[bytes, Verified], ok: bool) -> None:
        raw, decoded = context
        if ok:
            self._verified.put(raw, decoded)
        else:
            self._unverified(raw, decoded)

    def _unverified(self, raw: bytes, decoded: Verified) -> None:
        """Keep a decoded tx for its CheckTx, so that junk costs one decoding, not two; popped by
        CheckTx, emptied at every Commit, and bounded even if neither comes."""
        if len(self._unverified_ahead) >= MAX_UNVERIFIED_AHEAD:
            self._unverified_ahead.clear()
        self._unverified_ahead[raw] = decoded

    def verify_ahead(self, raws: list[bytes], rule: str | None = None) -> None:
        """Txs the app will be asked about next (CheckTx requests received and not yet served, a
        block's txs): the helper process verifies their signatures, with the signers' keys as the
        mempool's state has them now, by ``rule`` (CheckTx's when not given), while this thread
        works through those before them. A tx whose signer's key changes meanwhile is verified
        again (``_authenticate``), and one this cannot decode, or whose signer is unknown, is left
        to the usual path and its error."""
        helper = self._helper
        if helper is None:
            return
        rule = rule or self._rule
        for raw in raws:
            if raw in self._verified:
                continue
            try:
                tx, signing_bytes = Tx.decode_signed(raw)
                account = self.check_state.get(f"accounts/{tx.signer}")
                if account is None:
                    self._unverified(raw, Verified(tx, signing_bytes, "", rule))
                    continue
                public_key, signature = _key_bytes(account["public_key"]), identity.unb64(tx.sig)
            except (TxError, ValueError, TypeError, KeyError):
                continue
            if not helper.submit(raw, public_key, signing_bytes, signature,
                                 (raw, Verified(tx, signing_bytes, account["public_key"], rule)), rule) and not helper.up:
                break
        helper.send()

    def _read_params(self) -> chain_params.Params:
        return chain_params.get(Context(store=Overlay(self.db), height=self.db.height, time=0))

    # -- connection: info / query ---------------------------------------------------------------
    def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        app_version = GovernanceKeeper(Context(store=Overlay(self.db), height=self.db.height, time=0)).app_version()
        return abci.ResponseInfo(data="rdx", version="0.1.0", app_version=app_version,
                                 last_block_height=self.db.height, last_block_app_hash=self.db.app_hash)

    def query(self, req: abci.RequestQuery) -> abci.ResponseQuery:
        """Paths are state keys: ``/members/<id>``, ``/accounts/<id>``; ``/quote/<asset>/<records>``.

        A path ending in ``/`` lists that prefix one page at a time, in key order:
        ``/access/?limit=100&after=<last key of the previous page>`` answers
        ``{"items": {key: value}, "next": <key to pass as after, or null>}``.

        With ``prove``, a path is one state key, answered with its stored bytes (or NOT_FOUND) and a
        proof against the app hash of the answer's height (``_proven``)."""
        height = self.db.height
        if req.prove:
            return self._proven(req.path, req.height)
        try:
            code, message, key, value = self._query(req.path)
        except Exception as exc:  # a query must never halt the node: answer, log without the path
            log.error("query failed: %s", type(exc).__name__)
            code, message, key, value = INTERNAL_ERROR, "internal error", "", None
        if code != Code.OK:
            return abci.ResponseQuery(code=code, log=message, height=height)
        return abci.ResponseQuery(code=Code.OK, key=key.encode(), value=json.dumps(value).encode(), height=height)

    def _proven(self, path: str, height: int) -> abci.ResponseQuery:
        """One state key's value (its canonical JSON text, the bytes the tree hashes) or its
        absence, with a ProofOps of one ``PROOF_TYPE`` op against the app hash committed at the
        answer's height, which CometBFT's header of the next height carries
        (services/common/proofs.py verifies it). At the latest height, or the one before it, whose
        next header exists already (a client need not wait a block for it): the tree keeps old
        roots' nodes, and ``commit`` keeps the old values of the keys the latest block wrote (kept
        in memory: after a restart, from the next block on)."""
        now = self.db.height

        def refuse(message: str) -> abci.ResponseQuery:
            return abci.ResponseQuery(code=Code.INVALID_QUERY, log=message, height=now)

        if len(path) > MAX_QUERY_PATH:
            return refuse(f"query path longer than {MAX_QUERY_PATH} characters")
        before = self._before
        if height in (0, now):
            at, root, old = now, None, {}
        elif before is not None and height == now - 1 == before[0]:
            at, root, old = before
        else:
            return refuse(f"proofs are given at the latest height ({now}) and the one before it only")
        key = path.lstrip("/")
        if not key or key.endswith("/") or key.startswith("quote/"):
            return refuse("a proof is for one state key (/<key>), not a listing or a quote")
        try:
            if self.db.get_text(STATE_TREE) is None:
                return refuse("this chain's app hash is not a state tree yet (it migrates at its state-tree upgrade)")
            root = root or (self.db.app_hash, self.db.tree_version)
            text = old[key] if key in old else self.db.get_text(key)
            proof = self.tree.prove(root, key)
        except Exception as exc:  # a query must never halt the node: answer, log without the path
            log.error("proving a query failed: %s", type(exc).__name__)
            return abci.ResponseQuery(code=INTERNAL_ERROR, log="internal error", height=now)
        if self.db.height != now:  # a block committed meanwhile: the value and the root may be of two states
            return refuse("the state moved on while the proof was made: ask again")
        ops = ProofOps(ops=[ProofOp(type=PROOF_TYPE, key=key.encode(), data=proof.encode())])
        # A hint, not a proof: the key changed in the latest block, so a reader that wants the
        # latest value asks for it (and waits for the header that proves it).
        info = f"{CHANGED_SINCE}{now}" if key in old else ""
        if text is None:
            return abci.ResponseQuery(code=Code.NOT_FOUND, log="no state at that path", key=key.encode(),
                                      proof_ops=ops, height=at, info=info)
        return abci.ResponseQuery(code=Code.OK, key=key.encode(), value=text.encode(), proof_ops=ops, height=at,
                                  info=info)

    def undecodable_query(self) -> abci.ResponseQuery:
        return abci.ResponseQuery(code=Code.INVALID_QUERY, log="the query path is not UTF-8", height=self.db.height)

    def _query(self, path: str) -> tuple[int, str, str, Any]:
        if len(path) > MAX_QUERY_PATH:
            return Code.INVALID_QUERY, f"query path longer than {MAX_QUERY_PATH} characters", "", None
        key = path.lstrip("/")
        prefix, _, query_string = key.partition("?")
        if not key:
            return Code.NOT_FOUND, "empty path", "", None
        if prefix.endswith("/"):
            return self._page(prefix, query_string)
        if key.startswith("quote/"):
            value: Any = self._quote(key)
        elif key.startswith("privacy-budget/"):
            value = privacy.query(Context(store=Overlay(self.db), height=self.db.height,
                                          time=int(self.db.meta("time", "0"))), key)
        else:
            value = self.db.get(key)  # a key with "?" in it is just a key that is not there
        if value is None:
            return Code.NOT_FOUND, "no state at that path", "", None
        return Code.OK, "", key, value

    def _page(self, prefix: str, query_string: str) -> tuple[int, str, str, Any]:
        if not PAGE_QUERY.fullmatch(query_string):
            return Code.INVALID_QUERY, "a listing takes only ?after=<key>&limit=<n>", "", None
        try:
            fields = parse_qs(query_string, max_num_fields=2)
        except ValueError:
            return Code.INVALID_QUERY, "a listing takes only ?after=<key>&limit=<n>", "", None
        if set(fields) - {"after", "limit"} or any(len(v) > 1 for v in fields.values()):
            return Code.INVALID_QUERY, "a listing takes only ?after=<key>&limit=<n>", "", None
        after = fields.get("after", [prefix])[0]
        limit_text = fields.get("limit", [str(PAGE_SIZE)])[0]
        if not after.startswith(prefix):
            return Code.INVALID_QUERY, "after must be a key under the listed prefix", "", None
        if not re.fullmatch(r"[0-9]{1,4}", limit_text) or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
            return Code.INVALID_QUERY, f"limit must be 1..{MAX_PAGE_SIZE}", "", None
        items: dict[str, Any] = {}
        size, more = 0, False
        for key, text in self.db.scan_page(prefix, after=after, limit=int(limit_text) + 1):
            if len(items) == int(limit_text) or (items and size + len(text) > MAX_PAGE_BYTES):
                more = True
                break
            items[key] = json.loads(text)
            size += len(text)
        return Code.OK, "", prefix, {"items": items, "next": next(reversed(items)) if more else None}

    def _quote(self, key: str) -> int | None:
        """``quote/<asset>/<records>``: the charge a job would carry for this input now, by the
        same rule settlement uses; ``quote/<asset>``: what a job's max_price must cover for it."""
        match = QUOTE.fullmatch(key)
        if match is None:
            return None
        asset = self.db.get(f"assets/{match[1]}")
        if asset is None or asset["status"] != "listed":
            return None
        ctx = Context(store=Overlay(self.db), height=self.db.height, time=int(self.db.meta("time", "0")))
        return PricingKeeper(ctx).quote(asset, None if match[2] is None else int(match[2]), ctx.time)

    # -- consensus ------------------------------------------------------------------------------
    def init_chain(self, req: abci.RequestInitChain) -> abci.ResponseInitChain:
        if req.chain_id != self.chain_id:
            raise RuntimeError(f"genesis chain id {req.chain_id!r} is not this app's {self.chain_id!r}")
        genesis = Genesis.model_validate_json(req.app_state_bytes or b"{}")
        block = Overlay(self.db)
        ctx = Context(store=block, height=0, time=req.time.seconds)
        if genesis.state_tree:
            block.set(STATE_TREE, {"spec": PROOF_TYPE, "since": 0, "events_since": 1})
        if genesis.signatures != signatures.LIBSODIUM:
            block.set(signatures.RULE_KEY, genesis.signatures)
        keeper = MembersKeeper(ctx)
        members.admit(ctx, keeper, genesis.association.model_copy(update={"roles": ["association"]}))
        for member in genesis.members:
            members.admit(ctx, keeper, member)
        for member_id, amount in sorted(genesis.balances.items()):
            BankKeeper(ctx).mint(member_id, amount, "genesis")
        chain_params.put(ctx, genesis.params)
        GovernanceKeeper(ctx).publish(1, genesis.policy)
        if genesis.board is not None:
            association = Context(store=block, height=0, time=req.time.seconds, events=ctx.events,
                                  acting_as=genesis.association.id)
            governance.configure_board(association, genesis.board)
            ValidatorsKeeper(ctx).record_genesis(
                [(base64.b64encode(v.pub_key.ed25519).decode(), v.power) for v in req.validators],
                genesis.validator_names)
        self._genesis_writes = block.writes
        self._genesis_events = ctx.events
        self._params = genesis.params
        self._rule = genesis.signatures  # CheckTx before block 1 (its state is committed with block 1)
        if genesis.state_tree:  # the root of the genesis state; its nodes are stored with block 1's
            return abci.ResponseInitChain(app_hash=self.tree.update(NO_TREE, block.tree_changes(), {}, 0)[0])
        return abci.ResponseInitChain(app_hash=next_app_hash(b"", block.digest(), 0))

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        try:
            outcome = self._deliver(self.check_state, req.tx, height=self._committed_height + 1,
                                    time=self._last_time, rule=self._rule, check=True)
            # The mempool's txs land in blocks of their own: one tx's validator changes do not count
            # against the per-block share of the next one checked.
            self.check_state.discard(VALIDATORS_BLOCK)
        except MemoryError:
            raise
        except Exception as exc:  # never reached by design; the mempool must not halt the node if it is
            log.error("CheckTx failed: %s", type(exc).__name__)
            outcome = Outcome(INTERNAL_ERROR, "internal error", [], False)
        if outcome.code != Code.OK:
            TXS_REFUSED.labels("check", REASONS.get(outcome.code, "other")).inc()
        return abci.ResponseCheckTx(code=outcome.code, log=outcome.log)

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        """Propose the mempool's txs in order, dropping those that may not be in a block (the
        mempool can hold txs made invalid by the blocks since they were checked) and stopping
        at the first that does not fit, so one signer's txs keep their order."""
        execution = self._execute(req.height, req.time.seconds, list(req.txs), max_tx_bytes=req.max_tx_bytes)
        for code in execution.dropped:
            TXS_REFUSED.labels("prepare", REASONS.get(code, "other")).inc()
        self._remember(execution)
        return abci.ResponsePrepareProposal(txs=execution.txs)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        """Execute the proposal; reject it if any tx may not be in a block. Deterministic, and
        coherent with PrepareProposal, which drops exactly those txs: an honest proposal passes."""
        execution = self._executions.get(_key(req.height, req.time.seconds, req.txs))
        if execution is None:
            execution = self._execute(req.height, req.time.seconds, list(req.txs), keep_inadmissible=True)
        if execution.inadmissible:
            PROPOSALS_REJECTED.inc()
            for _, code in execution.inadmissible:
                TXS_REFUSED.labels("proposal", REASONS.get(code, "other")).inc()
            index, code = execution.inadmissible[0]
            log.warning("rejected the proposal for height %d from proposer %s: %d of its %d txs may not be in a "
                        "block (first: tx %d, %s)", req.height, req.proposer_address.hex().upper(),
                        len(execution.inadmissible), len(req.txs), index, REASONS.get(code, code))
            return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.REJECT)
        self._remember(execution)
        return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        execution = self._executions.get(_key(req.height, req.time.seconds, req.txs))
        if execution is None:  # replay, block sync, or a block this node never processed as a proposal
            execution = self._execute(req.height, req.time.seconds, list(req.txs), keep_inadmissible=True)
        for _, code in execution.inadmissible:  # decided anyway: more than a third of the power let it in
            TXS_REFUSED.labels("block", REASONS.get(code, "other")).inc()
        self._pending = execution
        self._last_time = execution.time
        return execution.response

    def commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        if self._pending is None:
            raise RuntimeError("Commit without FinalizeBlock")
        ex, self._pending = self._pending, None
        # What proves the state before this block (its root, and the old values of the keys this
        # block writes), so that a query can be proven at the height whose header already exists.
        before = None
        if self.db.get_text(STATE_TREE) is not None:
            before = (self.db.height, (self.db.app_hash, self.db.tree_version), self.db.texts_of(ex.block.writes))
        self.db.commit_block(ex.height, ex.app_hash, ex.block.writes, ex.events, {"time": str(ex.time)},
                             nodes=ex.block.nodes, tree_version=ex.block.tree_version)
        self.tree.committed(ex.block.nodes)
        self._committed_height = ex.height
        self._before = before
        CHAIN_HEIGHT.set(ex.height)
        self._genesis_writes, self._genesis_events = {}, []
        self._executions.clear()
        self._params = self._read_params()
        self._pending_bytes.clear()  # CometBFT rechecks the mempool against the new state
        self._committed_nonces.clear()
        self._unverified_ahead.clear()
        self.check_state = Overlay(self.db)
        self._rule = signatures.rule_of(self.check_state)
        if self.on_commit:
            self.on_commit(ex.height)
        return abci.ResponseCommit()

    def _remember(self, execution: Execution) -> None:
        if len(self._executions) >= MAX_EXECUTIONS:
            self._executions.pop(next(iter(self._executions)))
        self._executions[_key(execution.height, execution.time, execution.txs)] = execution

    def _execute(self, height: int, time: int, txs: list[bytes], *, keep_inadmissible: bool = False,
                 max_tx_bytes: int | None = None) -> Execution:
        """Run a block on a fresh overlay. Inadmissible txs are kept (as failed results) or, for
        a proposal being prepared, left out; either way they change no state."""
        block = Overlay(self.db)
        block.writes.update(self._genesis_writes)
        events = [ChainEvent(height, -1, i, time, *e) for i, e in enumerate(self._genesis_events)]
        ctx = Context(store=block, height=height, time=time)
        response = abci.ResponseFinalizeBlock()
        param_updates = self._upgrade(ctx)
        if param_updates is not None:
            response.consensus_param_updates.CopyFrom(param_updates)
        rule = signatures.rule_of(block)  # after the block's upgrade, if it has one: its txs are judged by it
        self.verify_ahead(txs, rule)  # a block's txs this node has not checked: replay, block sync, a peer's proposal
        for hook in BEGIN_BLOCK:
            hook(ctx)
        events += [ChainEvent(height, -1, i, time, *e) for i, e in enumerate(ctx.events, start=len(events))]
        digests: dict[str, str] = {}  # event id -> digest, computed once for the results and the state
        for e in events:
            add_abci_event(response.events, e, digests)
        kept: list[bytes] = []
        results = response.tx_results
        inadmissible: list[tuple[int, int]] = []
        dropped: list[int] = []
        total = 0
        for position, raw in enumerate(txs):
            size = proto_tx_size(raw)
            if max_tx_bytes is not None and total + size > max_tx_bytes:
                break
            outcome = self._deliver(block, raw, height=height, time=time, rule=rule)
            if not outcome.admissible:
                if not keep_inadmissible:
                    dropped.append(outcome.code)
                    continue
                inadmissible.append((position, outcome.code))
            total += size
            index = len(kept)
            kept.append(raw)
            # Filled in place: building an ExecTxResult from keyword arguments and nested messages
            # cost twice as much (protobuf copies each nested message it is given).
            result = results.add()
            result.code, result.log = outcome.code, outcome.log
            for i, e in enumerate(outcome.events):
                event = ChainEvent(height, index, i, time, *e, outcome.trace)
                events.append(event)
                add_abci_event(result.events, event, digests)
        for key, power in ValidatorsKeeper(Context(store=block, height=height, time=time)).end_block():
            response.validator_updates.add(pub_key=PublicKey(ed25519=base64.b64decode(key)), power=power)
        self._record_events(block, height, events, digests)
        response.app_hash = app_hash = self._app_hash(block, height)
        return Execution(height, time, kept, block, events, app_hash, inadmissible, dropped, response)

    @staticmethod
    def _record_events(block: Overlay, height: int, events: list[ChainEvent], digests: dict[str, str]) -> None:
        """Commit the block's events in state (``events/<height>``: id -> [type, entity, digest]),
        so that a consumer can prove an event it read from Kafka against a signed header, as it
        proves any state (``block_results`` are not in any header). From the height the chain's
        state-tree record names; a chain whose tree started before that rule keeps its app hashes."""
        tree = block.get(STATE_TREE)
        if not events or not tree or height < tree.get("events_since", height + 1):
            return
        block.set(events_key(height), {e.id: [e.type, e.entity, digests.get(e.id) or event_digest(e)] for e in events})

    def _app_hash(self, block: Overlay, height: int) -> bytes:
        """The root of the state tree after the block, updated from its writes alone (new nodes
        wait in ``block.nodes`` for Commit). A block that changes nothing keeps the app hash, so
        `create_empty_blocks = false` can idle.

        A chain made before the tree keeps the hash chain of its blocks' writes until an upgrade to
        app version STATE_TREE_APP_VERSION or later is applied: that block builds the tree over the
        whole state in one pass, records STATE_TREE, and its app hash is the root from then on."""
        if not block.writes:
            return self.db.app_hash
        if self.db.get_text(STATE_TREE) is not None:
            root = self.tree.update((self.db.app_hash, self.db.tree_version), block.tree_changes(), block.nodes, height)
        elif STATE_TREE in block.writes:  # block 1 of a chain whose genesis starts the tree
            root = self.tree.update(NO_TREE, block.tree_changes(), block.nodes, height)
        elif GovernanceKeeper(Context(store=block, height=height, time=0)).app_version() < STATE_TREE_APP_VERSION:
            return next_app_hash(self.db.app_hash, block.digest(), height)
        else:
            block.set(STATE_TREE, {"spec": PROOF_TYPE, "since": height, "events_since": height + 1})
            changes = block.tree_changes()
            state = [(key, text.encode()) for key, text in self.db.texts() if key not in changes]
            state += [(key, value) for key, value in changes.items() if value is not None]
            log.warning("state-tree upgrade at height %d: the app hash is the root of a tree over %d keys from now on",
                        height, len(state))
            root = self.tree.build(state, block.nodes, height)
        block.tree_version = root[1]
        return root[0]

    def _upgrade(self, ctx: Context) -> ConsensusParams | None:
        """At a scheduled upgrade's height: a binary too old for it stops the node (deliberately: it
        must not apply blocks by rules it does not know); a new enough one switches the chain's app
        version, and tells CometBFT so (block headers carry it from the next height). A binary older
        than the version the chain already runs (an image rolled back) stops the same way."""
        keeper = GovernanceKeeper(ctx)
        if keeper.app_version() > self.app_version:
            log.critical("UPGRADE NEEDED: this chain applies blocks as app version %d since an upgrade; this binary "
                         "applies blocks up to app version %d. This node stops before height %d (its state stays at "
                         "height %d): install a release with app version %d and start it again.",
                         keeper.app_version(), self.app_version, ctx.height, self.db.height, keeper.app_version())
            raise UpgradeRequired(f"the chain runs app version {keeper.app_version()}; this binary has {self.app_version}")
        plan = keeper.upgrade()
        if plan is None or ctx.height < plan["height"]:
            return None
        if self.app_version < plan["app_version"]:
            log.critical("UPGRADE NEEDED: upgrade %r, scheduled by the board, starts at height %d and needs app "
                         "version %d; this binary applies blocks up to app version %d. This node stops before "
                         "height %d (its state stays at height %d): install the release with app version %d and "
                         "start it again.", plan["name"], plan["height"], plan["app_version"], self.app_version,
                         ctx.height, self.db.height, plan["app_version"])
            raise UpgradeRequired(f"upgrade {plan['name']!r} at height {plan['height']} needs app version "
                                  f"{plan['app_version']}; this binary has {self.app_version}")
        keeper.apply_upgrade(plan)
        if plan["app_version"] >= signatures.ZIP215_APP_VERSION and signatures.rule_of(ctx.store) != signatures.ZIP215:
            ctx.store.set(signatures.RULE_KEY, signatures.ZIP215)
            log.warning("tx signatures are verified by ZIP-215's rules from height %d on", ctx.height)
        log.warning("upgrade %r applied at height %d: the chain now runs app version %d", plan["name"], ctx.height,
                    plan["app_version"])
        return ConsensusParams(version=VersionParams(app=plan["app_version"]))

    # -- one transaction ------------------------------------------------------------------------
    def _deliver(self, state: Overlay, raw: bytes, *, height: int, time: int, rule: str, check: bool = False) -> Outcome:
        """Apply ``raw`` to ``state``. A rejected tx changes nothing but, once in a block, its nonce.

        Only a handler's own failure is answered INTERNAL_ERROR, alike on every validator (a bug
        must not split the chain); everything before the handler is a function of the bytes and
        the state that answers with a specific code."""
        try:
            ctx, model, signer = self._authenticate(state, raw, height, time, rule)
            if check:
                self._admit(raw, ctx.tx)
        except Rejected as exc:
            return Outcome(exc.code, str(exc), [], False)
        except MemoryError:
            raise
        except Exception as exc:  # a bug in decoding or authentication: refused alike everywhere
            log.error("authenticating a %d-byte tx failed: %s", len(raw), type(exc).__name__)
            return Outcome(INTERNAL_ERROR, "internal error", [], False)
        tx = ctx.tx
        signer.account["nonce"] = tx.nonce  # spent on the tx's branch (a refused tx spends it below)
        ctx.store.set(f"accounts/{tx.signer}", signer.account)
        try:
            governance.authorize(ctx, tx.type, model, signer)  # the association's powers: officer or board
            HANDLERS[tx.type][1](ctx, model)
        except Rejected as exc:
            if not check:  # included in a block: the nonce is spent, so the tx can never be replayed
                self._consume_nonce(state, tx)
            return Outcome(exc.code, str(exc), [], True)
        except MemoryError:
            raise
        except Exception as exc:  # a bug must not split the chain: every validator rejects alike
            log.error("handler for %s failed: %s", tx.type, type(exc).__name__)
            if not check:
                self._consume_nonce(state, tx)
            return Outcome(INTERNAL_ERROR, "internal error", [], True)
        ctx.store.merge_into_parent()
        if check:
            self._pending_bytes[tx.signer] = self._pending_bytes.get(tx.signer, 0) + len(raw)
        return Outcome(Code.OK, "", ctx.events, True, tx.trace)

    def _authenticate(self, state: Overlay, raw: bytes, height: int, time: int,
                      rule: str) -> tuple[Context, BaseModel, governance.Signer]:
        """The tx's context and payload, and its signer's account and member as read on the tx's
        branch (read once here: authorisation and the nonce use them again); its signature is
        verified by ``rule``."""
        verified: Verified | None = self._verified.get(raw)
        refused: Verified | None = None  # decoded ahead, its signature refused under refused.public_key
        if verified is None and self._helper is not None:
            self._helper.settle(raw)  # if it was asked to verify this tx: its answer
            verified = self._verified.get(raw)
            if verified is None:
                refused = self._unverified_ahead.pop(raw, None)
        if verified is not None:
            tx, signing_bytes = verified.tx, verified.signing_bytes
        elif refused is not None:
            tx, signing_bytes = refused.tx, refused.signing_bytes
        else:
            try:
                tx, signing_bytes = Tx.decode_signed(raw)
            except TxError as exc:
                raise Rejected(exc.code, str(exc)) from None
        ctx = Context(store=state.branch(), height=height, time=time, tx=tx)
        if tx.chain_id != self.chain_id:
            raise Rejected(Code.WRONG_CHAIN, f"chain id {tx.chain_id!r} is not {self.chain_id!r}")
        if tx.type not in HANDLERS:
            raise Rejected(Code.UNKNOWN_TYPE, f"unknown transaction type {tx.type}")
        keeper = MembersKeeper(ctx)
        account = keeper.account(tx.signer)
        if account is None:
            raise Rejected(Code.UNKNOWN_SIGNER, f"unknown signer {tx.signer}")
        owner = keeper.member(account["member"])
        if not owner or owner["status"] != "active":
            raise Rejected(Code.SUSPENDED_SIGNER, f"signer {tx.signer} belongs to a suspended member")
        if verified is None or verified.public_key != account["public_key"] or verified.rule != rule:
            if refused is not None and refused.public_key == account["public_key"] and refused.rule == rule:
                raise Rejected(Code.BAD_SIGNATURE, "signature does not verify with the signer's registered key")
            VERIFIED_BY["app"] += 1
            if not _signed(rule, account["public_key"], signing_bytes, tx.sig):
                raise Rejected(Code.BAD_SIGNATURE, "signature does not verify with the signer's registered key")
            verified = Verified(tx, signing_bytes, account["public_key"], rule)
            self._verified.put(raw, verified)
        if account["kind"] == "delegate":  # its powers only, while active and unexpired; as its member
            keeper.check_delegate(account, tx.type, time)
            ctx.acting_as = account["member"]
        if tx.nonce != account["nonce"] + 1:
            raise Rejected(Code.BAD_NONCE, f"nonce {tx.nonce} is not the signer's next nonce {account['nonce'] + 1}")
        msg = verified.payload
        if msg is None:
            try:
                msg = HANDLERS[tx.type][0].model_validate(tx.payload)
            except ValidationError as exc:
                fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors()[:5])
                raise Rejected(Code.INVALID_PAYLOAD, f"invalid {tx.type}: {fields}") from None
            if tx.type in SHARED_PAYLOADS:
                self._verified.put(raw, verified._replace(payload=msg))
        return ctx, msg, governance.Signer(account, owner)

    def _admit(self, raw: bytes, tx: Tx) -> None:
        """The mempool's per-signer share: no signer may fill it (CometBFT bounds the whole)."""
        committed = self._committed_nonces.get(tx.signer)
        if committed is None:  # read once per signer and block: it changes only at Commit
            account = self.check_state.committed(f"accounts/{tx.signer}")
            committed = self._committed_nonces[tx.signer] = account["nonce"] if account else 0
        pending = tx.nonce - committed
        if pending > self._params.max_pending_txs_per_signer:
            raise Rejected(Code.MEMPOOL_SHARE_FULL, f"signer {tx.signer} already has "
                           f"{self._params.max_pending_txs_per_signer} txs waiting for a block; retry after the next")
        if self._pending_bytes.get(tx.signer, 0) + len(raw) > self._params.max_pending_bytes_per_signer:
            raise Rejected(Code.MEMPOOL_SHARE_FULL, f"signer {tx.signer} already has "
                           f"{self._params.max_pending_bytes_per_signer} bytes waiting for a block; retry after the next")

    @staticmethod
    def _consume_nonce(state: Overlay, tx: Tx) -> None:
        account = state.get(f"accounts/{tx.signer}")
        account["nonce"] = tx.nonce
        state.set(f"accounts/{tx.signer}", account)


def event_digest(e: ChainEvent) -> str:
    return digest(e.id, e.type, e.entity, e.time, {**e.data, "height": e.height})


def add_abci_event(events, e: ChainEvent, digests: dict[str, str]) -> None:
    """Append to ``events`` (a repeated ``abci.Event`` field) a chain event as CometBFT keeps it in
    the block's results: its id and a digest of what the relay publishes, so a Kafka consumer can
    check an event against the chain (services/common/chainevents.py). CometBFT hashes no event:
    the proven record is the state's ``events/<height>`` (``_record_events``). ``digests`` keeps
    each digest for that record."""
    digests[e.id] = d = event_digest(e)
    event = events.add()
    event.type = e.type
    attribute = event.attributes.add()
    attribute.key, attribute.value, attribute.index = "entity", e.entity, True
    attribute = event.attributes.add()
    attribute.key, attribute.value = "id", e.id
    attribute = event.attributes.add()
    attribute.key, attribute.value = "digest", d


def _key(height: int, time: int, txs) -> tuple:
    """Identifies a block's execution: everything it depends on besides committed state."""
    return height, time, tuple(txs)
