"""Retrieval service: hybrid (dense + BM25) search over named collections: verified FAISS indexes,
and collections in Milvus (index/milvus.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import bentoml
from annotated_types import MaxLen

from common.errors import RagrouteError
from pipelines.api import wire
from pipelines.config import RetrievalConfig
from services._common import (
    RUNNER_CONNECTION, STAGE_LOGGING, TIMEOUT_S, refuse_to_start, setup_logging, to_bentoml,
    yield_to_generation)

INLINE_SEARCH_MAX = 20_000  # chunks; above this a search runs off the event loop
Collection = Annotated[str, MaxLen(64)]


def _inline(manifest) -> bool:
    """A small FAISS index is searched on the event loop; a large one, or Milvus (a network call), in a thread."""
    return manifest.backend == "faiss" and manifest.vector_count <= INLINE_SEARCH_MAX


@bentoml.service(name="ragroute-retrieval", traffic={"timeout": TIMEOUT_S["retrieval"]},
                 runner_connection=RUNNER_CONNECTION, logging=STAGE_LOGGING)
class Retrieval:
    def __init__(self) -> None:
        from pipelines.indexing.build import ensure_default_index
        from pipelines.query.retrieve import open_collections, search  # FAISS and BM25 load in this service only

        setup_logging()
        yield_to_generation()
        # Refuses to start (ArtifactError) on a manifest/model mismatch or a corrupt default index;
        # a broken extra collection is refused alone (index/collections.py).
        with refuse_to_start("retrieval"):
            cfg = RetrievalConfig.from_env()
            ensure_default_index(cfg)  # the demo index, built on first start when no index is configured
            self.search_cfg = cfg.search
            self.collections = open_collections(cfg)
        self._search = search

    # async: on the demo index a search takes well under a millisecond, less than the thread hop a
    # sync API costs (evals/hops.py); a large index's search (BM25 scores every chunk) and a Milvus
    # search run in a thread so the event loop keeps serving.
    @bentoml.api(input_spec=wire.SearchRequest)
    async def search(self, vector: list[float], n: int = 20, query: str = "", collection: str = "default") -> dict:
        """{"index_version": str, "hits": [ScoredChunk, ...]} best first. With the query's text, the
        configured hybrid search (RAGROUTE_RETRIEVAL) fuses BM25's best with the vector's."""
        try:
            store = self.collections.get(collection)
            if _inline(store.manifest):
                hits = self._search(store, self.search_cfg, vector, query, n)
            else:
                hits = await asyncio.to_thread(self._search, store, self.search_cfg, vector, query, n)
        except RagrouteError as exc:
            raise to_bentoml(exc) from None
        return {"index_version": store.manifest.index_version, "hits": [h.model_dump() for h in hits]}

    @bentoml.api(input_spec=wire.SearchTextRequest)
    async def search_text(self, query: str, n: int = 20, collection: str = "default") -> dict:
        """Lexical (BM25) search over the chunk store: the fallback when embedding is unavailable."""
        try:
            store = self.collections.get(collection)
            hits = store.search_text(query, n) if _inline(store.manifest) else await asyncio.to_thread(
                store.search_text, query, n)
        except RagrouteError as exc:
            raise to_bentoml(exc) from None
        return {"index_version": store.manifest.index_version, "hits": [h.model_dump() for h in hits]}

    @bentoml.api
    def info(self, collection: Collection = "default") -> dict:
        try:
            return self.collections.get(collection).manifest.model_dump()
        except RagrouteError as exc:
            raise to_bentoml(exc) from None

    @bentoml.api
    def collections_info(self, rescan: bool = False) -> list[dict]:
        """Every collection served: name, index_version, counts, source (``rescan``: look for new ones first)."""
        if rescan:
            self.collections.rescan()
        return self.collections.describe()
