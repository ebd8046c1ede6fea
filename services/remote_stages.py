"""The RAG service's side of the stage services: :class:`RemoteStages` implements the query
path's :class:`~pipelines.query.stages.Stages` with calls to the other BentoML services, over
the typed wire protocol (pipelines/api/wire.py).

Any failure of a dependency call becomes a StageError naming the stage; an idempotent call on a
connection the dependency had already closed is retried once (generation never is).
"""

from __future__ import annotations

import json

import logging
import time
from collections.abc import AsyncIterator

import numpy as np

from common.errors import NotFound, StageError
from common.records import RouteDecision, ScoredChunk, TierAnswer
from pipelines.api.wire import FinalEvent, NdjsonReader, SearchResult, TextEvent, parse_generate
from pipelines.query.generate import Delta
from pipelines.query.route import QueryFeatures

log = logging.getLogger(__name__)

EMBED_CALL_MAX = 256  # texts per call of the Embedding service's `embed` (its bound)
COLLECTIONS_RESCAN_S = 1.0  # an unknown collection name refreshes the list at most this often
# A managed collection's served version is asked again after this long: a cached answer is keyed
# by the version, so a swap made elsewhere hides the old answers within this time.
MANAGED_VERSION_TTL_S = 0.5


class RemoteStages:
    """:class:`pipelines.query.stages.Stages` over the dependency services.

    Any failure of a dependency call becomes a StageError naming the stage.
    """

    def __init__(self, svc) -> None:
        """``svc``: the RAG service (its ``bentoml.depends`` clients: embedding, retrieval, ...)."""
        self.svc = svc
        self._versions: dict[str, str] = {}  # collection -> the index version last seen serving it
        self._managed: dict[str, float] = {}  # managed collection -> when its version was last asked
        self._rescanned = 0.0

    async def _call(self, stage: str, method, *args, retry: bool = True, **kwargs):
        """``retry``: the call is idempotent, so a connection the dependency had already closed
        (a pooled keep-alive connection reused after it timed out: "Broken pipe", "Server
        disconnected") is retried once on a fresh one. TierAnswer is not retried."""
        import aiohttp

        for attempt in (1, 2):
            try:
                return await method(*args, **kwargs)
            except aiohttp.ClientConnectionError as exc:
                if retry and attempt == 1:
                    log.info("%s: %s: %s; retrying once on a new connection", stage, type(exc).__name__, exc)
                    continue
                raise StageError(stage, "the service did not answer", f"{type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - every dependency failure is reported as that stage's
                raise StageError(stage, _callee_message(stage, exc), f"{type(exc).__name__}: {exc}") from exc

    def forget(self, collection: str) -> None:
        """The collection's version changed (an ingestion job here swapped it): ask again."""
        self._versions.pop(collection, None)
        self._rescanned = 0.0

    async def index_version(self, collection: str = "default") -> str:
        stale = collection in self._managed and time.monotonic() - self._managed[collection] >= MANAGED_VERSION_TTL_S
        if collection not in self._versions or stale:
            # A name not seen yet: ask the Retrieval service for its collections (it looks for new
            # ones at most once a second; so do we), so an unknown one is a 404 before any work.
            now = time.monotonic()
            if now - self._rescanned >= COLLECTIONS_RESCAN_S or not self._versions or stale:
                self._rescanned = now
                await self.collections()
            if collection not in self._versions:
                raise NotFound("collection", f"{collection!r} is not a collection; valid: "
                               f"{', '.join(sorted(self._versions))}")
        return self._versions[collection]

    async def collections(self) -> list[dict]:
        """The Retrieval service's collections (it looks for new ones first); their versions are learnt."""
        known = await self._call("retrieve", self.svc.retrieval.to_async.collections_info, rescan=True)
        now = time.monotonic()
        self._versions = {c["name"]: c["index_version"] for c in known}  # a dropped collection goes too
        self._managed = {c["name"]: now for c in known if c.get("managed")}
        return known

    async def embed(self, text: str) -> np.ndarray:
        return (await self.embed_many([text]))[0]

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        # The query path's API (never held to fill a batch); a bulk request uses adaptive batching.
        embedding = self.svc.embedding.to_async
        method = embedding.embed if len(texts) <= EMBED_CALL_MAX else embedding.encode
        vectors = await self._call("embed", method, texts)
        return np.asarray(vectors, dtype=np.float32)

    async def retrieve(self, vector: np.ndarray, n: int, query: str = "",
                       collection: str = "default") -> tuple[list[ScoredChunk], str]:
        return self._hits(collection, await self._call("retrieve", self.svc.retrieval.to_async.search,
                                                       vector=vector.tolist(), n=n, query=query, collection=collection))

    async def retrieve_text(self, query: str, n: int, collection: str = "default") -> tuple[list[ScoredChunk], str]:
        return self._hits(collection, await self._call("retrieve", self.svc.retrieval.to_async.search_text,
                                                       query=query, n=n, collection=collection))

    def _hits(self, collection: str, out: dict) -> tuple[list[ScoredChunk], str]:
        result = SearchResult.model_validate(out)
        self._versions[collection] = result.index_version
        return result.hits, result.index_version

    async def rerank(self, query: str, candidates: list[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        out = await self._call("rerank", self.svc.reranking.to_async.rerank, query=query,
                               candidates=candidates, top_k=top_k)
        return [ScoredChunk.model_validate(c) for c in out]

    async def route(self, query: str, features: QueryFeatures, threshold: float | None = None) -> RouteDecision:
        out = await self._call("route", self.svc.routing.to_async.route, query=query,
                               query_vector=list(features.query_vector or []) or None,
                               retrieval_scores=list(features.retrieval_scores), threshold=threshold)
        return RouteDecision.model_validate(out)

    async def generate(self, tier: str, query: str, sources: list[ScoredChunk], budget_ms: float) -> TierAnswer:
        out = await self._call(f"generate[{tier}]", self.svc.generation.to_async.generate, retry=False,
                               tier=tier, query=query, sources=sources, budget_ms=max(1.0, budget_ms))
        return parse_generate(out, f"generate[{tier}]")

    async def generate_stream(self, tier: str, query: str, sources: list[ScoredChunk],
                              budget_ms: float) -> AsyncIterator[Delta | TierAnswer]:
        """The Generation service's NDJSON stream (pipelines/api/wire.py) as deltas and a record."""
        stage = f"generate[{tier}]"
        reader = NdjsonReader()
        chunks = None
        try:
            chunks = self.svc.generation.to_async.generate_stream(  # an async generator, not awaited
                tier=tier, query=query, sources=sources, budget_ms=max(1.0, budget_ms))
            async for chunk in chunks:
                for event in reader.feed(chunk):
                    if isinstance(event, TextEvent):
                        yield Delta(event.t, event.p, event.n)
                    elif isinstance(event, FinalEvent):
                        yield event.final
                        return
                    else:
                        event.raise_for(stage)
            raise StageError(stage, "the stream ended without a result")
        except StageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken stream is that stage's failure
            raise StageError(stage, "the stream broke off", f"{type(exc).__name__}: {exc}") from exc
        finally:
            if chunks is not None:
                await chunks.aclose()


def _callee_message(stage: str, exc: Exception) -> str:
    """What a client may read of a dependency's failure: a stage failure our own service reported
    (424, services/_common.py: to_bentoml; its message is written for clients), else a fixed text."""
    from http import HTTPStatus

    if getattr(exc, "error_code", None) == HTTPStatus.FAILED_DEPENDENCY:
        message = str(exc)
        try:  # BentoML sends the error as {"error": "..."}
            message = str(json.loads(message).get("error", message))
        except (ValueError, AttributeError):
            pass
        return message.removeprefix(f"{stage} stage failed: ")[:300]
    return "the service call failed"
