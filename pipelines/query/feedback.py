"""Feedback on answers: ``POST /feedback {request_id, verdict}`` (docs/cache.md, "Feedback").

Every answer leaves a small record (:class:`Answered`): what it was (an exact or a semantic cache
hit, or a fresh answer, and whether that was cached), where its cache entry lives, and how it
was routed. A verdict on it acts where it can:

- **"bad" on a semantic hit** counts as a wrong hit in the tenant's error-bound statistics (the
  candidate's score band: one more comparison, found wrong; the lookup itself was counted when
  it was served) and sets the entry's per-entry boundary, so that entry is not served again for
  a question scored at or below this one (policy.py, step 3). "good" counts a comparison found
  right.
- **"bad" on an exact hit, or on a fresh answer that was cached**: the entry is deleted, so the
  next asker gets a fresh answer instead of the one a user rejected.
- **Verdicts on fresh answers** are kept as labels (question, tier, model, route score,
  verdict) for the router's calibration.

One verdict per answer (a second is a 409: a client cannot weigh an answer twice). Records live
``TTL_S`` and at most ``MAX_RECORDS`` per tenant (the oldest dropped first), labels the newest
``MAX_LABELS`` per tenant: in-process by default, in Redis (shared by replicas, surviving
restarts) with ``REDIS_URL``. Tenants never see each other's records: an id of another tenant
is "unknown" (404).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from common.errors import BadRequest, NotFound, StageError
from common.text import content_id
from pipelines.api.schema import Verdict

log = logging.getLogger(__name__)

TTL_S = 7 * 24 * 3600  # how long an answer can be rated
MAX_RECORDS = 10_000  # answers that can be rated, per tenant (the oldest dropped first)
MAX_LABELS = 10_000  # verdicts on fresh answers kept per tenant for the router's calibration

Kind = Literal["exact", "semantic", "fresh"]


class AlreadyRated(BadRequest):
    status = 409


class FeedbackUnavailable(StageError):
    """The feedback store (Redis) cannot be reached: a 503, nothing recorded."""

    def __init__(self, detail: str, what: str = "the feedback store (Redis)") -> None:
        super().__init__("feedback", f"{what} is unavailable; nothing was recorded, try again", detail)


@dataclass(frozen=True)
class Answered:
    """What a verdict on one answer needs to act on it."""

    request_id: str
    tenant: str
    query: str
    kind: Kind
    index_version: str = ""
    fingerprint: str = ""  # the cache partition's generation settings (records.Partition)
    collection: str = "default"
    qhash: str = ""  # the question's own cache key (an exact hit, or where a fresh answer was stored)
    stored: bool = False  # a fresh answer that was cached
    entry_qhash: str = ""  # a semantic hit: the entry it was served from
    score: float | None = None  # a semantic hit: the policy's score of the candidate
    band: int | None = None  # ... and its band
    tier: str = ""
    model: str = ""
    route_score: float | None = None
    degraded: bool = False
    at: float = 0.0  # unix time of the answer

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Answered:
        """A stored record; fields another version added are ignored. ValueError if unreadable."""
        try:
            data = json.loads(raw)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"unreadable feedback record: {exc}") from None

    def label(self, verdict: Verdict) -> dict[str, Any]:
        """A label for the router's calibration (fresh answers only)."""
        return {"query": self.query, "tier": self.tier, "model": self.model, "route_score": self.route_score,
                "degraded": self.degraded, "verdict": verdict, "request_id": self.request_id, "at": self.at}


def request_key(request_id: str) -> str:
    """The id a verdict names: ``rag_query``'s ``request_id`` or a ``/v1`` answer's ``id``."""
    return request_id.removeprefix("chatcmpl-")


class FeedbackStore(Protocol):
    blocking: bool  # calls do network I/O (run them off the event loop)

    def remember(self, rec: Answered) -> None: ...

    def rate(self, tenant: str, request_id: str, verdict: Verdict) -> Answered:
        """The record of ``tenant``'s answer ``request_id``, now rated: NotFound when unknown (or
        another tenant's), AlreadyRated when rated before; FeedbackUnavailable when down."""
        ...

    def unrate(self, tenant: str, request_id: str) -> None:
        """Take a verdict back (acting on it failed)."""
        ...

    def add_label(self, tenant: str, label: dict[str, Any]) -> None: ...

    def labels(self, tenant: str) -> list[dict[str, Any]]: ...

    def purge(self, tenant: str) -> None: ...


def _unknown(request_id: str) -> NotFound:
    return NotFound("request_id", f"no answer {request_id!r} of this tenant to rate (unknown, another tenant's, "
                                  f"or older than {TTL_S // 86400} days)")


class MemoryFeedback:
    """Per process (like the in-memory cache): a verdict must reach the worker that answered."""

    blocking = False

    def __init__(self, max_records: int = MAX_RECORDS, max_labels: int = MAX_LABELS, ttl_s: float = TTL_S,
                 clock=time.time) -> None:
        self.max_records, self.max_labels, self.ttl_s, self.clock = max_records, max_labels, ttl_s, clock
        self._lock = threading.Lock()
        self._records: dict[str, OrderedDict[str, tuple[Answered, str | None]]] = {}
        self._labels: dict[str, deque[dict[str, Any]]] = {}

    def remember(self, rec: Answered) -> None:
        with self._lock:
            records = self._records.setdefault(rec.tenant, OrderedDict())
            records[rec.request_id] = (rec, None)
            while len(records) > self.max_records:
                records.popitem(last=False)

    def rate(self, tenant: str, request_id: str, verdict: Verdict) -> Answered:
        with self._lock:
            found = self._records.get(tenant, {}).get(request_id)
            if found is None or self.clock() - found[0].at > self.ttl_s:
                raise _unknown(request_id)
            rec, given = found
            if given is not None:
                raise AlreadyRated("request_id", f"answer {request_id!r} was already rated {given!r}")
            self._records[tenant][request_id] = (rec, verdict)
            return rec

    def unrate(self, tenant: str, request_id: str) -> None:
        with self._lock:
            found = self._records.get(tenant, {}).get(request_id)
            if found is not None:
                self._records[tenant][request_id] = (found[0], None)

    def add_label(self, tenant: str, label: dict[str, Any]) -> None:
        with self._lock:
            self._labels.setdefault(tenant, deque(maxlen=self.max_labels)).append(label)

    def labels(self, tenant: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._labels.get(tenant, ()))

    def purge(self, tenant: str) -> None:
        with self._lock:
            self._records.pop(tenant, None)
            self._labels.pop(tenant, None)


# Remember one answer and keep the tenant's records bounded (the oldest dropped with their keys).
# KEYS: record, the tenant's index (zset: request id -> time). ARGV: json, ttl, now, max, record prefix.
_REMEMBER = """
redis.call('HSET', KEYS[1], 'rec', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
  for _, old in ipairs(redis.call('ZPOPMIN', KEYS[2], extra)) do
    if string.sub(old, 1, string.len(ARGV[5])) == ARGV[5] then redis.call('DEL', old) end
  end
end
return 1
"""


class RedisFeedback:
    """Shared by every worker and replica; each call under the process's Redis breaker."""

    blocking = True

    def __init__(self, url: str, namespace: str, timeout_s: float, breaker, client=None,
                 max_records: int = MAX_RECORDS, max_labels: int = MAX_LABELS, ttl_s: int = TTL_S) -> None:
        import redis

        self.client = client if client is not None else redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix = f"{namespace}:feedback:"
        self.breaker = breaker
        self.max_records, self.max_labels, self.ttl_s = max_records, max_labels, int(ttl_s)
        self._remember = self.client.register_script(_REMEMBER)

    def _tenant(self, tenant: str) -> str:
        return content_id(tenant)  # hashed: any tenant name is a safe key, and names never collide by case

    def _record(self, tenant: str, request_id: str) -> str:
        return f"{self.prefix}r:{self._tenant(tenant)}:{request_id}"

    def _call(self, op: str, fn):
        if not self.breaker.allow():
            raise FeedbackUnavailable(f"{op}: Redis is known to be down (retrying every {self.breaker.retry_s:g} s)")
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - a connection error or timeout: the store is down
            self.breaker.failed(f"feedback {op}", exc)
            raise FeedbackUnavailable(f"{op}: {type(exc).__name__}: {exc}") from exc
        self.breaker.succeeded()
        return out

    def remember(self, rec: Answered) -> None:
        key = self._record(rec.tenant, rec.request_id)
        index = f"{self.prefix}i:{self._tenant(rec.tenant)}"
        self._call("remember", lambda: self._remember(
            keys=[key, index], args=[rec.to_json(), self.ttl_s, rec.at, self.max_records, f"{self.prefix}r:"]))

    def rate(self, tenant: str, request_id: str, verdict: Verdict) -> Answered:
        key = self._record(tenant, request_id)

        def run() -> tuple[bytes | None, bool, bytes | None]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hget(key, "rec")
            pipe.hsetnx(key, "verdict", verdict)  # on a missing key this creates it: removed below
            pipe.hget(key, "verdict")
            raw, fresh, given = pipe.execute()
            if raw is None:
                self.client.delete(key)
            return raw, bool(fresh), given

        raw, fresh, given = self._call("rate", run)
        try:
            rec = None if raw is None else Answered.from_json(raw)
        except ValueError as exc:
            log.warning("feedback record %s of tenant %s unreadable (%s): treated as unknown", request_id, tenant, exc)
            rec = None
        if rec is None:
            raise _unknown(request_id)
        if not fresh:
            raise AlreadyRated("request_id", f"answer {request_id!r} was already rated {given.decode()!r}")
        return rec

    def unrate(self, tenant: str, request_id: str) -> None:
        self._call("unrate", lambda: self.client.hdel(self._record(tenant, request_id), "verdict"))

    def add_label(self, tenant: str, label: dict[str, Any]) -> None:
        key = f"{self.prefix}l:{self._tenant(tenant)}"

        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(key, json.dumps(label, separators=(",", ":")))
            pipe.ltrim(key, 0, self.max_labels - 1)
            pipe.expire(key, 30 * 86400)
            pipe.execute()

        self._call("label", run)

    def labels(self, tenant: str) -> list[dict[str, Any]]:
        raw = self._call("labels", lambda: self.client.lrange(f"{self.prefix}l:{self._tenant(tenant)}", 0, -1))
        return [json.loads(x) for x in reversed(raw)]

    def purge(self, tenant: str) -> None:
        t = self._tenant(tenant)

        def run() -> None:
            doomed = list(self.client.scan_iter(match=f"{self.prefix}r:{t}:*", count=500))
            self.client.delete(*doomed, f"{self.prefix}i:{t}", f"{self.prefix}l:{t}")

        self._call("purge", run)


class Feedback:
    """``POST /feedback``: a tenant's verdict on one of its answers, and what it changes."""

    def __init__(self, store: FeedbackStore, cache=None, on_taken=lambda out: None) -> None:
        self.store = store
        self.cache = cache  # a SemanticCache, or None when the cache is off
        self.blocking = store.blocking or bool(cache is not None and cache.blocking)
        self.on_taken = on_taken  # called with each verdict taken (the service's metrics)

    async def take(self, tenant: str, request_id: str, verdict: Verdict) -> dict[str, Any]:
        """:meth:`give`, off the event loop when the store or the cache does network I/O."""
        out = await asyncio.to_thread(self.give, tenant, request_id, verdict) if self.blocking \
            else self.give(tenant, request_id, verdict)
        self.on_taken(out)
        return out

    def give(self, tenant: str, request_id: str, verdict: Verdict) -> dict[str, Any]:
        """Rate ``tenant``'s answer ``request_id`` and act on the verdict (the module's docstring).
        NotFound, AlreadyRated, FeedbackUnavailable; a cache that fails while acting leaves the
        answer unrated (so the verdict can be given again) and is a FeedbackUnavailable."""
        rid = request_key(request_id)
        rec = self.store.rate(tenant, rid, verdict)
        try:
            effect = self._act(rec, verdict)
        except Exception as exc:  # noqa: BLE001 - the cache (Redis) failed: nothing changed, say so
            self.store.unrate(tenant, rid)
            raise FeedbackUnavailable(f"{type(exc).__name__}: {exc}", "the cache") from exc
        log.info("feedback on request %s (tenant %s, %s answer): %s; %s", rid, tenant, rec.kind, verdict, effect)
        return {"request_id": rid, "verdict": verdict, "answer": rec.kind, "effect": effect}

    def _act(self, rec: Answered, verdict: Verdict) -> str:
        from pipelines.query.cache.records import Partition

        bad = verdict == "bad"
        cache = self.cache
        part = Partition(rec.tenant, rec.index_version, rec.fingerprint, rec.collection)
        if rec.kind == "semantic":
            if cache is None or cache.policy is None or rec.score is None:
                return "recorded (no error bound learns from it: RAGROUTE_CACHE_POLICY is not error-bound)"
            cache.label(part, rec.entry_qhash, rec.score, bad)
            if bad:
                return (f"counted as a wrong semantic hit in this tenant's error-bound statistics; the entry is not "
                        f"served again to questions scored <= {rec.score:.2f}")
            return "counted as a right semantic hit in this tenant's error-bound statistics"
        effects = []
        if bad and cache is not None and (rec.kind == "exact" or rec.stored):
            effects.append("the cached answer was deleted" if cache.forget(part, rec.qhash)
                           else "the cached answer was already gone")
        if rec.kind == "fresh":
            self.store.add_label(rec.tenant, rec.label(verdict))
            effects.append("kept as a label for the router's calibration")
        return "; ".join(effects) or "recorded"


def make_feedback_store(cache_cfg, breaker) -> FeedbackStore:
    """In Redis when one is configured (``REDIS_URL``; each call within the cache's timeout,
    under the process's Redis breaker), else in this process."""
    if cache_cfg.redis_url:
        return RedisFeedback(cache_cfg.redis_url, cache_cfg.namespace, cache_cfg.timeout_ms / 1000, breaker)
    return MemoryFeedback()
