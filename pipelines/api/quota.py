"""Token quotas that hold under concurrency: reserve before the answer, settle after.

A request is admitted only if its key's tokens used so far, *counting the reservations of the
requests still running*, are under the quota; admitting it reserves ``reserve`` tokens in the
same atomic step (a Lua script in Redis, a lock in process). When the request ends, finished or
abandoned by its client, the reservation is replaced by what it really cost.

The bound: the tokens charged in a window exceed the quota by at most the cost of the last
request admitted (it was admitted while under the quota), plus, for each request running when
the quota ran out, what it cost beyond its reservation. ``reserve`` is one generation's worst
case (pipelines/api/access.py: ``reservation``), so only a cascade that escalates (two generations)
can cost beyond it. 32 requests sent at once against a quota of a few answers: the few are
admitted, the rest are refused (429) until a reservation is settled.

Windows are fixed: ``window_s`` from the key's first reservation (24 h for ``tokens_per_day``).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

# KEYS: the key's counter. ARGV: quota, tokens to reserve, window (s).
# Returns {admitted (0/1), used after, seconds until the window resets}.
RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then
  return {0, used, redis.call('TTL', KEYS[1])}
end
used = redis.call('INCRBY', KEYS[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return {1, used, redis.call('TTL', KEYS[1])}
"""

# KEYS: the key's counter. ARGV: the change (tokens, may be negative). Only within the window
# the reservation was made in: once it has reset, a refund or charge belongs to no window.
ADJUST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@dataclass(frozen=True)
class Reservation:
    ident: str
    tokens: int
    window: float  # the window's start: a settlement after it reset is dropped


@dataclass(frozen=True)
class Refusal:
    used: int
    retry_after_s: int


class MemoryQuota:
    """Per process (no Redis): one dict under a lock."""

    def __init__(self, window_s: float = 86400.0, clock=time.time) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[str, tuple[float, int]] = {}  # ident -> (window start, tokens)

    def _current(self, ident: str, now: float) -> tuple[float, int]:
        """(window start, tokens used) of the key's current window (a new one once it has ended)."""
        start, used = self._used.get(ident, (now, 0))
        return (now, 0) if now - start >= self.window_s else (start, used)

    async def reserve(self, ident: str, quota: int, tokens: int) -> Reservation | Refusal:
        now = self._clock()
        with self._lock:
            start, used = self._current(ident, now)
            if used >= quota:
                return Refusal(used, max(1, math.ceil(start + self.window_s - now)))
            self._used[ident] = (start, used + tokens)
            return Reservation(ident, tokens, start)

    async def adjust(self, reservation: Reservation, tokens: int) -> None:
        with self._lock:
            start, used = self._used.get(reservation.ident, (None, 0))
            if start == reservation.window:
                self._used[reservation.ident] = (start, used + tokens - reservation.tokens)

    async def charge(self, ident: str, tokens: int) -> None:
        """Tokens spent without a reservation (Redis was down when the request was admitted)."""
        now = self._clock()
        with self._lock:
            start, used = self._current(ident, now)
            self._used[ident] = (start, used + tokens)

    async def used(self, ident: str) -> int:
        with self._lock:
            return self._used.get(ident, (0.0, 0))[1]


class RedisQuota:
    """Shared by every worker and replica: one counter per key under ``<namespace>:quota:``."""

    def __init__(self, client, namespace: str, window_s: float = 86400.0) -> None:
        self.client = client  # redis.asyncio.Redis
        self.prefix = f"{namespace}:quota:"
        self.window_s = window_s
        self._reserve = client.register_script(RESERVE)
        self._adjust = client.register_script(ADJUST)

    async def reserve(self, ident: str, quota: int, tokens: int) -> Reservation | Refusal:
        admitted, used, ttl = await self._reserve(keys=[self.prefix + ident], args=[quota, tokens, int(self.window_s)])
        if not admitted:
            return Refusal(int(used), max(1, int(ttl)))
        # the window is named by when it ends: a settlement checks it is still the same one
        return Reservation(ident, tokens, round(time.time() + int(ttl) - self.window_s))

    async def adjust(self, reservation: Reservation, tokens: int) -> None:
        if tokens != reservation.tokens:
            await self._adjust(keys=[self.prefix + reservation.ident], args=[tokens - reservation.tokens])

    async def charge(self, ident: str, tokens: int) -> None:
        """Tokens spent without a reservation (Redis was down when the request was admitted)."""
        await self._reserve(keys=[self.prefix + ident], args=[2**62, tokens, int(self.window_s)])

    async def used(self, ident: str) -> int:
        return int(await self.client.get(self.prefix + ident) or 0)
