"""Routing service: query complexity score -> tier, with a human-readable reason.

The router (RAGROUTE_ROUTER, RAGROUTE_ROUTER_PATH) is loaded and verified at start-up: a
corrupt artifact, or one trained on another embedding model or dimension, stops the service
with the reason, unless RAGROUTE_ROUTER_FALLBACK names a router to use instead.
"""

from __future__ import annotations

import logging

import bentoml

from common.errors import RagrouteError
from pipelines.api import wire
from pipelines.config import RoutingConfig
from services._common import (
    RUNNER_CONNECTION, STAGE_LOGGING, TIMEOUT_S, refuse_to_start, setup_logging, to_bentoml,
    yield_to_generation)

log = logging.getLogger(__name__)


@bentoml.service(name="ragroute-routing", traffic={"timeout": TIMEOUT_S["routing"]},
                 runner_connection=RUNNER_CONNECTION, logging=STAGE_LOGGING)
class Routing:
    def __init__(self) -> None:
        from pipelines import models
        from pipelines.query.route import load_router

        setup_logging()
        yield_to_generation()
        with refuse_to_start("routing"):
            self.cfg = RoutingConfig.from_env()
            self.loaded = load_router(self.cfg, dimension=models.embedder_dimension(self.cfg.embed_model))
        log.info("router: %s", self.loaded.source)

    @bentoml.api(input_spec=wire.RouteRequest)  # async: a decision takes microseconds, less than a thread hop
    async def route(self, query: str, query_vector: list[float] | None = None,
                    retrieval_scores: list[float] | None = None, threshold: float | None = None) -> dict:
        """``threshold``: decide at this score instead of the router's own (a routed cascade's)."""
        from pipelines.query.route import QueryFeatures, decide

        features = QueryFeatures(query_vector=query_vector, retrieval_scores=tuple(retrieval_scores or ()))
        try:
            chosen = self.loaded.threshold if threshold is None else threshold
            return decide(self.loaded.router, query, features, chosen).model_dump()
        except RagrouteError as exc:
            raise to_bentoml(exc) from None

    @bentoml.api
    def info(self) -> dict:
        """The router in use, its threshold and (for an artifact) its manifest without weights."""
        artifact = self.loaded.artifact
        return {"router": self.loaded.router.name, "threshold": self.loaded.threshold, "source": self.loaded.source,
                "manifest": artifact.manifest.model_dump() if artifact is not None else None}
