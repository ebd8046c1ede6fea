"""The query pipeline: validate -> exact cache -> embed -> semantic cache -> retrieve ->
rerank -> route -> generate -> respond.

Stages are reached through the :class:`Stages` protocol (the RAG service implements it with
calls to the other BentoML services; unit tests with plain fakes). The query embedding is
computed once and reused by the semantic cache and the router. Routing runs concurrently with
retrieval and reranking (a router that reads retrieval scores: with reranking).

Modes (``tier`` of the request): ``auto`` (the router picks the tier), ``cascade`` (the
cheapest tier answers; while its confidence is below the calibrated threshold and the time
left fits the next tier, the next tier answers instead: pipelines/query/cascade.py; with a
routed start the router is asked too, and a question it scores hard starts at the large tier),
or a configured tier. The response's ``route.path`` lists every tier asked and what came of it.

Every stage runs within its latency budget (pipelines/budget.py): a :class:`Deadline` travels
with the request, each stage gets min(its budget, what is left), and the response reports
per stage the budget, the time used and the outcome (ok | timeout | error | skipped). A stage
that fails or runs out of time degrades the answer (and says so) instead of failing it:

    cache slow/down     -> bypassed (reported; the answer itself is not degraded)
    embed slow/down     -> lexical (BM25) retrieval over the chunk store
    rerank slow/down    -> retrieval order
    route slow/down     -> the configured default tier
    large tier fails    -> small tier, with the time that is left
    generation fails    -> an extractive answer from the best source

Only good answers are cached: never a degraded or empty one. A retrieval failure fails the
request (503): there is nothing to answer from.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from pipelines.budget import BudgetProfile, Deadline, StageReport
from pipelines.config import RagConfig, TierConfig
from pipelines.errors import BadRequest, StageError
from pipelines.query import cascade as cascading
from pipelines.query import cite, evidence
from pipelines.query.generate import Delta
from pipelines.query.cache import CacheHit, CacheUnavailable, Observation, Partition, SemanticCache
from pipelines.query.cache_policy import answers_agree, comparable
from pipelines.query.route import QueryFeatures
from pipelines.records import Generation, RouteDecision, ScoredChunk
from pipelines.query.safety import SafetyConfig
from pipelines.query.safety import check as safety_check
from pipelines.schema import (CacheInfo, RagRequest, RagResponse, RouteInfo, RouteStep, SafetyInfo, Source,
                              StageBudget, Usage)
from pipelines.text import content_id, query_hash

log = logging.getLogger(__name__)

SNIPPET_CHARS = 300
EXTRACT_SOURCES = 3  # an extractive answer is taken from the best three sources
EXTRACT_EMBED_MS = 500.0  # at most this long to embed their sentences (else lexical scores only)
COMPARE_EMBED_MS = 2000.0  # the cache's answer comparison: at most this long (and the time left) to embed the answers
CUT = ("deadline", "cancelled")  # finish reasons of an answer that did not complete
T = TypeVar("T")


class Stages(Protocol):
    async def index_version(self, collection: str = "default") -> str:
        """The collection's served index version; NotFound (404) when there is no such collection."""
        ...

    async def embed(self, text: str) -> np.ndarray: ...

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text (the extractive fallback scores sentences with them)."""
        ...

    async def retrieve(self, vector: np.ndarray, n: int, query: str = "",
                       collection: str = "default") -> tuple[list[ScoredChunk], str]:
        """Candidates and the version of the index they came from; with ``query``, hybrid search."""
        ...

    async def retrieve_text(self, query: str, n: int, collection: str = "default") -> tuple[list[ScoredChunk], str]:
        """Lexical (BM25) candidates: the fallback when no query embedding is available."""
        ...

    async def rerank(self, query: str, candidates: list[ScoredChunk], top_k: int) -> list[ScoredChunk]: ...

    async def route(self, query: str, features: QueryFeatures, threshold: float | None = None) -> RouteDecision:
        """``threshold``: decide at this score instead of the router's own threshold."""
        ...

    async def generate(self, tier: str, query: str, sources: list[ScoredChunk], budget_ms: float) -> Generation:
        """``budget_ms``: the time the answer may take; the engine turns it into a token limit."""
        ...

    def generate_stream(self, tier: str, query: str, sources: list[ScoredChunk],
                        budget_ms: float) -> AsyncIterator[Delta | Generation]:
        """Text deltas, then the Generation record; failures raise StageError."""
        ...


@dataclass
class _Prepared:
    part: Partition
    qhash: str
    vector: np.ndarray | None
    verdicts: tuple[str, ...]
    write: bool
    index_version: str
    retrieved_version: str
    ranked: list[ScoredChunk]
    route: RouteDecision
    observe: Observation | None = None  # a cached answer to compare with the fresh one (error-bounded cache)


class _Request:
    """Per-request state: the deadline, per-stage reports, warnings, degradation."""

    def __init__(self, req: RagRequest, request_id: str, deadline: Deadline) -> None:
        self.req = req
        self.id = request_id
        self.deadline = deadline
        self.start = time.perf_counter()
        self.report: dict[str, StageReport] = {}
        self.warnings: list[str] = []
        self.degraded = False
        self.cache_status = "miss"
        self.steps: list[RouteStep] = []  # every tier asked, in order
        self.spent: list[Generation] = []  # every completed generation (usage counts them all)

    def step(self, tier: str, outcome: str, gen: Generation | None = None, reason: str = "", *,
             confidence: float | None = None, threshold: float | None = None) -> None:
        if gen is not None:
            self.spent.append(gen)
        self.steps.append(RouteStep(tier=tier, outcome=outcome, confidence=confidence, threshold=threshold,
                                    latency_ms=gen.latency_ms if gen else None,
                                    tokens_in=gen.tokens_in if gen else 0, tokens_out=gen.tokens_out if gen else 0,
                                    cost_usd=round(gen.cost_usd, 9) if gen else 0.0, reason=reason))

    def amend_step(self, **changes: Any) -> None:
        """Update the last step (the cascade's verdict on the answer just recorded)."""
        self.steps[-1] = self.steps[-1].model_copy(update=changes)

    def degrade(self, warning: str) -> None:
        self.degraded = True
        self.warnings.append(warning)

    def timings(self) -> dict[str, float]:
        out = {stage: round(rep.used_ms, 3) for stage, rep in self.report.items() if rep.outcome != "skipped"}
        return {**out, "total": round((time.perf_counter() - self.start) * 1000, 3)}

    def budget(self) -> dict[str, StageBudget]:
        return {stage: StageBudget(budget_ms=round(rep.budget_ms, 1), used_ms=round(rep.used_ms, 3),
                                   outcome=rep.outcome, overrun=rep.overrun, detail=rep.detail)
                for stage, rep in self.report.items()}

    def _report(self, stage: str, budget: float, limit: float) -> StageReport:
        """The stage's report (repeated calls of a stage share one); StageError (outcome
        "skipped") when there is no time left for the call."""
        rep = self.report.get(stage)
        if rep is None:
            rep = self.report[stage] = StageReport(budget_ms=budget)
        if limit <= 0:
            rep.outcome, rep.detail = "skipped", "no time left in the total budget"
            raise StageError(stage, "skipped: no time left in the total budget")
        return rep

    def run_inline(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """A call of microseconds on this thread (the in-memory cache): reported like ``run``,
        without a timeout (nothing could interrupt it; setting one up cost more than the call)."""
        budget = self.deadline.budget_ms(stage)
        rep = self._report(stage, budget, budget)
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            rep.used_ms += (time.perf_counter() - t0) * 1000
            if rep.used_ms > budget:
                rep.detail = f"over its {budget:.0f} ms budget"

    async def run(self, stage: str, make: Callable[[], Any], *, reserve_ms: float = 0.0,
                  essential: bool = False) -> Any:
        """Run one stage call within its budget; raises StageError on timeout or failure.

        An ``essential`` stage has no fallback (retrieval): cutting it at its own budget would
        only turn a late answer into an error, so its budget is a target (an overrun is
        reported) and the hard limit is all that is left of the total. Repeated calls of a stage
        (the cache is asked twice) share one report.
        """
        budget = self.deadline.budget_ms(stage, reserve_ms)
        limit = max(budget, self.deadline.remaining_ms()) if essential else budget
        rep = self._report(stage, budget, limit)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(limit / 1000):
                result = await make()
            if rep.used_ms + (time.perf_counter() - t0) * 1000 > budget:
                rep.detail = f"over its {budget:.0f} ms budget"
            return result
        except TimeoutError:
            rep.outcome, rep.detail = "timeout", f"exceeded its {limit:.0f} ms budget"
            raise StageError(stage, rep.detail) from None
        except StageError as exc:
            rep.outcome, rep.detail = "error", str(exc)
            raise
        finally:
            rep.used_ms += (time.perf_counter() - t0) * 1000


@functools.lru_cache(maxsize=1024)
def _options_id(fingerprint: str, tier: str, top_k: int, collection: str) -> str:
    """The part of a cache partition's key that request options and generation settings make."""
    return content_id(fingerprint, tier, str(top_k), collection)


def _sources(ranked: Sequence[ScoredChunk]) -> list[Source]:
    return [
        Source(id=s.chunk.id, doc_id=s.chunk.doc_id, title=s.chunk.title,
               snippet=s.chunk.text[:SNIPPET_CHARS], score=round(s.score, 6))
        for s in ranked
    ]


class QueryPipeline:
    def __init__(self, stages: Stages, cache: SemanticCache | None, cfg: RagConfig, fingerprint: str = "",
                 budget: BudgetProfile | None = None, safety: SafetyConfig | None = None,
                 tiers: Sequence[str] = ("small", "large"), tier_configs: dict[str, TierConfig] | None = None,
                 route_uses_retrieval: bool = True) -> None:
        """``fingerprint`` identifies the generation settings (tier models, prompt version,
        sampling): cached answers are only served to requests with the same one.
        ``tier_configs``: the tiers' rates, for the cascade's "is there time to escalate" check.
        ``route_uses_retrieval``: the router reads retrieval scores (route after retrieval)."""
        self.stages = stages
        self.cache = cache
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.budget = budget or BudgetProfile.from_env(gpu=False)
        self.safety = safety or SafetyConfig()
        self.tiers = list(tiers)  # configured tiers, cheapest first
        self.tier_configs = dict(tier_configs or {})
        self.route_uses_retrieval = route_uses_retrieval

    def observe_rates(self, tier: str, prefill_tok_s: float | None, decode_tok_s: float | None) -> None:
        """The Generation service's measured rates of ``tier`` (reported with every answer, and
        by its ``info`` at start-up) replace the configured ones in the cascade's time check."""
        cfg = self.tier_configs.get(tier)
        if cfg is not None and prefill_tok_s and decode_tok_s:
            self.tier_configs[tier] = replace(cfg, prefill_tok_s=prefill_tok_s, decode_tok_s=decode_tok_s)

    async def _cache_call(self, r: _Request, what: str, fn: Callable[..., T], *args: Any,
                          blocking: bool | None = None) -> T | None:
        """A cache failure or timeout never fails the request: the cache is bypassed and that is
        reported. Calls that may block (network I/O, a model's forward pass) run in a thread so
        they never hold the event loop; the in-memory backend's microsecond calls run inline (a
        thread hop for them queued behind others under load, until the lookup ran out of budget
        and a cached question was answered again from scratch)."""
        blocking = self.cache.blocking if blocking is None else blocking

        async def call() -> T:
            return await asyncio.to_thread(fn, *args)

        try:
            return await r.run("cache", call) if blocking else r.run_inline("cache", fn, *args)
        except StageError as exc:
            if r.report["cache"].outcome == "skipped":  # no time left: not a cache failure
                return None
            log.debug("request %s: cache %s: %s", r.id, what, exc)
        except CacheUnavailable as exc:  # the backend logs outages once
            r.report["cache"].outcome, r.report["cache"].detail = "error", str(exc)
            log.debug("request %s: cache %s unavailable: %s", r.id, what, exc)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "bypass"
            r.report["cache"].outcome, r.report["cache"].detail = "error", f"{type(exc).__name__}: {exc}"
            log.warning("request %s: cache %s failed, bypassing: %s", r.id, what, exc)
        r.cache_status = "unavailable"
        r.warnings.append(f"cache {what} failed; cache bypassed")
        return None

    def _respond(self, r: _Request, payload: dict[str, Any], cache: CacheInfo) -> RagResponse:
        return RagResponse(**payload, request_id=r.id, cache=cache, timings_ms=r.timings(), budget=r.budget(),
                           budget_profile=self.budget.name, warnings=r.warnings)

    def _from_cache(self, r: _Request, hit: CacheHit, verdicts: Sequence[str] = ()) -> RagResponse:
        decision = "hit" if hit.kind == "semantic" and self.cache is not None and self.cache.policy else None
        return self._respond(r, hit.payload, CacheInfo(hit=True, kind=hit.kind, similarity=round(hit.similarity, 6),
                                                       status="hit", verifier=list(verdicts), decision=decision))

    def _validate(self, req: RagRequest) -> None:
        if req.tier not in ("auto", "cascade") and self.tiers and req.tier not in self.tiers:
            raise BadRequest("tier", f"{req.tier!r} is not a configured tier; valid: auto, cascade, "
                             f"{', '.join(self.tiers)}")
        if req.tier == "cascade" and len(self.tiers) < 2:
            raise BadRequest("tier", "cascade needs at least two configured tiers")

    async def _prepare(self, r: _Request) -> RagResponse | _Prepared:
        """Everything before generation: a cached response, or what generation needs."""
        req = r.req
        cache = self.cache
        read = cache is not None and req.cache == "use"
        write = cache is not None and req.cache in ("use", "refresh")
        r.cache_status = "off" if cache is None else {"use": "miss", "bypass": "bypass", "refresh": "refresh"}[req.cache]
        verdicts: tuple[str, ...] = ()
        observe: Observation | None = None

        index_version = await self.stages.index_version(req.collection)
        # Same tenant, same index, same generation settings and request options -> same answer.
        part = Partition(req.tenant, index_version, _options_id(self.fingerprint, req.tier, req.top_k, req.collection))
        qhash = query_hash(req.query)
        hit = await self._cache_call(r, "lookup", cache.get_exact, part, qhash) if read else None
        if hit:
            log.debug("request %s: exact cache hit (tenant %s)", r.id, req.tenant)  # hits: per-request logs cost
            # more than the lookup at hundreds of hits/s; /metrics counts them
            return self._from_cache(r, hit)

        vector: np.ndarray | None = None
        try:
            vector = await r.run("embed", lambda: self.stages.embed(req.query))
        except StageError as exc:
            log.warning("request %s: %s; retrieving lexically", r.id, exc)
            r.degrade(f"{exc}; sources were found by keyword (BM25) search")
        if read and vector is not None and r.cache_status != "unavailable":
            found = await self._cache_call(r, "lookup", cache.find, part, vector)
            cands = found.candidates if found is not None else []
            lookup = None if not cands else await self._cache_call(
                r, "lookup", cache.verify, req.query, vector, cands, found.pool,
                blocking=cache.verify_blocks(req.query, cands))
            if lookup is not None:
                verdicts, observe = lookup.verdicts, lookup.observe
            if cache.policy is not None and found is not None and observe is None:
                # the policy's denominator: every semantic lookup (an observation counts itself)
                await self._cache_call(r, "lookup", cache.count, part, lookup.band if lookup else None)
            if lookup is not None and lookup.hit:
                log.debug("request %s: semantic cache hit (%.3f)", r.id, lookup.hit.similarity)
                return self._from_cache(r, lookup.hit, verdicts)

        n = max(self.cfg.candidates, req.top_k)
        # The router runs alongside retrieval (and reranking): it needs the query embedding, and
        # the heuristic also the best retrieval scores.
        routing: asyncio.Task[RouteDecision] | None = None
        routed = self._routed(req)
        if routed and not self.route_uses_retrieval:
            routing = asyncio.create_task(self._route(r, vector, []))
        try:
            if vector is not None:
                candidates, retrieved_version = await r.run("retrieve", lambda: self.stages.retrieve(
                    vector, n, query=req.query, collection=req.collection),
                                                            essential=True)
            else:
                candidates, retrieved_version = await r.run(
                    "retrieve", lambda: self.stages.retrieve_text(req.query, n, collection=req.collection), essential=True)
            if routed and routing is None:
                best = sorted(candidates, key=lambda c: -c.dense_score)[: req.top_k]
                routing = asyncio.create_task(self._route(r, vector, best))

            try:
                ranked = await r.run("rerank", lambda: self.stages.rerank(req.query, candidates, req.top_k))
            except StageError as exc:
                log.warning("request %s: %s; using retrieval order", r.id, exc)
                r.degrade(f"{exc}; sources are in retrieval order")
                ranked = candidates[: req.top_k]
            route = await routing if routing is not None else self._requested(req.tier)
        finally:
            if routing is not None and not routing.done():
                routing.cancel()
        return _Prepared(part=part, qhash=qhash, vector=vector, verdicts=verdicts, write=write,
                         index_version=index_version, retrieved_version=retrieved_version, ranked=ranked, route=route,
                         observe=observe)

    async def run(self, req: RagRequest, request_id: str = "-") -> RagResponse:
        self._validate(req)
        r = _Request(req, request_id, Deadline(self.budget))
        prep = await self._prepare(r)
        if isinstance(prep, RagResponse):
            return prep
        if req.tier == "cascade":
            generation, escalate_to = await self._cascade_head(r, prep.ranked, prep.route)
            if escalate_to is not None:
                fallback = generation
                # no tier asked yet: a routed start at the top tier, which falls back like auto
                generation = await self._generate(r, escalate_to, prep.ranked, fallbacks=not r.steps)
                generation = self._keep_if_failed(r, generation, fallback, escalate_to)
        else:
            generation = await self._generate(r, prep.route.tier, prep.ranked)
        if generation is not None and generation.finish_reason in CUT:
            r.degrade(f"generate[{generation.tier}]: the answer was cut at the time limit; "
                      "answered with an extract of the best source")
            generation = None
        return await self._finish(r, prep, generation)

    async def stream(self, req: RagRequest, request_id: str = "-") -> AsyncIterator[dict[str, Any]]:
        """Events: ``meta`` (route, sources, cache) before the first token, ``token`` deltas, then
        ``done`` with the whole response (usage, cost, timings, budget, safety). A cached answer
        arrives as one token. Only a completed, good answer is cached."""
        self._validate(req)
        r = _Request(req, request_id, Deadline(self.budget))
        prep = await self._prepare(r)
        if isinstance(prep, RagResponse):
            yield {"event": "meta", "request_id": request_id, "route": prep.route.model_dump(),
                   "sources": [s.model_dump() for s in prep.sources], "cache": prep.cache.model_dump()}
            yield {"event": "token", "text": prep.answer}
            yield {"event": "done", "response": prep.model_dump()}
            return
        # A cascade judges a whole answer before it can be shown: the tiers before the last one
        # answer first (not streamed); an escalation to the last tier is streamed.
        head: Generation | None = None
        tier = prep.route.tier
        if req.tier == "cascade":
            head, escalate_to = await self._cascade_head(r, prep.ranked, prep.route)
            tier = escalate_to or (head.tier if head else tier)
        yield {"event": "meta", "request_id": request_id,
               "route": {"mode": self._mode(req), "tier": tier,
                         "score": None if prep.route.router in ("request", "cascade") else round(prep.route.score, 6),
                         "reason": prep.route.reason, "path": [s.model_dump() for s in r.steps]},
               "sources": [s.model_dump() for s in _sources(prep.ranked)],
               "cache": self._miss_info(r, prep).model_dump()}
        generation: Generation | None = None
        sent: list[str] = []
        if req.tier == "cascade" and head is not None and r.steps[-1].outcome != "escalated":
            generation = head  # accepted (or kept): the whole answer at once
            sent.append(head.text)
            yield {"event": "token", "text": head.text}
        elif req.tier != "cascade" or escalate_to is not None:
            async for item in self._generate_stream(r, tier, prep.ranked, sent,
                                                    fallbacks=req.tier != "cascade" or not r.steps):
                if isinstance(item, Generation):
                    generation = item
                else:
                    sent.append(item.text)
                    yield {"event": "token", "text": item.text}
            if req.tier == "cascade" and not sent:
                generation = self._keep_if_failed(r, generation, head, tier)
                if generation is not None:
                    sent.append(generation.text)
                    yield {"event": "token", "text": generation.text}
        if generation is not None and generation.finish_reason in CUT:
            r.degrade(f"generate[{generation.tier}]: the answer was cut at the time limit")
        if generation is None and not sent:
            text = await self._extract(r, prep)
            sent.append(text)
            yield {"event": "token", "text": text}
        elif generation is not None and (suffix := cite.missing("".join(sent), prep.ranked)):
            sent.append(suffix)  # the sources that support the answer, when it cites none of them
            yield {"event": "token", "text": suffix}
        response = await self._finish(r, prep, generation, streamed="".join(sent).strip() if sent else None)
        yield {"event": "done", "response": response.model_dump()}

    async def _finish(self, r: _Request, prep: _Prepared, generation: Generation | None,
                      streamed: str | None = None) -> RagResponse:
        """Safety check, response, and the cache write (good answers only). ``streamed``: the
        text the client already received, which is then the answer whatever happens."""
        ranked = prep.ranked
        if streamed is not None:
            answer = streamed
        elif generation is not None:
            answer = generation.text + cite.missing(generation.text, ranked) if generation.text else ""
        else:
            answer = await self._extract(r, prep)
        if generation and not answer:
            r.degrade("the model returned an empty answer; answered from the best source")
            answer = await self._extract(r, prep)
        safety = await self._check(r, answer, ranked) if generation and not r.degraded else \
            SafetyInfo(checked=False, action=self.safety.action)
        if safety.problems and self.safety.action == "replace":
            r.degrade("safety: the generated answer was replaced by an extract of the best source")
            answer = await self._extract(r, prep)
        payload = dict(
            answer=answer,
            sources=[s.model_dump() for s in _sources(ranked)],
            route=RouteInfo(
                mode=self._mode(r.req),
                tier=generation.tier if generation else prep.route.tier,
                model=generation.model if generation else "extractive",
                score=None if prep.route.router in ("request", "cascade") else round(prep.route.score, 6),
                reason=prep.route.reason,
                path=r.steps,
            ).model_dump(),
            usage=Usage(
                tokens_in=sum(g.tokens_in for g in r.spent),
                tokens_out=sum(g.tokens_out for g in r.spent),
                cost_usd=round(sum(g.cost_usd for g in r.spent), 9),
                finish_reason=generation.finish_reason if generation else None,
                logprob_mean=generation.logprob_mean if generation else None,
                logprob_min=generation.logprob_min if generation else None,
                ttft_ms=generation.ttft_ms if generation else None,
            ).model_dump(),
            index_version=prep.retrieved_version,
            collection=r.req.collection,
            safety=safety.model_dump(),
            degraded=r.degraded,
        )
        # an answer the cascade judged unsure but kept (no time to escalate) is served, not cached
        unsure = any(step.outcome == "kept" for step in r.steps)
        good = not r.degraded and safety.checked and not safety.problems and not unsure
        if prep.observe is not None and good and r.cache_status != "unavailable":
            await self._compare(r, prep, prep.observe, answer, [s.chunk.doc_id for s in ranked])
        if prep.write and good and prep.retrieved_version == prep.index_version and r.cache_status != "unavailable":
            await self._cache_call(r, "store", self.cache.put, prep.part, prep.qhash, r.req.query, prep.vector,
                                   payload, [s.chunk.doc_id for s in ranked])
        response = self._respond(r, {**payload, "degraded": r.degraded}, self._miss_info(r, prep))
        log.info("request %s: answered by %s in %.0f ms%s", r.id, response.route.model,
                 response.timings_ms["total"], " (degraded)" if r.degraded else "")
        return response

    @staticmethod
    def _miss_info(r: _Request, prep: _Prepared) -> CacheInfo:
        obs = prep.observe
        return CacheInfo(hit=False, status=r.cache_status, verifier=list(prep.verdicts),
                         decision=obs.decision.action if obs else None,
                         verification_sample=obs is not None and obs.decision.sample)

    async def _compare(self, r: _Request, prep: _Prepared, obs: Observation, answer: str,
                       doc_ids: list[str]) -> None:
        """The error-bounded cache learns: was the cached candidate's answer as good an answer to
        this question as the fresh one? (pipelines/query/cache_policy.py: answers_agree). The
        outcome updates the entry's and the tenant's statistics; a failed update is dropped
        (reported, counted by the backend), never retried into a corrupted count; answers that
        could not be embedded in time are not compared (nothing is recorded)."""
        try:
            async with asyncio.timeout(max(0.0, min(COMPARE_EMBED_MS, r.deadline.remaining_ms())) / 1000):
                vectors = await self.stages.embed_many([comparable(obs.entry.payload.get("answer", "")),
                                                        comparable(answer)])
        except Exception as exc:  # noqa: BLE001 - the embedding stage is slow or down: no observation
            log.info("request %s: cache comparison skipped, answers not embedded: %s", r.id,
                     f"{type(exc).__name__}: {exc}")
            prep.verdicts = (*prep.verdicts, "not compared with the cached answer (answers not embedded in time)")
            return
        agree, why = answers_agree(obs.entry.payload, doc_ids, vectors)
        log.info("request %s: cache %s of %r: %s (%s)", r.id,
                 "verification sample" if obs.decision.sample else "observation", obs.entry.query,
                 "agrees" if agree else "WRONG", why)
        before = r.cache_status
        await self._cache_call(r, "observe", self.cache.observe, prep.part, obs, not agree)
        if r.cache_status == "unavailable" and before != "unavailable":
            r.warnings[-1] = "cache statistics update failed (dropped); the answer is fresh"
        prep.verdicts = (*prep.verdicts, f"compared with the cached answer: {'agrees' if agree else 'differs'} ({why})")

    async def _extract(self, r: _Request, prep: _Prepared) -> str:
        """The answer of last resort: the sentences of the top sources that best answer the
        question (pipelines/query/evidence.py), scored by lexical overlap and, when the query
        was embedded and the sentences can be within EXTRACT_EMBED_MS, by the query embedding."""
        sources = prep.ranked[:EXTRACT_SOURCES]
        vectors = None
        wait_ms = min(EXTRACT_EMBED_MS, r.deadline.remaining_ms() - self.budget.stages_ms["safety"])
        if prep.vector is not None and sources and wait_ms > 0:
            texts = [s.text for s in evidence.sentences(sources)]
            try:
                async with asyncio.timeout(wait_ms / 1000):
                    vectors = await self.stages.embed_many(texts)
            except (TimeoutError, StageError) as exc:
                log.info("request %s: extractive answer without sentence vectors: %s", r.id,
                         exc or f"embedding took over {wait_ms:.0f} ms")
        return evidence.extract(r.req.query, sources, query_vector=prep.vector, vectors=vectors)

    async def _check(self, r: _Request, answer: str, ranked: list[ScoredChunk]) -> SafetyInfo:
        """The safety stage: an unchecked answer (no time, an error) is returned but not cached."""
        if self.safety.action == "off":
            return SafetyInfo(checked=False, action="off")

        async def run_check():
            return safety_check(answer, ranked, self.safety)

        try:
            report = await r.run("safety", run_check)
        except StageError as exc:
            r.warnings.append(f"{exc}; the answer was not checked")
            return SafetyInfo(checked=False, action=self.safety.action)
        if report.problems:
            log.warning("request %s: safety: %s", r.id, "; ".join(report.problems))
            r.warnings.append("safety: " + "; ".join(report.problems))
        return SafetyInfo(checked=True, grounding=report.grounding, problems=list(report.problems),
                          action=self.safety.action)

    @staticmethod
    def _mode(req: RagRequest) -> str:
        return req.tier if req.tier in ("auto", "cascade") else "fixed"

    def _routed(self, req: RagRequest) -> bool:
        """Whether this request asks the router: auto, and a cascade with a routed start."""
        return req.tier == "auto" or (req.tier == "cascade" and self.cfg.cascade.start == "routed")

    def _requested(self, tier: str) -> RouteDecision:
        if tier == "cascade":
            cfg = self.cfg.cascade
            return RouteDecision(tier=self.tiers[0], score=0.0, threshold=cfg.threshold, router="cascade",
                                 reason=f"cascade over {' -> '.join(self.tiers)}: escalate while {cfg.signal} < "
                                        f"{cfg.threshold:.3f} ({cfg.source})")
        return RouteDecision(tier=tier, score=0.0, threshold=0.0, router="request",
                             reason=f"tier {tier!r} requested by the client")

    async def _route(self, r: _Request, vector: np.ndarray | None, ranked: list[ScoredChunk]) -> RouteDecision:
        if not self._routed(r.req):
            return self._requested(r.req.tier)
        features = QueryFeatures(query_vector=None if vector is None else vector.tolist(),
                                 retrieval_scores=[s.dense_score for s in ranked])
        cascade = r.req.tier == "cascade"
        # a routed cascade decides at its own calibrated threshold (None: the router's)
        threshold = self.cfg.cascade.route_threshold if cascade else None
        try:
            decision = await r.run("route", lambda: self.stages.route(r.req.query, features, threshold))
        except StageError as exc:
            if cascade:  # the cascade itself still works: it starts at the cheapest tier
                log.warning("request %s: %s; the cascade starts at the cheapest tier", r.id, exc)
                r.warnings.append(f"{exc}; the cascade started at the cheapest tier")
                start = self._requested("cascade")
                return start.model_copy(update={"reason": f"router unavailable; {start.reason}"})
            log.warning("request %s: %s; using default tier", r.id, exc)
            r.degrade(f"{exc}; used the default tier {self.cfg.default_tier!r}")
            return RouteDecision(tier=self.cfg.default_tier, score=0.0, threshold=0.0, router="fallback",  # type: ignore[arg-type]
                                 reason=f"router unavailable; default tier {self.cfg.default_tier!r}")
        if cascade:
            c = self.cfg.cascade
            decision = decision.model_copy(update={"reason": (
                f"cascade from {decision.tier} (routed start) over {' -> '.join(self.tiers)}: escalate while "
                f"{c.signal} < {c.threshold:.3f} ({c.source}); {decision.reason}")})
        return decision

    def _fallbacks(self, tier: str, fallbacks: bool = True) -> list[str]:
        """The requested tier, then the cheapest one (the first configured) if it is another."""
        first = self.tiers[0] if self.tiers else "small"
        return [tier] + ([first] if tier != first and fallbacks else [])

    async def _generate(self, r: _Request, tier: str, ranked: list[ScoredChunk], *,
                        fallbacks: bool = True) -> Generation | None:
        """``fallbacks=False``: no fallback tier, and no extractive answer is implied (a cascade
        still has the previous tier's answer)."""
        safety_ms = self.budget.stages_ms["safety"]
        tiers = self._fallbacks(tier, fallbacks)
        for t in tiers:
            # Keep the safety check's budget in reserve; the engine turns the rest into a token limit.
            budget = r.deadline.budget_ms("generate", reserve_ms=safety_ms)
            try:
                gen = await r.run("generate", lambda: self.stages.generate(t, r.req.query, ranked, budget),
                                  reserve_ms=safety_ms)
            except StageError as exc:
                log.warning("request %s: generate[%s]: %s", r.id, t, exc)
                r.step(t, "failed", reason=str(exc))
                r.degrade(f"generate[{t}]: {exc}" + (f"; fell back to the {tiers[-1]} tier" if t != tiers[-1] else ""))
                continue
            r.step(t, "answered", gen)
            self.observe_rates(t, gen.prefill_tok_s, gen.decode_tok_s)
            return gen
        if fallbacks:
            r.degrade("no tier could generate in time; answered with an extract of the best source")
        return None

    async def _cascade_head(self, r: _Request, ranked: list[ScoredChunk],
                            route: RouteDecision) -> tuple[Generation | None, str | None]:
        """Ask the tiers before the last one, from ``route.tier`` (the cheapest, or where a routed
        start begins) up: (the answer to keep, None) once one is confident enough (or there is no
        time to go on), else (the last answer, the tier to escalate to). A tier that fails
        escalates."""
        cfg, safety_ms = self.cfg.cascade, self.budget.stages_ms["safety"]
        answer: Generation | None = None
        first = self.tiers.index(route.tier) if route.tier in self.tiers else 0
        for i, tier in enumerate(self.tiers[:-1]):
            if i < first:
                continue
            nxt = self.tiers[i + 1]
            gen = await self._generate(r, tier, ranked, fallbacks=False)
            if gen is None:
                continue  # failed (recorded, degraded): the next tier answers
            if gen.finish_reason in CUT:
                r.amend_step(outcome="failed", reason=f"cut at the time limit ({gen.finish_reason})")
                continue
            verdict = cascading.judge(gen, cfg, self.tier_configs.get(nxt), nxt,
                                      r.deadline.budget_ms("generate", reserve_ms=safety_ms), ranked)
            r.amend_step(outcome=verdict.outcome, reason=verdict.reason, confidence=verdict.confidence,
                         threshold=cfg.threshold)
            log.info("request %s: cascade %s: %s", r.id, tier, verdict.reason)
            if not verdict.escalate:
                if verdict.outcome == "kept":
                    r.warnings.append(f"cascade: {verdict.reason}")
                return gen, None
            answer = gen
        return answer, self.tiers[-1]

    def _keep_if_failed(self, r: _Request, generation: Generation | None, previous: Generation | None,
                        tier: str) -> Generation | None:
        """After an escalation to ``tier`` produced nothing, the previous tier's answer stands
        (the failure is recorded and flagged by _generate)."""
        if generation is not None:
            return generation
        if previous is None:
            r.degrade("no tier could generate in time; answered with an extract of the best source")
            return None
        for i in range(len(r.steps) - 1, -1, -1):
            if r.steps[i].tier == previous.tier and r.steps[i].outcome == "escalated":
                r.steps[i] = r.steps[i].model_copy(update={
                    "outcome": "kept", "reason": f"{r.steps[i].reason}; {tier} failed, so this answer was kept"})
                break
        return previous

    async def _generate_stream(self, r: _Request, tier: str, ranked: list[ScoredChunk],
                               sent: list[str], *, fallbacks: bool = True) -> AsyncIterator[Delta | Generation]:
        """Like _generate, streamed: a tier that fails before its first token falls back; once
        tokens are out, a failure or the deadline ends the answer there (flagged)."""
        safety_ms = self.budget.stages_ms["safety"]
        tiers = self._fallbacks(tier, fallbacks)
        for t in tiers:
            budget = r.deadline.budget_ms("generate", reserve_ms=safety_ms)
            rep = r.report.setdefault("generate", StageReport(budget_ms=budget))
            if budget <= 0:
                rep.outcome, rep.detail = "skipped", "no time left in the total budget"
                r.step(t, "failed", reason="skipped: no time left in the total budget")
                break
            t0 = time.perf_counter()
            deadline = time.monotonic() + budget / 1000
            events = self.stages.generate_stream(t, r.req.query, ranked, budget)
            try:
                while True:
                    try:
                        item = await asyncio.wait_for(anext(events), max(0.001, deadline - time.monotonic()))
                    except StopAsyncIteration:
                        raise StageError(f"generate[{t}]", "the stream ended without a result") from None
                    if isinstance(item, Generation):
                        r.step(t, "answered", item)
                        self.observe_rates(t, item.prefill_tok_s, item.decode_tok_s)
                        yield item
                        return
                    yield item
            except (StageError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    rep.outcome, rep.detail = "timeout", f"exceeded its {budget:.0f} ms budget"
                    exc = StageError(f"generate[{t}]", rep.detail)
                else:
                    rep.outcome, rep.detail = "error", str(exc)
                log.warning("request %s: generate[%s] (stream): %s", r.id, t, exc)
                r.step(t, "failed", reason=str(exc))
                if sent:  # the client has part of an answer: end it there
                    r.degrade(f"{exc}; the streamed answer is incomplete")
                    return
                r.degrade(f"{exc}" + (f"; fell back to the {tiers[-1]} tier" if t != tiers[-1] else ""))
            finally:
                rep.used_ms += (time.perf_counter() - t0) * 1000
                await events.aclose()
        if fallbacks:
            r.degrade("no tier could generate in time; answered with an extract of the best source")
