"""Test doubles that satisfy the stage protocols (for fast unit tests of pipeline logic)."""

from __future__ import annotations

import asyncio

import numpy as np

from common.errors import NotFound, StageError
from common.records import Chunk, RouteDecision, ScoredChunk, TierAnswer


def chunk(i: int, text: str = "", title: str = "") -> ScoredChunk:
    c = Chunk(id=f"c{i}", doc_id=f"d{i}", title=title or f"doc {i}", text=text or f"text of chunk {i}.")
    return ScoredChunk(chunk=c, score=1.0 - i / 10, dense_score=1.0 - i / 10)


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


class FakeStages:
    """Records every call; ``fail`` names stages that raise StageError; vectors by query text."""

    def __init__(self, vectors: dict[str, np.ndarray] | None = None, fail: set[str] = frozenset(),
                 version: str = "v1", answer: str = "the text of the chunk [1]") -> None:
        self.vectors = vectors or {}
        self.fail = set(fail)
        self.version = version
        self.retrieved_version = version
        self.answer = answer
        self.calls: list[str] = []
        self.delays: dict[str, float] = {}  # stage -> seconds to sleep (to exceed a budget)
        self.budgets: list[float] = []
        self.embedded: list[str] = []
        self.retrieve_queries: list[str] = []  # the text each dense retrieval got (hybrid search)
        self.retrieve_collections: list[str] = []
        self.collections = {"default"}
        self.route_features = None
        self.stream_fail_after: int | None = None
        self.stream_stall_after: int | None = None  # words, then the stream hangs (a stalled engine)
        self.logprobs: dict[str, float] = {}  # tier -> logprob_mean (and min) of its answers
        self.route_gate: asyncio.Event | None = None  # set when route starts (concurrency tests)
        self.route_score = 0.9  # the fake router's score; large when >= the threshold (0.5 unless given)
        self.route_thresholds: list[float | None] = []  # the threshold of each route call
        self.answers: dict[str, str] = {}  # tier -> its answer (else ``answer``)
        self.at_capacity: dict[str, float] = {}  # tier -> its wait (s): it refuses every request for capacity
        self.capacity_finish_s = 20.0  # ... estimating that the refused request would finish then

    async def _enter(self, stage: str) -> None:
        self.calls.append(stage)
        tier = stage[len("generate["):-1] if stage.startswith("generate[") else None
        if tier in self.at_capacity:
            from pipelines.engines.load import Capacity

            raise Capacity(stage, "would finish in ~20.0 s, 0.3 s left (1 running, 3 waiting)", self.at_capacity[tier],
                           self.capacity_finish_s)
        if stage in self.delays:
            await asyncio.sleep(self.delays[stage])
        if stage in self.fail:
            raise StageError(stage, "injected failure")

    async def index_version(self, collection: str = "default") -> str:
        if collection not in self.collections:
            raise NotFound("collection", f"{collection!r} is not a collection; valid: {', '.join(sorted(self.collections))}")
        return self.version if collection == "default" else f"{self.version}-{collection}"

    async def embed(self, text: str) -> np.ndarray:
        await self._enter("embed")
        self.embedded.append(text)
        return self.vectors.get(text, unit([1, 0, 0]))

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        await self._enter("embed_many")
        return np.stack([self.vectors.get(t, unit([0, 1, 0])) for t in texts])

    async def retrieve(self, vector, n, query="", collection="default"):
        await self._enter("retrieve")
        self.retrieve_queries.append(query)
        self.retrieve_collections.append(collection)
        version = self.retrieved_version if collection == "default" else f"{self.retrieved_version}-{collection}"
        return [chunk(i) for i in range(n)], version

    async def retrieve_text(self, query, n, collection="default"):
        await self._enter("retrieve_text")
        return [chunk(i, text=f"keyword match {i} for {query}.") for i in range(n)], self.retrieved_version

    async def rerank(self, query, candidates, top_k):
        await self._enter("rerank")
        return list(reversed(candidates))[:top_k]

    async def route(self, query, features, threshold=None):
        if self.route_gate is not None:
            self.route_gate.set()
        await self._enter("route")
        self.route_features = features
        self.route_thresholds.append(threshold)
        cut = 0.5 if threshold is None else threshold
        tier = "large" if self.route_score >= cut else "small"
        return RouteDecision(tier=tier, score=self.route_score, threshold=cut, router="fake",
                             reason=f"fake says {tier}")

    async def generate(self, tier, query, sources, budget_ms):
        self.budgets.append(budget_ms)
        await self._enter(f"generate[{tier}]")
        lp = self.logprobs.get(tier)
        return TierAnswer(text=self.answers.get(tier, self.answer), tier=tier, model=f"{tier}-model", engine="fake",
                          finish_reason="stop", tokens_in=10, tokens_out=3, latency_ms=1.0, ttft_ms=0.5, cost_usd=2e-6,
                          logprob_mean=lp, logprob_min=None if lp is None else lp - 1)

    async def generate_stream(self, tier, query, sources, budget_ms):
        """Streams the answer word by word; ``stream_fail_after`` words, then a StageError."""
        from pipelines.query.generate import Delta

        self.budgets.append(budget_ms)
        await self._enter(f"generate[{tier}]")
        words = self.answers.get(tier, self.answer).split(" ")
        for i, word in enumerate(words):
            if self.stream_fail_after is not None and i == self.stream_fail_after:
                raise StageError(f"generate[{tier}]", "injected failure mid-stream")
            if self.stream_stall_after is not None and i == self.stream_stall_after:
                await asyncio.sleep(3600)
            await asyncio.sleep(self.delays.get("token", 0))
            yield Delta(word if i == 0 else " " + word)
        yield TierAnswer(text=" ".join(words), tier=tier, model=f"{tier}-model", engine="fake", finish_reason="stop",
                         tokens_in=10, tokens_out=len(words), latency_ms=1.0, cost_usd=1e-6)
