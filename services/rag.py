"""RAG entry service: ``rag_query``, composing the five stage services with bentoml.depends.

    bentoml serve services.rag:RAG
"""

from __future__ import annotations

import logging
import uuid

import bentoml
import numpy as np

from pipelines.config import RagConfig
from pipelines.errors import RagrouteError, StageError
from pipelines.query.cache import make_cache
from pipelines.query.pipeline import QueryPipeline
from pipelines.query.route import QueryFeatures
from pipelines.records import Generation as GenerationRecord
from pipelines.records import RouteDecision, ScoredChunk
from pipelines.schema import RagRequest, RagResponse
from services._common import TIMEOUT_S, error_response, setup_logging
from services.embedding import Embedding
from services.generation import Generation
from services.reranking import Reranking
from services.retrieval import Retrieval
from services.routing import Routing

log = logging.getLogger(__name__)


class _RemoteStages:
    """:class:`pipelines.query.pipeline.Stages` over the dependency services.

    Any failure of a dependency call becomes a StageError naming the stage.
    """

    def __init__(self, svc: RAG) -> None:
        self.svc = svc
        self._index_version: str | None = None

    async def _call(self, stage: str, method, *args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every dependency failure is reported as that stage's
            raise StageError(stage, f"{type(exc).__name__}: {exc}") from exc

    async def index_version(self) -> str:
        if self._index_version is None:
            info = await self._call("retrieve", self.svc.retrieval.to_async.info)
            self._index_version = info["index_version"]
        return self._index_version

    async def embed(self, text: str) -> np.ndarray:
        vectors = await self._call("embed", self.svc.embedding.to_async.encode, [text])
        return np.asarray(vectors, dtype=np.float32)[0]

    async def retrieve(self, vector: np.ndarray, n: int) -> tuple[list[ScoredChunk], str]:
        out = await self._call("retrieve", self.svc.retrieval.to_async.search, vector=vector.tolist(), n=n)
        self._index_version = out["index_version"]
        return [ScoredChunk.model_validate(h) for h in out["hits"]], out["index_version"]

    async def rerank(self, query: str, candidates: list[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        out = await self._call("rerank", self.svc.reranking.to_async.rerank, query=query,
                               candidates=candidates, top_k=top_k)
        return [ScoredChunk.model_validate(c) for c in out]

    async def route(self, query: str, features: QueryFeatures) -> RouteDecision:
        out = await self._call("route", self.svc.routing.to_async.route, query=query,
                               query_vector=list(features.query_vector or []) or None,
                               retrieval_scores=list(features.retrieval_scores))
        return RouteDecision.model_validate(out)

    async def generate(self, tier: str, query: str, sources: list[ScoredChunk]) -> GenerationRecord:
        out = await self._call(f"generate[{tier}]", self.svc.generation.to_async.generate,
                               tier=tier, query=query, sources=sources)
        return GenerationRecord.model_validate(out)


@bentoml.service(name="ragroute", traffic={"timeout": TIMEOUT_S["rag"]})
class RAG:
    embedding = bentoml.depends(Embedding)
    retrieval = bentoml.depends(Retrieval)
    reranking = bentoml.depends(Reranking)
    routing = bentoml.depends(Routing)
    generation = bentoml.depends(Generation)

    def __init__(self) -> None:
        setup_logging()
        self.cfg = RagConfig.from_env()
        self.pipeline = QueryPipeline(_RemoteStages(self), make_cache(self.cfg.cache), self.cfg)

    async def __is_ready__(self) -> bool:
        # bentoml 1.4.39: while a dependency is still starting, the caller's /readyz hangs until
        # traffic.timeout (and then blocks shutdown). Ask each dependency with a short timeout.
        for dep in (self.embedding, self.retrieval, self.reranking, self.routing, self.generation):
            try:
                if not await dep.is_ready(3):
                    return False
            except Exception:  # noqa: BLE001 - not reachable yet means not ready
                return False
        return True

    @bentoml.api(input_spec=RagRequest)
    async def rag_query(self, query: str, top_k: int = 4, tier: str = "auto", cache: str = "use") -> RagResponse:
        """Answer a question from the index with the cheapest adequate model."""
        request_id = uuid.uuid4().hex[:12]
        req = RagRequest(query=query, top_k=top_k, tier=tier, cache=cache)  # type: ignore[arg-type]
        try:
            return await self.pipeline.run(req, request_id)
        except RagrouteError as exc:
            log.warning("request %s failed: %s", request_id, exc)
            return error_response(exc)  # type: ignore[return-value]
