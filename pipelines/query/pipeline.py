"""The query pipeline: validate -> prepare (exact cache -> embed -> semantic cache -> retrieve
with the concurrent route -> rerank) -> the mode answers -> respond.

Where each part lives:

* pipelines/query/state.py: one request's state and the one budget mechanism every stage call
  goes through (a :class:`~pipelines.query.deadline.Deadline` travels with the request; each stage gets
  min(its budget, what is left); the response reports per stage the budget, the time used and
  the outcome: ok | timeout | error | skipped);
* pipelines/query/prepare.py: the steps before generation, in order, and what each falls back to;
* pipelines/query/modes/: the modes a request's ``tier`` selects (``auto``: the router picks;
  ``cascade``: cheapest first, escalate on low confidence; a configured tier), each with the same
  two entry points, answer and stream, over pipelines/query/tiers.py (one tier's answer with the
  fallback to the cheapest tier: a large tier that fails leaves the small one the time that is
  left);
* pipelines/query/respond.py: safety, the response, and the cache write (good answers only).

Stages are reached through the :class:`~pipelines.query.stages.Stages` protocol. A stage that
fails or runs out of time degrades the answer (and says so) instead of failing it; when no tier
answers, an extract of the best sources does. The response's ``route.path`` lists every tier
asked and what came of it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from common.errors import Overloaded
from common.records import TierAnswer
from pipelines.api.schema import RagRequest, RagResponse
from pipelines.config import RagConfig, TierConfig
from pipelines.config.budget import BudgetProfile
from pipelines.config.safety import SafetyConfig
from pipelines.engines.load import retry_after_s
from pipelines.query import cite
from pipelines.query.cache import SemanticCache
from pipelines.query.deadline import Deadline
from pipelines.query.feedback import FeedbackStore
from pipelines.query.modes import mode_for
from pipelines.query.prepare import Preparation
from pipelines.query.respond import Responder, sources
from pipelines.query.stages import Stages
from pipelines.query.state import Meter, RequestState
from pipelines.query.tiers import CUT, Begin, TierRunner

log = logging.getLogger(__name__)


class QueryPipeline:
    def __init__(self, stages: Stages, cache: SemanticCache | None, cfg: RagConfig, fingerprint: str = "",
                 budget: BudgetProfile | None = None, safety: SafetyConfig | None = None,
                 tiers: Sequence[str] = ("small", "large"), tier_configs: dict[str, TierConfig] | None = None,
                 route_uses_retrieval: bool = True, admission: bool = True,
                 feedback: FeedbackStore | None = None) -> None:
        """``fingerprint`` identifies the generation settings (tier models, prompt version,
        sampling): cached answers are only served to requests with the same one.
        ``budget``: the latency budgets (default: the cpu profile's). ``tier_configs``: the
        tiers' rates, for the cascade's "is there time to escalate" check.
        ``route_uses_retrieval``: the router reads retrieval scores (route after retrieval).
        ``admission``: the Generation service admits by deadline (RAGROUTE_ADMISSION); then a
        tier that times out without a word is taken for stuck and skipped for a while.
        ``feedback``: where each answer's record is kept for ``POST /feedback`` (feedback.py)."""
        self.stages = stages
        self.cache = cache
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.budget = budget or BudgetProfile.from_env({}, gpu=False)
        self.runner = TierRunner(stages, cfg, self.budget, tiers, tier_configs or {}, stall_detection=admission)
        self.prepare = Preparation(self.runner, cache, cfg, fingerprint, route_uses_retrieval)
        self.responder = Responder(stages, cache, self.budget, safety or SafetyConfig(), feedback)

    @property
    def tiers(self) -> list[str]:
        """The configured tiers, cheapest first."""
        return self.runner.tiers

    @property
    def tier_configs(self) -> dict[str, TierConfig]:
        """The tiers' settings, with the rates measured so far."""
        return self.runner.tier_configs

    def observe_rates(self, tier: str, prefill_tok_s: float | None, decode_tok_s: float | None) -> None:
        """A tier's measured rates replace the configured ones (pipelines/query/tiers.py)."""
        self.runner.observe_rates(tier, prefill_tok_s, decode_tok_s)

    def _start(self, req: RagRequest, request_id: str, meter: Meter | None) -> RequestState:
        return RequestState(req, request_id, Deadline(self.budget), meter)

    async def run(self, req: RagRequest, request_id: str = "-", meter: Meter | None = None) -> RagResponse:
        """``meter``: counts the tokens the request costs as they are spent (the front door charges them)."""
        mode = mode_for(req.tier, self.tiers)
        r = self._start(req, request_id, meter)
        prep = await self.prepare.run(r, mode)
        if prep.hit is not None:
            return await self.responder.from_cache(r, prep)
        generation = await mode.answer(self.runner, r, prep.route, prep.ranked)
        if generation is None:
            self._refuse_if_overloaded(r)
        if generation is not None and generation.finish_reason in CUT:
            r.degrade(f"generate[{generation.tier}]: the answer was cut at the time limit; "
                      "answered with an extract of the best source")
            generation = None
        return await self.responder.finish(r, prep, generation)

    @staticmethod
    def _refuse_if_overloaded(r: RequestState) -> None:
        """No tier answered because none could in time (capacity), and the client asked for no
        degraded answer: Overloaded (503, Retry-After: when the least busy tier could start one)."""
        if r.capacity_wait_s is not None and not r.req.allow_degraded:
            raise Overloaded("no tier can answer in time (at capacity); retry later",
                             retry_after_s(r.capacity_wait_s))

    async def stream(self, req: RagRequest, request_id: str = "-", meter: Meter | None = None
                     ) -> AsyncIterator[dict[str, Any]]:
        """Events: ``meta`` (route, sources, cache) before the first token, ``token`` deltas, then
        ``done`` with the whole response (usage, cost, timings, budget, safety). A cached answer
        arrives as one token. Only a completed, good answer is cached."""
        mode = mode_for(req.tier, self.tiers)
        r = self._start(req, request_id, meter)
        prep = await self.prepare.run(r, mode)
        if prep.hit is not None:
            cached = await self.responder.from_cache(r, prep)
            yield {"event": "meta", "request_id": request_id, "route": cached.route.model_dump(),
                   "sources": [s.model_dump() for s in cached.sources], "cache": cached.cache.model_dump()}
            yield {"event": "token", "text": cached.answer}
            yield {"event": "done", "response": cached.model_dump()}
            return
        route = prep.route
        generation: TierAnswer | None = None
        sent: list[str] = []
        # A client that wants no degraded answer gets the meta event with the first words: until
        # then, a refusal for capacity can still be a 503 (nothing has been sent).
        meta: dict[str, Any] | None = None
        async for item in mode.stream(self.runner, r, route, prep.ranked):
            if isinstance(item, Begin):
                meta = {"event": "meta", "request_id": request_id,
                        "route": {"mode": mode.name, "tier": item.tier,
                                  "score": None if route.router in ("request", "cascade") else round(route.score, 6),
                                  "reason": route.reason, "path": [s.model_dump() for s in r.steps]},
                        "sources": [s.model_dump() for s in sources(prep.ranked)],
                        "cache": self.responder.miss_info(r, prep).model_dump()}
                if req.allow_degraded:
                    yield meta
                    meta = None
            elif isinstance(item, TierAnswer):
                generation = item
            else:
                if meta is not None:
                    yield meta
                    meta = None
                sent.append(item.text)
                yield {"event": "token", "text": item.text}
        if generation is None and not sent:
            self._refuse_if_overloaded(r)
        if meta is not None:
            yield meta
        if generation is not None and generation.finish_reason in CUT:
            r.degrade(f"generate[{generation.tier}]: the answer was cut at the time limit")
        if generation is None and not sent:
            text = await self.responder.extract(r, prep)
            sent.append(text)
            yield {"event": "token", "text": text}
        elif generation is not None and (suffix := cite.missing("".join(sent), prep.ranked)):
            sent.append(suffix)  # the sources that support the answer, when it cites none of them
            yield {"event": "token", "text": suffix}
        response = await self.responder.finish(r, prep, generation, streamed="".join(sent).strip() if sent else None)
        yield {"event": "done", "response": response.model_dump()}
