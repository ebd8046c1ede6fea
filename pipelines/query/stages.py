"""What the query path needs from the stage services: the :class:`Stages` protocol.

The RAG service implements it with calls to the other BentoML services
(services/remote_stages.py); unit tests with plain fakes (tests/fakes.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import numpy as np

from common.records import RouteDecision, ScoredChunk, TierAnswer
from pipelines.query.generate import Delta
from pipelines.query.route import QueryFeatures


class Stages(Protocol):
    async def index_version(self, collection: str = "default") -> str:
        """The collection's served index version; NotFound (404) when there is no such collection."""
        ...

    async def embed(self, text: str) -> np.ndarray: ...

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text (the extractive fallback scores sentences with them)."""
        ...

    async def retrieve(self, vector: np.ndarray, n: int, query: str = "",
                       collection: str = "default") -> tuple[list[ScoredChunk], str]:
        """Candidates and the version of the index they came from; with ``query``, hybrid search."""
        ...

    async def retrieve_text(self, query: str, n: int, collection: str = "default") -> tuple[list[ScoredChunk], str]:
        """Lexical (BM25) candidates: the fallback when no query embedding is available."""
        ...

    async def rerank(self, query: str, candidates: list[ScoredChunk], top_k: int) -> list[ScoredChunk]: ...

    async def route(self, query: str, features: QueryFeatures, threshold: float | None = None) -> RouteDecision:
        """``threshold``: decide at this score instead of the router's own threshold."""
        ...

    async def generate(self, tier: str, query: str, sources: list[ScoredChunk], budget_ms: float) -> TierAnswer:
        """``budget_ms``: the time the answer may take; the engine turns it into a token limit."""
        ...

    def generate_stream(self, tier: str, query: str, sources: list[ScoredChunk],
                        budget_ms: float) -> AsyncIterator[Delta | TierAnswer]:
        """Text deltas, then the TierAnswer record; failures raise StageError."""
        ...
