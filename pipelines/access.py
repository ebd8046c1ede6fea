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
  the first charge; cache hits cost nothing). A request is admitted while the key is under its
  quota and charged with its answer's tokens afterwards, so the last one may go past it.
- Counters live in Redis when ``REDIS_URL`` is set (shared by every worker and replica), else
  in this process. If Redis fails, requests are let through (fail open), counted on
  ``ragroute_limit_errors_total`` and logged.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pipelines.errors import ConfigError, RagrouteError
from pipelines.schema import TENANT_PATTERN

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
            tokens_per_day: int | None = None) -> str:
    """Create a key, store its hash in the key file (created if absent), return the key (shown once)."""
    path = Path(path)
    keys = load_keys(path) if path.exists() else []
    key = new_key()
    try:
        entry = KeyEntry(name=name, sha256=hash_key(key), tenant=tenant, rate=rate, tokens_per_day=tokens_per_day)
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


class Gate:
    """Authentication, the tenant check, and the limits, for every query endpoint."""

    def __init__(self, keys: list[KeyEntry] | None, redis_url: str = "", namespace: str = "ragroute",
                 on_error=lambda op: None) -> None:
        from limits import parse_many
        from limits.storage import storage_from_string
        from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        self.keys = keys  # None: open
        self.rates = {k.sha256: parse_many(k.rate) for k in keys or [] if k.rate}
        self.quotas = {k.sha256: parse_many(f"{k.tokens_per_day}/day")[0] for k in keys or [] if k.tokens_per_day}
        if redis_url:
            uri = "async+" + redis_url if not redis_url.startswith("unix://") else "async+redis+" + redis_url
            storage = storage_from_string(uri, implementation="redispy", key_prefix=f"{namespace}:limits",
                                          socket_timeout=0.5, socket_connect_timeout=0.5)
        else:
            storage = storage_from_string("async+memory://")
        self.shared = bool(redis_url)
        self.rate_limiter = MovingWindowRateLimiter(storage)
        self.quota_limiter = FixedWindowRateLimiter(storage)
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

    async def admit(self, caller: Caller) -> list[str]:
        """Counts the request against the key's rate and checks its token quota (Denied(429) with
        Retry-After); returns warnings (a limit could not be checked: Redis failed)."""
        if caller.entry is None:
            return []
        sha = caller.entry.sha256
        try:
            for limit in self.rates.get(sha, []):
                if not await self.rate_limiter.hit(limit, sha[:16]):
                    raise Denied(429, f"rate limit {limit} exceeded for this API key", None,
                                 await self._retry_after(self.rate_limiter, limit, sha[:16]))
            quota = self.quotas.get(sha)
            if quota is not None and not await self.quota_limiter.test(quota, sha[:16]):
                raise Denied(429, f"daily token quota ({quota.amount} tokens) used up for this API key", None,
                             await self._retry_after(self.quota_limiter, quota, sha[:16]))
        except Denied:
            raise
        except Exception as exc:  # noqa: BLE001 - the limits' store failed: let the request through
            self.on_error("admit")
            log.warning("limits not checked for key %s (%s: %s); request let through", caller.label,
                        type(exc).__name__, exc)
            return [f"limits: not checked ({type(exc).__name__}); the request was let through"]
        return []

    async def charge(self, caller: Caller, tokens: int) -> None:
        quota = self.quotas.get(caller.entry.sha256) if caller.entry else None
        if quota is None or tokens <= 0:
            return
        try:
            await self.quota_limiter.hit(quota, caller.entry.sha256[:16], cost=tokens)
        except Exception as exc:  # noqa: BLE001 - a lost charge is counted, never a failed answer
            self.on_error("charge")
            log.warning("%d tokens not charged to key %s (%s: %s)", tokens, caller.label, type(exc).__name__, exc)

    @staticmethod
    async def _retry_after(limiter, limit, ident: str) -> int:
        stats = await limiter.get_window_stats(limit, ident)
        return max(1, math.ceil(stats.reset_time - time.time()))


@dataclass(frozen=True)
class Admitted:
    caller: Caller
    tenant: str
    warnings: tuple[str, ...] = ()


class FrontDoor:
    """What every query endpoint (REST ``rag_query`` and ``/v1``) does around an answer: admit the
    caller (key, tenant, limits) before, and account for the answer after (metrics, token quota).

    ``metrics``: ``observe(response)``, ``usage(tenant, tokens, response)``, ``denied(status)``,
    ``cache_policy(tenant, summary)``. ``cache_summary(tenant)``: the error-bounded cache's
    statistics of a tenant (read after each semantic decision, for the metrics' gauges)."""

    def __init__(self, gate: Gate, metrics, cache_summary: Callable[[str], dict | None] | None = None) -> None:
        self.gate = gate
        self.metrics = metrics
        self.cache_summary = cache_summary

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

    async def admit(self, caller: Caller, tenant: str) -> Admitted:
        """The tenant the request is answered for, once the caller's limits let it through."""
        try:
            tenant = self.gate.tenant(caller, tenant)
            warnings = await self.gate.admit(caller)
        except Denied as exc:
            self.metrics.denied(exc.status)
            raise
        return Admitted(caller, tenant, tuple(warnings))

    async def settle(self, admitted: Admitted, resp) -> None:
        resp.warnings.extend(admitted.warnings)
        self.metrics.observe(resp)
        tokens = resp.usage.tokens_in + resp.usage.tokens_out if not resp.cache.hit else 0
        self.metrics.usage(admitted.tenant, tokens, resp)
        if self.cache_summary is not None and resp.cache.decision is not None:
            await self._cache_gauges(admitted.tenant)
        await self.gate.charge(admitted.caller, tokens)
