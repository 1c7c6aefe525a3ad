"""A verified chain reader: read rdx's state from any one CometBFT RPC endpoint without trusting it
(issue 18, part 4).

From a trust anchor the reader holds itself (the chain's genesis validator set, or a height and
the hash of its header), it fetches signed headers, commits and validator sets from the endpoint,
verifies them with ``lightclient`` (adjacent or skipping, bisecting when the set changed too much
for one skip) and keeps the verified headers. A state read asks ``/abci_query`` with
``prove=true``; the answer at height h is accepted only when its proof leads to the app hash in
the verified header of h+1 (the header carries the app hash of the state committed before it), so
it asks for the state at the height before the node's latest, whose next header exists already
(a node that cannot prove that height is asked for its latest, and the read waits for the next
block). Any lie (a rewritten or removed value, a bad or foreign proof,
a header that does not verify, an old answer replayed) raises ``VerificationError`` and gives no
value; an endpoint that cannot be reached raises ``ChainError`` as ``ChainClient`` does.

Freshness: an honest node answers at least the height whose header the reader last verified from
it, and the header proving an answer must be younger than ``max_age_s``, so an old (true) answer
replayed later is refused. Cost: one query, and per new block one ``/commit`` fetch (and a
``/validators`` fetch when the header names a set no trusted header named) and its signature
checks, shared by every read answered at that height.

Not done: witnesses (a second endpoint to catch a fork), and listings (``/<prefix>/``) and quotes,
which the chain does not prove.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import lightclient, proofs
from services.common.chain import ChainClient, ChainError, HeightNotMade
from services.common.files import read_regular, reason
from services.common.lightclient import LightBlock, LightClientError, Validator
from services.common.settings import SettingRefused
from services.common.tx import Code

WEEK_S = 7 * 86_400.0  # CometBFT's light client default trusting period (168h)
PAGE = 100  # /validators per_page maximum
# A header verified this recently names the node's latest height well enough to ask at (a block
# since costs one refused query, which says the app's height, as ``status`` would have).
GUESS_S = 1.0
GENESIS_LIMIT = 64 << 20  # a consortium genesis, app state included, is kilobytes to a few MiB


class VerificationError(ValueError):
    """What the endpoint answered is not proven by the chain's validators: refuse it."""


class TrustAnchorRefused(VerificationError, SettingRefused):
    """RDX_TRUSTED_GENESIS or RDX_TRUSTED_HEADER names no usable anchor: the service does not start."""


@dataclass(frozen=True)
class Anchor:
    """What the reader trusts before asking anything: a chain id and either the genesis validator
    set (``height`` is the initial height) or the hash of the header at ``height``."""

    chain_id: str
    height: int
    header_hash: bytes = b""
    validators: tuple[Validator, ...] = ()

    @classmethod
    def from_genesis(cls, genesis: Mapping[str, Any] | str | Path) -> "Anchor":
        """A genesis given as a path is read as a regular file of bounded size: a FIFO there would
        hold the service's start for a writer, /dev/zero fill its memory (services/common/files.py)."""
        if not isinstance(genesis, Mapping):
            try:
                genesis = read_regular(Path(genesis), GENESIS_LIMIT)
            except OSError as exc:
                raise VerificationError(f"{genesis} {reason(exc)}") from None
        try:
            doc = genesis if isinstance(genesis, Mapping) else json.loads(genesis)
            validators = tuple(lightclient._validator({**v, "voting_power": v["power"]}) for v in doc["validators"])
            anchor = cls(str(doc["chain_id"]), int(doc.get("initial_height") or 1), validators=validators)
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise VerificationError(f"not a CometBFT genesis with validators ({type(exc).__name__})") from None
        if not validators:
            raise VerificationError("the genesis names no validators to trust")
        return anchor

    @classmethod
    def from_header(cls, chain_id: str, trusted: str) -> "Anchor":
        """``trusted`` is ``<height>:<header hash hex>``, e.g. from ``rdx verify`` or a block explorer
        the member trusts."""
        try:
            height, digest = trusted.split(":", 1)
            anchor = cls(chain_id, int(height), header_hash=bytes.fromhex(digest))
        except ValueError:
            raise VerificationError("a trusted header is <height>:<64 hex digits>") from None
        if anchor.height < 1 or len(anchor.header_hash) != 32:
            raise VerificationError("a trusted header is <height>:<64 hex digits>")
        return anchor


def _parts(answer: Any) -> tuple[int, str, int]:
    """An ``abci_query`` answer's code, info and height."""
    try:
        response = answer["response"]
        return int(response.get("code", 0)), str(response.get("info", "")), int(response.get("height", -1))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise VerificationError("not an abci_query answer") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise VerificationError("not an abci_query answer") from None


def sorted_set(validators: tuple[Validator, ...]) -> tuple[Validator, ...]:
    """CometBFT's order of a validator set: by power, highest first, then by address."""
    return tuple(sorted(validators, key=lambda v: (-v.power, v.address)))


class TrustSettings(BaseSettings):
    """A service's trust anchor, from RDX_TRUSTED_GENESIS (a genesis.json path) or
    RDX_TRUSTED_HEADER (``<height>:<hash>``); none set: the service's reads are not verified."""

    # An empty variable (as a manifest may set it) is unset, not the path "." or a header "".
    model_config = SettingsConfigDict(env_prefix="RDX_", extra="ignore", env_ignore_empty=True)
    trusted_genesis: Path | None = None
    trusted_header: str | None = None
    trusting_period_s: float = WEEK_S
    max_answer_age_s: float = 60.0

    def anchor(self, chain_id: str) -> Anchor | None:
        if self.trusted_genesis is not None:
            return Anchor.from_genesis(self.trusted_genesis)
        if self.trusted_header:
            return Anchor.from_header(chain_id, self.trusted_header)
        return None


def from_env(chain: ChainClient) -> "VerifiedChain | None":
    """The reader a service uses for ``chain``'s endpoint, if its environment names an anchor."""
    settings = TrustSettings()
    if settings.trusted_genesis is None and not settings.trusted_header:  # before chain.chain_id is asked
        return None
    setting = "RDX_TRUSTED_GENESIS" if settings.trusted_genesis is not None else "RDX_TRUSTED_HEADER"
    try:
        anchor = settings.anchor(chain.chain_id)
    except VerificationError as exc:
        raise TrustAnchorRefused(f"{setting}: {exc}") from None
    if anchor.chain_id != chain.chain_id:
        raise TrustAnchorRefused(f"{setting}: the trusted genesis is of chain {anchor.chain_id!r}, not {chain.chain_id!r}")
    return VerifiedChain(chain, anchor, trusting_period_s=settings.trusting_period_s,
                         max_age_s=settings.max_answer_age_s)


class VerifiedChain:
    """Proven reads of one endpoint's state; ``query`` answers as ``ChainClient.query`` does for a
    single state key (its JSON value, or None when proven absent)."""

    def __init__(self, chain: ChainClient | str, anchor: Anchor, *, trusting_period_s: float = WEEK_S,
                 max_age_s: float = 60.0, wait_s: float = 15.0, keep: int = 32,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.chain = chain if isinstance(chain, ChainClient) else ChainClient(chain, anchor.chain_id)
        self._owns_chain = not isinstance(chain, ChainClient)
        self.anchor, self.trusting_period_s, self.max_age_s = anchor, trusting_period_s, max_age_s
        self.wait_s, self.keep, self.clock = wait_s, keep, clock
        self._trusted: dict[int, LightBlock] = {}
        self._lock = asyncio.Lock()
        self._latest_at = float("-inf")  # when the newest trusted header was verified (monotonic)

    async def close(self) -> None:
        if self._owns_chain:
            await self.chain.close()

    async def __aenter__(self) -> "VerifiedChain":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def latest(self) -> LightBlock | None:
        return self._trusted[max(self._trusted)] if self._trusted else None

    # -- reads ----------------------------------------------------------------------------------
    async def query(self, path: str) -> Any | None:
        value, _ = await self.query_bytes(path)
        return None if value is None else json.loads(value)

    async def query_bytes(self, path: str) -> tuple[bytes | None, int]:
        """A state key's stored bytes (None: proven absent) and the height they are proven at."""
        key = path.lstrip("/")
        if not key or key.endswith("/") or "?" in key:
            raise VerificationError("only one state key can be proven, not a listing")
        floor = self.latest.height - 1 if self.latest else 0
        # Proven at the height before the node's latest, whose app hash the latest header carries
        # already: no waiting for the next block. Two answers send the read elsewhere:
        # - the key changed in the app's latest block (the answer's ``info`` says at which height: a
        #   read after a write sees it): asked at that height, proven by the header after it, which
        #   CometBFT makes at once because that block changed the app hash;
        # - the app is past the height asked (a block committed between ``/status`` and the query,
        #   the refusal says the app's height): asked at the height before the app's.
        # Asking for "the latest" instead raced the next block: an answer of a height the app
        # reached meanwhile, an empty proof block, waited for a header CometBFT makes only at the
        # empty-block interval (1 s under `rdx up`). A node that hides the hint serves a value one
        # block old, as any answer may be up to ``max_age_s`` old; one that lies about heights only
        # makes the read wait, as it could anyway.
        # The node's latest height: the newest header verified, if that was within GUESS_S, else its
        # ``status``. Under a job's start that RPC took 3-22 ms of each read (issue 23).
        if self._latest_at > time.monotonic() - GUESS_S:
            latest = self.latest.height
        else:
            latest = int((await self._rpc("status"))["sync_info"]["latest_block_height"])
        asked, answer = max(latest - 1, 0), None
        for _ in range(3):
            answer = await self._rpc("abci_query", path=f"/{key}", prove=True, height=str(asked))
            code, info, height = _parts(answer)
            if code in (Code.OK, Code.NOT_FOUND):
                if not info.startswith(proofs.CHANGED_SINCE):
                    break
                elsewhere = _integer(info[len(proofs.CHANGED_SINCE):])
                if elsewhere <= asked:  # the answer is of the block that changed the key, or later
                    break
            else:
                elsewhere = height - 1
                if elsewhere <= asked:  # nowhere better to ask (a restarted app proves its latest only)
                    answer = None
                    break
            asked, answer = elsewhere, None
        if answer is None:  # the app's latest state, and the header after it waited for
            answer = await self._rpc("abci_query", path=f"/{key}", prove=True)
            _, _, height = _parts(answer)
        if height < floor:
            raise VerificationError(f"the answer is of height {height}, older than the verified height {floor}")
        block = await self.header(height + 1)
        if block.time_ns < (self.clock().timestamp() - self.max_age_s) * 10**9:
            raise VerificationError(f"the answer is of height {height}, more than {self.max_age_s:.0f} s old")
        try:
            return lightclient.verify_query(block, key, answer), height
        except proofs.ProofError as exc:
            raise VerificationError(f"{key}: {exc}") from None

    # -- headers --------------------------------------------------------------------------------
    async def header(self, height: int) -> LightBlock:
        """The verified header of ``height``, waiting up to ``wait_s`` for it to be made."""
        async with self._lock:
            if not self._trusted:
                await self._trust_anchor()
            if height in self._trusted:
                return self._trusted[height]
            if height < min(self._trusted):
                raise VerificationError(f"height {height} is before the trust anchor")
            block = await self._fetch(height)
            await self._verify(block)
            return block

    async def _trust_anchor(self) -> None:
        a = self.anchor
        block = await self._fetch(a.height)
        if block.chain_id != a.chain_id:
            raise VerificationError(f"the endpoint serves chain {block.chain_id!r}, not {a.chain_id!r}")
        if a.header_hash and lightclient.header_hash(block.header) != a.header_hash:
            raise VerificationError(f"the header of height {a.height} is not the trusted one")
        if a.validators and block.header.validators_hash != lightclient.validators_hash(sorted_set(a.validators)):
            raise VerificationError("the first block's validators are not the genesis's")
        try:
            lightclient.verify_signed_header(block, a.chain_id)
        except LightClientError as exc:
            raise VerificationError(f"the anchor's block does not verify: {exc}") from None
        if block.time_ns + self.trusting_period_s * 10**9 <= self.clock().timestamp() * 10**9:
            raise VerificationError("the trust anchor is older than the trusting period: anchor on a newer header")
        self._trusted[block.height] = block

    async def _verify(self, block: LightBlock) -> None:
        """Trust ``block`` from the highest trusted header below it, bisecting when a skip lacks
        the trusted validators' 1/3 (CometBFT's ``VerifyNonAdjacent`` then bisection)."""
        below = max(h for h in self._trusted if h < block.height)
        try:
            lightclient.verify(self._trusted[below], block, now=self.clock(), trusting_period_s=self.trusting_period_s)
        except lightclient.NotEnoughTrust:
            middle = (below + block.height) // 2
            if middle == below:
                raise VerificationError(f"height {block.height} does not follow from height {below}") from None
            await self._verify(await self._fetch(middle))
            await self._verify(block)
            return
        except LightClientError as exc:
            raise VerificationError(f"the header of height {block.height} does not verify: {exc}") from None
        if block.height > max(self._trusted):
            self._latest_at = time.monotonic()
        self._trusted[block.height] = block
        anchor_height = min(self._trusted)
        while len(self._trusted) > self.keep:
            del self._trusted[min(h for h in self._trusted if h != anchor_height)]

    async def _fetch(self, height: int) -> LightBlock:
        # A header asked for is usually the next block's, 10-15 ms away on `rdx up`'s chain: asked
        # for at once, then after 4 ms, 1.5 times longer each time, up to every 50 ms (a fixed 50 ms
        # added 25 ms on average to a read that waits; issue 23). The commit itself is asked for, not
        # ``status`` first: a node refuses a height it has not made (HeightNotMade; one round trip a
        # header, not two, on a job's path).
        deadline, pause = time.monotonic() + self.wait_s, 0.004
        while True:
            try:
                commit = await self._rpc("commit", height=str(height))
                break
            except HeightNotMade:
                pass
            if time.monotonic() > deadline:
                raise VerificationError(f"no block {height} within {self.wait_s:.0f} s")
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.05)
        try:
            block = lightclient.light_block(commit, {"validators": []})
        except LightClientError as exc:
            raise VerificationError(f"block {height}: {exc}") from None
        # The set a trusted header named, if this header names the same (its hash): not fetched
        # again. Either way verify_signed_header checks the set against the header's hash.
        for known in self._trusted.values():
            if known.header.validators_hash == block.header.validators_hash:
                return dataclasses.replace(block, validators=known.validators)
        validators: list[Any] = []
        try:
            for page in range(1, lightclient.MAX_VALIDATORS // PAGE + 1):
                got = await self._rpc("validators", height=str(height), page=str(page), per_page=str(PAGE))
                validators += got["validators"]
                if len(validators) >= int(got["total"]) or not got["validators"]:
                    break
            return lightclient.light_block(commit, {"validators": validators})
        except LightClientError as exc:
            raise VerificationError(f"block {height}: {exc}") from None
        except (KeyError, TypeError, ValueError):
            raise VerificationError(f"the endpoint's validators of height {height} are malformed") from None

    async def _rpc(self, method: str, **params: Any) -> Any:
        try:
            result = await self.chain.rpc(method, **params)
            if not isinstance(result, Mapping):
                raise TypeError
            if method == "status":
                int(result["sync_info"]["latest_block_height"])
            return result
        except ChainError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError):
            raise VerificationError(f"the endpoint's {method} answer is malformed") from None
