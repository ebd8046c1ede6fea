"""Redis backend of the semantic cache (Redis 8 / Redis Stack query engine, via redisvl).

One hash per entry under ``<namespace>:cache:`` with tag fields tenant, index_version,
fingerprint and doc_tags, the question, its JSON payload and its embedding; an HNSW cosine
index over them (created on first use, re-created if Redis lost it). Every lookup filters
on tenant, index version and fingerprint. RediSearch folds TAG values to lower case unless a
field is declared case-sensitive: the tenant field is (``Acme`` and ``acme`` are two tenants),
and every row a query returns is checked against the tenant asked for before it is used or
deleted, so no index setting can hand one tenant's entry to another. Entries expire after a fixed TTL (Redis EXPIRE,
refreshed on hits only when sliding TTL is configured); a sorted set of keys by insertion
time bounds the size, evicting the oldest first.

Failure isolation: every command has a short socket timeout; a failure opens the process's
Redis breaker (pipelines/breaker.py, shared with the API keys' limits) for ``retry_s``:
commands fail fast with CacheUnavailable meanwhile, so requests bypass the cache without
waiting. Failures are logged once per outage and counted through ``on_error``; one command
after ``retry_s`` probes again.

The error-bounded policy's statistics: each entry's record in its own hash (fields verified,
wrong, wrong_max; reset when the entry's answer is replaced, gone with the entry) and one hash
per tenant and generation settings under ``<namespace>:cache:v1-pool:`` (per-band counts,
kept 30 days after the last observation), listed in one set per tenant so that reading a
tenant's statistics (the per-request gauges) never scans the keyspace. One Lua script updates
both, so concurrent observations never lose an update and an entry deleted meanwhile is not
re-created.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from common.text import content_id
from pipelines.breaker import Breaker
from pipelines.config import CacheConfig
from pipelines.query.cache.carry import Carried, VersionChange
from pipelines.query.cache.policy import EntryStats, PoolStats
from pipelines.query.cache.records import NO_REACH, CacheUnavailable, Candidate, Partition, doc_tag
from pipelines.query.cache.redis_scripts import OBSERVE

log = logging.getLogger(__name__)

# 2: the tenant TAG is case-sensitive (version 1's folded case: tenants differing only in case
# shared entries); a new version is a new index and key prefix, version 1's entries expire unread.
SCHEMA_VERSION = 2
POOL_TTL_S = 30 * 86400
ENTRY_STATS = ("verified", "wrong", "wrong_max")


class RedisCache:
    blocking = True  # network I/O: the pipeline runs calls in a thread, under the cache budget

    def __init__(self, cfg: CacheConfig, on_error: Callable[[str], None] | None = None,
                 breaker: Breaker | None = None) -> None:
        import redis

        self.cfg = cfg
        timeout = cfg.timeout_ms / 1000
        self._redis = redis
        self.client = redis.Redis.from_url(cfg.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           retry_on_timeout=False)
        self.prefix = f"{cfg.namespace}:cache:v{SCHEMA_VERSION}:"
        self.order_key = f"{cfg.namespace}:cache:v{SCHEMA_VERSION}-order"
        self.meta_key = f"{cfg.namespace}:cache:v{SCHEMA_VERSION}-meta"  # the vector dimension
        self.pool_prefix = f"{cfg.namespace}:cache:v{SCHEMA_VERSION}-pool:"
        self._observe = self.client.register_script(OBSERVE)
        self._index = None  # redisvl SearchIndex, built for the first vector's dimension
        self._on_error = on_error
        self._lock = threading.Lock()
        self.breaker = breaker if breaker is not None else Breaker(cfg.retry_s, "Redis cache")
        self.errors = 0

    # -- failure isolation ---------------------------------------------------------------------
    def _unreachable(self, exc: BaseException) -> bool:
        """A connection or timeout error, possibly wrapped (redisvl wraps what it raises)."""
        while exc is not None:
            if isinstance(exc, (self._redis.ConnectionError, self._redis.TimeoutError, OSError)):
                return True
            exc = exc.__cause__ or exc.__context__
        return False

    def _call(self, op: str, fn: Callable[[], Any]) -> Any:
        if not self.breaker.allow():
            raise CacheUnavailable(f"Redis unreachable; next probe in {self.breaker.retry_in():.1f} s")
        recovering = self.breaker.down
        try:
            result = fn()
        except Exception as exc:
            if not self._unreachable(exc):
                self.breaker.succeeded()  # Redis answered (with an error of its own)
                raise
            with self._lock:
                self.errors += 1
            self.breaker.failed(f"cache {op}", exc)
            if self._on_error:
                self._on_error(op)
            raise CacheUnavailable(f"Redis {op} failed: {type(exc).__name__}") from exc
        if recovering:
            self._index = None  # a restarted Redis may have lost the index
        self.breaker.succeeded()
        return result

    # -- index ---------------------------------------------------------------------------------
    def _search_index(self, dim: int | None = None):
        """The search index; ``dim`` is needed only to create it (else read from the meta key)."""
        if self._index is not None:
            return self._index
        if dim is None:
            stored = self.client.hget(self.meta_key, "dim")
            if stored is None:
                return None  # nothing was ever stored
            dim = int(stored)
        from redisvl.index import SearchIndex
        from redisvl.schema import IndexSchema

        schema = IndexSchema.from_dict({
            "index": {"name": f"{self.cfg.namespace}-cache-v{SCHEMA_VERSION}-d{dim}", "prefix": self.prefix,
                      "storage_type": "hash"},
            "fields": [
                {"name": "tenant", "type": "tag", "attrs": {"case_sensitive": True}},
                {"name": "index_version", "type": "tag"},
                {"name": "fingerprint", "type": "tag"},
                {"name": "doc_tags", "type": "tag", "attrs": {"separator": ","}},
                {"name": "created_at", "type": "numeric"},
                {"name": "embedding", "type": "vector",
                 "attrs": {"dims": dim, "distance_metric": "cosine", "algorithm": "hnsw", "datatype": "float32"}},
            ],
        })
        index = SearchIndex(schema, redis_client=self.client)
        with self._lock:  # one creator per process; other processes (replicas) may race us
            if self._index is None and not index.exists():
                try:
                    index.create(overwrite=False)
                    log.info("created Redis search index %s", schema.index.name)
                except Exception as exc:  # noqa: BLE001 - a replica created it first: fine
                    if "already exists" not in str(exc).lower():
                        raise
                self.client.hset(self.meta_key, "dim", dim)
            self._index = index
        return index

    def _with_index(self, dim: int | None, fn: Callable[[Any], Any], default: Any = None) -> Any:
        index = self._search_index(dim)
        if index is None:
            return default
        try:
            return fn(index)
        except Exception as exc:  # redis ResponseError, or redisvl's RedisSearchError wrapping it
            if "no such index" not in str(exc).lower():
                raise
            self._index = None  # dropped or lost in a restart: create it again, once
            index = self._search_index(dim)
            return default if index is None else fn(index)

    @staticmethod
    def _partition_filter(part: Partition):
        from redisvl.query.filter import Tag

        return (Tag("tenant") == part.tenant) & (Tag("index_version") == part.index_version) & \
            (Tag("fingerprint") == part.fingerprint)

    def _key(self, part: Partition, qhash: str) -> str:
        return f"{self.prefix}{part.key}:{qhash[:32]}"

    # -- CacheBackend ------------------------------------------------------------------------------
    def get_exact(self, part: Partition, qhash: str) -> dict[str, Any] | None:
        key = self._key(part, qhash)

        def run():
            payload, tenant = self.client.hmget(key, ["answer_json", "tenant"])
            if payload is None or tenant.decode() != part.tenant:
                return None
            if self.cfg.sliding_ttl:
                self.client.expire(key, int(self.cfg.ttl_s))
            return json.loads(payload)

        return self._call("get_exact", run)

    def candidates(self, part: Partition, vector: np.ndarray, k: int, min_similarity: float) -> list[Candidate]:
        from redisvl.query import VectorQuery

        vec = np.asarray(vector, dtype=np.float32)
        query = VectorQuery(vector=vec.tobytes(), vector_field_name="embedding",
                            return_fields=["query", "answer_json", "tenant"],
                            filter_expression=self._partition_filter(part), num_results=k)

        def run():
            rows = self._with_index(len(vec), lambda index: index.query(query), [])
            rows = [r for r in rows if r.get("tenant") == part.tenant  # never another tenant's, whatever the index
                    and 1.0 - float(r["vector_distance"]) >= min_similarity]
            if not rows:
                return []
            # the candidates' embeddings (for the verifier), in one round trip
            pipe = self.client.pipeline(transaction=False)
            for row in rows:
                pipe.hmget(row["id"], ["embedding", "qhash", *ENTRY_STATS])
                if self.cfg.sliding_ttl:
                    pipe.expire(row["id"], int(self.cfg.ttl_s))
            replies = pipe.execute()[:: 2 if self.cfg.sliding_ttl else 1]
            out = []
            for row, (blob, qhash, verified, wrong, wrong_max) in zip(rows, replies, strict=True):
                stats = EntryStats(int(verified or 0), int(wrong or 0), float(wrong_max or -1.0))
                out.append(Candidate(row["query"], 1.0 - float(row["vector_distance"]), json.loads(row["answer_json"]),
                                     None if blob is None else np.frombuffer(blob, dtype=np.float32),
                                     (qhash or b"").decode(), stats))
            return out

        return self._call("lookup", run)

    def put(self, part: Partition, qhash: str, query: str, vector: np.ndarray, payload: dict[str, Any],
            doc_ids: Sequence[str], reach: float = NO_REACH) -> None:
        vec = np.asarray(vector, dtype=np.float32)
        key = self._key(part, qhash)
        now = time.time()
        mapping = {
            "tenant": part.tenant, "index_version": part.index_version, "fingerprint": part.fingerprint,
            "collection": part.collection, "reach": repr(float(reach)),
            "doc_tags": ",".join(sorted({doc_tag(d) for d in doc_ids})), "query": query, "qhash": qhash,
            "answer_json": json.dumps(payload), "created_at": now, "embedding": vec.tobytes(),
        }

        def run():
            self._search_index(len(vec))
            # One MULTI/EXEC: a reader sees the whole entry with its TTL, or nothing; concurrent
            # writers of the same question each write a complete entry and the last one wins.
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(key, *ENTRY_STATS)  # a new answer starts a new record
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, int(self.cfg.ttl_s))
            pipe.zadd(self.order_key, {key: now})
            if not self.cfg.sliding_ttl:
                pipe.zremrangebyscore(self.order_key, "-inf", now - self.cfg.ttl_s)  # expired already
            pipe.zcard(self.order_key)
            size = pipe.execute()[-1]
            if size > self.cfg.max_entries:
                evicted = [k for k, _ in self.client.zpopmin(self.order_key, size - self.cfg.max_entries)]
                if evicted:
                    self.client.delete(*evicted)

        self._call("store", run)

    def carry(self, change: VersionChange) -> Carried:
        from pipelines.query.cache.redis_carry import carry

        return self._call("carry", lambda: carry(self, change))

    def purge(self, *, tenant: str | None = None, doc_ids: Sequence[str] = ()) -> int:
        from redisvl.query import FilterQuery
        from redisvl.query.filter import Tag

        if tenant is None and not doc_ids:
            raise ValueError("purge needs a tenant or document ids")
        conditions = []
        if tenant is not None:
            conditions.append(Tag("tenant") == tenant)
        if doc_ids:
            conditions.append(Tag("doc_tags") == sorted({doc_tag(d) for d in doc_ids}))
        expr = conditions[0] if len(conditions) == 1 else conditions[0] & conditions[1]

        def run():
            deleted = 0
            while True:
                rows = self._with_index(None, lambda index: index.query(
                    FilterQuery(filter_expression=expr, return_fields=["tenant"], num_results=500)), [])
                keys = [row["id"] for row in rows if tenant is None or row.get("tenant") == tenant]
                if not keys:
                    return deleted
                deleted += self.client.delete(*keys)
                self.client.zrem(self.order_key, *keys)

        def run_and_forget() -> int:
            deleted = run()
            if tenant is not None and not doc_ids:  # the tenant is gone: so is what was learnt about it
                doomed = [k for k in self.client.scan_iter(match=f"{self.pool_prefix}{content_id(tenant)}:*", count=500)
                          if self.client.hget(k, "tenant") in (None, tenant.encode())]
                self.client.delete(*doomed, self._pools_key(tenant))
            return deleted

        return self._call("purge", run_and_forget)

    def forget(self, part: Partition, qhash: str) -> bool:
        key = self._key(part, qhash)

        def run() -> bool:
            if self.client.hget(key, "tenant") not in (part.tenant.encode(),):
                return False  # not this tenant's (or gone): never delete another's entry
            self.client.zrem(self.order_key, key)
            return bool(self.client.delete(key))

        return self._call("forget", run)

    # -- the error-bounded policy's statistics ------------------------------------------------------
    def _pool_key(self, part: Partition) -> str:
        return f"{self.pool_prefix}{content_id(part.tenant)}:{content_id(part.tenant, part.fingerprint)}"

    def _pools_key(self, tenant: str) -> str:
        """The set of a tenant's pool keys (one per generation settings)."""
        return f"{self.pool_prefix}index:{content_id(tenant)}"

    def pool(self, part: Partition) -> PoolStats:
        key = self._pool_key(part)
        return self._call("lookup", lambda: PoolStats.from_fields(
            {k.decode(): v for k, v in self.client.hgetall(key).items()}))

    def observe(self, part: Partition, qhash: str, band: int, score: float, wrong: bool, sample: bool,
                lookup: bool = True) -> None:
        keys = [self._key(part, qhash), self._pool_key(part), self._pools_key(part.tenant)]
        args = [band, repr(float(score)), int(wrong), int(sample), part.tenant, POOL_TTL_S, int(lookup)]
        self._call("observe", lambda: self._observe(keys=keys, args=args))

    def count(self, part: Partition, band: int | None) -> None:
        key = self._pool_key(part)

        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hincrby(key, "l_other" if band is None else f"l{band}", 1)
            pipe.hset(key, "tenant", part.tenant)
            pipe.expire(key, POOL_TTL_S)
            pipe.sadd(self._pools_key(part.tenant), key)
            pipe.expire(self._pools_key(part.tenant), POOL_TTL_S)
            pipe.execute()

        self._call("count", run)

    def pools(self, tenant: str | None = None) -> dict[str, PoolStats]:
        """One tenant's: its few pool keys from its set, in one round trip (this runs after a
        request's semantic decision). Every tenant's (the admin's cache_stats): a SCAN."""

        def run() -> dict[str, PoolStats]:
            if tenant is not None:
                keys = sorted(self.client.smembers(self._pools_key(tenant)))
            else:
                keys = [k for k in self.client.scan_iter(match=f"{self.pool_prefix}*", count=500)
                        if not k.decode().startswith(f"{self.pool_prefix}index:")]
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            out: dict[str, PoolStats] = {}
            for raw in pipe.execute() if keys else []:
                fields = {k.decode(): v for k, v in raw.items()}
                owner = fields.get("tenant", b"").decode()
                if owner and (tenant is None or owner == tenant):
                    out[owner] = out.get(owner, PoolStats()) + PoolStats.from_fields(fields)
            return out

        return self._call("stats", run)

    def stats(self) -> dict[str, Any]:
        return self._call("stats", lambda: {"backend": "redis", "entries": int(self.client.zcard(self.order_key)),
                                            "errors": self.errors, "down": self.breaker.down})
