"""Cache stage: exact-match lookup (before any embedding) and semantic lookup (cosine +
hit verifier).

Every entry lives in a :class:`Partition` (tenant, index version, generation fingerprint):
lookups only ever see entries of the same partition, so tenants never share answers, a
rebuilt index never serves answers built from the old one, and a change of model, prompt
or sampling settings starts afresh. Entries record the (hashed) ids of the documents their
answer cites, so they can be purged when those documents change.

Backends (``InMemoryCache`` here, ``RedisCache`` in cache_redis.py) store and return
candidates, and keep the error-bounded policy's statistics (per entry, and per tenant and
score band: pipelines/query/cache_policy.py); :class:`SemanticCache` applies the threshold,
the verifier and the policy, the same for all.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from pipelines.config import CacheConfig
from pipelines.query.cache_policy import BANDS, Decision, EntryStats, ErrorBoundPolicy, PoolStats
from pipelines.query.verify import HitVerifier
from pipelines.text import content_id


class CacheUnavailable(Exception):
    """The cache backend could not be reached in time; callers bypass the cache."""


@dataclass(frozen=True)
class Partition:
    tenant: str
    index_version: str
    fingerprint: str  # generation settings: tier models, prompt version, sampling, top_k

    @property
    def key(self) -> str:
        return content_id(self.tenant, self.index_version, self.fingerprint)


@dataclass(frozen=True)
class Candidate:
    query: str
    similarity: float
    payload: dict[str, Any]
    vector: np.ndarray | None = None  # the cached question's embedding (the verifier's learned check reads it)
    qhash: str = ""  # the entry's key within its partition (observations update it)
    stats: EntryStats = EntryStats()


@dataclass(frozen=True)
class CacheHit:
    payload: dict[str, Any]
    kind: Literal["exact", "semantic"]
    similarity: float
    verdict: str | None = None


def doc_tag(doc_id: str) -> str:
    """Document ids are stored hashed: safe in any tag syntax, whatever the id contains."""
    return hashlib.sha256(doc_id.encode()).hexdigest()[:16]


class CacheBackend(Protocol):
    blocking: bool  # True when calls do network I/O (run them off the event loop)

    def get_exact(self, part: Partition, qhash: str) -> dict[str, Any] | None: ...

    def candidates(self, part: Partition, vector: np.ndarray, k: int, min_similarity: float) -> list[Candidate]:
        """Up to k entries of ``part`` with cosine >= min_similarity, most similar first."""
        ...

    def put(self, part: Partition, qhash: str, query: str, vector: np.ndarray, payload: dict[str, Any],
            doc_ids: Sequence[str]) -> None: ...

    def purge(self, *, tenant: str | None = None, doc_ids: Sequence[str] = ()) -> int:
        """Delete the entries of a tenant and/or those citing any of ``doc_ids``; returns how many.
        Purging a tenant also deletes its policy statistics."""
        ...

    def pool(self, part: Partition) -> PoolStats:
        """The policy's observations for ``part``'s tenant and generation settings (all index versions)."""
        ...

    def observe(self, part: Partition, qhash: str, band: int, score: float, wrong: bool, sample: bool) -> None:
        """Record one comparison of entry ``qhash``'s answer with a fresh one, atomically (the
        entry's record, if it still exists, and its pool's)."""
        ...

    def count(self, part: Partition, band: int | None) -> None:
        """One more semantic lookup: decided in ``band`` (a hit; observations count their own), or
        with no candidate to decide on (None)."""
        ...

    def pools(self, tenant: str | None = None) -> dict[str, PoolStats]:
        """Each tenant's observations (or only ``tenant``'s), summed over generation settings."""
        ...

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Observation:
    """A candidate not served (or served only after a check): its cached answer is compared
    with the fresh one once that is generated, and the outcome recorded."""

    entry: Candidate
    decision: Decision


@dataclass(frozen=True)
class SemanticLookup:
    hit: CacheHit | None
    verdicts: tuple[str, ...]  # one line per candidate the verifier looked at
    observe: Observation | None = None  # with the error-bounded policy: compare the fresh answer with this entry's
    band: int | None = None  # with the error-bounded policy: the decided candidate's score band


@dataclass(frozen=True)
class Found:
    candidates: list[Candidate]
    pool: PoolStats | None = None  # read with the candidates when the policy decides


class SemanticCache:
    """The cache as the pipeline sees it: a backend plus the threshold, the verifier and (when
    an error bound is set) the error-bounded policy."""

    CANDIDATES = 3
    PLAIN_THRESHOLD = 0.95  # the cosine threshold without a verifier (unless configured)

    def __init__(self, backend: CacheBackend, threshold: float | None, verifier: HitVerifier | None,
                 policy: ErrorBoundPolicy | None = None) -> None:
        self.backend = backend
        self.blocking = backend.blocking  # backend calls do network I/O: run them off the event loop
        # unset: the cosine floor the verifier was tuned with, or a strict plain threshold without it
        self.threshold = threshold if threshold is not None else \
            verifier.vector_threshold if verifier is not None else self.PLAIN_THRESHOLD
        self.verifier = verifier
        self.policy = policy

    def get_exact(self, part: Partition, qhash: str) -> CacheHit | None:
        payload = self.backend.get_exact(part, qhash)
        return CacheHit(payload, "exact", 1.0) if payload is not None else None

    def get_semantic(self, part: Partition, query: str, vector: np.ndarray) -> SemanticLookup:
        found = self.find(part, vector)
        return self.verify(query, vector, found.candidates, found.pool)

    def candidates(self, part: Partition, vector: np.ndarray) -> list[Candidate]:
        """The entries of ``part`` close enough to ``vector`` to be checked, most similar first."""
        return list(self.backend.candidates(part, vector, self.CANDIDATES, self.threshold))

    def find(self, part: Partition, vector: np.ndarray) -> Found:
        """The candidates, and the policy's statistics when there are some to decide on."""
        cands = self.candidates(part, vector)
        return Found(cands, self.backend.pool(part) if cands and self.policy is not None else None)

    def count(self, part: Partition, band: int | None) -> None:
        """A semantic lookup the policy's denominator counts: a hit in its band, or one with no
        candidate to decide on (None); observations count their own."""
        self.backend.count(part, band)

    def observe(self, part: Partition, obs: Observation, wrong: bool) -> None:
        self.backend.observe(part, obs.entry.qhash, obs.decision.band, obs.decision.score, wrong,
                             obs.decision.sample)

    def verify_blocks(self, query: str, cands: Sequence[Candidate]) -> bool:
        """True when checking these candidates runs the verifier's pair model (a forward pass
        through MiniLM: off the event loop); the other checks take microseconds."""
        v = self.verifier
        return v is not None and v.pair is not None and any(v.needs_pair(c.query, query, c.similarity) for c in cands)

    def verify(self, query: str, vector: np.ndarray, cands: Sequence[Candidate],
               pool: PoolStats | None = None) -> SemanticLookup:
        """The first candidate the verifier accepts (each one's verdict in ``verdicts``); with the
        error-bounded policy, the policy's decision on the best-scored candidate no rule vetoed."""
        verdicts = []
        if self.verifier is None and self.policy is None:
            return SemanticLookup(CacheHit(cands[0].payload, "semantic", cands[0].similarity) if cands else None, ())
        if self.policy is not None:
            return self._decide(query, vector, cands, pool or PoolStats())
        checked = self.verifier.check_many([(c.query, query, c.similarity, c.vector, vector) for c in cands])
        for cand, verdict in zip(cands, checked, strict=True):
            line = f"{cand.query!r} (cosine {cand.similarity:.3f}) {verdict.reason}"
            verdicts.append(line)
            if verdict.accept:
                return SemanticLookup(CacheHit(cand.payload, "semantic", cand.similarity, line), tuple(verdicts))
        return SemanticLookup(None, tuple(verdicts))

    def _decide(self, query: str, vector: np.ndarray, cands: Sequence[Candidate], pool: PoolStats) -> SemanticLookup:
        """Score each candidate (the verifier's P(same question), or the cosine without a learned
        check; a near-miss rule vetoes), and let the policy decide on the best one."""
        assert self.policy is not None
        checked = self.verifier.check_many([(c.query, query, c.similarity, c.vector, vector) for c in cands]) \
            if self.verifier is not None else [None] * len(cands)
        verdicts, scored = [], []
        for cand, verdict in zip(cands, checked, strict=True):
            head = f"{cand.query!r} (cosine {cand.similarity:.3f})"
            if verdict is not None and verdict.probability is None and not verdict.accept:
                verdicts.append(f"{head} {verdict.reason}")  # a near-miss rule (or no usable embedding)
                continue
            if verdict is not None and verdict.probability is not None:
                score = verdict.probability
            else:  # no learned check, or near-identical wording it did not need to score
                score = cand.similarity
            scored.append((score, cand, head))
        if not scored:
            return SemanticLookup(None, tuple(verdicts))
        scored.sort(key=lambda t: -t[0])
        score, cand, head = scored[0]
        decision = self.policy.decide(score, cand.stats, pool)
        line = f"{head} P(same question) {score:.2f}; {decision.reason}"
        verdicts.insert(0, line)
        verdicts.extend(f"{h} P(same question) {s:.2f}: not the best-scored candidate" for s, _, h in scored[1:])
        if decision.action == "hit":
            return SemanticLookup(CacheHit(cand.payload, "semantic", cand.similarity, line), tuple(verdicts),
                                  band=decision.band)
        return SemanticLookup(None, tuple(verdicts), Observation(cand, decision), decision.band)

    def put(self, part: Partition, qhash: str, query: str, vector: np.ndarray, payload: dict[str, Any],
            doc_ids: Iterable[str]) -> None:
        self.backend.put(part, qhash, query, vector, payload, sorted(set(doc_ids)))

    def purge(self, *, tenant: str | None = None, doc_ids: Sequence[str] = ()) -> int:
        return self.backend.purge(tenant=tenant, doc_ids=doc_ids)

    def stats(self) -> dict[str, Any]:
        v, p = self.verifier, self.policy
        out = {**self.backend.stats(), "threshold": self.threshold,
               "verifier_rules": sorted(v.rules) if v else [],
               "verifier_pair_model": bool(v and v.pair),
               "verifier_accept_probability": None if p else v.accept_probability if v else None,
               "policy": "error-bound" if p else "verifier" if v else "threshold",
               "max_error": p.max_error if p else None}
        if p is not None:
            out["tenants"] = self.tenant_stats()
        return out

    def tenant_stats(self) -> dict[str, dict[str, Any]]:
        """Per tenant: the error-bounded policy's observations, verification samples, the
        observed wrong-hit rate with its 95% interval, and the score it currently serves from."""
        if self.policy is None:
            return {}
        return {t: pool.summary(self.policy.max_error) for t, pool in sorted(self.backend.pools().items())}

    def tenant_summary(self, tenant: str) -> dict[str, Any] | None:
        """One tenant's ``tenant_stats`` (None before its first observation)."""
        if self.policy is None:
            return None
        pool = self.backend.pools(tenant).get(tenant)
        return None if pool is None else pool.summary(self.policy.max_error)


@dataclass
class _Entry:
    part: Partition
    qhash: str
    query: str
    vector: np.ndarray
    payload: dict[str, Any]
    doc_tags: frozenset[str]
    expires_at: float
    stats: EntryStats = EntryStats()


class _Pool:
    def __init__(self) -> None:
        self.verified = [0] * BANDS
        self.wrong = [0] * BANDS
        self.samples = 0
        self.samples_wrong = 0
        self.lookups = [0] * BANDS
        self.other_lookups = 0

    def frozen(self) -> PoolStats:
        return PoolStats(tuple(self.verified), tuple(self.wrong), self.samples, self.samples_wrong, tuple(self.lookups),
                         self.other_lookups)


class InMemoryCache:
    """Process-local backend: fixed TTL (sliding if configured), FIFO eviction beyond
    ``max_entries``. Semantic lookup is a dot product over the partition's live entries.
    The policy's statistics live as long as the process."""

    blocking = False  # microseconds per call: run inline

    def __init__(self, cfg: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = cfg.ttl_s
        self.sliding = cfg.sliding_ttl
        self.max_entries = cfg.max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._matrices: dict[str, tuple[np.ndarray, list[_Entry]]] = {}
        self._pools: dict[tuple[str, str], _Pool] = {}  # (tenant, generation settings) -> observations
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, entry: _Entry | None) -> bool:
        return entry is not None and entry.expires_at > self._clock()

    def _touch(self, entry: _Entry) -> None:
        if self.sliding:
            entry.expires_at = self._clock() + self.ttl_s

    def get_exact(self, part: Partition, qhash: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get((part.key, qhash))
            if not self._live(entry):
                return None
            self._touch(entry)  # type: ignore[arg-type]
            return entry.payload  # type: ignore[union-attr]

    def candidates(self, part: Partition, vector: np.ndarray, k: int, min_similarity: float) -> list[Candidate]:
        with self._lock:
            if part.key not in self._matrices:
                live = [e for e in self._entries.values() if e.part == part and self._live(e)]
                if not live:
                    return []
                self._matrices[part.key] = (np.stack([e.vector for e in live]), live)
            matrix, entries = self._matrices[part.key]
            sims = matrix @ np.asarray(vector, dtype=np.float32)
            out = []
            for i in np.argsort(-sims):
                if sims[i] < min_similarity or len(out) == k:
                    break
                if self._live(entries[i]):
                    self._touch(entries[i])
                    e = entries[i]
                    out.append(Candidate(e.query, float(sims[i]), e.payload, e.vector, e.qhash, e.stats))
            return out

    def put(self, part: Partition, qhash: str, query: str, vector: np.ndarray, payload: dict[str, Any],
            doc_ids: Sequence[str]) -> None:
        with self._lock:
            self._entries.pop((part.key, qhash), None)
            self._entries[(part.key, qhash)] = _Entry(part, qhash, query, np.asarray(vector, dtype=np.float32),
                                                      payload, frozenset(map(doc_tag, doc_ids)),
                                                      self._clock() + self.ttl_s)
            self._matrices.pop(part.key, None)
            now = self._clock()
            while len(self._entries) > self.max_entries or (
                not self.sliding and self._entries and next(iter(self._entries.values())).expires_at <= now
            ):
                _, old = self._entries.popitem(last=False)
                self._matrices.pop(old.part.key, None)

    def purge(self, *, tenant: str | None = None, doc_ids: Sequence[str] = ()) -> int:
        tags = {doc_tag(d) for d in doc_ids}
        with self._lock:
            doomed = [k for k, e in self._entries.items()
                      if (tenant is None or e.part.tenant == tenant) and (not tags or e.doc_tags & tags)]
            for k in doomed:
                self._matrices.pop(self._entries.pop(k).part.key, None)
            if tenant is not None and not tags:
                for key in [k for k in self._pools if k[0] == tenant]:
                    del self._pools[key]
            return len(doomed)

    def pool(self, part: Partition) -> PoolStats:
        with self._lock:
            pool = self._pools.get((part.tenant, part.fingerprint))
            return pool.frozen() if pool else PoolStats()

    def observe(self, part: Partition, qhash: str, band: int, score: float, wrong: bool, sample: bool) -> None:
        with self._lock:
            entry = self._entries.get((part.key, qhash))
            if entry is not None:
                entry.stats = entry.stats.after(score, wrong)
            pool = self._pools.setdefault((part.tenant, part.fingerprint), _Pool())
            pool.lookups[band] += 1
            pool.verified[band] += 1
            pool.wrong[band] += wrong
            pool.samples += sample
            pool.samples_wrong += sample and wrong

    def count(self, part: Partition, band: int | None) -> None:
        with self._lock:
            pool = self._pools.setdefault((part.tenant, part.fingerprint), _Pool())
            if band is None:
                pool.other_lookups += 1
            else:
                pool.lookups[band] += 1

    def pools(self, tenant: str | None = None) -> dict[str, PoolStats]:
        with self._lock:
            out: dict[str, PoolStats] = {}
            for (t, _), pool in self._pools.items():
                if tenant is not None and t != tenant:
                    continue
                out[t] = out.get(t, PoolStats()) + pool.frozen()
            return out

    def stats(self) -> dict[str, Any]:
        return {"backend": "memory", "entries": len(self._entries)}


def make_cache(cfg: CacheConfig, dim: int | None = None, on_error: Callable[[str], None] | None = None,
               embedding_model: str | None = None) -> SemanticCache | None:
    """The configured cache: Redis when ``REDIS_URL`` is set, else in-process; None if off."""
    if cfg.backend == "off":
        return None
    verifier = HitVerifier.load(embedding_model=embedding_model, pair_model=cfg.pair_model,
                                accept_probability=cfg.accept_probability) if cfg.verifier else None
    if cfg.redis_url:
        from pipelines.query.cache_redis import RedisCache

        backend: CacheBackend = RedisCache(cfg, on_error=on_error)
    else:
        backend = InMemoryCache(cfg)
    policy = ErrorBoundPolicy(cfg.max_error) if cfg.policy == "error-bound" else None
    return SemanticCache(backend, cfg.threshold, verifier, policy)
