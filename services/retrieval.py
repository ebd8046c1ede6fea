"""Retrieval service: FAISS search over a verified index directory."""

from __future__ import annotations

from typing import Annotated

import bentoml
from annotated_types import Ge, Le, MaxLen

from pipelines.config import RetrievalConfig
from pipelines.errors import RagrouteError
from services._common import RUNNER_CONNECTION, STAGE_LOGGING, TIMEOUT_S, refuse_to_start, setup_logging, to_bentoml


@bentoml.service(name="ragroute-retrieval", traffic={"timeout": TIMEOUT_S["retrieval"]},
                 runner_connection=RUNNER_CONNECTION, logging=STAGE_LOGGING)
class Retrieval:
    def __init__(self) -> None:
        from pipelines.query.retrieve import open_index

        setup_logging()
        # Refuses to start (ArtifactError) on a manifest/model mismatch or a corrupt index.
        with refuse_to_start("retrieval"):
            self.store = open_index(RetrievalConfig.from_env())

    # async: the search takes well under a millisecond on the demo index, less than the thread hop a
    # sync API costs (evals/hops.py); FAISS runs its own threads for large indexes.
    @bentoml.api
    async def search(self, vector: Annotated[list[float], MaxLen(8192)], n: Annotated[int, Ge(1), Le(1000)] = 20) -> dict:
        """{"index_version": str, "hits": [ScoredChunk, ...]} best first."""
        try:
            hits = self.store.search(vector, n)
        except RagrouteError as exc:
            raise to_bentoml(exc) from None
        return {"index_version": self.store.manifest.index_version, "hits": [h.model_dump() for h in hits]}

    @bentoml.api
    async def search_text(self, query: Annotated[str, MaxLen(20_000)], n: Annotated[int, Ge(1), Le(1000)] = 20) -> dict:
        """Lexical (BM25) search over the chunk store: the fallback when embedding is unavailable."""
        hits = self.store.search_text(query, n)
        return {"index_version": self.store.manifest.index_version, "hits": [h.model_dump() for h in hits]}

    @bentoml.api
    def info(self) -> dict:
        return self.store.manifest.model_dump()

