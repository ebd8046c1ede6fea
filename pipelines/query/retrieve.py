"""Retrieve stage: top-N chunks for a query vector from the FAISS index (see index/store.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from index.store import IndexStore
from pipelines.config import EmbeddingConfig, RetrievalConfig
from pipelines.records import ScoredChunk


class Retriever(Protocol):
    index_version: str

    def search(self, vector: np.ndarray, n: int) -> list[ScoredChunk]: ...


def open_index(cfg: RetrievalConfig) -> IndexStore:
    """Load the configured index, or build the demo index on first start when none is configured."""
    directory = cfg.index_dir
    if directory is None:
        from pipelines.indexing.build import ensure_demo_index
        from pipelines.query.embed import SentenceTransformerEmbedder

        directory = ensure_demo_index(
            cfg.demo_index_dir, lambda: SentenceTransformerEmbedder(EmbeddingConfig(model=cfg.embed_model))
        )
    return IndexStore.load(Path(directory), embedding_model=cfg.embed_model)
