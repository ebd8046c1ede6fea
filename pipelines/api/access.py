"""API keys, the tenant each key belongs to, and per-key rate limits and token quotas.

The key file (``RAGROUTE_API_KEYS``, JSON; ``ragroute keys add`` writes it) holds only sha256
hashes of the keys::

    {"keys": [{"name": "acme-web", "sha256": "<hex>", "tenant": "acme",
               "rate": "10/second", "tokens_per_day": 200000}]}

- With a key file, every query endpoint needs ``Authorization: Bearer <key>``; the tenant comes
  from the key, and a request naming another tenant is refused (403).
- ``rate``: requests per key, a `limits` rate string ("10/second", "600/minute"; several joined
  by ";" all apply), counted over a moving window (a burst up to the limit, then the rate).
- ``tokens_per_day``: prompt + completion tokens per key per 24 hours (a window that starts at
  the first reservation; cache hits cost nothing). Admission reserves a generation's worst case
  atomically (pipelines/api/quota.py), counting the requests still running; the request is then
  charged what its generations really cost, streamed answers abandoned by their client
  included (the prompt and the tokens decoded before the hang-up).
- ``collections`` (optional): the collections the key may read (default: all).
- Counters live in Redis when ``REDIS_URL`` is set (shared by every worker and replica), else
  in this process. If Redis fails, requests are let through (fail open), counted on
  ``ragroute_limit_errors_total`` and logged; the process's Redis breaker (pipelines/breaker.py,
  shared with the cache) then skips the limits at once until Redis answers a probe again.

Keys are compared in constant time against every stored hash and never logged (the ``name``
or the hash's first 8 hex digits identify a key in logs and metrics).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from common.errors import ConfigError, NotFound, RagrouteError
from pipelines.api.quota import MemoryQuota, RedisQuota, Refusal, Reservation
from pipelines.api.schema import COLLECTION_PATTERN, TENANT_PATTERN
from pipelines.api.sse import detach
from pipelines.breaker import Breaker
from pipelines.query.state import Meter

log = logging.getLogger(__name__)

ENV = "RAGROUTE_API_KEYS"
KEY_PREFIX = "rr-"


class Denied(RagrouteError):
    """401 (no or wrong key), 403 (another tenant) or 429 (over a limit, ``retry_after_s``)."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.retry_after_s = retry_after_s


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    tenant: Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
    rate: Annotated[str, StringConstraints(max_length=200)] | None = None
    tokens_per_day: Annotated[int, Field(ge=1)] | None = None
    collections: Annotated[list[Annotated[str, StringConstraints(pattern=COLLECTION_PATTERN)]],
                           Field(min_length=1, max_length=1000)] | None = None
    """the collections this key may read; None: every one"""


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[KeyEntry]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_keys(path: str | Path) -> list[KeyEntry]:
    """The key file's entries; a ConfigError naming RAGROUTE_API_KEYS and what is wrong."""
    from limits import parse_many

    try:
        keys = KeyFile.model_validate_json(Path(path).read_text()).keys
    except OSError as exc:
        raise ConfigError(f"{ENV}={path}: cannot read the key file: {exc}") from None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{ENV}={path}: {where}: {err['msg']}") from None
    for field in ("name", "sha256"):
        values = [getattr(k, field) for k in keys]
        if len(set(values)) != len(values):
            raise ConfigError(f"{ENV}={path}: two keys have the same {field}")
    for k in keys:
        if k.rate:
            try:
                parse_many(k.rate)
            except ValueError as exc:
                raise ConfigError(f"{ENV}={path}: key {k.name!r}: rate {k.rate!r}: {exc}") from None
    return keys


def add_key(path: str | Path, name: str, tenant: str, rate: str | None = None,
            tokens_per_day: int | None = None, collections: list[str] | None = None) -> str:
    """Create a key, store its hash in the key file (created if absent), return the key (shown once)."""
    path = Path(path)
    keys = load_keys(path) if path.exists() else []
    key = new_key()
    try:
        entry = KeyEntry(name=name, sha256=hash_key(key), tenant=tenant, rate=rate, tokens_per_day=tokens_per_day,
                         collections=collections)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if any(k.name == name for k in keys):
        raise ConfigError(f"a key named {name!r} is already in {path}")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"keys": [k.model_dump(exclude_none=True) for k in [*keys, entry]]}, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    load_keys(path)  # what was written must load
    return key


@dataclass(frozen=True)
class Caller:
    """Who is asking: the key's entry (None when no key file is configured: the API is open)."""

    entry: KeyEntry | None

    @property
    def label(self) -> str:
        return self.entry.name if self.entry else "-"

    def may_read(self, collection: str) -> bool:
        return self.entry is None or self.entry.collections is None or collection in self.entry.collections


class Gate:
    """Authentication, the tenant check, and the limits, for every query endpoint.

    ``reserve_tokens``: what admission reserves against a token quota (one generation's worst
    case, :func:`reservation`); ``timeout_s``: the most a limit check may wait for Redis (the
    cache stage's budget); ``breaker``: the process's Redis breaker, shared with the cache."""

    def __init__(self, keys: list[KeyEntry] | None, redis_url: str = "", namespace: str = "ragroute",
                 on_error=lambda op: None, *, reserve_tokens: int = 1, timeout_s: float = 0.5,
                 breaker: Breaker | None = None) -> None:
        from limits import parse_many
        from limits.storage import storage_from_string
        from limits.aio.strategies import MovingWindowRateLimiter

        self.keys = keys  # None: open
        self.rates = {k.sha256: parse_many(k.rate) for k in keys or [] if k.rate}
        self.quotas = {k.sha256: k.tokens_per_day for k in keys or [] if k.tokens_per_day}
        self.reserve_tokens = max(1, reserve_tokens)
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else Breaker(name="Redis (limits)")
        if redis_url:
            import redis.asyncio

            uri = "async+" + redis_url if not redis_url.startswith("unix://") else "async+redis+" + redis_url
            storage = storage_from_string(uri, implementation="redispy", key_prefix=f"{namespace}:limits",
                                          socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=timeout_s,
                                                  socket_connect_timeout=timeout_s)
            self.quota: MemoryQuota | RedisQuota = RedisQuota(client, f"{namespace}:limits")
        else:
            storage = storage_from_string("async+memory://")
            self.quota = MemoryQuota()
        self.shared = bool(redis_url)
        self.rate_limiter = MovingWindowRateLimiter(storage)
        self.on_error = on_error

    @property
    def open(self) -> bool:
        return self.keys is None

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of ``Authorization: Bearer <key>``; Denied(401) when keys are required."""
        if self.keys is None:
            return Caller(None)
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Denied(401, "missing API key: send 'Authorization: Bearer <key>'", "authorization")
        digest = hash_key(key.strip()).encode()
        found = None
        for entry in self.keys:  # every entry is compared, in constant time
            if hmac.compare_digest(digest, entry.sha256.encode()):
                found = entry
        if found is None:
            raise Denied(401, "invalid API key", "authorization")
        return Caller(found)

    @staticmethod
    def tenant(caller: Caller, requested: str) -> str:
        """The key's tenant; a request naming another (other than the default) is refused."""
        if caller.entry is None:
            return requested
        if requested not in ("default", caller.entry.tenant):
            raise Denied(403, f"tenant {requested!r}: this API key belongs to another tenant", "tenant")
        return caller.entry.tenant

    async def _redis(self, op: str, call):
        """``call()`` under the breaker and the time limit; None (and a warning) when skipped or failed."""
        if not self.shared:
            return await call()
        if not self.breaker.allow():
            raise _Skipped("Redis unavailable")
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call()
        except Denied:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis failed or was late: let the request through
            self.breaker.failed(f"limits {op}", exc)
            raise _Skipped(type(exc).__name__) from exc
        self.breaker.succeeded()
        return result

    async def admit(self, caller: Caller) -> tuple[list[str], Reservation | None]:
        """Counts the request against the key's rate and reserves against its token quota
        (Denied(429) with Retry-After); returns warnings (a limit could not be checked: Redis
        failed) and the reservation to settle."""
        if caller.entry is None:
            return [], None
        sha = caller.entry.sha256
        try:
            for limit in self.rates.get(sha, []):
                if not await self._redis("rate", lambda limit=limit: self.rate_limiter.hit(limit, sha[:16])):
                    raise Denied(429, f"rate limit {limit} exceeded for this API key", None,
                                 await self._retry_after(limit, sha[:16]))
            quota = self.quotas.get(sha)
            if quota is None:
                return [], None
            got = await self._redis("quota", lambda: self.quota.reserve(sha[:16], quota, self.reserve_tokens))
        except _Skipped as why:
            self.on_error("admit")
            log.warning("limits not checked for key %s (%s); request let through", caller.label, why)
            return [f"limits: not checked ({why}); the request was let through"], None
        if isinstance(got, Refusal):
            raise Denied(429, f"daily token quota ({quota} tokens) used up for this API key", None, got.retry_after_s)
        return [], got

    async def settle(self, caller: Caller, reservation: Reservation | None, tokens: int) -> None:
        """Replace the request's reservation by what it cost; without one (no quota, or Redis was
        down at admission), charge what it cost."""
        quota = self.quotas.get(caller.entry.sha256) if caller.entry else None
        if quota is None:
            return
        try:
            if reservation is not None:
                await self._redis("charge", lambda: self.quota.adjust(reservation, tokens))
            elif tokens > 0:
                await self._redis("charge", lambda: self.quota.charge(caller.entry.sha256[:16], tokens))
        except _Skipped as why:  # a lost charge is counted, never a failed answer
            self.on_error("charge")
            log.warning("%d tokens not charged to key %s (%s)", tokens, caller.label, why)

    async def used(self, caller: Caller) -> int:
        """Tokens charged and reserved in the key's current window (tests, the admin's view)."""
        return await self.quota.used(caller.entry.sha256[:16]) if caller.entry else 0

    async def _retry_after(self, limit, ident: str) -> int:
        try:
            stats = await self._redis("rate", lambda: self.rate_limiter.get_window_stats(limit, ident))
        except _Skipped:
            return 1
        return max(1, math.ceil(stats.reset_time - time.time()))


class _Skipped(Exception):
    """A limit not checked: Redis is down (the breaker is open) or failed now."""


def reservation(tiers) -> int:
    """What admission reserves against a token quota: the worst case of one generation of the
    configured tiers (``TierConfig``s): its prompt (at most the tier's source text, the longest
    question and the prompt's own text, within the context window) and its longest answer."""
    from pipelines.api.schema import MAX_QUERY_CHARS

    question = MAX_QUERY_CHARS // 3 + 1  # tokens of the longest question, generously (~4 chars a token)
    return max((min(t.context_tokens - t.max_tokens, t.source_tokens + question + PROMPT_OVERHEAD_TOKENS)
                + t.max_tokens for t in tiers), default=1)


PROMPT_OVERHEAD_TOKENS = 256  # the instructions and source headers around the question and sources


@dataclass(frozen=True)
class Admitted:
    caller: Caller
    tenant: str
    warnings: tuple[str, ...] = ()
    reservation: Reservation | None = None
    meter: Meter = dataclass_field(default_factory=Meter)  # the tokens the request costs, as they are spent


GAUGE_REFRESH_S = 1.0  # a tenant's cache gauges are re-read at most this often


class FrontDoor:
    """What every query endpoint (REST ``rag_query`` and ``/v1``) does around an answer: admit the
    caller (key, tenant, collection, limits) before, and account for the answer after (metrics,
    token quota), also for a streamed answer its client abandoned (:meth:`abandon`).

    ``metrics``: ``observe(response)``, ``usage(tenant, tokens, response)``, ``denied(status)``,
    ``cache_policy(tenant, summary)``. ``cache_summary(tenant)``: the error-bounded cache's
    statistics of a tenant, read off the request path (at most every GAUGE_REFRESH_S per tenant,
    never while Redis is known to be down) for the metrics' gauges."""

    def __init__(self, gate: Gate, metrics, cache_summary: Callable[[str], dict | None] | None = None) -> None:
        self.gate = gate
        self.metrics = metrics
        self.cache_summary = cache_summary
        self._gauges_read: dict[str, float] = {}

    def _refresh_gauges(self, tenant: str) -> None:
        now = time.monotonic()
        if now - self._gauges_read.get(tenant, -GAUGE_REFRESH_S) < GAUGE_REFRESH_S or self.gate.breaker.down:
            return
        self._gauges_read[tenant] = now
        detach(self._cache_gauges(tenant))

    async def _cache_gauges(self, tenant: str) -> None:
        try:
            summary = await asyncio.to_thread(self.cache_summary, tenant)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the cache is down: the gauges keep their last values
            log.debug("cache statistics of %s not read: %s", tenant, exc)
            return
        if summary is not None:
            self.metrics.cache_policy(tenant, summary)

    def authenticate(self, authorization: str | None) -> Caller:
        try:
            return self.gate.authenticate(authorization)
        except Denied as exc:
            self.metrics.denied(exc.status)
            raise

    async def admit(self, caller: Caller, tenant: str, collection: str = "default") -> Admitted:
        """The tenant the request is answered for, once the caller may read ``collection`` (a
        404 naming only the collections the key may read, as for one that does not exist) and
        its limits let it through."""
        try:
            tenant = self.gate.tenant(caller, tenant)
            self.check_collection(caller, collection)
            warnings, reservation = await self.gate.admit(caller)
        except Denied as exc:
            self.metrics.denied(exc.status)
            raise
        return Admitted(caller, tenant, tuple(warnings), reservation)

    @staticmethod
    def check_collection(caller: Caller, collection: str) -> None:
        if not caller.may_read(collection):
            raise NotFound("collection", f"{collection!r} is not a collection; valid: "
                                         f"{', '.join(sorted(caller.entry.collections or []))}")

    @staticmethod
    def visible(caller: Caller, exc: RagrouteError) -> RagrouteError:
        """``exc`` as this caller may see it: an unknown collection's 404 lists only what the key may read."""
        if isinstance(exc, NotFound) and exc.field == "collection" and caller.entry is not None \
                and caller.entry.collections is not None:
            return NotFound("collection", f"no such collection; valid: {', '.join(sorted(caller.entry.collections))}")
        return exc

    @staticmethod
    def collections(caller: Caller, found: list[dict]) -> list[dict]:
        """The collections this caller may read, without where they live on the server."""
        return [{k: v for k, v in c.items() if k not in PRIVATE_FIELDS} for c in found if caller.may_read(c["name"])]

    async def settle(self, admitted: Admitted, resp) -> None:
        """After the answer: metrics, and the quota charged what the request cost."""
        resp.warnings.extend(admitted.warnings)
        self.metrics.observe(resp)
        if admitted.meter.charged:
            return
        admitted.meter.charged = True
        tokens = max(admitted.meter.tokens, 0 if resp.cache.hit else resp.usage.tokens_in + resp.usage.tokens_out)
        self.metrics.usage(admitted.tenant, tokens, resp)
        if self.cache_summary is not None and resp.cache.decision is not None:
            self._refresh_gauges(admitted.tenant)
        await self.gate.settle(admitted.caller, admitted.reservation, tokens)

    async def abandon(self, admitted: Admitted) -> None:
        """A request whose answer did not reach its client (a hang-up mid-stream, a failure):
        charged what it cost. Once: a request already settled is not charged again."""
        if admitted.meter.charged:
            return
        admitted.meter.charged = True
        tokens = admitted.meter.tokens
        log.info("key %s: answer not delivered after %d tokens; charged", admitted.caller.label, tokens)
        self.metrics.usage(admitted.tenant, tokens)
        await self.gate.settle(admitted.caller, admitted.reservation, tokens)


# What /collections never shows a client: where a collection lives on the server (a path, a URI).
PRIVATE_FIELDS = frozenset({"source", "path", "uri", "dir"})
