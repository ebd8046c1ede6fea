"""``auto``: the router picks the tier before generating (the configured default tier when the
router fails or is late: the answer is then flagged degraded)."""

from __future__ import annotations

import logging

from common.errors import StageError
from common.records import RouteDecision
from pipelines.query.modes.base import Mode
from pipelines.query.route import QueryFeatures
from pipelines.query.state import RequestState
from pipelines.query.tiers import TierRunner

log = logging.getLogger(__name__)


class Auto(Mode):
    name = "auto"
    routes = True

    def asks_router(self, run: TierRunner) -> bool:
        return True

    async def route(self, run: TierRunner, r: RequestState, features: QueryFeatures) -> RouteDecision:
        try:
            return await run.ask_router(r, features)
        except StageError as exc:
            default = run.cfg.default_tier
            log.warning("request %s: %s; using default tier", r.id, exc)
            r.degrade(f"{exc}; used the default tier {default!r}")
            return RouteDecision(tier=default, score=0.0, threshold=0.0, router="fallback",  # type: ignore[arg-type]
                                 reason=f"router unavailable; default tier {default!r}")
