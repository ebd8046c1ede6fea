"""RAG entry service: ``rag_query``, composing the five stage services with bentoml.depends,
and the OpenAI-compatible ``/v1`` (services/openai_app.py) over the same pipeline.

    bentoml serve services.rag:RAG
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import bentoml
import numpy as np

from common.errors import BadRequest, ConfigError, RagrouteError, StageError
from pipelines.api.access import Admitted, Denied, FrontDoor, Gate, load_keys, reservation
from pipelines.api.schema import FeedbackRequest, PurgeRequest, RagRequest, RagResponse, StatsRequest
from pipelines.api.sse import frames, outliving
from pipelines.breaker import Breaker
from pipelines.config import rag_workers
from pipelines.config.services import RagSettings
from pipelines.indexing.ingest import Job, ManagedCollections
from pipelines.query.cache import Carried, VersionChange, make_cache
from pipelines.query.feedback import Feedback, make_feedback_store
from pipelines.query.fingerprint import generation_fingerprint
from pipelines.query.pipeline import QueryPipeline
from pipelines.query.route import router_uses_retrieval
from services._common import (
    PROCESS, TIMEOUT_S, admin_refusal, error_body, error_response, refuse_to_start, setup_logging,
    yield_to_generation)
from services.body_limit import BodyLimit
from services.embedding import Embedding
from services.generation import Generation
from services.ingest_app import make_app as make_ingest_app
from services.metrics import RagMetrics
from services.openai_app import make_app
from services.openapi import ApiContract
from services.playground import app as playground
from services.remote_stages import RemoteStages
from services.reranking import Reranking
from services.retrieval import Retrieval
from services.routing import Routing

log = logging.getLogger(__name__)

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
    generation = bentoml.depends(Generation, url=PROCESS.generation_url or None)

    def __init__(self) -> None:
        setup_logging()
        yield_to_generation()
        with refuse_to_start("rag"):
            settings = RagSettings.from_env()  # every setting this service reads, once
            self.cfg = settings.rag
            self.metrics = RagMetrics()
            # one view of Redis's health for the limits and the cache: an outage costs one timeout
            self.redis_breaker = Breaker(self.cfg.cache.retry_s)
            self.cache = make_cache(self.cfg.cache, on_error=lambda op: self.metrics.cache_errors.labels(op=op).inc(),
                                    embedding_model=settings.embedding.model, breaker=self.redis_breaker)
            gen = settings.generation
            self.verdicts = Feedback(make_feedback_store(self.cfg.cache, self.redis_breaker), self.cache,
                                     lambda out: self.metrics.feedback.labels(verdict=out["verdict"],
                                                                              answer=out["answer"]).inc())
            self.pipeline = QueryPipeline(
                RemoteStages(self), self.cache, self.cfg, generation_fingerprint(self.cfg, gen, settings.routing),
                settings.budget, settings.safety, list(gen.tiers), tier_configs=dict(gen.tiers),
                route_uses_retrieval=router_uses_retrieval(settings.routing), admission=gen.admission,
                feedback=self.verdicts.store)
            self.front = FrontDoor(self._gate(settings), self.metrics,
                                   self.cache.tenant_summary if self.cache is not None and self.cache.policy else None)
        self.admin_token = settings.admin_token
        retrieval = settings.retrieval
        # with Redis, job records are shared: any replica answers GET /ingest/jobs/{id}
        self.ingest = ManagedCollections(retrieval.collections_dir, embedding_model=retrieval.embed_model,
                                         # ingestion writes versions: inserts, not the search timeout
                                         milvus=retrieval.milvus(min_timeout_s=30.0),
                                         default_backend=retrieval.vector_store,
                                         redis_url=self.cfg.cache.redis_url, namespace=self.cfg.cache.namespace)
        self._calibration: asyncio.Task | None = None

    def _gate(self, settings: RagSettings) -> Gate:
        keys = load_keys(self.cfg.api_keys) if self.cfg.api_keys else None
        redis_url = self.cfg.cache.redis_url
        reserve = reservation(settings.generation.tiers.values())
        if keys is None:
            log.warning("no API key file (RAGROUTE_API_KEYS): the query API is open, and a request's tenant is "
                        "whatever it names (RAGROUTE_REQUIRE_KEYS=1 refuses such a start; the deploy files set it)")
        else:
            log.info("%d API keys from %s; rate limits and token quotas counted %s; a request reserves %d tokens "
                     "of its key's quota while it runs", len(keys), self.cfg.api_keys,
                     "in Redis (shared by every worker and replica)" if redis_url else "per process", reserve)
        return Gate(keys, redis_url, self.cfg.cache.namespace,
                    on_error=lambda op: self.metrics.limit_errors.labels(op=op).inc(), reserve_tokens=reserve,
                    timeout_s=settings.budget.stages_ms["cache"] / 1000, breaker=self.redis_breaker)

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
                        collection: str = "default", allow_degraded: bool = True) -> RagResponse:
        """Answer a question from the index with the cheapest adequate model.

        With ``stream: true`` the answer comes as server-sent events while it is generated:
        ``meta`` (route, sources, cache), ``token`` deltas, then ``done`` (the whole response).
        With an API key file, needs ``Authorization: Bearer <key>``; the tenant is the key's."""
        request_id = secrets.token_hex(6)
        try:
            caller = self.front.authenticate(ctx.request.headers.get("authorization"))
            admitted = await self.front.admit(caller, tenant, collection)
        except RagrouteError as exc:
            log.info("request %s refused (%d): %s", request_id, exc.status, exc)
            return self._refuse(ctx, exc, request_id)  # type: ignore[return-value]
        req = RagRequest(query=query, top_k=top_k, tier=tier, cache=cache, tenant=admitted.tenant, stream=stream,
                         collection=collection, allow_degraded=allow_degraded)
        if stream:
            return await self._stream(ctx, req, request_id, admitted)  # type: ignore[return-value]
        try:
            response = await self.pipeline.run(req, request_id, admitted.meter)
        except RagrouteError as exc:
            log.warning("request %s failed: %s", request_id, exc)
            await self.front.abandon(admitted)
            return self._refuse(ctx, self.front.visible(caller, exc), request_id)  # type: ignore[return-value]
        await self.front.settle(admitted, response)
        return response

    @bentoml.api(input_spec=FeedbackRequest)
    async def feedback(self, ctx: bentoml.Context, request_id: str, verdict: str, tenant: str = "default") -> dict:
        """A verdict ("good" or "bad") on one of this tenant's answers, by its ``request_id`` (or a
        ``/v1`` answer's ``id``). "bad" on a cached answer stops it being served again for the
        question; verdicts on fresh answers are kept as labels for the router (docs/cache.md).
        Authenticated like ``rag_query``."""
        try:
            caller = self.front.authenticate(ctx.request.headers.get("authorization"))
            return await self.verdicts.take(self.front.gate.tenant(caller, tenant), request_id,
                                            verdict)  # type: ignore[arg-type]
        except RagrouteError as exc:
            log.info("feedback on %s refused (%d): %s", request_id, exc.status, exc)
            return self._refuse(ctx, exc)  # type: ignore[return-value]

    @bentoml.api(input_spec=StatsRequest)
    async def collections(self, ctx: bentoml.Context) -> dict:
        """The document collections ``rag_query`` answers from (its ``collection`` field): name,
        index_version, chunk and document counts, source. With an API key file, needs a key."""
        try:
            caller = self.front.authenticate(ctx.request.headers.get("authorization"))
            return {"collections": self.front.collections(caller, await self.pipeline.stages.collections())}
        except RagrouteError as exc:
            return self._refuse(ctx, exc)  # type: ignore[return-value]

    @staticmethod
    def _refuse(ctx: bentoml.Context, exc: RagrouteError, request_id: str | None = None):
        """An error response (with a ctx parameter, bentoml takes status and headers from ctx)."""
        ctx.response.status_code = exc.status
        if getattr(exc, "retry_after_s", None) is not None:  # over a limit, or at capacity
            ctx.response.headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, Denied) and exc.status == 401:
            ctx.response.headers["WWW-Authenticate"] = "Bearer"
        if request_id:
            ctx.response.headers["X-Request-Id"] = request_id
        return error_response(exc, request_id)

    async def _stream(self, ctx: bentoml.Context, req: RagRequest, request_id: str, admitted: Admitted):
        from starlette.responses import StreamingResponse

        events = outliving(self.pipeline.stream(req, request_id, admitted.meter), lambda: self.front.abandon(admitted))
        try:  # everything before the first token can still fail with a proper status code
            first = await anext(events)
        except RagrouteError as exc:
            log.warning("request %s failed: %s", request_id, exc)
            await events.aclose()
            await self.front.abandon(admitted)
            return self._refuse(ctx, self.front.visible(admitted.caller, exc), request_id)

        async def settle(event: dict) -> dict:
            response = RagResponse.model_validate(event["response"])
            await self.front.settle(admitted, response)
            return {**event, "response": response.model_dump()} if admitted.warnings else event

        return StreamingResponse(frames(first, events, request_id, settle), media_type="text/event-stream",
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
        try:
            if tenant is not None and not doc_ids:  # the tenant is gone: so are its answers' records and labels
                self.verdicts.store.purge(tenant)
            if self.cache is None:
                return {"deleted": 0, "cache": "off"}
            deleted = self.cache.purge(tenant=tenant, doc_ids=doc_ids or [])
        except Exception as exc:  # noqa: BLE001 - the backend is down: say so, never a 500
            log.warning("cache purge failed: %s", exc)
            return self._fail(ctx, StageError("cache", "purge failed", repr(exc)))
        log.info("admin purge (tenant=%s, %d doc ids): %d entries deleted", tenant, len(doc_ids or []), deleted)
        return {"deleted": deleted}

    async def ingested(self, job: Job, result: dict, added: np.ndarray) -> dict | None:
        """After an ingestion job swapped versions: forget the collection's old version, carry the
        cached answers the change cannot have altered to the new version (carry.py) and delete
        every other answer citing a changed document, whatever its version (workers that have not
        seen the new version yet keep answering from the old one meanwhile). Joins the job's result
        as ``cache``: how many answers were kept and dropped."""
        self.pipeline.stages.forget(job.collection)
        if self.cache is None or result.get("previous_version") is None:
            return None
        change = VersionChange.of(job.collection, result["previous_version"], result["version"],
                                  result["changed_documents"], added)
        try:
            carried = await asyncio.to_thread(self.cache.carry, change) if self.cfg.cache.carry else Carried()
            purged = await asyncio.to_thread(self.cache.purge, doc_ids=result["changed_documents"]) \
                if result["changed_documents"] else 0
        except Exception as exc:  # noqa: BLE001 - the old version's answers are unreachable from the new one anyway
            log.warning("job %s: carrying the cache to %s failed: %s", job.id, change.new_version, exc)
            return {"cache": {"error": f"carrying the cached answers failed ({type(exc).__name__}); see the log"}}
        log.info("job %s: cached answers of %s: %s kept for %s, %d dropped, %d more citing a changed document "
                 "deleted", job.id, job.collection, carried.kept, change.new_version, carried.dropped, purged)
        if not self.cfg.cache.carry:  # RAGROUTE_CACHE_CARRY=off: the old version's answers are unreachable
            return {"cache": {"carry": "off", "purged": purged}}
        return {"cache": {**carried.as_dict(), "purged": purged}}

    @bentoml.api(input_spec=StatsRequest)
    def cache_stats(self, ctx: bentoml.Context) -> dict:
        if (denied := self._admin_denied(ctx)) is not None:
            return denied
        if self.cache is None:
            return {"backend": "off"}
        try:
            return self.cache.stats()
        except Exception as exc:  # noqa: BLE001
            return self._fail(ctx, StageError("cache", "stats failed", repr(exc)))


# /docs.json: what the service really accepts and returns, /v1 and /playground included; a body
# that is not JSON is a 415 (BentoML would answer some with a 500).
RAG.add_asgi_middleware(ApiContract, service=RAG)


def _body_limit(path: str) -> int:
    cfg = bentoml.get_current_service().cfg
    return cfg.ingest_max_body_bytes if path.startswith("/ingest/") else cfg.max_body_bytes


# Every body is measured before it is parsed (or authenticated): over its limit, a 413.
RAG.add_asgi_middleware(BodyLimit, limit_for=_body_limit)
