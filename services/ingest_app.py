"""The ingestion API, mounted under ``/ingest`` on the RAG entry service (admin token required,
like the cache admin API: ``Authorization: Bearer $RAGROUTE_ADMIN_TOKEN``).

    POST   /ingest/collections                          {"name": "handbook", "backend": "milvus"?} -> 201
    DELETE /ingest/collections/{name}                                                -> 200 (409 while a job runs)
    POST   /ingest/collections/{name}/documents         {"documents": [{id, title, text, metadata}]} -> 202 job
    POST   /ingest/collections/{name}/documents/delete  {"ids": [...]}               -> 202 job
    GET    /ingest/jobs/{id}                                                         -> the job's record

A thin HTTP shell over pipelines/indexing/ingest.py; chunks are embedded through the Embedding
service (the RAG service's own stage client). Bodies over ``RAGROUTE_INGEST_MAX_BODY_BYTES``
(32 MiB) are a 413, read no further (services/body_limit.py, in front of every endpoint).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.errors import RagrouteError
from pipelines.indexing.jobs import CreateBody, DeleteBody, Job, UpsertBody, describe, parse
from services._common import admin_refusal, error_response

log = logging.getLogger(__name__)

class _Refused(RagrouteError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _body(request: Request) -> bytes:
    """The body (BodyLimit has already refused one over the limit)."""
    if "application/json" not in request.headers.get("content-type", ""):
        raise _Refused(415, "the body must be application/json")
    return await request.body()


def make_app(get_rag: Callable[[], Any]) -> Starlette:
    """``get_rag()``: the RAG service instance (``ingest``, ``pipeline``, ``admin_token``)."""

    def admit(request: Request) -> None:
        refusal = admin_refusal(get_rag().admin_token, request.headers.get("authorization"))
        if refusal is not None:
            raise _Refused(*refusal)

    def handler(fn):
        async def endpoint(request: Request) -> JSONResponse:
            try:
                admit(request)
                status, body = await fn(request, get_rag())
            except RagrouteError as exc:
                if exc.status >= 500:
                    log.warning("ingest %s %s failed: %s", request.method, request.url.path, exc)
                response = error_response(exc)
                if exc.status == 401:
                    response.headers["WWW-Authenticate"] = "Bearer"
                return response
            return JSONResponse(body, status_code=status)
        return endpoint

    async def create(request: Request, rag) -> tuple[int, dict]:
        body = parse(CreateBody, await _body(request))
        return 201, await asyncio.to_thread(rag.ingest.create, body.name, body.backend)

    async def drop(request: Request, rag) -> tuple[int, dict]:
        return 200, await asyncio.to_thread(rag.ingest.drop, request.path_params["name"])

    async def upsert(request: Request, rag) -> tuple[int, dict]:
        name = request.path_params["name"]
        await asyncio.to_thread(rag.ingest.check, name)  # an unknown collection is a 404 before the body is read
        body = parse(UpsertBody, await _body(request))
        # an id given twice: the last one is kept, as if sent in two requests in order
        documents = list({d.id: d for d in body.documents}.values())
        return 202, describe(_submit(rag, name, "upsert", documents))

    async def delete(request: Request, rag) -> tuple[int, dict]:
        name = request.path_params["name"]
        await asyncio.to_thread(rag.ingest.check, name)
        body = parse(DeleteBody, await _body(request))
        return 202, describe(_submit(rag, name, "delete", sorted(set(body.ids))))

    async def job(request: Request, rag) -> tuple[int, dict]:
        return 200, describe(rag.ingest.job(request.path_params["job_id"]))

    def _submit(rag, name: str, kind: str, payload) -> Job:
        return rag.ingest.submit(name, kind, payload, rag.pipeline.stages.embed_many, on_done=rag.ingested)

    return Starlette(routes=[
        Route("/collections", handler(create), methods=["POST"]),
        Route("/collections/{name}", handler(drop), methods=["DELETE"]),
        Route("/collections/{name}/documents", handler(upsert), methods=["POST"]),
        Route("/collections/{name}/documents/delete", handler(delete), methods=["POST"]),
        Route("/jobs/{job_id}", handler(job), methods=["GET"]),
    ])
