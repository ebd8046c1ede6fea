"""OpenAI-compatible endpoints, mounted under ``/v1`` on the RAG entry service.

    POST /v1/chat/completions   (stream or not)
    GET  /v1/models, /v1/models/{model}
    POST /v1/feedback           a verdict on an answer by its id (as POST /feedback)

A thin HTTP shell: what a request means and what a completion looks like is in
``pipelines/api/openai_compat.py``; the answer comes from the RAG service's own QueryPipeline (same
cache, budgets, metrics and logs as ``rag_query``).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from common.errors import RagrouteError, public_message
from pipelines.api.access import Denied
from pipelines.api.openai_compat import ChunkWriter, completion, model_card, models_list, to_rag_request
from pipelines.api.openai_request import FeedbackBody, OpenAIError, parse_request
from pipelines.api.schema import RagResponse
from pipelines.api.sse import outliving
from pipelines.config import TierConfig

log = logging.getLogger(__name__)


def _error(exc: OpenAIError, request_id: str | None = None) -> JSONResponse:
    headers = {"X-Request-Id": request_id} if request_id else {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def make_app(get_rag: Callable[[], Any]) -> Starlette:
    """``get_rag()``: the RAG service instance (``pipeline``, ``front``), looked up per request."""

    def tiers(rag) -> dict[str, TierConfig]:
        pipeline = rag.pipeline
        return {name: pipeline.tier_configs[name] for name in pipeline.tiers}

    async def list_models(request: Request) -> JSONResponse:
        rag = get_rag()
        try:
            rag.front.authenticate(request.headers.get("authorization"))
        except Denied as exc:
            return _error(OpenAIError.denied(exc))
        return JSONResponse(models_list(tiers(rag)))

    async def get_model(request: Request) -> JSONResponse:
        rag = get_rag()
        try:
            rag.front.authenticate(request.headers.get("authorization"))
            return JSONResponse(model_card(request.path_params["model"], tiers(rag)))
        except Denied as exc:
            return _error(OpenAIError.denied(exc))
        except OpenAIError as exc:
            return _error(exc)

    async def _json_body(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError as exc:
            raise OpenAIError(400, f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
        except RecursionError:
            raise OpenAIError(400, "the request body is nested too deeply", None, "invalid_json") from None

    async def feedback(request: Request) -> JSONResponse:
        rag = get_rag()
        try:
            caller = rag.front.authenticate(request.headers.get("authorization"))
            body: FeedbackBody = parse_request(await _json_body(request), FeedbackBody)
            out = await rag.verdicts.take(rag.front.gate.tenant(caller, body.ragroute.tenant), body.id, body.verdict)
        except (OpenAIError, RagrouteError) as exc:
            err = exc if isinstance(exc, OpenAIError) else OpenAIError.denied(exc) if isinstance(exc, Denied) \
                else OpenAIError.of(exc)
            log.info("/v1/feedback refused (%d): %r", err.status, err.message)
            return _error(err)
        rid = out.pop("request_id")
        return JSONResponse({"id": f"chatcmpl-{rid}", "object": "feedback", **out})

    async def chat_completions(request: Request):
        rag = get_rag()
        request_id = secrets.token_hex(6)
        try:
            caller = rag.front.authenticate(request.headers.get("authorization"))
            chat = parse_request(await _json_body(request))
            req, rewritten = to_rag_request(chat, tiers(rag))
            admitted = await rag.front.admit(caller, req.tenant, req.collection)
        except (OpenAIError, RagrouteError) as exc:
            err = exc if isinstance(exc, OpenAIError) else OpenAIError.denied(exc) if isinstance(exc, Denied) \
                else OpenAIError.of(exc)
            log.info("request %s: /v1/chat/completions refused (%d): %r", request_id, err.status, err.message)
            return _error(err, request_id)
        req = req.model_copy(update={"tenant": admitted.tenant})
        log.info("request %s: /v1/chat/completions model=%r stream=%s user=%r%s", request_id, chat.model,
                 chat.stream, chat.user, f" follow-up asked as {req.query!r}" if rewritten else "")
        rewritten_query = req.query if rewritten else None
        fingerprint = rag.pipeline.fingerprint or "ragroute"
        if not chat.stream:
            try:
                resp = await rag.pipeline.run(req, request_id, admitted.meter)
            except RagrouteError as exc:
                log.warning("request %s failed: %s", request_id, exc)
                await rag.front.abandon(admitted)
                return _error(OpenAIError.of(rag.front.visible(caller, exc)), request_id)
            await rag.front.settle(admitted, resp)
            return JSONResponse(completion(resp, chat.model, fingerprint, rewritten_query),
                                headers={"X-Request-Id": request_id})

        events = outliving(rag.pipeline.stream(req, request_id, admitted.meter), lambda: rag.front.abandon(admitted))
        try:  # everything before the first event can still fail with a proper status code
            first = await anext(events)
        except RagrouteError as exc:
            log.warning("request %s failed: %s", request_id, exc)
            await events.aclose()
            await rag.front.abandon(admitted)
            return _error(OpenAIError.of(rag.front.visible(caller, exc)), request_id)
        writer = ChunkWriter(request_id, chat.model, fingerprint, chat.include_usage)

        async def sse() -> AsyncIterator[str]:
            event = first
            try:
                while True:
                    if event["event"] == "meta":  # sources, route and cache before the first token
                        chunks = writer.meta({k: v for k, v in event.items() if k != "event"})
                    elif event["event"] == "token":
                        chunks = writer.token(event["text"])
                    else:  # done
                        resp = RagResponse.model_validate(event["response"])
                        await rag.front.settle(admitted, resp)
                        chunks = writer.done(resp, rewritten_query)
                    for chunk in chunks:
                        yield _sse(chunk)
                    event = await anext(events)
            except StopAsyncIteration:
                yield "data: [DONE]\n\n"
            except Exception as exc:  # noqa: BLE001 - the status is sent: report the error in the stream
                log.warning("request %s: stream failed: %s", request_id, exc)
                status = exc.status if isinstance(exc, RagrouteError) else 500
                yield _sse(OpenAIError(status, public_message(exc), None, "stream_failed").body())
            finally:
                await events.aclose()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Request-Id": request_id})

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 404)
        response = _error(OpenAIError(status, f"{request.method} {request.url.path}: "
                                              f"{'no such endpoint' if status == 404 else 'method not allowed'}",
                                      None, "unknown_url" if status == 404 else "method_not_allowed"))
        response.headers.update(getattr(exc, "headers", None) or {})  # a 405's Allow
        return response

    return Starlette(routes=[Route("/chat/completions", chat_completions, methods=["POST"]),
                             Route("/models", list_models, methods=["GET"]),
                             Route("/feedback", feedback, methods=["POST"]),
                             Route("/models/{model:path}", get_model, methods=["GET"])],
                     exception_handlers={404: not_found, 405: not_found})
