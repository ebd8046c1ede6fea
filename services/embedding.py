"""Embedding service: texts -> L2-normalized float32 vectors.

Two APIs over one model: ``embed`` for the query path (a lone question runs at once; questions
that arrive together share a model run) and ``encode`` for bulk work (BentoML's adaptive
batching, which may hold a request to fill a batch: worth it for throughput, not for latency).
"""

from __future__ import annotations

from typing import Annotated

import bentoml
import numpy as np
from annotated_types import MaxLen, MinLen

from pipelines.config import EmbeddingConfig
from services._common import (
    RUNNER_CONNECTION, STAGE_LOGGING, TIMEOUT_S, refuse_to_start, setup_logging, yield_to_generation)

Text = Annotated[str, MaxLen(20_000)]


@bentoml.service(name="ragroute-embedding", traffic={"timeout": TIMEOUT_S["embedding"]},
                 runner_connection=RUNNER_CONNECTION, logging=STAGE_LOGGING)
class Embedding:
    def __init__(self) -> None:
        from pipelines.query.embed import GreedyBatcher, SentenceTransformerEmbedder

        setup_logging()
        yield_to_generation()
        with refuse_to_start("embedding"):
            self.cfg = EmbeddingConfig.from_env()
            self.embedder = SentenceTransformerEmbedder(self.cfg)
        self.batcher = GreedyBatcher(self.embedder.encode, max_batch=self.cfg.batch_size)

    @bentoml.api
    async def embed(self, texts: Annotated[list[Text], MinLen(1), MaxLen(256)]) -> np.ndarray:
        """(len(texts), dim) float32 rows, L2-normalized; never held back to fill a batch."""
        return await self.batcher.encode(texts)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=5000)
    def encode(self, texts: list[Text]) -> np.ndarray:
        """The same vectors, adaptively batched across callers: for bulk embedding."""
        return self.embedder.encode(texts)

    @bentoml.api
    def info(self) -> dict:
        return {"model": self.embedder.model_id, "dimension": self.embedder.dim, "device": self.embedder.device}
