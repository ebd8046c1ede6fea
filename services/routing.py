"""Routing service: query complexity score -> tier, with a human-readable reason."""

from __future__ import annotations

from typing import Annotated

import bentoml
from annotated_types import MaxLen

from pipelines.config import RoutingConfig
from services._common import RUNNER_CONNECTION, TIMEOUT_S, setup_logging


@bentoml.service(name="ragroute-routing", traffic={"timeout": TIMEOUT_S["routing"]},
                 runner_connection=RUNNER_CONNECTION)
class Routing:
    def __init__(self) -> None:
        from pipelines.query.route import make_router

        setup_logging()
        self.cfg = RoutingConfig.from_env()
        self.router = make_router(self.cfg.router)

    @bentoml.api
    def route(self, query: Annotated[str, MaxLen(20_000)],
              query_vector: Annotated[list[float], MaxLen(8192)] | None = None,
              retrieval_scores: Annotated[list[float], MaxLen(1000)] = []) -> dict:  # noqa: B006 - pydantic copies it
        from pipelines.query.route import QueryFeatures, decide

        features = QueryFeatures(query_vector=query_vector, retrieval_scores=tuple(retrieval_scores))
        return decide(self.router, query, features, self.cfg.threshold).model_dump()
