"""What a mode is: how a request's tier is chosen, and how the answer is asked for.

A mode (``tier`` of the request: ``auto``, ``cascade``, or a configured tier) decides the
route (:meth:`Mode.route`, run alongside retrieval when :meth:`Mode.asks_router`), then answers
with the sources the pipeline prepared: :meth:`Mode.answer` for the whole answer,
:meth:`Mode.stream` for a streamed one, which yields :class:`~pipelines.query.tiers.Begin` (the
tier that will stream) before any text, then text deltas, then the TierAnswer record. The
pipeline (pipelines/query/pipeline.py) does everything around it: the cache, the stages before
generation, the extractive fallback when the mode returns nothing, safety and the response.

This class is the fixed-tier mode: the client named the tier; it answers, falling back to the
cheapest tier when it fails. Other modes override what differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from common.records import RouteDecision, ScoredChunk, TierAnswer
from pipelines.query.generate import Delta
from pipelines.query.route import QueryFeatures
from pipelines.query.state import RequestState
from pipelines.query.tiers import Begin, TierRunner

Event = Begin | Delta | TierAnswer


class Mode:
    name = "fixed"  # route.mode in the response
    routes = False  # the tier is the router's choice (a busy tier then hands over: load-aware routing)

    def validate(self, tiers: Sequence[str]) -> None:
        """Raise BadRequest (field ``tier``) when the configured tiers cannot serve this mode."""

    def asks_router(self, run: TierRunner) -> bool:
        """Whether the route needs the Routing stage (then it runs alongside retrieval)."""
        return False

    def requested(self, run: TierRunner, r: RequestState) -> RouteDecision:
        """The route without the router."""
        return RouteDecision(tier=r.req.tier, score=0.0, threshold=0.0, router="request",
                             reason=f"tier {r.req.tier!r} requested by the client")

    async def route(self, run: TierRunner, r: RequestState, features: QueryFeatures) -> RouteDecision:
        """The route, asking the router (only called when :meth:`asks_router`)."""
        return self.requested(run, r)

    def routed(self, route: RouteDecision) -> bool:
        """Whether the router chose this route's tier (not the client, nor the default after a
        router failure): a busy tier then hands over without degrading the answer."""
        return self.routes and route.router != "fallback"

    async def answer(self, run: TierRunner, r: RequestState, route: RouteDecision,
                     ranked: list[ScoredChunk]) -> TierAnswer | None:
        """The answer, or None when no tier answered (the pipeline then extracts one)."""
        return await run.generate(r, route.tier, ranked, routed=self.routed(route))

    async def stream(self, run: TierRunner, r: RequestState, route: RouteDecision,
                     ranked: list[ScoredChunk]) -> AsyncIterator[Event]:
        yield Begin(route.tier)
        async for item in run.generate_stream(r, route.tier, ranked, routed=self.routed(route)):
            yield item
