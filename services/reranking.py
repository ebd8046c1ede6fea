"""Reranking service: reorder retrieval candidates (hybrid BM25+dense, or a CrossEncoder)."""

from __future__ import annotations

from typing import Annotated

import bentoml
from annotated_types import Ge, Le, MaxLen

from pipelines.config import RerankConfig
from pipelines.records import ScoredChunk
from services._common import RUNNER_CONNECTION, TIMEOUT_S, refuse_to_start, setup_logging


@bentoml.service(name="ragroute-reranking", traffic={"timeout": TIMEOUT_S["reranking"]},
                 runner_connection=RUNNER_CONNECTION)
class Reranking:
    def __init__(self) -> None:
        from pipelines.query.rerank import make_reranker

        setup_logging()
        with refuse_to_start("reranking"):
            self.reranker = make_reranker(RerankConfig.from_env())

    @bentoml.api
    def rerank(self, query: Annotated[str, MaxLen(20_000)], candidates: Annotated[list[ScoredChunk], MaxLen(1000)],
               top_k: Annotated[int, Ge(1), Le(1000)] = 4) -> list[dict]:
        return [c.model_dump() for c in self.reranker.rerank(query, candidates, top_k)]
