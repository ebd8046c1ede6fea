"""Reranking service: reorder retrieval candidates (hybrid BM25+dense, or a CrossEncoder)."""

from __future__ import annotations

import asyncio
import concurrent.futures

import bentoml

from common.records import ScoredChunk
from pipelines.api import wire
from pipelines.config import RerankConfig
from services._common import (
    RUNNER_CONNECTION, STAGE_LOGGING, TIMEOUT_S, refuse_to_start, setup_logging, yield_to_generation)


@bentoml.service(name="ragroute-reranking", traffic={"timeout": TIMEOUT_S["reranking"]},
                 runner_connection=RUNNER_CONNECTION, logging=STAGE_LOGGING)
class Reranking:
    def __init__(self) -> None:
        from pipelines.query.rerank import make_reranker

        setup_logging()
        yield_to_generation()
        with refuse_to_start("reranking"):
            self.reranker = make_reranker(RerankConfig.from_env())
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rerank")

    @bentoml.api(input_spec=wire.RerankRequest)
    async def rerank(self, query: str, candidates: list[ScoredChunk], top_k: int = 4) -> list[dict]:
        # The hybrid scorer takes ~2 ms for 20 candidates: inline, cheaper than a thread hop. A
        # cross-encoder's forward pass runs on one worker thread, off the event loop.
        if self.reranker.blocking:
            ranked = await asyncio.get_running_loop().run_in_executor(self._executor, self.reranker.rerank, query,
                                                                      candidates, top_k)
        else:
            ranked = self.reranker.rerank(query, candidates, top_k)
        return [c.model_dump() for c in ranked]
