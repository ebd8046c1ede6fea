"""``cascade``: the cheapest tier answers first; keep its answer or escalate to the next tier.

With a routed start (``RAGROUTE_CASCADE_START=routed``) the router is asked too, and a question
it scores hard starts at the large tier. A cascade judges a whole answer before it can be shown:
when streaming, the tiers before the last one answer first (not streamed); an escalation to the
last tier is streamed.

Escalate when the answer's confidence signal is below the calibrated threshold (``ragroute
router calibrate --cascade``) and the time left can fit the next tier's answer (estimated from
its configured prefill/decode rates). An answer without a confidence signal (an engine that
returns no log-probabilities) or an empty one escalates.

Signals (``RAGROUTE_CASCADE_SIGNAL``): ``logprob_mean`` / ``logprob_min``, the mean / lowest
token log-probability of the answer; ``grounded``, the share of the answer's content words
found in the sources it was given (the safety stage's grounding measure), which needs no
log-probabilities; ``selfcheck``, 1 / (1 + the problems the answer shows on its own: arithmetic
that does not compute, cut off at the token limit, unsure wording; pipelines/query/selfcheck.py),
which the reason names; ``coverage``, the share of the question's terms that the answer's first
statement contains (pipelines/query/evidence.py), for an extractive small tier: its quote has no
log-probabilities and is grounded by construction, but a quote that shares few of the question's
words seldom answers it (the reason names the missing terms). How well each signal picks the
answers worth escalating, on SQuAD with the cpu tiers and on RouteLLM's GSM8K data, is measured
by evals/routing_live.py and evals/routing_offline.py (docs/routing.md, "Routing and cascades"); coverage,
with the extractive tier, by evals/answer_quality.py (docs/results.md, "Answer quality").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from common.errors import BadRequest, StageError
from common.records import RouteDecision, ScoredChunk, TierAnswer
from pipelines.config import CascadeConfig, TierConfig
from pipelines.query import evidence, selfcheck
from pipelines.query.generate import Delta
from pipelines.query.modes.base import Event, Mode
from pipelines.query.route import QueryFeatures
from pipelines.query.safety import grounding
from pipelines.query.state import RequestState
from pipelines.query.tiers import CUT, NO_TIER, Begin, TierRunner

log = logging.getLogger(__name__)

MARGIN_MS = 100.0  # request overhead on top of the estimate (the service call, prompt building)


def measure(gen: TierAnswer, signal: str, sources: Sequence[ScoredChunk] = (),
            question: str = "") -> tuple[float | None, str]:
    """``signal`` of the answer ``gen`` to ``question`` (which ``coverage`` reads), written from
    ``sources`` (which ``grounded`` reads), and what it saw, for the reason (``selfcheck`` names
    the problems it found, ``coverage`` the question's terms the answer lacks)."""
    if signal == "coverage":
        found = evidence.coverage(question, gen.text)
        seen = f"missing {', '.join(found.missing)}" if found.missing else "every term of the question"
        return found.value, f" ({seen})"
    if signal == "grounded":
        return round(grounding(gen.text, sources), 6), ""
    if signal == "selfcheck":
        found = selfcheck.check(gen.text, gen.finish_reason)
        seen = "; ".join(found.problems) or f"no problem found in {found.equations} equation(s)"
        return round(found.confidence, 6), f" ({seen})"
    return (gen.logprob_mean if signal == "logprob_mean" else gen.logprob_min), ""


def estimate_ms(tier: TierConfig | None, tokens_in: int, tokens_out: int) -> float:
    """How long ``tier`` needs for a prompt and answer of these sizes (its configured rates)."""
    if tier is None:
        return 0.0
    return (tokens_in / tier.prefill_tok_s + tokens_out / tier.decode_tok_s) * 1000 + MARGIN_MS


@dataclass(frozen=True)
class CascadeVerdict:
    escalate: bool
    outcome: str  # accepted | escalated | kept
    confidence: float | None
    reason: str


def judge(gen: TierAnswer, cfg: CascadeConfig, next_tier: TierConfig | None, next_name: str,
          time_left_ms: float, sources: Sequence[ScoredChunk] = (), question: str = "") -> CascadeVerdict:
    """Keep ``gen`` (the answer to ``question``, written from ``sources``) or escalate to
    ``next_name``, given the time left for generation."""
    conf, seen = measure(gen, cfg.signal, sources, question)
    if not gen.text.strip():
        why = "empty answer"
    elif conf is None:
        why = f"no {cfg.signal} from the {gen.engine} engine"
    elif conf >= cfg.threshold:
        return CascadeVerdict(False, "accepted", conf,
                       f"{cfg.signal} {conf:.3f} >= threshold {cfg.threshold:.3f}{seen}")
    else:
        why = f"{cfg.signal} {conf:.3f} < threshold {cfg.threshold:.3f}{seen}"
    # the next tier writes an answer about as long as this one (its token limit caps it)
    tokens_out = min(gen.tokens_out or 1, next_tier.max_tokens if next_tier else gen.tokens_out or 1)
    need = estimate_ms(next_tier, gen.tokens_in, max(tokens_out, 8))
    if time_left_ms < need:
        return CascadeVerdict(False, "kept", conf, f"{why}, but {time_left_ms:.0f} ms left and {next_name} needs "
                                            f"~{need:.0f} ms: not escalated")
    return CascadeVerdict(True, "escalated", conf, f"{why}: escalated to {next_name}")


class Cascade(Mode):
    name = "cascade"

    def validate(self, tiers: Sequence[str]) -> None:
        if len(tiers) < 2:
            raise BadRequest("tier", "cascade needs at least two configured tiers")

    def asks_router(self, run: TierRunner) -> bool:
        return run.cfg.cascade.start == "routed"

    def requested(self, run: TierRunner, r: RequestState) -> RouteDecision:
        cfg = run.cfg.cascade
        return RouteDecision(tier=run.tiers[0], score=0.0, threshold=cfg.threshold, router="cascade",
                             reason=f"cascade over {' -> '.join(run.tiers)}: escalate while {cfg.signal} < "
                                    f"{cfg.threshold:.3f} ({cfg.source})")

    async def route(self, run: TierRunner, r: RequestState, features: QueryFeatures) -> RouteDecision:
        """A routed start, decided at the cascade's own calibrated threshold (None: the router's)."""
        c = run.cfg.cascade
        try:
            decision = await run.ask_router(r, features, c.route_threshold)
        except StageError as exc:  # the cascade itself still works: it starts at the cheapest tier
            log.warning("request %s: %s; the cascade starts at the cheapest tier", r.id, exc)
            r.warnings.append(f"{exc}; the cascade started at the cheapest tier")
            start = self.requested(run, r)
            return start.model_copy(update={"reason": f"router unavailable; {start.reason}"})
        return decision.model_copy(update={"reason": (
            f"cascade from {decision.tier} (routed start) over {' -> '.join(run.tiers)}: escalate while "
            f"{c.signal} < {c.threshold:.3f} ({c.source}); {decision.reason}")})

    async def _head(self, run: TierRunner, r: RequestState, route: RouteDecision,
                    ranked: list[ScoredChunk]) -> tuple[TierAnswer | None, str | None]:
        """Ask the tiers before the last one, from ``route.tier`` (the cheapest, or where a routed
        start begins) up: (the answer to keep, None) once one is confident enough (or there is no
        time to go on), else (the last answer, the tier to escalate to). A tier that fails
        escalates."""
        cfg, tiers = run.cfg.cascade, run.tiers
        answer: TierAnswer | None = None
        first = tiers.index(route.tier) if route.tier in tiers else 0
        for i, tier in enumerate(tiers[:-1]):
            if i < first:
                continue
            nxt = tiers[i + 1]
            gen = await run.generate(r, tier, ranked, fallbacks=False)
            if gen is None:
                continue  # failed (recorded, degraded): the next tier answers
            if gen.finish_reason in CUT:
                r.amend_step(outcome="failed", reason=f"cut at the time limit ({gen.finish_reason})")
                continue
            verdict = judge(gen, cfg, run.tier_configs.get(nxt), nxt,
                            r.deadline.budget_ms("generate", reserve_ms=run.safety_ms), ranked, r.req.query)
            r.amend_step(outcome=verdict.outcome, reason=verdict.reason, confidence=verdict.confidence,
                         threshold=cfg.threshold)
            log.info("request %s: cascade %s: %s", r.id, tier, verdict.reason)
            if not verdict.escalate:
                if verdict.outcome == "kept":
                    r.warnings.append(f"cascade: {verdict.reason}")
                return gen, None
            answer = gen
        return answer, tiers[-1]

    @staticmethod
    def _keep_if_failed(r: RequestState, generation: TierAnswer | None, previous: TierAnswer | None,
                        tier: str) -> TierAnswer | None:
        """After an escalation to ``tier`` produced nothing, the previous tier's answer stands
        (the failure is recorded and flagged by the tier runner)."""
        if generation is not None:
            return generation
        if previous is None:
            r.degrade(NO_TIER)
            return None
        for i in range(len(r.steps) - 1, -1, -1):
            if r.steps[i].tier == previous.tier and r.steps[i].outcome == "escalated":
                r.steps[i] = r.steps[i].model_copy(update={
                    "outcome": "kept", "reason": f"{r.steps[i].reason}; {tier} failed, so this answer was kept"})
                break
        return previous

    async def answer(self, run: TierRunner, r: RequestState, route: RouteDecision,
                     ranked: list[ScoredChunk]) -> TierAnswer | None:
        head, escalate_to = await self._head(run, r, route, ranked)
        if escalate_to is None:
            return head
        # no tier asked yet: a routed start at the top tier, which falls back like auto
        generation = await run.generate(r, escalate_to, ranked, fallbacks=not r.steps)
        return self._keep_if_failed(r, generation, head, escalate_to)

    async def stream(self, run: TierRunner, r: RequestState, route: RouteDecision,
                     ranked: list[ScoredChunk]) -> AsyncIterator[Event]:
        head, escalate_to = await self._head(run, r, route, ranked)
        if escalate_to is None:  # accepted (or kept): the whole answer at once
            assert head is not None
            yield Begin(head.tier)
            yield Delta(head.text)
            yield head
            return
        yield Begin(escalate_to)
        generation: TierAnswer | None = None
        sent = False
        async for item in run.generate_stream(r, escalate_to, ranked, fallbacks=not r.steps):
            if isinstance(item, TierAnswer):
                generation = item
            else:
                sent = True
            yield item
        if not sent:
            generation = self._keep_if_failed(r, generation, head, escalate_to)
            if generation is not None:
                yield Delta(generation.text)
                yield generation
