"""RAG entry service: ``rag_query``, composing the five stage services with bentoml.depends,
and the OpenAI-compatible ``/v1`` (services/openai_app.py) over the same pipeline.

    bentoml serve services.rag:RAG
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
import os
import secrets
import time

import bentoml
import numpy as np

from pipelines.access import Admitted, Denied, FrontDoor, Gate, load_keys
from pipelines.budget import BudgetProfile
from pipelines.config import EmbeddingConfig, GenerationConfig, RagConfig, RetrievalConfig, RoutingConfig, rag_workers
from pipelines.errors import BadRequest, ConfigError, NotFound, RagrouteError, StageError
from pipelines.indexing.ingest import Job, ManagedCollections
from pipelines.query.cache import make_cache
from pipelines.query.generate import Delta
from pipelines.query.pipeline import QueryPipeline
from pipelines.query.prompt import PROMPT_VERSION
from pipelines.query.safety import SafetyConfig
from pipelines.query.route import QueryFeatures, router_uses_retrieval
from pipelines.records import Generation as GenerationRecord
from pipelines.records import RouteDecision, ScoredChunk
from pipelines.schema import PurgeRequest, RagRequest, RagResponse, StatsRequest
from pipelines.text import content_id
from services._common import TIMEOUT_S, admin_refusal, error_body, error_response, refuse_to_start, setup_logging
from services.embedding import Embedding
from services.generation import Generation
from services.metrics import RagMetrics
from services.ingest_app import make_app as make_ingest_app
from services.openai_app import make_app
from services.openapi import ApiContract
from services.playground import app as playground
from services.reranking import Reranking
from services.retrieval import Retrieval
from services.routing import Routing

log = logging.getLogger(__name__)

EMBED_CALL_MAX = 256  # texts per call of the Embedding service's `embed` (its bound)
COLLECTIONS_RESCAN_S = 1.0  # an unknown collection name refreshes the list at most this often
# A managed collection's served version is asked again after this long: a cached answer is keyed
# by the version, so a swap made elsewhere hides the old answers within this time.
MANAGED_VERSION_TTL_S = 0.5


class _RemoteStages:
    """:class:`pipelines.query.stages.Stages` over the dependency services.

    Any failure of a dependency call becomes a StageError naming the stage.
    """

    def __init__(self, svc: RAG) -> None:
        self.svc = svc
        self._versions: dict[str, str] = {}  # collection -> the index version last seen serving it
        self._managed: dict[str, float] = {}  # managed collection -> when its version was last asked
        self._rescanned = 0.0

    async def _call(self, stage: str, method, *args, retry: bool = True, **kwargs):
        """``retry``: the call is idempotent, so a connection the dependency had already closed
        (a pooled keep-alive connection reused after it timed out: "Broken pipe", "Server
        disconnected") is retried once on a fresh one. Generation is not retried."""
        import aiohttp

        for attempt in (1, 2):
            try:
                return await method(*args, **kwargs)
            except aiohttp.ClientConnectionError as exc:
                if retry and attempt == 1:
                    log.info("%s: %s: %s; retrying once on a new connection", stage, type(exc).__name__, exc)
                    continue
                raise StageError(stage, f"{type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - every dependency failure is reported as that stage's
                raise StageError(stage, f"{type(exc).__name__}: {exc}") from exc

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
        self._versions[collection] = out["index_version"]
        return [ScoredChunk.model_validate(h) for h in out["hits"]], out["index_version"]

    async def rerank(self, query: str, candidates: list[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        out = await self._call("rerank", self.svc.reranking.to_async.rerank, query=query,
                               candidates=candidates, top_k=top_k)
        return [ScoredChunk.model_validate(c) for c in out]

    async def route(self, query: str, features: QueryFeatures, threshold: float | None = None) -> RouteDecision:
        out = await self._call("route", self.svc.routing.to_async.route, query=query,
                               query_vector=list(features.query_vector or []) or None,
                               retrieval_scores=list(features.retrieval_scores), threshold=threshold)
        return RouteDecision.model_validate(out)

    async def generate(self, tier: str, query: str, sources: list[ScoredChunk], budget_ms: float) -> GenerationRecord:
        out = await self._call(f"generate[{tier}]", self.svc.generation.to_async.generate, retry=False,
                               tier=tier, query=query, sources=sources, budget_ms=max(1.0, budget_ms))
        if "error" in out:
            raise StageError(f"generate[{tier}]", out["error"])
        return GenerationRecord.model_validate(out["generation"])

    async def generate_stream(self, tier: str, query: str, sources: list[ScoredChunk],
                              budget_ms: float) -> AsyncIterator[Delta | GenerationRecord]:
        """The Generation service's NDJSON stream (chunks split anywhere) as deltas and a record."""
        stage = f"generate[{tier}]"
        buffer = ""
        chunks = None
        try:
            chunks = self.svc.generation.to_async.generate_stream(  # an async generator, not awaited
                tier=tier, query=query, sources=sources, budget_ms=max(1.0, budget_ms))
            async for chunk in chunks:
                buffer += chunk.decode() if isinstance(chunk, bytes) else str(chunk)
                *lines, buffer = buffer.split("\n")
                for line in filter(None, lines):
                    event = json.loads(line)
                    if "t" in event:
                        yield Delta(event["t"])
                    elif "final" in event:
                        yield GenerationRecord.model_validate(event["final"])
                        return
                    else:
                        raise StageError(stage, event.get("error", "unknown stream event"))
        except StageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken stream is that stage's failure
            raise StageError(stage, f"{type(exc).__name__}: {exc}") from exc
        finally:
            if chunks is not None:
                await chunks.aclose()


def _workers() -> int:
    """RAGROUTE_RAG_WORKERS (default 1); a bad value is reported, naming the key, at start-up."""
    try:
        return rag_workers()
    except ConfigError:
        return 1


# OpenAI-compatible /v1 (chat completions, models) over this service's own pipeline, then the
# playground page (mounted at "/": applied last, so matched after BentoML's routes and /v1).
@bentoml.asgi_app(playground, path="/")
@bentoml.asgi_app(make_app(bentoml.get_current_service), path="/v1")
@bentoml.asgi_app(make_ingest_app(bentoml.get_current_service), path="/ingest")
@bentoml.service(name="ragroute", traffic={"timeout": TIMEOUT_S["rag"]}, workers=_workers())
class RAG:
    embedding = bentoml.depends(Embedding)
    retrieval = bentoml.depends(Retrieval)
    reranking = bentoml.depends(Reranking)
    routing = bentoml.depends(Routing)
    # RAGROUTE_GENERATION_URL: use a Generation service running elsewhere (a GPU machine, or the
    # vLLM venv of the CPU test lane) instead of starting one here; give it the same RAGROUTE_* tiers.
    generation = bentoml.depends(Generation, url=os.environ.get("RAGROUTE_GENERATION_URL") or None)

    def __init__(self) -> None:
        setup_logging()
        with refuse_to_start("rag"):
            self.cfg = RagConfig.from_env()
            self.metrics = RagMetrics()
            self.cache = make_cache(self.cfg.cache, on_error=lambda op: self.metrics.cache_errors.labels(op=op).inc(),
                                    embedding_model=EmbeddingConfig.from_env().model)
            gen_cfg = GenerationConfig.from_env()
            self.pipeline = QueryPipeline(_RemoteStages(self), self.cache, self.cfg, generation_fingerprint(self.cfg, gen_cfg),
                                          BudgetProfile.from_env(), SafetyConfig.from_env(), list(gen_cfg.tiers),
                                          tier_configs=dict(gen_cfg.tiers),
                                          route_uses_retrieval=router_uses_retrieval(RoutingConfig.from_env()))
            self.front = FrontDoor(self._gate(), self.metrics,
                                   self.cache.tenant_summary if self.cache is not None and self.cache.policy else None)
            retrieval_cfg = RetrievalConfig.from_env()
        self.admin_token = os.environ.get("RAGROUTE_ADMIN_TOKEN", "")
        # with Redis, job records are shared: any replica answers GET /ingest/jobs/{id}
        self.ingest = ManagedCollections(retrieval_cfg.collections_dir, embedding_model=retrieval_cfg.embed_model,
                                         # ingestion writes versions: inserts, not the search timeout
                                         milvus=retrieval_cfg.milvus(min_timeout_s=30.0),
                                         default_backend=retrieval_cfg.vector_store,
                                         redis_url=self.cfg.cache.redis_url, namespace=self.cfg.cache.namespace)
        self._calibration: asyncio.Task | None = None

    def _gate(self) -> Gate:
        keys = load_keys(self.cfg.api_keys) if self.cfg.api_keys else None
        redis_url = self.cfg.cache.redis_url
        if keys is None:
            log.warning("no API key file (RAGROUTE_API_KEYS): the query API is open, and a request's tenant is "
                        "whatever it names")
        else:
            log.info("%d API keys from %s; rate limits and token quotas counted %s", len(keys), self.cfg.api_keys,
                     "in Redis (shared by every worker and replica)" if redis_url else "per process")
        return Gate(keys, redis_url, self.cfg.cache.namespace,
                    on_error=lambda op: self.metrics.limit_errors.labels(op=op).inc())

    async def __is_ready__(self) -> bool:
        # bentoml 1.4.39: while a dependency is still starting, the caller's /readyz hangs until
        # traffic.timeout (and then blocks shutdown). Ask each dependency with a short timeout.
        for dep in (self.embedding, self.retrieval, self.reranking, self.routing, self.generation):
            try:
                if not await dep.is_ready(3):
                    return False
            except Exception:  # noqa: BLE001 - not reachable yet means not ready
                return False
        # Ready once the generation rates are measured on a quiet machine (a few seconds, once).
        if self._calibration is None:
            self._calibration = asyncio.create_task(self._calibrate())
        return self._calibration.done()

    async def _calibrate(self) -> None:
        """Once every service is up: the Generation service measures its tiers' rates again (its
        warm-up shared the CPU with the others starting: the demo index build made the rates
        look 3-6x slower than they are), and they replace the configured ones in the cascade's
        "is there time for the next tier" check. Best effort: on failure the warm-up rates stay."""
        try:
            info = await self.generation.to_async.calibrate()
        except Exception as exc:  # noqa: BLE001 - serving goes on with the warm-up's rates
            log.warning("generation rates not re-measured: %s", exc)
            return
        for tier, about in info.items():
            rates = about.get("rates") or {}
            self.pipeline.observe_rates(tier, rates.get("prefill_tok_s"), rates.get("decode_tok_s"))
        log.info("generation rates: %s", {t: a.get("rates") for t, a in info.items()})

    @bentoml.api(input_spec=RagRequest)
    async def rag_query(self, ctx: bentoml.Context, query: str, top_k: int = 4, tier: str = "auto",
                        cache: str = "use", tenant: str = "default", stream: bool = False,
                        collection: str = "default") -> RagResponse:
        """Answer a question from the index with the cheapest adequate model.

        With ``stream: true`` the answer comes as server-sent events while it is generated:
        ``meta`` (route, sources, cache), ``token`` deltas, then ``done`` (the whole response).
        With an API key file, needs ``Authorization: Bearer <key>``; the tenant is the key's."""
        request_id = secrets.token_hex(6)
        try:
            caller = self.front.authenticate(ctx.request.headers.get("authorization"))
            admitted = await self.front.admit(caller, tenant)
        except Denied as exc:
            log.info("request %s refused (%d): %s", request_id, exc.status, exc)
            return self._refuse(ctx, exc)  # type: ignore[return-value]
        req = RagRequest(query=query, top_k=top_k, tier=tier, cache=cache, tenant=admitted.tenant, stream=stream,
                         collection=collection)
        if stream:
            return await self._stream(ctx, req, request_id, admitted)  # type: ignore[return-value]
        try:
            response = await self.pipeline.run(req, request_id)
        except RagrouteError as exc:
            log.warning("request %s failed: %s", request_id, exc)
            return self._refuse(ctx, exc)  # type: ignore[return-value]
        await self.front.settle(admitted, response)
        return response

    @bentoml.api(input_spec=StatsRequest)
    async def collections(self, ctx: bentoml.Context) -> dict:
        """The document collections ``rag_query`` answers from (its ``collection`` field): name,
        index_version, chunk and document counts, source. With an API key file, needs a key."""
        try:
            self.front.authenticate(ctx.request.headers.get("authorization"))
            return {"collections": await self.pipeline.stages.collections()}
        except RagrouteError as exc:
            return self._refuse(ctx, exc)  # type: ignore[return-value]

    @staticmethod
    def _refuse(ctx: bentoml.Context, exc: RagrouteError):
        """An error response (with a ctx parameter, bentoml takes status and headers from ctx)."""
        ctx.response.status_code = exc.status
        if isinstance(exc, Denied) and exc.retry_after_s is not None:
            ctx.response.headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, Denied) and exc.status == 401:
            ctx.response.headers["WWW-Authenticate"] = "Bearer"
        return error_response(exc)

    async def _stream(self, ctx: bentoml.Context, req: RagRequest, request_id: str, admitted: Admitted):
        from starlette.responses import StreamingResponse

        events = self.pipeline.stream(req, request_id)
        try:  # everything before the first token can still fail with a proper status code
            first = await anext(events)
        except RagrouteError as exc:
            log.warning("request %s failed: %s", request_id, exc)
            await events.aclose()
            return self._refuse(ctx, exc)

        async def sse() -> AsyncIterator[str]:
            event = first
            try:
                while True:
                    if event["event"] == "done":
                        response = RagResponse.model_validate(event["response"])
                        await self.front.settle(admitted, response)
                        if admitted.warnings:
                            event = {**event, "response": response.model_dump()}
                    yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"
                    event = await anext(events)
            except StopAsyncIteration:
                return
            except Exception as exc:  # noqa: BLE001 - the status is sent: report the error as an event
                log.warning("request %s: stream failed: %s", request_id, exc)
                body = {"event": "error", "request_id": request_id, "error": str(exc)}
                yield f"event: error\ndata: {json.dumps(body)}\n\n"
            finally:
                await events.aclose()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Request-Id": request_id})

    # -- admin ---------------------------------------------------------------------------------------
    # With a ctx parameter, bentoml takes the status from ctx.response (even for a returned
    # Response), so these endpoints set it there.
    @staticmethod
    def _fail(ctx: bentoml.Context, exc_or_status: RagrouteError | int, message: str = "") -> dict:
        if isinstance(exc_or_status, RagrouteError):
            ctx.response.status_code = exc_or_status.status
            return error_body(exc_or_status)
        ctx.response.status_code = exc_or_status
        return {"error": message}

    def _admin_denied(self, ctx: bentoml.Context) -> dict | None:
        """None when the caller may use the admin API, else the error body (status set on ctx)."""
        refusal = admin_refusal(self.admin_token, ctx.request.headers.get("authorization"))
        return None if refusal is None else self._fail(ctx, *refusal)

    @bentoml.api(input_spec=PurgeRequest)
    def cache_purge(self, ctx: bentoml.Context, tenant: str | None = None, doc_ids: list[str] | None = None) -> dict:
        """Delete cached answers of a tenant and/or those citing the given documents."""
        if (denied := self._admin_denied(ctx)) is not None:
            return denied
        if tenant is None and not doc_ids:
            return self._fail(ctx, BadRequest("tenant", "give a tenant, doc_ids, or both"))
        if self.cache is None:
            return {"deleted": 0, "cache": "off"}
        try:
            deleted = self.cache.purge(tenant=tenant, doc_ids=doc_ids or [])
        except Exception as exc:  # noqa: BLE001 - the backend is down: say so, never a 500
            log.warning("cache purge failed: %s", exc)
            return self._fail(ctx, StageError("cache", f"purge failed: {exc}"))
        log.info("admin purge (tenant=%s, %d doc ids): %d entries deleted", tenant, len(doc_ids or []), deleted)
        return {"deleted": deleted}

    async def ingested(self, job: Job, result: dict) -> None:
        """After an ingestion job swapped versions: forget the collection's old version (its cache
        partition is unreachable from here on) and delete cached answers citing a changed document
        (belt and braces for other workers until they see the new version)."""
        if not result.get("swapped"):
            return
        self.pipeline.stages.forget(job.collection)
        if self.cache is not None and result["changed_documents"]:
            try:
                deleted = await asyncio.to_thread(self.cache.purge, doc_ids=result["changed_documents"])
                log.info("job %s: %d cached answers citing changed documents deleted", job.id, deleted)
            except Exception as exc:  # noqa: BLE001 - the new version's partition hides them anyway
                log.warning("job %s: cache purge failed: %s", job.id, exc)

    @bentoml.api(input_spec=StatsRequest)
    def cache_stats(self, ctx: bentoml.Context) -> dict:
        if (denied := self._admin_denied(ctx)) is not None:
            return denied
        if self.cache is None:
            return {"backend": "off"}
        try:
            return self.cache.stats()
        except Exception as exc:  # noqa: BLE001
            return self._fail(ctx, StageError("cache", f"stats failed: {exc}"))


# /docs.json: what the service really accepts and returns, /v1 and /playground included; a body
# that is not JSON is a 415 (BentoML would answer some with a 500).
RAG.add_asgi_middleware(ApiContract, service=RAG)


def generation_fingerprint(rag: RagConfig, cfg: GenerationConfig) -> str:
    """Identifies everything that shapes an answer besides the question and the sources."""
    tiers = sorted((t.name, t.engine, t.model, t.revision, t.max_tokens, t.context_tokens, t.temperature, t.top_p)
                   for t in cfg.tiers.values())
    # auto and cascade answers also depend on the router (and its threshold) and the cascade settings
    routing, cascade = RoutingConfig.from_env(), rag.cascade
    router = (routing.router, routing.threshold, _file_digest(routing.artifact / "router.json") if routing.artifact
              else "", cascade.signal, cascade.threshold, cascade.start, cascade.route_threshold)
    return content_id(repr(tiers), repr(router), PROMPT_VERSION)


def _file_digest(path) -> str:
    try:
        return content_id(path.read_text())
    except OSError:
        return "unreadable"
