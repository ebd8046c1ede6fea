"""Asking the tiers: one tier's answer, with the fallback to the cheapest tier, whole or streamed.

What the modes (pipelines/query/modes/) build on. :class:`TierRunner` holds what they share:
the stages, the configured tiers (cheapest first) with their rates, the budget profile, and
the router call. :meth:`TierRunner.generate` and :meth:`TierRunner.generate_stream` try the
same tiers in the same order and record success and failure the same way (one ``route.path``
step per tier asked; a failure degrades the answer); they differ only in how the answer
arrives, and both time it with the request's one budget mechanism (pipelines/query/state.py).
A streamed answer that fails after its first words ends there (flagged): the client already
has them.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from common.errors import StageError
from common.records import RouteDecision, ScoredChunk, TierAnswer
from pipelines.breaker import Breaker
from pipelines.config import RagConfig, TierConfig
from pipelines.config.budget import BudgetProfile
from pipelines.engines.load import SAFETY_S, Capacity
from pipelines.query.generate import Delta
from pipelines.query.route import QueryFeatures
from pipelines.query.stages import Stages
from pipelines.query.state import RequestState

log = logging.getLogger(__name__)

CUT = ("deadline", "cancelled")  # finish reasons of an answer that did not complete
NO_TIER = "no tier could generate in time; answered with an extract of the best source"
NO_TIER_CAPACITY = "capacity: no tier can answer in time; answered at once with an extract of the best source"
STALL_S = 10.0  # a tier that timed out without a word is skipped this long, then probed
HINT_S = 2.0  # a tier's capacity refusal is reused this long to refuse the next requests without asking
# The Generation service's budget is this much shorter than the time the entry waits for it: its
# clock starts when the request arrives there, and a generation cut at its deadline must still
# reach the entry in time (late, it reads as a tier that stopped answering: a stuck worker).
RETURN_MS = 300.0
RETURN_SHARE = 0.05  # ... and at most this share of the budget


def service_budget(budget_ms: float) -> float:
    """The budget given to the Generation service for ``budget_ms`` of the entry's waiting."""
    return max(0.0, budget_ms - min(RETURN_MS, RETURN_SHARE * budget_ms))


class Stalled(Capacity):
    """The tier is skipped without asking it: it recently let a request time out."""


@dataclass(frozen=True)
class Begin:
    """A streaming mode knows which tier will stream the answer (the ``meta`` event goes out)."""

    tier: str


class TierRunner:
    def __init__(self, stages: Stages, cfg: RagConfig, budget: BudgetProfile, tiers: Sequence[str],
                 tier_configs: dict[str, TierConfig], stall_detection: bool = True) -> None:
        self.stages = stages
        self.cfg = cfg
        self.budget = budget
        self.tiers = list(tiers)  # configured tiers, cheapest first
        self.tier_configs = dict(tier_configs)
        # a tier that let a request time out without a word (a stuck worker, an engine far behind)
        # is skipped at once for STALL_S, then probed by one request (pipelines/breaker.py)
        self._stalled: dict[str, Breaker] = {}
        # without admission a timeout means a long queue, not a stuck worker: nothing is skipped
        self.stall_detection = stall_detection
        # the last capacity refusal per tier: (when, its estimated finish then, its wait then). In
        # a burst, the next requests are refused from it at once, without a hop to the tier that
        # would refuse them too (the estimate ages as the tier works through its queue).
        self._refusals: dict[str, tuple[float, float, float]] = {}

    def _stall(self, tier: str) -> None:
        breaker = self._stalled.setdefault(tier, Breaker(STALL_S, f"tier {tier}"))
        breaker.failed("generate", TimeoutError("no answer within the budget"))

    def _check_stalled(self, tier: str) -> None:
        breaker = self._stalled.get(tier)
        if breaker is not None and not breaker.allow():  # else closed, or this request is the probe
            raise Stalled(f"generate[{tier}]", f"the tier did not answer within a budget; skipped for "
                                               f"{breaker.retry_in():.1f} s more", breaker.retry_in())

    def _check_capacity(self, r: RequestState, tier: str) -> None:
        """Refuse at once what the tier is known to refuse: it is stalled, or it refused a request
        for capacity less than HINT_S ago with an estimate that still does not fit."""
        self._check_stalled(tier)
        hint = self._refusals.get(tier)
        if hint is None:
            return
        at, finish_s, wait_s = hint
        age = time.monotonic() - at
        if age > HINT_S:
            self._refusals.pop(tier, None)
            return
        left_s = r.deadline.budget_ms("generate", reserve_ms=self.safety_ms) / 1000
        if finish_s - age + SAFETY_S > left_s:  # the tier's own rule, on its aged estimate
            raise Capacity(f"generate[{tier}]", f"would finish in ~{finish_s - age:.1f} s, {max(0.0, left_s):.1f} s "
                                                f"left (the tier's estimate {age:.1f} s ago)", max(0.0, wait_s - age))

    def _answered(self, r: RequestState, gen: TierAnswer) -> None:
        self._refusals.pop(gen.tier, None)  # it took one: ask it again
        breaker = self._stalled.get(gen.tier)
        if breaker is not None:
            breaker.succeeded()  # the probe answered: the tier is back
        self._recorded(r, gen)

    @property
    def safety_ms(self) -> float:
        """Kept in reserve for the safety check after generation."""
        return self.budget.stages_ms["safety"]

    def observe_rates(self, tier: str, prefill_tok_s: float | None, decode_tok_s: float | None) -> None:
        """The Generation service's measured rates of ``tier`` (reported with every answer, and
        by its ``info`` at start-up) replace the configured ones in the cascade's time check."""
        cfg = self.tier_configs.get(tier)
        if cfg is not None and prefill_tok_s and decode_tok_s:
            self.tier_configs[tier] = replace(cfg, prefill_tok_s=prefill_tok_s, decode_tok_s=decode_tok_s)

    async def ask_router(self, r: RequestState, features: QueryFeatures,
                         threshold: float | None = None) -> RouteDecision:
        """The Routing stage's decision (``threshold``: decide at this score); StageError when it
        fails or is late."""
        return await r.run("route", lambda: self.stages.route(r.req.query, features, threshold))

    def attempts(self, tier: str, fallbacks: bool = True) -> list[str]:
        """The requested tier, then the cheapest one (the first configured) if it is another."""
        first = self.tiers[0] if self.tiers else "small"
        return [tier] + ([first] if tier != first and fallbacks else [])

    def _recorded(self, r: RequestState, gen: TierAnswer) -> None:
        r.step(gen.tier, "answered", gen)
        self.observe_rates(gen.tier, gen.prefill_tok_s, gen.decode_tok_s)

    def _failed(self, r: RequestState, tier: str, tiers: list[str], exc: StageError, suffix: str = "",
                routed: bool = False) -> None:
        """Record a tier's failure; it degrades the answer, except a capacity refusal of the tier
        the router chose (``routed``), which routes by load to the next tier."""
        log.warning("request %s: %s", r.id, exc)
        if isinstance(exc, Capacity):
            r.capacity_wait_s = min(exc.wait_s, r.capacity_wait_s if r.capacity_wait_s is not None else exc.wait_s)
            if exc.finish_s is not None and not isinstance(exc, Stalled):  # the tier's own estimate
                self._refusals[tier] = (time.monotonic(), exc.finish_s, exc.wait_s)
        timed_out = r.report.get("generate") is not None and r.report["generate"].outcome == "timeout"
        if timed_out and not isinstance(exc, Capacity) and self.stall_detection:
            self._stall(tier)
        elif not isinstance(exc, Stalled) and tier in self._stalled:
            self._stalled[tier].succeeded()  # the tier answered (with a refusal or an error of its own)
        r.step(tier, "failed", reason=str(exc))
        if routed and isinstance(exc, Capacity) and not suffix and tier != tiers[-1]:
            # load-aware routing: the router's tier cannot finish in time, the next one is asked;
            # not a degradation unless no generative tier answers (then the extract is flagged)
            r.warnings.append(f"load: {exc}; asked the {tiers[-1]} tier")
            return
        if not suffix and tier != tiers[-1]:
            suffix = f"; fell back to the {tiers[-1]} tier"
        r.degrade(f"{exc}{suffix}")

    async def generate(self, r: RequestState, tier: str, ranked: list[ScoredChunk], *,
                       fallbacks: bool = True, routed: bool = False) -> TierAnswer | None:
        """``tier``'s answer, or the cheapest tier's when it fails; None when none answered.
        ``fallbacks=False``: no fallback tier, and no extractive answer is implied (a cascade
        still has the previous tier's answer). ``routed``: the router chose ``tier`` (not the
        client): when it is too busy to finish in time, the cheaper tier answering is routing by
        load, not a degraded answer."""
        tiers = self.attempts(tier, fallbacks)
        for t in tiers:
            # Keep the safety check's budget in reserve; the engine turns the rest into a token limit.
            budget = r.deadline.budget_ms("generate", reserve_ms=self.safety_ms)
            try:
                self._check_capacity(r, t)
                gen = await r.run("generate",
                                  lambda: self.stages.generate(t, r.req.query, ranked, service_budget(budget)),
                                  reserve_ms=self.safety_ms, label=f"generate[{t}]")
            except StageError as exc:
                self._failed(r, t, tiers, exc, routed=routed)
                continue
            self._answered(r, gen)
            return gen
        if fallbacks:
            r.degrade(NO_TIER_CAPACITY if r.capacity_wait_s is not None else NO_TIER)
        return None

    async def generate_stream(self, r: RequestState, tier: str, ranked: list[ScoredChunk], *,
                              fallbacks: bool = True, routed: bool = False) -> AsyncIterator[Delta | TierAnswer]:
        """Like :meth:`generate`, streamed: text deltas, then the TierAnswer record. A tier that
        fails before its first words falls back; once words are out, a failure or the deadline
        ends the answer there (flagged)."""
        tiers = self.attempts(tier, fallbacks)
        for t in tiers:
            sent = False
            try:
                self._check_capacity(r, t)
                async with aclosing(r.run_stream(
                        "generate",
                        lambda budget: self.stages.generate_stream(t, r.req.query, ranked, service_budget(budget)),
                        final=lambda item: isinstance(item, TierAnswer), reserve_ms=self.safety_ms,
                        label=f"generate[{t}]")) as events:
                    async for item in events:
                        if isinstance(item, TierAnswer):
                            self._answered(r, item)
                        else:
                            if item.tokens_in or item.tokens_out:
                                r.meter.in_progress = item.tokens_in + item.tokens_out
                            if not item.text:
                                continue  # progress only
                            sent = True
                        yield item
                return
            except StageError as exc:
                if sent:  # the client has part of an answer: end it there
                    self._failed(r, t, tiers, exc, "; the streamed answer is incomplete")
                    return
                self._failed(r, t, tiers, exc, routed=routed)
        if fallbacks:
            r.degrade(NO_TIER_CAPACITY if r.capacity_wait_s is not None else NO_TIER)
