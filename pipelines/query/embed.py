"""Embed stage: text -> L2-normalized float32 vectors (sentence-transformers)."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from pipelines import models
from pipelines.config import EmbeddingConfig

log = logging.getLogger(__name__)


class Embedder(Protocol):
    model_id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalized."""
        ...


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    """A sentence-transformers model: a packaged name, a local path or a Hugging Face id."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_id = cfg.model
        self.batch_size = cfg.batch_size
        self.device = pick_device(cfg.device)
        local = models.packaged_embedder_path(cfg.model)
        self._model = SentenceTransformer(str(local or cfg.model), device=self.device)
        self.dim = int(self._model.get_embedding_dimension())
        log.info("embedder %s loaded on %s (dim %d)", self.model_id, self.device, self.dim)

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
