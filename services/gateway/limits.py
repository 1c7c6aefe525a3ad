"""Per-member rate limits (a token bucket) and a daily request quota.

Written here rather than taken from a library: aiolimiter's leaky bucket makes callers wait
instead of refusing them, and `limits` counts windows rather than refilling a bucket; what a
gateway needs is "refuse with Retry-After when the bucket is empty", which is a few lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, daily_quota: int):
        self.rate, self.burst, self.quota = rate_per_s, burst, daily_quota
        self._buckets: dict[str, _Bucket] = {}
        self._days: dict[str, tuple[int, int]] = {}

    def take(self, member: str) -> float | None:
        """None if the request may go; else the seconds to wait before retrying."""
        now = time.monotonic()
        bucket = self._buckets.setdefault(member, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        day = int(time.time() // 86_400)
        used_day, used = self._days.get(member, (day, 0))
        if used_day != day:
            used = 0
        if used >= self.quota:
            return float(86_400 - time.time() % 86_400)
        if bucket.tokens < 1:
            return (1 - bucket.tokens) / self.rate
        bucket.tokens -= 1
        self._days[member] = (day, used + 1)
        return None
