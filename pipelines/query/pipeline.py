"""The query pipeline: validate -> exact cache -> embed -> semantic cache -> retrieve ->
rerank -> route -> generate -> respond.

Stages are reached through the :class:`Stages` protocol (the RAG service implements it with
calls to the other BentoML services; unit tests with plain fakes). The query embedding is
computed once and reused by the semantic cache and the router. Every stage's wall time is
returned. A failing optional stage degrades the answer (and says so) instead of failing it:

    rerank fails      -> retrieval order
    route fails       -> the configured default tier
    large tier fails  -> small tier
    generation fails  -> an extractive answer from the best source
    cache fails       -> bypassed

Degraded answers are never cached. Embedding or retrieval failures fail the request (503).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import numpy as np

from pipelines.config import RagConfig
from pipelines.errors import StageError
from pipelines.query.cache import CacheBackend, CacheHit, partition_key
from pipelines.query.prompt import PROMPT_VERSION
from pipelines.query.route import QueryFeatures
from pipelines.records import Generation, RouteDecision, ScoredChunk
from pipelines.schema import CacheInfo, RagRequest, RagResponse, RouteInfo, Source, Usage
from pipelines.text import query_hash

log = logging.getLogger(__name__)

SNIPPET_CHARS = 300


class Stages(Protocol):
    async def index_version(self) -> str: ...

    async def embed(self, text: str) -> np.ndarray: ...

    async def retrieve(self, vector: np.ndarray, n: int) -> tuple[list[ScoredChunk], str]:
        """Candidates and the version of the index they came from."""
        ...

    async def rerank(self, query: str, candidates: list[ScoredChunk], top_k: int) -> list[ScoredChunk]: ...

    async def route(self, query: str, features: QueryFeatures) -> RouteDecision: ...

    async def generate(self, tier: str, query: str, sources: list[ScoredChunk]) -> Generation: ...


class _Timings:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round(self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1000, 3)

    def done(self) -> dict[str, float]:
        return {**self.ms, "total": round((time.perf_counter() - self.start) * 1000, 3)}


def extractive_answer(sources: Sequence[ScoredChunk], max_chars: int = 400) -> str:
    """The first sentences of the best source: the answer of last resort."""
    if not sources:
        return "No answer could be generated and no relevant source was found."
    best = sources[0].chunk
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(best.text.split()))
    text = ""
    for s in sentences:
        if len(text) + len(s) > max_chars and text:
            break
        text = f"{text} {s}".strip()
    return f"{text[:max_chars]} [1]"


def _sources(ranked: Sequence[ScoredChunk]) -> list[Source]:
    return [
        Source(id=s.chunk.id, doc_id=s.chunk.doc_id, title=s.chunk.title,
               snippet=s.chunk.text[:SNIPPET_CHARS], score=round(s.score, 6))
        for s in ranked
    ]


class QueryPipeline:
    def __init__(self, stages: Stages, cache: CacheBackend | None, cfg: RagConfig) -> None:
        self.stages = stages
        self.cache = cache
        self.cfg = cfg

    # -- cache helpers: a cache failure never fails the request ------------------------------
    def _cache_call(self, warnings: list[str], what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass"
            log.warning("cache %s failed, bypassing: %s", what, exc)
            warnings.append(f"cache {what} failed ({type(exc).__name__}); cache bypassed")
            return None

    def _from_cache(self, hit: CacheHit, req_id: str, timings: _Timings, warnings: list[str]) -> RagResponse:
        return RagResponse(
            **hit.payload, request_id=req_id,
            cache=CacheInfo(hit=True, kind=hit.kind, similarity=round(hit.similarity, 6)),
            timings_ms=timings.done(), warnings=warnings,
        )

    async def run(self, req: RagRequest, request_id: str = "-") -> RagResponse:
        timings, warnings = _Timings(), []
        use_cache = self.cache is not None and req.cache == "use"
        with timings.stage("cache"):
            index_version = await self.stages.index_version()
            # Same index, same sources requested, same generation settings -> same answer.
            partition = partition_key(index_version, req.tier, req.top_k, PROMPT_VERSION)
            key = query_hash(req.query)
            hit = use_cache and self._cache_call(warnings, "lookup", self.cache.get_exact, partition, key)
        if hit:
            log.info("request %s: exact cache hit", request_id)
            return self._from_cache(hit, request_id, timings, warnings)

        with timings.stage("embed"):
            vector = await self.stages.embed(req.query)
        if use_cache:
            with timings.stage("cache"):
                hit = self._cache_call(warnings, "lookup", self.cache.get_semantic, partition, vector)
            if hit:
                log.info("request %s: semantic cache hit (%.3f)", request_id, hit.similarity)
                return self._from_cache(hit, request_id, timings, warnings)

        with timings.stage("retrieve"):
            candidates, retrieved_version = await self.stages.retrieve(vector, max(self.cfg.candidates, req.top_k))

        with timings.stage("rerank"):
            try:
                ranked = await self.stages.rerank(req.query, candidates, req.top_k)
            except StageError as exc:
                log.warning("request %s: %s; using retrieval order", request_id, exc)
                warnings.append(f"{exc}; sources are in retrieval order")
                ranked = candidates[: req.top_k]

        with timings.stage("route"):
            route = await self._route(req, vector, ranked, warnings, request_id)

        with timings.stage("generate"):
            generation = await self._generate(route.tier, req.query, ranked, warnings, request_id)

        answer = generation.text if generation else extractive_answer(ranked)
        if generation and not answer:
            warnings.append("the model returned an empty answer; answered from the best source")
            answer = extractive_answer(ranked)
        degraded = bool(warnings)
        payload = dict(
            answer=answer,
            sources=[s.model_dump() for s in _sources(ranked)],
            route=RouteInfo(
                tier=generation.tier if generation else route.tier,
                model=generation.model if generation else "extractive",
                score=None if route.router == "request" else round(route.score, 6),
                reason=route.reason,
            ).model_dump(),
            usage=Usage(tokens_in=generation.tokens_in if generation else 0,
                        tokens_out=generation.tokens_out if generation else 0).model_dump(),
            index_version=retrieved_version,
            degraded=degraded,
        )
        if use_cache and not degraded and retrieved_version == index_version:
            with timings.stage("cache"):
                self._cache_call(warnings, "store", self.cache.put, partition, key, vector, payload)
        response = RagResponse(**{**payload, "degraded": bool(warnings)}, request_id=request_id,
                               cache=CacheInfo(hit=False), timings_ms=timings.done(), warnings=warnings)
        log.info("request %s: answered by %s in %.0f ms%s", request_id, response.route.model,
                 response.timings_ms["total"], " (degraded)" if degraded else "")
        return response

    async def _route(self, req: RagRequest, vector: np.ndarray, ranked: list[ScoredChunk],
                     warnings: list[str], request_id: str) -> RouteDecision:
        if req.tier != "auto":
            return RouteDecision(tier=req.tier, score=0.0, threshold=0.0, router="request",
                                 reason=f"tier {req.tier!r} requested by the client")
        features = QueryFeatures(query_vector=vector.tolist(), retrieval_scores=[s.dense_score for s in ranked])
        try:
            return await self.stages.route(req.query, features)
        except StageError as exc:
            log.warning("request %s: %s; using default tier", request_id, exc)
            warnings.append(f"{exc}; used the default tier {self.cfg.default_tier!r}")
            return RouteDecision(tier=self.cfg.default_tier, score=0.0, threshold=0.0, router="fallback",  # type: ignore[arg-type]
                                 reason=f"router unavailable; default tier {self.cfg.default_tier!r}")

    async def _generate(self, tier: str, query: str, ranked: list[ScoredChunk],
                        warnings: list[str], request_id: str) -> Generation | None:
        tiers = [tier] + (["small"] if tier == "large" else [])
        for t in tiers:
            try:
                return await self.stages.generate(t, query, ranked)
            except StageError as exc:
                log.warning("request %s: %s", request_id, exc)
                warnings.append(f"{exc}" + ("; fell back to the small tier" if t == "large" else ""))
        warnings.append("no tier could generate; answered with an extract of the best source")
        return None
