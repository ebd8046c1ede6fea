"""Embedding service: texts -> L2-normalized float32 vectors, adaptively batched."""

from __future__ import annotations

from typing import Annotated

import bentoml
import numpy as np
from annotated_types import MaxLen

from pipelines.config import EmbeddingConfig
from services._common import RUNNER_CONNECTION, TIMEOUT_S, refuse_to_start, setup_logging


@bentoml.service(name="ragroute-embedding", traffic={"timeout": TIMEOUT_S["embedding"]},
                 runner_connection=RUNNER_CONNECTION)
class Embedding:
    def __init__(self) -> None:
        from pipelines.query.embed import SentenceTransformerEmbedder

        setup_logging()
        with refuse_to_start("embedding"):
            self.cfg = EmbeddingConfig.from_env()
            self.embedder = SentenceTransformerEmbedder(self.cfg)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=5000)
    def encode(self, texts: list[Annotated[str, MaxLen(20_000)]]) -> np.ndarray:
        """(len(texts), dim) float32 rows, L2-normalized."""
        return self.embedder.encode(texts)

    @bentoml.api
    def info(self) -> dict:
        return {"model": self.embedder.model_id, "dimension": self.embedder.dim, "device": self.embedder.device}
