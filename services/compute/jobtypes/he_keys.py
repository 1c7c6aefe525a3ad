"""CKKS keys kept across the runs of one grant (issue 23): what he_scoring (both modes) reuses
instead of making and sending a context per run.

- The consumer's node keeps, per (provider, grant), the context it made for that grant's first run
  (secret key included), its public part as sent and that part's SHA-256, for at most LIFETIME_S
  seconds and at most MAX_ENTRIES grants (least recently used out first; the statistics mode, whose
  Galois keys make an entry ~220 MiB, one grant's). Only in the node's memory
  (``JobContext.node_cache``): never written, sent or logged here; a run's pending state (journal.py,
  0600) keeps the secret key it needs to open its held-back scores, as before, so a restarted node
  opens them with an empty cache.
- The provider's node keeps, per (consumer, grant, SHA-256), the public context it received and
  loaded, under the same bounds. It only ever keeps bytes it hashed itself, so a hash it holds names
  exactly the context that consumer sent under that grant; another consumer or grant never finds it.

Nothing is kept for an input without a grant (a job record of old): every run makes its keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Hashable

from cachetools import TTLCache

from services.compute.jobtypes.base import JobContext, ProtocolError, expect

MAX_ENTRIES = 4  # scoring's in memory: ~30 MiB (a provider's loaded public context), ~23 MiB (a consumer's keys)
LIFETIME_S = 3600.0  # a grant's keys are made again after an hour of use
CHUNK = 4 << 20  # a context goes in messages of this size


class Kept(TTLCache):
    """A bounded cache (cachetools' TTLCache): at most ``size`` entries, each at most ``lifetime``
    seconds after it was put (then gone, whatever its use), the least recently used dropped first."""

    def __init__(self, size: int = MAX_ENTRIES, lifetime: float = LIFETIME_S,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(size, lifetime, timer=clock)

    @property
    def size(self) -> int:
        return self.maxsize

    def put(self, key: Hashable, value: Any) -> None:
        self[key] = value


@dataclass
class ConsumerKeys:
    """One grant's keys on the consumer's node."""

    context: Any  # the TenSEAL context with the secret key: the consumer encrypts and decrypts with it
    public: bytes  # its public part as sent (public key, relinearisation keys)
    digest: str  # SHA-256 of ``public``, hex
    secret: str  # the secret key alone, base64, as a run's pending state keeps it
    sent: bool = False  # the provider has received ``public`` whole in this node's lifetime


def kept(node_cache: MutableMapping[str, Any], name: str, size: int = MAX_ENTRIES) -> Kept:
    """The node's cache called ``name`` (made on first use, of at most ``size`` entries)."""
    cache = node_cache.get(name)
    if not isinstance(cache, Kept):
        cache = node_cache[name] = Kept(size)
    return cache


def new_keys(ctx: Any, public: bytes, secret: str) -> ConsumerKeys:
    return ConsumerKeys(ctx, public, hashlib.sha256(public).hexdigest(), secret)


async def consumer_keys(ctx: JobContext, name: str, make: Callable[[], ConsumerKeys], size: int = MAX_ENTRIES) \
        -> ConsumerKeys:
    """The keys of this run: the ones this node keeps in its cache ``name`` for the grant, else
    ``make()``'s (in a thread), then kept for the grant's next runs. No grant: fresh every run."""
    ref = ctx.spec.inputs[0]
    cache = kept(ctx.node_cache, name, size) if ref.grant else None
    keys = cache.get((ref.provider, ref.grant)) if cache is not None else None
    if keys is None:
        keys = await asyncio.to_thread(make)
        if cache is not None:
            cache.put((ref.provider, ref.grant), keys)
    return keys


def finishing_keys(ctx: JobContext, name: str, secret: str) -> ConsumerKeys | None:
    """The grant's keys if this node still keeps the ones whose secret key a run's pending state holds."""
    ref, cache = ctx.spec.inputs[0], ctx.node_cache.get(name)
    keys = cache.get((ref.provider, ref.grant)) if isinstance(cache, Kept) and ref.grant else None
    return keys if keys is not None and keys.secret == secret else None


def offer(keys: ConsumerKeys) -> dict[str, Any]:
    """What the message announcing the context carries: its SHA-256, and whether it is offered by
    that alone (this node sent it to the provider before)."""
    return {"context_sha256": keys.digest, "offer": keys.sent}


async def send_context(chan, keys: ConsumerKeys) -> None:
    """After the announcement (``offer``): the context whole, unless offered and the provider
    answers that it holds it (``context_held {held: true}``)."""
    if keys.sent and (await expect(chan, "context_held")).header.get("held") is True:
        return
    for off in range(0, len(keys.public), CHUNK):
        await chan.send("context", keys.public[off:off + CHUNK])
    keys.sent = True


def announced(header: dict[str, Any]) -> tuple[str, bool]:
    """(SHA-256, offer) from the announcement; ProtocolError if malformed."""
    digest, offered = header.get("context_sha256"), header.get("offer")
    if not isinstance(offered, bool) or not isinstance(digest, str) or len(digest) != 64 \
            or set(digest) - set("0123456789abcdef"):
        raise ProtocolError("the consumer's context is not announced by its SHA-256")
    return digest, offered


async def provider_context(ctx: JobContext, chan, name: str, digest: str, size: int, offered: bool,
                           load: Callable[[bytes], Any], cache_size: int = MAX_ENTRIES) -> Any:
    """The consumer's public context on the provider's node: the one it keeps in its cache ``name``
    for (consumer, grant, SHA-256) if the consumer offered it by its hash alone, else the ``size``
    bytes the consumer sends, which must hash to ``digest``, loaded by ``load`` (which raises
    ProtocolError on a context it refuses) and kept for the grant's next runs."""
    ref = ctx.my_inputs[0]
    cache = kept(ctx.node_cache, name, cache_size) if ref.grant else None
    key = (ctx.spec.consumer, ref.grant, digest)
    if offered:
        pub = cache.get(key) if cache is not None else None
        await chan.send("context_held", held=pub is not None)
        if pub is not None:
            return pub
    blob = bytearray()
    while len(blob) < size:
        try:
            blob += (await expect(chan, "context")).body
        except ProtocolError:
            if offered:  # told that this node does not hold it, the consumer had to send it
                raise ProtocolError("the consumer offered a CKKS context by a SHA-256 this node does not hold "
                                    "for its grant, and did not send it") from None
            raise
    if len(blob) != size:
        raise ProtocolError("the context does not add up to its announced size")
    if hashlib.sha256(blob).hexdigest() != digest:
        raise ProtocolError("the consumer's CKKS context does not have the SHA-256 it announced")
    pub = await asyncio.to_thread(load, bytes(blob))
    if cache is not None:
        cache.put(key, pub)
    return pub
