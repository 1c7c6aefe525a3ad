"""Per-member rate limits (a token bucket) and a daily request quota, in the process for one gateway
or in Redis for replicas (``RDX_GATEWAY_REDIS_URL``), where every replica draws on the same bucket.

Written here rather than taken from a library: aiolimiter's leaky bucket makes callers wait
instead of refusing them, and `limits` counts windows rather than refilling a bucket; what a
gateway needs is "refuse with Retry-After when the bucket is empty", which is a few lines — in
Redis, one Lua script, so a check and its update are one atomic step on Redis's own clock.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from services.gateway.db import StoreUnavailable

DAY = 86_400


class RateLimiter(ABC):
    def __init__(self, rate_per_s: float, burst: int, daily_quota: int):
        self.rate, self.burst, self.quota = rate_per_s, burst, daily_quota

    @abstractmethod
    async def take(self, member: str) -> float | None:
        """None if the request may go; else the seconds to wait before retrying."""


@dataclass
class _Bucket:
    tokens: float
    at: float


class LocalRateLimiter(RateLimiter):
    """One gateway's own buckets, in memory."""

    def __init__(self, rate_per_s: float, burst: int, daily_quota: int):
        super().__init__(rate_per_s, burst, daily_quota)
        self._buckets: dict[str, _Bucket] = {}
        self._days: dict[str, tuple[int, int]] = {}

    async def take(self, member: str) -> float | None:
        now = time.monotonic()
        bucket = self._buckets.setdefault(member, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        day = int(time.time() // DAY)
        used_day, used = self._days.get(member, (day, 0))
        if used_day != day:
            used = 0
        if used >= self.quota:
            return float(DAY - time.time() % DAY)
        if bucket.tokens < 1:
            return (1 - bucket.tokens) / self.rate
        bucket.tokens -= 1
        self._days[member] = (day, used + 1)
        return None


# KEYS[1] the member's bucket (a hash), KEYS[2] its quota counter's prefix; ARGV rate, burst, quota.
# Numbers go back as strings: Redis truncates a Lua number reply to an integer.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local day_key = KEYS[2] .. ':' .. math.floor(now / 86400)
if tonumber(redis.call('GET', day_key) or '0') >= quota then
  return tostring(86400 - now % 86400)
end
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = ''
if tokens < 1 then
  wait = tostring((1 - tokens) / rate)
else
  tokens = tokens - 1
  redis.call('INCR', day_key)
  redis.call('EXPIRE', day_key, 2 * 86400)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return wait
"""


class RedisRateLimiter(RateLimiter):
    """Buckets shared by every replica: a member gets ``rate_per_s`` across all of them, not per replica."""

    def __init__(self, client, rate_per_s: float, burst: int, daily_quota: int, prefix: str = "rdx:gw"):
        super().__init__(rate_per_s, burst, daily_quota)
        self.client, self.prefix = client, prefix
        self._take = client.register_script(TAKE)

    async def take(self, member: str) -> float | None:
        from redis.exceptions import RedisError

        try:
            wait = await self._take(keys=[f"{self.prefix}:bucket:{member}", f"{self.prefix}:day:{member}"],
                                    args=[self.rate, self.burst, self.quota])
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer ({type(exc).__name__})") from None
        wait = wait.decode() if isinstance(wait, bytes) else wait
        return float(wait) if wait else None
