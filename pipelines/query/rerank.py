"""Rerank stage: reorder retrieval candidates for the query.

``hybrid`` (default, no download): min-max normalized BM25 over the candidate set blended
with the dense cosine similarity from retrieval. ``cross-encoder``: a sentence-transformers
CrossEncoder from a local path or Hugging Face id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from index.lexical import Bm25Index
from pipelines.config import RerankConfig
from pipelines.errors import ConfigError
from pipelines.records import ScoredChunk


class Reranker(Protocol):
    name: str
    blocking: bool  # a model's forward pass: run it off the event loop

    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]: ...


def bm25_scores(query: str, documents: Sequence[str]) -> list[float]:
    """Okapi BM25 of ``query`` against each document, IDF taken over ``documents``."""
    return Bm25Index(documents).scores(query).tolist()


def _minmax(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [0.0] * len(values) if hi - lo < 1e-12 else [(v - lo) / (hi - lo) for v in values]


def _ranked(candidates: Sequence[ScoredChunk], scores: Sequence[float], top_k: int) -> list[ScoredChunk]:
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))[:top_k]
    return [candidates[i].model_copy(update={"score": float(scores[i])}) for i in order]


class HybridReranker:
    name = "hybrid"
    blocking = False

    def __init__(self, dense_weight: float = 0.5) -> None:
        self.dense_weight = dense_weight

    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        if not candidates:
            return []
        lexical = _minmax(bm25_scores(query, [f"{c.chunk.title} {c.chunk.text}" for c in candidates]))
        dense = _minmax([c.dense_score for c in candidates])
        w = self.dense_weight
        return _ranked(candidates, [w * d + (1 - w) * lx for d, lx in zip(dense, lexical, strict=True)], top_k)


class CrossEncoderReranker:
    name = "cross-encoder"
    blocking = True

    def __init__(self, model: str, device: str = "auto") -> None:
        from sentence_transformers import CrossEncoder

        from pipelines.query.embed import pick_device

        self._model = CrossEncoder(model, device=pick_device(device))

    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        if not candidates:
            return []
        scores = self._model.predict([(query, c.chunk.text) for c in candidates], convert_to_numpy=True)
        return _ranked(candidates, [float(s) for s in scores], top_k)


def make_reranker(cfg: RerankConfig) -> Reranker:
    if cfg.scorer == "hybrid":
        return HybridReranker(cfg.dense_weight)
    if cfg.scorer == "cross-encoder":
        return CrossEncoderReranker(cfg.cross_encoder)
    raise ConfigError(f"RAGROUTE_RERANKER={cfg.scorer!r} is not one of hybrid, cross-encoder")
