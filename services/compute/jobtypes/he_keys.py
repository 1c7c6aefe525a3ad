"""CKKS keys kept across the runs of one grant (issue 23): what he_scoring reuses instead of making
and sending a context per run.

- The consumer's node keeps, per (provider, grant), the context it made for that grant's first run
  (secret key included), its public part as sent and that part's SHA-256, for at most LIFETIME_S
  seconds and at most MAX_ENTRIES grants (least recently used out first). Only in the node's memory
  (``JobContext.node_cache``): never written, sent or logged here; a run's pending state (journal.py,
  0600) keeps the secret key it needs to open its held-back scores, as before, so a restarted node
  opens them with an empty cache.
- The provider's node keeps, per (consumer, grant, SHA-256), the public context it received and
  loaded, under the same bounds. It only ever keeps bytes it hashed itself, so a hash it holds names
  exactly the context that consumer sent under that grant; another consumer or grant never finds it.

Nothing is kept for an input without a grant (a job record of old): every run makes its keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Hashable

MAX_ENTRIES = 4  # in memory each is ~30 MiB (a provider's loaded public context) or ~34 MiB (a consumer's keys)
LIFETIME_S = 3600.0  # a grant's keys are made again after an hour of use


class Kept:
    """A bounded cache: at most ``size`` entries, each at most ``lifetime`` seconds after it was
    put (then gone, whatever its use), the least recently used dropped first."""

    def __init__(self, size: int = MAX_ENTRIES, lifetime: float = LIFETIME_S,
                 clock: Callable[[], float] = time.monotonic):
        self.size, self.lifetime, self.clock = size, lifetime, clock
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        got = self._entries.get(key)
        if got is None:
            return None
        if self.clock() - got[0] >= self.lifetime:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return got[1]

    def put(self, key: Hashable, value: Any) -> None:
        self._entries[key] = (self.clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class ConsumerKeys:
    """One grant's keys on the consumer's node."""

    context: Any  # the TenSEAL context with the secret key
    public: bytes  # its public part as sent (public key, relinearisation keys)
    digest: str  # SHA-256 of ``public``, hex
    secret: str  # the secret key alone, base64, as a run's pending state keeps it
    sent: bool = False  # the provider has received ``public`` whole in this node's lifetime


def kept(node_cache: MutableMapping[str, Any], name: str) -> Kept:
    """The node's cache called ``name`` (made on first use)."""
    cache = node_cache.get(name)
    if not isinstance(cache, Kept):
        cache = node_cache[name] = Kept()
    return cache
