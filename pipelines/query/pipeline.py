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
    cache fails       -> bypassed (reported; the answer itself is not degraded)

Only good answers are cached: never a degraded or empty one. Embedding or retrieval
failures fail the request (503).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import numpy as np

from pipelines.config import RagConfig
from pipelines.errors import StageError
from pipelines.query.cache import CacheHit, CacheUnavailable, Partition, SemanticCache
from pipelines.query.route import QueryFeatures
from pipelines.records import Generation, RouteDecision, ScoredChunk
from pipelines.schema import CacheInfo, RagRequest, RagResponse, RouteInfo, Source, Usage
from pipelines.text import content_id, query_hash

log = logging.getLogger(__name__)

SNIPPET_CHARS = 300
T = TypeVar("T")


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


class _Request:
    """Per-request state: timings, warnings, and whether the answer is degraded."""

    def __init__(self, req: RagRequest, request_id: str) -> None:
        self.req = req
        self.id = request_id
        self.timings = _Timings()
        self.warnings: list[str] = []
        self.degraded = False
        self.cache_status = "miss"

    def degrade(self, warning: str) -> None:
        self.degraded = True
        self.warnings.append(warning)


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
    def __init__(self, stages: Stages, cache: SemanticCache | None, cfg: RagConfig, fingerprint: str = "") -> None:
        """``fingerprint`` identifies the generation settings (tier models, prompt version,
        sampling): cached answers are only served to requests with the same one."""
        self.stages = stages
        self.cache = cache
        self.cfg = cfg
        self.fingerprint = fingerprint

    def _cache_call(self, r: _Request, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """A cache failure never fails the request: the cache is bypassed and that is reported."""
        try:
            return fn(*args)
        except CacheUnavailable as exc:  # the backend logs outages once
            log.debug("request %s: cache %s unavailable: %s", r.id, what, exc)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass"
            log.warning("request %s: cache %s failed, bypassing: %s", r.id, what, exc)
        r.cache_status = "unavailable"
        r.warnings.append(f"cache {what} failed; cache bypassed")
        return None

    def _from_cache(self, r: _Request, hit: CacheHit, verdicts: Sequence[str] = ()) -> RagResponse:
        return RagResponse(
            **hit.payload, request_id=r.id,
            cache=CacheInfo(hit=True, kind=hit.kind, similarity=round(hit.similarity, 6), status="hit",
                            verifier=list(verdicts)),
            timings_ms=r.timings.done(), warnings=r.warnings,
        )

    async def run(self, req: RagRequest, request_id: str = "-") -> RagResponse:
        r = _Request(req, request_id)
        cache = self.cache
        read = cache is not None and req.cache == "use"
        write = cache is not None and req.cache in ("use", "refresh")
        r.cache_status = "off" if cache is None else {"use": "miss", "bypass": "bypass", "refresh": "refresh"}[req.cache]
        verdicts: tuple[str, ...] = ()

        with r.timings.stage("cache"):
            index_version = await self.stages.index_version()
            # Same tenant, same index, same generation settings and request options -> same answer.
            part = Partition(req.tenant, index_version, content_id(self.fingerprint, req.tier, str(req.top_k)))
            qhash = query_hash(req.query)
            hit = self._cache_call(r, "lookup", cache.get_exact, part, qhash) if read else None
        if hit:
            log.info("request %s: exact cache hit (tenant %s)", request_id, req.tenant)
            return self._from_cache(r, hit)

        with r.timings.stage("embed"):
            vector = await self.stages.embed(req.query)
        if read and r.cache_status != "unavailable":
            with r.timings.stage("cache"):
                lookup = self._cache_call(r, "lookup", cache.get_semantic, part, req.query, vector)
            if lookup is not None:
                verdicts = lookup.verdicts
                if lookup.hit:
                    log.info("request %s: semantic cache hit (%.3f)", request_id, lookup.hit.similarity)
                    return self._from_cache(r, lookup.hit, verdicts)

        with r.timings.stage("retrieve"):
            candidates, retrieved_version = await self.stages.retrieve(vector, max(self.cfg.candidates, req.top_k))

        with r.timings.stage("rerank"):
            try:
                ranked = await self.stages.rerank(req.query, candidates, req.top_k)
            except StageError as exc:
                log.warning("request %s: %s; using retrieval order", request_id, exc)
                r.degrade(f"{exc}; sources are in retrieval order")
                ranked = candidates[: req.top_k]

        with r.timings.stage("route"):
            route = await self._route(r, vector, ranked)

        with r.timings.stage("generate"):
            generation = await self._generate(r, route.tier, ranked)

        answer = generation.text if generation else extractive_answer(ranked)
        if generation and not answer:
            r.degrade("the model returned an empty answer; answered from the best source")
            answer = extractive_answer(ranked)
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
            degraded=r.degraded,
        )
        if write and not r.degraded and retrieved_version == index_version and r.cache_status != "unavailable":
            with r.timings.stage("cache"):
                self._cache_call(r, "store", cache.put, part, qhash, req.query, vector, payload,
                                 [s.chunk.doc_id for s in ranked])
        response = RagResponse(**payload, request_id=request_id,
                               cache=CacheInfo(hit=False, status=r.cache_status, verifier=list(verdicts)),
                               timings_ms=r.timings.done(), warnings=r.warnings)
        log.info("request %s: answered by %s in %.0f ms%s", request_id, response.route.model,
                 response.timings_ms["total"], " (degraded)" if r.degraded else "")
        return response

    async def _route(self, r: _Request, vector: np.ndarray, ranked: list[ScoredChunk]) -> RouteDecision:
        if r.req.tier != "auto":
            return RouteDecision(tier=r.req.tier, score=0.0, threshold=0.0, router="request",
                                 reason=f"tier {r.req.tier!r} requested by the client")
        features = QueryFeatures(query_vector=vector.tolist(), retrieval_scores=[s.dense_score for s in ranked])
        try:
            return await self.stages.route(r.req.query, features)
        except StageError as exc:
            log.warning("request %s: %s; using default tier", r.id, exc)
            r.degrade(f"{exc}; used the default tier {self.cfg.default_tier!r}")
            return RouteDecision(tier=self.cfg.default_tier, score=0.0, threshold=0.0, router="fallback",  # type: ignore[arg-type]
                                 reason=f"router unavailable; default tier {self.cfg.default_tier!r}")

    async def _generate(self, r: _Request, tier: str, ranked: list[ScoredChunk]) -> Generation | None:
        tiers = [tier] + (["small"] if tier == "large" else [])
        for t in tiers:
            try:
                return await self.stages.generate(t, r.req.query, ranked)
            except StageError as exc:
                log.warning("request %s: %s", r.id, exc)
                r.degrade(f"{exc}" + ("; fell back to the small tier" if t == "large" else ""))
        r.degrade("no tier could generate; answered with an extract of the best source")
        return None
