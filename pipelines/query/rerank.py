"""Rerank stage: choose the ``top_k`` sources the prompt gets from the retrieval candidates.

Scorers (``RAGROUTE_RERANKER``):

- ``fusion`` (default): keep the retrieval's fused order (dense + BM25, index/fusion.py). No
  reorderer available offline improves on it: measured by ``python -m evals.retrieval`` on
  every set it runs (SciFact, the SQuAD subset), the hybrid scorer below lowers nDCG@10, and so
  did a reranker trained here (docs/results.md "Retrieval quality"). So the default stage does not
  reorder; it only filters near-duplicates.
- ``hybrid`` (no download): min-max normalized BM25 over the candidate set blended with the
  dense cosine similarity from retrieval.
- ``cross-encoder``: a sentence-transformers CrossEncoder from a local path or Hugging Face id.

Every scorer then drops **near-duplicate passages** (:func:`distinct`): the same text under two
help topics would otherwise fill two of the prompt's few source slots (seen: sources 1 and 2
carrying one passage about default arguments).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from common.errors import ConfigError
from common.records import ScoredChunk
from index.lexical import Bm25Index
from pipelines.config import RerankConfig


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


# Share of the shorter passage's word trigrams found in the other at which it repeats it. On the
# demo corpus, passages of one topic reprinted in another (chunked at other places) share
# 0.66-1.0 of them; unrelated passages at most 0.37.
DUPLICATE_SHARE = 0.6
_WORD = re.compile(r"\w+")


def _shingles(text: str) -> frozenset[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return frozenset(zip(words, words[1:], words[2:])) if len(words) >= 3 else frozenset([tuple(words)])


def distinct(ranked: Sequence[ScoredChunk], top_k: int, threshold: float = DUPLICATE_SHARE) -> list[ScoredChunk]:
    """The first ``top_k`` of ``ranked`` that do not repeat a better-ranked one (at least
    ``threshold`` of the shorter one's word trigrams found in the other; > 1 keeps everything).

    >>> from common.records import Chunk
    >>> def c(i, text): return ScoredChunk(chunk=Chunk(id=str(i), doc_id=str(i), title="", text=text), score=0.0, dense_score=0.0)
    >>> same = "Default parameter values are evaluated from left to right when the function definition is executed."
    >>> [s.chunk.id for s in distinct([c(1, same), c(2, same + " See also."), c(3, "A lambda makes a function.")], 2)]
    ['1', '3']
    """
    kept: list[tuple[ScoredChunk, frozenset]] = []
    for candidate in ranked:
        if len(kept) == top_k:
            break
        grams = _shingles(candidate.chunk.text)
        if all(len(grams & g) < threshold * min(len(grams), len(g)) for _, g in kept):
            kept.append((candidate, grams))
    return [c for c, _ in kept]


def _ranked(candidates: Sequence[ScoredChunk], scores: Sequence[float]) -> list[ScoredChunk]:
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    return [candidates[i].model_copy(update={"score": float(scores[i])}) for i in order]


class FusionOrder:
    """The retrieval's fused order, kept (the default: see the module's note)."""

    name = "fusion"
    blocking = False

    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        return distinct(candidates, top_k)


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
        return distinct(_ranked(candidates, [w * d + (1 - w) * lx for d, lx in zip(dense, lexical, strict=True)]),
                        top_k)


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
        return distinct(_ranked(candidates, [float(s) for s in scores]), top_k)


def make_reranker(cfg: RerankConfig) -> Reranker:
    if cfg.scorer == "fusion":
        return FusionOrder()
    if cfg.scorer == "hybrid":
        return HybridReranker(cfg.dense_weight)
    if cfg.scorer == "cross-encoder":
        return CrossEncoderReranker(cfg.cross_encoder)
    raise ConfigError(f"RAGROUTE_RERANKER={cfg.scorer!r} is not one of fusion, hybrid, cross-encoder")
