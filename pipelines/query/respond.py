"""The response: one place builds it, for a cached answer and a fresh one.

After the mode answered (or did not: then an extract of the best sources answers,
pipelines/query/evidence.py), :meth:`Responder.finish` checks the answer's safety, builds the
response, teaches the error-bounded cache (the fresh answer compared with the cached candidate's)
and stores a good answer. Only good answers are cached: never a degraded, unchecked, unsafe or
unsure (kept by the cascade without time to escalate) one, nor one from an index version other
than the partition's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from common.errors import StageError
from common.records import ScoredChunk, TierAnswer
from pipelines.api.schema import CacheInfo, RagResponse, RouteInfo, SafetyInfo, Source, Usage
from pipelines.config.budget import BudgetProfile
from pipelines.config.safety import SafetyConfig
from pipelines.query import cite, evidence
from pipelines.query.cache import Observation, SemanticCache
from pipelines.query.cache.carry import reach
from pipelines.query.cache.policy import answers_agree, comparable
from pipelines.query.feedback import Answered, FeedbackStore
from pipelines.query.prepare import Prepared
from pipelines.query.safety import check as safety_check
from pipelines.query.stages import Stages
from pipelines.query.state import RequestState, cache_call

log = logging.getLogger(__name__)

SNIPPET_CHARS = 300
EXTRACT_SOURCES = 3  # an extractive answer is taken from the best three sources
EXTRACT_EMBED_MS = 500.0  # at most this long to embed their sentences (else lexical scores only)
FEEDBACK_RECORD_S = 0.25  # at most this long to keep an answer's record for feedback (Redis)
COMPARE_EMBED_MS = 2000.0  # the cache's answer comparison: at most this long (and the time left) to embed the answers


def sources(ranked: Sequence[ScoredChunk]) -> list[Source]:
    return [
        Source(id=s.chunk.id, doc_id=s.chunk.doc_id, title=s.chunk.title,
               snippet=s.chunk.text[:SNIPPET_CHARS], score=round(s.score, 6))
        for s in ranked
    ]


class Responder:
    def __init__(self, stages: Stages, cache: SemanticCache | None, budget: BudgetProfile,
                 safety: SafetyConfig, feedback: FeedbackStore | None = None) -> None:
        self.stages = stages
        self.cache = cache
        self.budget = budget
        self.safety = safety
        self.feedback = feedback

    async def _cache(self, r: RequestState, what: str, fn, *args):
        assert self.cache is not None
        return await cache_call(r, self.cache.blocking, what, fn, *args)

    def respond(self, r: RequestState, payload: dict[str, Any], cache: CacheInfo) -> RagResponse:
        return RagResponse(**payload, request_id=r.id, cache=cache, timings_ms=r.timings(), budget=r.budget(),
                           budget_profile=self.budget.name, warnings=r.warnings)

    async def remember(self, r: RequestState, prep: Prepared, response: RagResponse, stored: bool = False) -> None:
        """Keep what a verdict on this answer needs (feedback.py). Best effort, within the cache
        stage's time: an answer whose record could not be kept can only not be rated (a 404)."""
        if self.feedback is None:
            return
        hit = prep.hit
        part = prep.part
        rec = Answered(request_id=r.id, tenant=r.req.tenant, query=r.req.query,
                       kind=hit.kind if hit is not None else "fresh", index_version=part.index_version,
                       fingerprint=part.fingerprint, collection=part.collection,
                       qhash=prep.qhash, stored=stored, entry_qhash=hit.qhash if hit is not None else "",
                       score=hit.score if hit is not None else None,
                       tier=response.route.tier, model=response.route.model, route_score=response.route.score,
                       degraded=response.degraded, at=time.time())
        try:
            if self.feedback.blocking:
                async with asyncio.timeout(FEEDBACK_RECORD_S):
                    await asyncio.to_thread(self.feedback.remember, rec)
            else:
                self.feedback.remember(rec)
        except Exception as exc:  # noqa: BLE001 - the store is down or slow: this answer cannot be rated
            log.info("request %s: not kept for feedback: %s", r.id, f"{type(exc).__name__}: {exc}")

    async def from_cache(self, r: RequestState, prep: Prepared) -> RagResponse:
        """The cached answer, named by the version it is served from (an answer carried to a new
        version, carry.py, has sources unchanged in it)."""
        hit, verdicts = prep.hit, prep.verdicts
        assert hit is not None
        decision = "hit" if hit.kind == "semantic" and self.cache is not None and self.cache.policy else None
        payload = hit.payload if hit.payload.get("index_version") == prep.index_version else \
            {**hit.payload, "index_version": prep.index_version}
        response = self.respond(r, payload, CacheInfo(hit=True, kind=hit.kind, similarity=round(hit.similarity, 6),
                                                      status="hit", verifier=list(verdicts), decision=decision))
        await self.remember(r, prep, response)
        return response

    async def finish(self, r: RequestState, prep: Prepared, generation: TierAnswer | None,
                     streamed: str | None = None) -> RagResponse:
        """Safety check, response, and the cache write (good answers only). ``streamed``: the
        text the client already received, which is then the answer whatever happens."""
        ranked = prep.ranked
        if streamed is not None:
            answer = streamed
        elif generation is not None:
            answer = generation.text + cite.missing(generation.text, ranked) if generation.text else ""
        else:
            answer = await self.extract(r, prep)
        if generation and not answer:
            r.degrade("the model returned an empty answer; answered from the best source")
            answer = await self.extract(r, prep)
        safety = await self._check(r, answer, ranked) if generation and not r.degraded else \
            SafetyInfo(checked=False, action=self.safety.action)
        if safety.problems and self.safety.action == "replace":
            r.degrade("safety: the generated answer was replaced by an extract of the best source")
            answer = await self.extract(r, prep)
        payload = dict(
            answer=answer,
            sources=[s.model_dump() for s in sources(ranked)],
            route=RouteInfo(
                mode=prep.mode.name,
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
        stored = False
        if prep.write and good and prep.retrieved_version == prep.index_version and r.cache_status != "unavailable":
            # reach: a document added later nearer the question than that may change the answer (carry.py)
            await self._cache(r, "store", self.cache.put, prep.part, prep.qhash, r.req.query, prep.vector,
                              payload, [s.chunk.doc_id for s in ranked], reach(prep.candidates))
            stored = r.cache_status != "unavailable"
        response = self.respond(r, {**payload, "degraded": r.degraded}, self.miss_info(r, prep))
        await self.remember(r, prep, response, stored)
        log.info("request %s: answered by %s in %.0f ms%s", r.id, response.route.model,
                 response.timings_ms["total"], " (degraded)" if r.degraded else "")
        return response

    @staticmethod
    def miss_info(r: RequestState, prep: Prepared) -> CacheInfo:
        obs = prep.observe
        return CacheInfo(hit=False, status=r.cache_status, verifier=list(prep.verdicts),
                         decision=obs.decision.action if obs else None,
                         verification_sample=obs is not None and obs.decision.sample)

    async def _compare(self, r: RequestState, prep: Prepared, obs: Observation, answer: str,
                       doc_ids: list[str]) -> None:
        """The error-bounded cache learns: was the cached candidate's answer as good an answer to
        this question as the fresh one? (pipelines/query/cache/policy.py: answers_agree). The
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
        await self._cache(r, "observe", self.cache.observe, prep.part, obs, not agree)
        if r.cache_status == "unavailable" and before != "unavailable":
            r.warnings[-1] = "cache statistics update failed (dropped); the answer is fresh"
        prep.verdicts = (*prep.verdicts, f"compared with the cached answer: {'agrees' if agree else 'differs'} ({why})")

    async def extract(self, r: RequestState, prep: Prepared) -> str:
        """The answer of last resort: the sentences of the top sources that best answer the
        question (pipelines/query/evidence.py), scored by lexical overlap and, when the query
        was embedded and the sentences can be within EXTRACT_EMBED_MS, by the query embedding
        (not when the tiers refused for capacity: lexical scores only, no load added)."""
        sources = prep.ranked[:EXTRACT_SOURCES]
        vectors = None
        wait_ms = min(EXTRACT_EMBED_MS, r.deadline.remaining_ms() - self.budget.stages_ms["safety"])
        if r.capacity_wait_s is not None:
            # The tiers refused for capacity: the machine is loaded. Embedding the sentences would
            # spend the CPU the admitted generations need (measured: under 16 concurrent clients
            # these embeddings took more than a core, and the questions' own embeddings then
            # waited out their budget behind them); lexical scores answer in milliseconds.
            wait_ms = 0.0
        if prep.vector is not None and sources and wait_ms > 0:
            texts = [s.text for s in evidence.sentences(sources)]
            try:
                async with asyncio.timeout(wait_ms / 1000):
                    vectors = await self.stages.embed_many(texts)
            except (TimeoutError, StageError) as exc:
                log.info("request %s: extractive answer without sentence vectors: %s", r.id,
                         exc or f"embedding took over {wait_ms:.0f} ms")
        return evidence.extract(r.req.query, sources, query_vector=prep.vector, vectors=vectors)

    async def _check(self, r: RequestState, answer: str, ranked: list[ScoredChunk]) -> SafetyInfo:
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

