"""Retrieve stage: top-N chunks for a query from the index (index/store.py): its embedding's
nearest chunks fused with BM25's best (hybrid, the default), or the embedding alone."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from common.records import ScoredChunk
from index.collections import Collections
from index.milvus import MilvusStore
from index.store import IndexStore
from pipelines.config import RetrievalConfig, SearchConfig


class Retriever(Protocol):
    index_version: str

    def search(self, vector: np.ndarray, n: int) -> list[ScoredChunk]: ...


def search(store: IndexStore | MilvusStore, cfg: SearchConfig, vector: np.ndarray | list[float], query: str,
           n: int) -> list[ScoredChunk]:
    """The best ``n`` chunks for the query; without its text, by the embedding alone."""
    if cfg.mode == "hybrid" and query.strip():
        return store.search_hybrid(vector, query, n, fusion=cfg.fusion,  # type: ignore[arg-type]
                                   depth=cfg.depth, rrf_k=cfg.rrf_k, weight=cfg.weight)
    return store.search(vector, n)


def open_collections(cfg: RetrievalConfig) -> Collections:
    """The default collection (``open_index``), those in the collections folder and, with
    RAGROUTE_MILVUS_URI, those in Milvus (index/milvus.py); then FAISS searches on
    ``cfg.faiss_threads`` threads (set after a first start's demo index build, whose embedding
    should use every core)."""
    import faiss

    collections = Collections(open_index(cfg), cfg.collections_dir, embedding_model=cfg.embed_model,
                              milvus=cfg.milvus())
    faiss.omp_set_num_threads(cfg.faiss_threads)
    return collections


def open_index(cfg: RetrievalConfig) -> IndexStore:
    """Load the default collection's index (the demo index is built by a start-up step before:
    pipelines/indexing/build.py, ensure_default_index)."""
    return IndexStore.load(cfg.default_index_dir, embedding_model=cfg.embed_model, gpu=cfg.faiss_device != "cpu")
