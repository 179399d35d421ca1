"""Per-key rate limits on writes: a token bucket per API key, refilled at UNLEARN_WRITE_RATE_PER_KEY
tokens a second up to UNLEARN_WRITE_BURST_PER_KEY; each write (POST/PUT/PATCH/DELETE under /v1) takes
one, and a write that finds none is answered 429 with the seconds until a token is due.

Where the buckets live:

- With a Redis broker (BROKER_URL redis:// or rediss://), in Redis, so every API process of a deployment
  shares one bucket per key: one small Lua script (below) reads the bucket, refills it from the time
  elapsed, takes a token and writes it back, atomically; it reads the clock with Redis's TIME, so API
  hosts need not agree on the time. Each bucket expires once it would be full again.
- Otherwise (the embedded stack: one API process), in a dictionary in this process.

No database is touched: the check costs one Redis round trip, or a few dictionary operations. If Redis
does not answer, the process falls back to its own buckets (a limit per process is still a limit) and
logs it, rather than refusing or slowing writes.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol

from service.core.settings import Settings

log = logging.getLogger(__name__)

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst. Returns the seconds to wait, as a string (a Lua
# number would reach the client truncated to an integer); "0" means the write is admitted.
TOKEN_BUCKET_LUA = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]), tonumber(bucket[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class WriteLimiter(Protocol):
    rate: float
    burst: int

    async def acquire(self, key_id: str) -> float:
        """Take a token from the key's bucket: 0.0 if the write may proceed, else the seconds until
        a token is due (nothing was taken)."""
        ...


class LocalBuckets:
    """Token buckets in this process."""

    MAX_BUCKETS = 100_000  # keys seen recently; beyond it the oldest are forgotten (they refill anyway)

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    async def acquire(self, key_id: str) -> float:
        return self.take(key_id)

    def take(self, key_id: str) -> float:
        now = time.monotonic()
        tokens, at = self._buckets.pop(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        if len(self._buckets) >= self.MAX_BUCKETS:
            del self._buckets[next(iter(self._buckets))]  # dicts keep order: the least recently used
        self._buckets[key_id] = (tokens, now)
        return wait


class RedisBuckets:
    """Token buckets in Redis, shared by every API process that uses the same Redis."""

    WARN_EVERY_S = 60.0

    def __init__(self, url: str, rate: float, burst: int, prefix: str) -> None:
        import redis.asyncio as aioredis

        self.rate, self.burst, self.prefix = rate, burst, prefix
        client = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = client.register_script(TOKEN_BUCKET_LUA)
        self._fallback = LocalBuckets(rate, burst)
        self._warned_at = -math.inf

    async def acquire(self, key_id: str) -> float:
        try:
            raw = await self._script(keys=[f"{self.prefix}{key_id}"], args=[self.rate, self.burst])
            return float(raw)
        except Exception as exc:  # noqa: BLE001 - an unreachable Redis must not take writes down with it
            if time.monotonic() - self._warned_at > self.WARN_EVERY_S:
                self._warned_at = time.monotonic()
                log.warning("write rate limit: Redis unavailable (%s); limiting per process", exc)
            return self._fallback.take(key_id)


def make_limiter(settings: Settings) -> WriteLimiter | None:
    """The limiter the settings ask for, or None when UNLEARN_WRITE_RATE_PER_KEY is 0."""
    rate, burst = settings.write_rate_per_key, settings.write_burst_per_key
    if rate <= 0:
        return None
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        return RedisBuckets(url, rate, burst, prefix=f"unlearn:write-bucket:{settings.queue_name}:")
    return LocalBuckets(rate, burst)


def retry_after(wait_s: float) -> int:
    """Retry-After is whole seconds: round up, so a client that waits that long finds a token."""
    return max(1, math.ceil(wait_s))
