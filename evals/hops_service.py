"""Services for the hop benchmark (evals/hops.py); not part of the product.

    HopProbe   calls each stage service exactly as the RAG service does (the same
               ``RemoteStages`` client code, from a service started the same way) and reports
               the latencies it sees; ``target: noop`` sends the same calls to NoopStages.
    NoopStages one no-op API per stage call, with the request and response shapes of the real
               one: the framework's floor for a hop.
    NoopRag    ``rag_query`` with the real request/response shapes that answers a canned
               response (RAGROUTE_NOOP_RESPONSE: a JSON file): the floor for a cache hit.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from types import SimpleNamespace
from typing import Annotated, Literal

import bentoml
import numpy as np
from annotated_types import Ge, Le, MaxLen

from common.errors import StageError
from common.records import Chunk, ScoredChunk, Tier
from pipelines.api.schema import RagRequest, RagResponse
from pipelines.query.route import QueryFeatures
from services._common import RUNNER_CONNECTION
from services.embedding import Embedding
from services.generation import Generation
from services.remote_stages import RemoteStages
from services.reranking import Reranking
from services.retrieval import Retrieval
from services.routing import Routing

DIM = 384
QUESTION = "How do I open a file for reading in Python?"
Stage = Literal["embed", "retrieve", "rerank", "route", "generate"]


def _chunk(i: int) -> ScoredChunk:
    text = ("The built-in open() function returns a file object; mode 'r' opens it for reading. " * 10)[:800]
    return ScoredChunk(chunk=Chunk(id=f"c{i:04d}", doc_id=f"d{i}", title=f"topic {i}", text=text),
                       score=1.0 - i / 100, dense_score=0.5)


@bentoml.service(name="ragroute-noop-stages", runner_connection=RUNNER_CONNECTION)
class NoopStages:
    """Same signatures as the stage APIs the RAG service calls; no work behind them."""

    @bentoml.api
    async def embed(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), DIM), dtype=np.float32)

    @bentoml.api  # the bulk API's shape (what the query path called before `embed`)
    async def encode(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), DIM), dtype=np.float32)

    @bentoml.api
    async def search(self, vector: Annotated[list[float], MaxLen(8192)],
                     n: Annotated[int, Ge(1), Le(1000)] = 20) -> dict:
        return {"index_version": "noop", "hits": [_chunk(i).model_dump() for i in range(n)]}

    @bentoml.api
    async def rerank(self, query: str, candidates: Annotated[list[ScoredChunk], MaxLen(1000)],
                     top_k: Annotated[int, Ge(1), Le(1000)] = 4) -> list[dict]:
        return [c.model_dump() for c in candidates[:top_k]]

    @bentoml.api
    async def route(self, query: str, query_vector: Annotated[list[float], MaxLen(8192)] | None = None,
                    retrieval_scores: Annotated[list[float], MaxLen(1000)] = [],  # noqa: B006
                    threshold: float | None = None) -> dict:
        return {"tier": "small", "score": 0.1, "threshold": 0.5, "router": "noop", "reason": "noop"}

    @bentoml.api
    async def generate(self, tier: Tier, query: str, sources: Annotated[list[ScoredChunk], MaxLen(100)],
                       budget_ms: float | None = None) -> dict:
        return {"generation": {"text": "Yes", "tier": tier, "model": "noop", "engine": "noop",
                               "finish_reason": "length", "tokens_in": 40, "tokens_out": 1, "latency_ms": 0.0}}


@bentoml.service(name="ragroute-hop-probe")
class HopProbe:
    embedding = bentoml.depends(Embedding)
    retrieval = bentoml.depends(Retrieval)
    reranking = bentoml.depends(Reranking)
    routing = bentoml.depends(Routing)
    generation = bentoml.depends(Generation)
    noop = bentoml.depends(NoopStages)

    def __init__(self) -> None:
        self.real = RemoteStages(self)
        self.floor = RemoteStages(SimpleNamespace(embedding=self.noop, retrieval=self.noop, reranking=self.noop,
                                                   routing=self.noop, generation=self.noop))
        self.sources: list[ScoredChunk] = []

    async def __is_ready__(self) -> bool:  # see services/rag.py: a starting dependency must not hang /readyz
        for dep in (self.embedding, self.retrieval, self.reranking, self.routing, self.generation, self.noop):
            try:
                if not await dep.is_ready(3):
                    return False
            except Exception:  # noqa: BLE001
                return False
        return True

    async def _call(self, stages: RemoteStages, stage: str, i: int) -> None:
        query = f"{QUESTION} ({i})"  # distinct texts: nothing downstream can reuse a result
        if stage == "embed":
            await stages.embed(query)
        elif stage == "retrieve":
            await stages.retrieve(np.full(DIM, 1 / DIM ** 0.5, dtype=np.float32), 20)
        elif stage == "rerank":
            await stages.rerank(query, self.sources, 4)
        elif stage == "route":
            await stages.route(query, QueryFeatures(query_vector=(0.05,) * DIM, retrieval_scores=(0.6, 0.5, 0.4)))
        else:  # the shortest answer (evals/hops.py sets the tier's max_tokens to MIN_ANSWER_TOKENS), no sources
            await stages.generate("small", query, [], 120_000)  # 32 queued answers fit

    @bentoml.api
    async def probe(self, stage: Stage, target: Literal["real", "noop"] = "real",
                    concurrency: Annotated[int, Ge(1), Le(256)] = 1, n: Annotated[int, Ge(1), Le(5000)] = 20,
                    gap_ms: Annotated[float, Ge(0), Le(10_000)] = 0) -> dict:
        """``n`` calls, ``concurrency`` at a time, each caller pausing ``gap_ms`` before each call
        (a user's think time: a service at idle); the milliseconds each call took as seen from here."""
        stages = self.real if target == "real" else self.floor
        if stage == "rerank" and not self.sources:
            self.sources = (await self.real.retrieve(np.full(DIM, 1 / DIM ** 0.5, dtype=np.float32), 20))[0]
        gate = asyncio.Semaphore(concurrency)
        ms: list[float] = []
        errors: list[str] = []

        async def one(i: int) -> None:
            async with gate:
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
                t0 = time.perf_counter()
                try:
                    await self._call(stages, stage, i)
                except StageError as exc:
                    errors.append(str(exc))
                    return
                ms.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return {"ms": ms, "errors": errors, "wall_s": time.perf_counter() - t0}


@bentoml.service(name="ragroute-noop-rag")
class NoopRag:
    def __init__(self) -> None:
        self.response = RagResponse.model_validate(json.loads(open(os.environ["RAGROUTE_NOOP_RESPONSE"]).read()))

    @bentoml.api(input_spec=RagRequest)
    async def rag_query(self, query: str, top_k: int = 4, tier: str = "auto", cache: str = "use",
                        tenant: str = "default", stream: bool = False, collection: str = "default",
                        allow_degraded: bool = True) -> RagResponse:
        return self.response
