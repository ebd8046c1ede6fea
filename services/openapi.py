"""The published OpenAPI document (``/docs.json``) describes what the service really accepts and
returns: BentoML's generated one, corrected, plus the mounted ``/v1`` and ``/playground``.

BentoML 1.4.39 publishes request schemas that allow extra properties (the service refuses
them), a 400 body whose ``detail`` is a string (BentoML's validation errors send a list), no
401/403/429/503, JSON Schema 2020 constructs OpenAPI 3.0 does not have (``const``, ``type:
null``), and nothing for mounted apps (/v1, /playground, /ingest); and it answers a body it cannot parse (``multipart/form-
data`` without a boundary) with a 500. :func:`publish` fixes the document; :class:`ApiContract`
(an ASGI middleware) serves it in place of BentoML's and answers a request body that is not
JSON with a 415 before BentoML parses it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pipelines.api.openai_compat import max_answer_tokens, model_names
from pipelines.api.openai_request import ChatRequest
from pipelines.api.schema import TEXT
from pipelines.config import TierConfig
from pipelines.query.modes import available

REF = "#/components/schemas/{model}"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


RETRY_AFTER = {"Retry-After": {"description": "seconds until the limit lets a request through",
                               "schema": {"type": "integer"}}}
WWW_AUTH = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}

SCHEMAS: dict[str, dict] = {
    "Error": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "field": {"type": "string", "description": "the field at fault"},
        "request_id": {"type": "string", "description": "finds the details in the service's log"}}},
    "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True}}}}},
    "ChatCompletion": {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
                       "properties": {
        "id": {"type": "string"}, "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer"}, "model": {"type": "string"}, "system_fingerprint": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "message", "finish_reason"],
                                               "properties": {
            "index": {"type": "integer"}, "finish_reason": {"type": "string", "enum": ["stop", "length"]},
            "message": {"type": "object", "required": ["role", "content"], "properties": {
                "role": {"type": "string", "enum": ["assistant"]}, "content": {"type": "string"}}}}}},
        "usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                  "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens",
                                                                   "total_tokens")}},
        "ragroute": {"type": "object", "description": "ragroute's report: rag_query's response without `answer`, "
                                                      "plus `query` (a follow-up's standalone question)"}}},
    "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
        "id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]}, "created": {"type": "integer"},
        "owned_by": {"type": "string"}, "ragroute": {"type": "object"}}},
    "ModelList": {"type": "object", "required": ["object", "data"], "properties": {
        "object": {"type": "string", "enum": ["list"]}, "data": {"type": "array", "items": _ref("Model")}}},
}

REST_ERRORS = {
    "400": _json({"anyOf": [_ref("Error"), _ref("ValidationError")]}, "invalid input; the field is named"),
    "401": _json(_ref("Error"), "no or wrong key (an API key, or the admin token)", WWW_AUTH),
    "403": _json(_ref("Error"), "the key belongs to another tenant, or the admin API is disabled"),
    "429": _json(_ref("Error"), "over the key's rate limit or token quota", RETRY_AFTER),
    "413": _json(_ref("Error"), "the body is over RAGROUTE_MAX_BODY_BYTES (1 MiB); it was not read"),
    "415": _json(_ref("Error"), "the body is not application/json"),
    "503": _json(_ref("Error"), "a stage failed and no answer could be given"),
}
OPENAI_ERRORS = {
    "400": _json(_ref("OpenAIError"), "invalid request; `param` names the field"),
    "401": _json(_ref("OpenAIError"), "no or wrong API key", WWW_AUTH),
    "403": _json(_ref("OpenAIError"), "the key belongs to another tenant"),
    "404": _json(_ref("OpenAIError"), "unknown model or collection (the message lists the valid ones)"),
    "413": _json(_ref("OpenAIError"), "the body is over RAGROUTE_MAX_BODY_BYTES (1 MiB); it was not read"),
    "429": _json(_ref("OpenAIError"), "over the key's rate limit or token quota", RETRY_AFTER),
    "503": _json(_ref("OpenAIError"), "no answer could be given"),
}
SSE = {"text/event-stream": {"schema": {"type": "object", "description": "one server-sent event",
                                        "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}}
JSON_APIS = ("/rag_query", "/feedback", "/cache_purge", "/cache_stats", "/collections")  # BentoML APIs: JSON bodies only
NO_FIELDS = ("/cache_stats", "/collections")  # an empty object or no body


def publish(spec: dict, tiers: dict[str, TierConfig], backends: tuple[str, ...] = ("faiss",)) -> dict:
    """BentoML's document (``spec``), corrected, with /v1, /playground and /ingest added;
    ``tiers``: the configured tiers (they bound /v1's ``model`` and sampling parameters);
    ``backends``: where a new collection can live (``milvus`` only with a Milvus configured)."""
    spec = copy.deepcopy(spec)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(copy.deepcopy(SCHEMAS))
    # BentoML's validation errors: {"error": "...", "detail": [{"loc": [...], "msg": ...}, ...]}
    schemas["ValidationError"] = {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "detail": {"type": "array", "items": {"type": "object"}}}}
    for schema in _request_schemas(spec):
        title = schema.get("title", "")
        schema["additionalProperties"] = False  # the service refuses unknown fields
        props = schema.get("properties", {})
        if title == "RagRequestIODescriptor":
            props["query"]["pattern"] = TEXT  # blank after trimming, or a control character, is refused
            props["tier"] = {**props["tier"], "enum": [*available(list(tiers)), *tiers]}  # configured ones, not any name
            props["tier"].pop("pattern", None)
        elif title == "PurgeRequestIODescriptor":  # a tenant, doc ids, or both
            schema["anyOf"] = [{"required": ["tenant"], "properties": {"tenant": {"type": "string"}}},
                               {"required": ["doc_ids"], "properties": {"doc_ids": {"type": "array", "minItems": 1}}}]
    paths = spec.setdefault("paths", {})
    for path in JSON_APIS:
        post = paths.get(path, {}).get("post")
        if post is None:
            continue
        if path not in NO_FIELDS:  # the others have required fields: no body is a 400
            post.setdefault("requestBody", {})["required"] = True
        responses = post["responses"] = {str(k): v for k, v in post["responses"].items()}
        for status in ("400", "404", "500"):  # BentoML's generic ones
            responses.pop(status, None)
        responses.update(copy.deepcopy(REST_ERRORS))
        if path == "/rag_query":  # with "stream": true, server-sent events
            responses["200"]["content"].update(SSE)
            responses["404"] = _json(_ref("Error"), "no such collection (the message lists the valid ones)")
        if path == "/feedback":
            responses["404"] = _json(_ref("Error"), "no answer with this id of this tenant (or older than the "
                                                    "records are kept)")
            responses["409"] = _json(_ref("Error"), "this answer was already rated")
    chat_schema = ChatRequest.model_json_schema(ref_template=REF)
    for name, sub in chat_schema.pop("$defs", {}).items():
        schemas[name] = sub
    props = chat_schema["properties"]
    props["model"] = {"type": "string", "enum": model_names(list(tiers))}
    # what the service accepts (pipelines/api/openai_compat.py: _check_sampling), as schema
    least = max_answer_tokens(list(tiers.values()))
    for param in ("max_tokens", "max_completion_tokens"):
        props[param] = {"type": "integer", "minimum": least, "nullable": True}
    for param in ("temperature", "top_p"):
        values = {getattr(t, param) for t in tiers.values()}
        if len(values) == 1:
            props[param] = {"type": "number", "enum": [values.pop(), None], "nullable": True}
    props["n"] = {"type": "integer", "enum": [1, None], "nullable": True}
    props["stop"] = {"anyOf": [{"type": "string", "maxLength": 0}, {"type": "array", "maxItems": 0}],
                     "nullable": True}
    for param in ("tools", "functions"):
        props[param] = {"type": "array", "maxItems": 0, "nullable": True}
    props["response_format"] = {"type": "object", "nullable": True,
                                "properties": {"type": {"type": "string", "enum": ["text"]}}}
    props["logprobs"] = {"type": "boolean", "enum": [False, None], "nullable": True}
    schemas["ChatCompletionRequest"] = chat_schema
    v1 = {"tags": ["OpenAI"]}
    paths["/v1/chat/completions"] = {"post": {**v1, "operationId": "chat_completions",
        "description": "OpenAI Chat Completions (docs/api.md: OpenAI-compatible API)",
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ChatCompletionRequest")}}},
        "responses": {"200": {"description": "a completion, or with `stream` chat.completion.chunk events",
                              "content": {JSON: {"schema": _ref("ChatCompletion")}, **SSE}},
                      **copy.deepcopy(OPENAI_ERRORS)}}}
    from pipelines.api.openai_request import FeedbackBody

    feedback_errors = {c: copy.deepcopy(OPENAI_ERRORS[c]) for c in ("400", "401", "403", "413", "503")}
    feedback_errors["404"] = _json(_ref("OpenAIError"), "no answer with this id of this tenant")
    feedback_errors["409"] = _json(_ref("OpenAIError"), "this answer was already rated")
    paths["/v1/feedback"] = {"post": {**v1, "operationId": "feedback_v1",
        "description": "a verdict on a /v1 answer by its id (docs/api.md: Feedback)",
        "requestBody": {"required": True, "content": {JSON: {"schema": _model(schemas, FeedbackBody)}}},
        "responses": {"200": _json({"type": "object", "required": ["id", "object", "verdict", "answer", "effect"],
                                    "properties": {"id": {"type": "string"}, "object": {"type": "string"},
                                                   "verdict": {"type": "string"}, "answer": {"type": "string"},
                                                   "effect": {"type": "string"}}}, "the verdict, and what it changed"),
                      **feedback_errors}}}
    paths["/v1/models"] = {"get": {**v1, "operationId": "list_models", "responses": {
        "200": _json(_ref("ModelList"), "the modes and tiers"), "401": OPENAI_ERRORS["401"]}}}
    paths["/v1/models/{model}"] = {"get": {**v1, "operationId": "retrieve_model",
        "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json(_ref("Model"), "one mode or tier"), "401": OPENAI_ERRORS["401"],
                      "404": OPENAI_ERRORS["404"]}}}
    _ingest_paths(paths, schemas, backends)
    paths["/playground"] = {"get": {"tags": ["Playground"], "operationId": "playground", "responses": {
        "200": {"description": "the playground page", "content": {"text/html": {"schema": {"type": "string"}}}}}}}
    return _openapi30(spec)


def _model(schemas: dict, model) -> dict:
    """``model``'s JSON schema registered under its name (its nested models too); a reference to it."""
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__] = schema
    return _ref(model.__name__)


def _ingest_paths(paths: dict, schemas: dict, backends: tuple[str, ...]) -> None:
    """The ingestion API (services/ingest_app.py), admin token required."""
    from index.layout import NAME
    from pipelines.indexing.jobs import JOB_ID, CreateBody, DeleteBody, Job, UpsertBody

    job, create = _model(schemas, Job), _model(schemas, CreateBody)
    schemas["CreateBody"]["properties"]["backend"] = {  # the configured ones
        **schemas["CreateBody"]["properties"]["backend"], "anyOf": [{"type": "string", "enum": list(backends)},
                                                                    {"type": "null"}]}
    tags = {"tags": ["Ingestion"]}
    errors = {code: copy.deepcopy(REST_ERRORS[code]) for code in ("400", "401", "403", "415")}
    errors["413"] = _json(_ref("Error"), "the body is over RAGROUTE_INGEST_MAX_BODY_BYTES (32 MiB); it was not read")
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME.pattern}}]
    not_found = _json(_ref("Error"), "no such managed collection")
    conflict = _json(_ref("Error"), "the collection exists, is a read-only index folder, or has a job running")

    def body(ref: dict) -> dict:
        return {"required": True, "content": {JSON: {"schema": ref}}}

    paths["/ingest/collections"] = {"post": {**tags, "operationId": "create_collection", "requestBody": body(create),
        "responses": {"201": _json({"type": "object"}, "created (name, documents, backend)"), "409": conflict,
                      **errors}}}
    paths["/ingest/collections/{name}"] = {"delete": {**tags, "operationId": "drop_collection", "parameters": name,
        "responses": {"200": _json({"type": "object"}, "dropped"), "404": not_found, "409": conflict,
                      **{c: e for c, e in errors.items() if c in ("400", "401", "403")}}}}
    for path, model, op, what in (("documents", UpsertBody, "upsert_documents", "upsert documents (replacing ids that exist)"),
                                  ("documents/delete", DeleteBody, "delete_documents", "delete documents by id")):
        paths[f"/ingest/collections/{{name}}/{path}"] = {"post": {**tags, "operationId": op, "description": what,
            "parameters": name, "requestBody": body(_model(schemas, model)),
            "responses": {"202": _json(job, "the job, queued (poll /ingest/jobs/{id})"), "404": not_found,
                          "409": conflict, **errors}}}
    paths["/ingest/jobs/{job_id}"] = {"get": {**tags, "operationId": "get_job", "parameters": [
        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": JOB_ID.pattern}}],
        "responses": {"200": _json(job, "the job: status, progress, result or error"),
                      "404": _json(_ref("Error"), "no such job"),
                      **{c: e for c, e in errors.items() if c in ("400", "401", "403")}}}}


def _request_schemas(spec: dict) -> list[dict]:
    """The BentoML APIs' request schemas, in components and inline in the paths' request bodies."""
    found = [schema for name, schema in spec["components"]["schemas"].items()
             if (name.endswith("IODescriptor") and name != "RagResponseIODescriptor") or name.endswith("__Input")]
    for path in JSON_APIS:
        body = spec["paths"].get(path, {}).get("post", {}).get("requestBody", {})
        schema = body.get("content", {}).get(JSON, {}).get("schema")
        if isinstance(schema, dict) and "$ref" not in schema:
            found.append(schema)
    return found


def _openapi30(node: Any) -> Any:
    """pydantic's JSON Schema 2020 in OpenAPI 3.0's dialect: ``const`` -> ``enum``, ``anyOf`` with
    ``{"type": "null"}`` -> ``nullable``."""
    if isinstance(node, list):
        return [_openapi30(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _openapi30(v) for k, v in node.items()}
    if "const" in node and not isinstance(node["const"], dict):
        node["enum"] = [node.pop("const")]
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            node.update(rest[0])
            if "enum" in node and None not in node["enum"]:  # OpenAPI 3.0: an enum lists null to allow it
                node["enum"] = [*node["enum"], None]
        elif len(rest) == 1:
            node["allOf"] = rest
        else:
            node["anyOf"] = rest
        node["nullable"] = True
    return node


class ApiContract:
    """ASGI middleware: ``GET /docs.json`` answers :func:`publish`'s document (built once), and a
    POST to a BentoML API whose body is declared as something other than JSON is a 415."""

    def __init__(self, app, service) -> None:
        self.app = app
        self.service = service
        self.body: bytes | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] == "/docs.json" and scope["method"] == "GET":
            await self._respond(send, 200, self._document())
        elif scope["method"] == "POST" and scope["path"] in JSON_APIS and not _is_json(scope):
            body = json.dumps({"error": "the request body must be application/json", "field": "content-type"})
            await self._respond(send, 415, body.encode())
        else:
            await self.app(scope, receive, send)

    def _document(self) -> bytes:
        if self.body is None:
            import bentoml

            pipeline = bentoml.get_current_service().pipeline
            tiers = {name: pipeline.tier_configs[name] for name in pipeline.tiers}
            ingest = bentoml.get_current_service().ingest
            backends = ("faiss", "milvus") if ingest is not None and ingest.milvus is not None else ("faiss",)
            spec = publish(self.service.openapi_spec.asdict(), tiers, backends)
            self.body = json.dumps(spec).encode()
        return self.body

    @staticmethod
    async def _respond(send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _is_json(scope) -> bool:
    """No Content-Type (BentoML reads JSON then) or application/json (or a +json type)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";")[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True
