"""The pipeline's stages in one process, over the real components (embedder, FAISS index,
reranker, router, generator): for evals, benchmarks and integration tests that need the whole
query path without starting BentoML services. The services do the same work behind HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from common.errors import NotFound, RagrouteError, StageError, public_message
from common.records import RouteDecision, ScoredChunk, TierAnswer
from index.store import IndexStore
from pipelines.config import SearchConfig
from pipelines.query.embed import Embedder
from pipelines.query.generate import Delta, Generator
from pipelines.query.rerank import Reranker
from pipelines.query.retrieve import search
from pipelines.query.route import QueryFeatures, Router, decide


class LocalStages:
    """:class:`pipelines.query.stages.Stages` with every stage in this process. CPU-bound
    calls run in threads so the event loop (and the pipeline's timeouts) keep running."""

    def __init__(self, embedder: Embedder, store: IndexStore, reranker: Reranker, router: Router,
                 threshold: float, generator: Generator, search: SearchConfig = SearchConfig()) -> None:
        self.embedder = embedder
        self.store = store
        self.search = search
        self.reranker = reranker
        self.router = router
        self.threshold = threshold
        self.generator = generator

    async def index_version(self, collection: str = "default") -> str:
        self._check(collection)
        return self.store.manifest.index_version

    @staticmethod
    def _check(collection: str) -> None:
        if collection != "default":  # one store in process: the default collection
            raise NotFound("collection", f"{collection!r} is not a collection; valid: default")

    async def embed(self, text: str) -> np.ndarray:
        return (await self.embed_many([text]))[0]

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embedder.encode, texts)

    async def retrieve(self, vector: np.ndarray, n: int, query: str = "",
                       collection: str = "default") -> tuple[list[ScoredChunk], str]:
        self._check(collection)
        hits = await asyncio.to_thread(search, self.store, self.search, vector, query, n)
        return hits, self.store.manifest.index_version

    async def retrieve_text(self, query: str, n: int, collection: str = "default") -> tuple[list[ScoredChunk], str]:
        self._check(collection)
        return await asyncio.to_thread(self.store.search_text, query, n), self.store.manifest.index_version

    async def rerank(self, query: str, candidates: list[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        return await asyncio.to_thread(self.reranker.rerank, query, candidates, top_k)

    async def route(self, query: str, features: QueryFeatures, threshold: float | None = None) -> RouteDecision:
        return decide(self.router, query, features, self.threshold if threshold is None else threshold)

    async def generate(self, tier: str, query: str, sources: list[ScoredChunk], budget_ms: float) -> TierAnswer:
        try:
            return await self.generator.generate(tier, query, sources, budget_ms)
        except StageError:
            raise
        except RagrouteError as exc:
            raise StageError(f"generate[{tier}]", public_message(exc), repr(exc)) from exc

    async def generate_stream(self, tier: str, query: str, sources: list[ScoredChunk],
                              budget_ms: float) -> AsyncIterator[Delta | TierAnswer]:
        try:
            async for item in self.generator.stream(tier, query, sources, budget_ms):
                yield item
        except StageError:
            raise
        except RagrouteError as exc:
            raise StageError(f"generate[{tier}]", public_message(exc), repr(exc)) from exc
