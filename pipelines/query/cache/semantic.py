"""The cache as the pipeline sees it: exact-match lookup (before any embedding) and semantic
lookup (cosine + hit verifier + the error-bounded policy), over a backend.

Backends (memory.py in-process, redis_backend.py over Redis) store and return candidates, and
keep the error-bounded policy's statistics (per entry, and per tenant and score band:
policy.py); :class:`SemanticCache` applies the threshold, the verifier (verify.py, with its
pair model: pairmodel.py) and the policy, the same for all. :func:`make_cache` builds the
configured one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from pipelines.config import CacheConfig
from pipelines.query.cache.carry import Carried, VersionChange
from pipelines.query.cache.memory import InMemoryCache
from pipelines.query.cache.policy import ErrorBoundPolicy, PoolStats, band
from pipelines.query.cache.records import (NO_REACH, CacheBackend, CacheHit, Candidate, Found, Observation, Partition,
                                           SemanticLookup)
from pipelines.query.cache.verify import HitVerifier


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
        return CacheHit(payload, "exact", 1.0, qhash=qhash) if payload is not None else None

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

    def label(self, part: Partition, qhash: str, score: float, wrong: bool) -> None:
        """A user's verdict on a semantic hit from entry ``qhash``, scored ``score``: one more
        comparison in its band (its lookup was counted when it was served); a wrong one sets the
        entry's boundary (policy.py, step 3)."""
        self.backend.observe(part, qhash, band(score), score, wrong, False, lookup=False)

    def forget(self, part: Partition, qhash: str) -> bool:
        return self.backend.forget(part, qhash)

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
            best = cands[0] if cands else None
            return SemanticLookup(None if best is None else
                                  CacheHit(best.payload, "semantic", best.similarity, qhash=best.qhash), ())
        if self.policy is not None:
            return self._decide(query, vector, cands, pool or PoolStats())
        checked = self.verifier.check_many([(c.query, query, c.similarity, c.vector, vector) for c in cands])
        for cand, verdict in zip(cands, checked, strict=True):
            line = f"{cand.query!r} (cosine {cand.similarity:.3f}) {verdict.reason}"
            verdicts.append(line)
            if verdict.accept:
                return SemanticLookup(CacheHit(cand.payload, "semantic", cand.similarity, line, cand.qhash),
                                      tuple(verdicts))
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
            return SemanticLookup(CacheHit(cand.payload, "semantic", cand.similarity, line, cand.qhash, score),
                                  tuple(verdicts), band=decision.band)
        return SemanticLookup(None, tuple(verdicts), Observation(cand, decision), decision.band)

    def put(self, part: Partition, qhash: str, query: str, vector: np.ndarray, payload: dict[str, Any],
            doc_ids: Iterable[str], reach: float = NO_REACH) -> None:
        self.backend.put(part, qhash, query, vector, payload, sorted(set(doc_ids)), reach)

    def carry(self, change: VersionChange) -> Carried:
        """After ``change.collection`` moved to a new version: keep the answers it cannot have
        changed (carry.py), drop the rest."""
        return self.backend.carry(change)

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


def make_cache(cfg: CacheConfig, dim: int | None = None, on_error: Callable[[str], None] | None = None,
               embedding_model: str | None = None, breaker=None) -> SemanticCache | None:
    """The configured cache: Redis when ``REDIS_URL`` is set, else in-process; None if off."""
    if cfg.backend == "off":
        return None
    verifier = HitVerifier.load(embedding_model=embedding_model, pair_model=cfg.pair_model,
                                accept_probability=cfg.accept_probability) if cfg.verifier else None
    if cfg.redis_url:
        from pipelines.query.cache.redis_backend import RedisCache

        backend: CacheBackend = RedisCache(cfg, on_error=on_error, breaker=breaker)
    else:
        backend = InMemoryCache(cfg)
    policy = ErrorBoundPolicy(cfg.max_error) if cfg.policy == "error-bound" else None
    return SemanticCache(backend, cfg.threshold, verifier, policy)
