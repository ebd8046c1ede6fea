"""Everything before generation, as an ordered list of steps over one :class:`Prepared` record.

    exact cache -> embed -> semantic cache -> start the route -> retrieve -> rerank -> route

Each step reads and fills the record; a cache step that finds the answer sets ``hit`` and the
remaining steps are skipped. The route (the mode's: pipelines/query/modes/) runs alongside
retrieval and reranking: it needs the query embedding, and a router that reads retrieval scores
also the best of them (it then starts after retrieval). A step that fails degrades what comes
after it and says so:

    cache slow/down     -> bypassed (reported; the answer itself is not degraded)
    embed slow/down     -> lexical (BM25) retrieval over the chunk store
    rerank slow/down    -> retrieval order
    route slow/down     -> the mode's fallback (auto: the default tier)

A retrieval failure fails the request (503): there is nothing to answer from.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from common.errors import StageError
from common.records import RouteDecision, ScoredChunk
from common.text import content_id, query_hash
from pipelines.config import RagConfig
from pipelines.query.cache import CacheHit, Observation, Partition, SemanticCache
from pipelines.query.route import QueryFeatures
from pipelines.query.state import RequestState, cache_call
from pipelines.query.tiers import TierRunner

if TYPE_CHECKING:  # the modes import the tier runner, as this module does; no cycle at run time
    from pipelines.query.modes.base import Mode

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1024)
def options_id(fingerprint: str, tier: str, top_k: int, collection: str) -> str:
    """The part of a cache partition's key that request options and generation settings make."""
    return content_id(fingerprint, tier, str(top_k), collection)


@dataclass
class Prepared:
    mode: Mode
    part: Partition
    qhash: str
    read: bool  # look the question up in the cache
    write: bool  # store a good answer
    index_version: str  # served when the request came in (the cache partition's)
    hit: CacheHit | None = None  # the cached answer, when a cache step found one
    vector: np.ndarray | None = None
    verdicts: tuple[str, ...] = ()  # the semantic cache's verifier on each candidate
    observe: Observation | None = None  # a cached answer to compare with the fresh one (error-bounded cache)
    candidates: list[ScoredChunk] = field(default_factory=list)
    retrieved_version: str = ""  # the index version the candidates came from
    ranked: list[ScoredChunk] = field(default_factory=list)
    route: RouteDecision | None = None
    routing: asyncio.Task[RouteDecision] | None = None  # the route, while it runs alongside


class Preparation:
    """The steps, in order (:data:`STEPS`); :meth:`run` runs them for one request."""

    STEPS = ("exact_cache", "embed", "semantic_cache", "start_route", "retrieve", "rerank", "route")

    def __init__(self, run: TierRunner, cache: SemanticCache | None, cfg: RagConfig, fingerprint: str,
                 route_uses_retrieval: bool) -> None:
        self.tiers = run
        self.stages = run.stages
        self.cache = cache
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.route_uses_retrieval = route_uses_retrieval

    async def run(self, r: RequestState, mode: Mode) -> Prepared:
        req, cache = r.req, self.cache
        r.cache_status = "off" if cache is None else {"use": "miss", "bypass": "bypass", "refresh": "refresh"}[req.cache]
        index_version = await self.stages.index_version(req.collection)
        # Same tenant, same index, same generation settings and request options -> same answer.
        prep = Prepared(mode=mode, index_version=index_version, qhash=query_hash(req.query),
                        part=Partition(req.tenant, index_version,
                                       options_id(self.fingerprint, req.tier, req.top_k, req.collection),
                                       req.collection),
                        read=cache is not None and req.cache == "use",
                        write=cache is not None and req.cache in ("use", "refresh"))
        try:
            for step in self.STEPS:
                await getattr(self, step)(r, prep)
                if prep.hit is not None:
                    break
        finally:
            if prep.routing is not None and not prep.routing.done():
                prep.routing.cancel()
        return prep

    async def _cache(self, r: RequestState, what: str, fn, *args, blocking: bool | None = None):
        assert self.cache is not None
        return await cache_call(r, self.cache.blocking if blocking is None else blocking, what, fn, *args)

    async def exact_cache(self, r: RequestState, prep: Prepared) -> None:
        if prep.read:
            prep.hit = await self._cache(r, "lookup", self.cache.get_exact, prep.part, prep.qhash)
            if prep.hit:  # hits: per-request logs cost more than the lookup at hundreds of hits/s; /metrics counts them
                log.debug("request %s: exact cache hit (tenant %s)", r.id, r.req.tenant)

    async def embed(self, r: RequestState, prep: Prepared) -> None:
        try:
            prep.vector = await r.run("embed", lambda: self.stages.embed(r.req.query))
        except StageError as exc:
            log.warning("request %s: %s; retrieving lexically", r.id, exc)
            r.degrade(f"{exc}; sources were found by keyword (BM25) search")

    async def semantic_cache(self, r: RequestState, prep: Prepared) -> None:
        cache, vector = self.cache, prep.vector
        if not prep.read or vector is None or r.cache_status == "unavailable":
            return
        found = await self._cache(r, "lookup", cache.find, prep.part, vector)
        cands = found.candidates if found is not None else []
        lookup = None if not cands else await self._cache(
            r, "lookup", cache.verify, r.req.query, vector, cands, found.pool,
            blocking=cache.verify_blocks(r.req.query, cands))
        if lookup is not None:
            prep.verdicts, prep.observe = lookup.verdicts, lookup.observe
        if cache.policy is not None and found is not None and prep.observe is None:
            # the policy's denominator: every semantic lookup (an observation counts itself)
            await self._cache(r, "lookup", cache.count, prep.part, lookup.band if lookup else None)
        if lookup is not None and lookup.hit:
            log.debug("request %s: semantic cache hit (%.3f)", r.id, lookup.hit.similarity)
            prep.hit = lookup.hit

    def _start_route(self, r: RequestState, prep: Prepared, best: list[ScoredChunk]) -> None:
        features = QueryFeatures(query_vector=None if prep.vector is None else prep.vector.tolist(),
                                 retrieval_scores=[s.dense_score for s in best])
        prep.routing = asyncio.create_task(prep.mode.route(self.tiers, r, features))

    async def start_route(self, r: RequestState, prep: Prepared) -> None:
        """A router that needs only the query embedding starts now, alongside retrieval."""
        if prep.mode.asks_router(self.tiers) and not self.route_uses_retrieval:
            self._start_route(r, prep, [])

    async def retrieve(self, r: RequestState, prep: Prepared) -> None:
        req, vector = r.req, prep.vector
        n = max(self.cfg.candidates, req.top_k)
        if vector is not None:
            prep.candidates, prep.retrieved_version = await r.run("retrieve", lambda: self.stages.retrieve(
                vector, n, query=req.query, collection=req.collection), essential=True)
        else:
            prep.candidates, prep.retrieved_version = await r.run(
                "retrieve", lambda: self.stages.retrieve_text(req.query, n, collection=req.collection), essential=True)
        if prep.mode.asks_router(self.tiers) and prep.routing is None:  # reads the best retrieval scores
            self._start_route(r, prep, sorted(prep.candidates, key=lambda c: -c.dense_score)[: req.top_k])

    async def rerank(self, r: RequestState, prep: Prepared) -> None:
        try:
            prep.ranked = await r.run("rerank", lambda: self.stages.rerank(r.req.query, prep.candidates, r.req.top_k))
        except StageError as exc:
            log.warning("request %s: %s; using retrieval order", r.id, exc)
            r.degrade(f"{exc}; sources are in retrieval order")
            prep.ranked = prep.candidates[: r.req.top_k]

    async def route(self, r: RequestState, prep: Prepared) -> None:
        prep.route = await prep.routing if prep.routing is not None else prep.mode.requested(self.tiers, r)
