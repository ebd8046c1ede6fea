"""The published OpenAPI document: BentoML's, corrected to what the service accepts and returns."""

from __future__ import annotations

import json

from pipelines.config import TierConfig
from services.openapi import _is_json, publish

TIERS = {"small": TierConfig(name="small", engine="llamacpp", model="s", context_tokens=2048, max_tokens=96),
         "large": TierConfig(name="large", engine="llamacpp", model="l", context_tokens=2048, max_tokens=96)}


def bentoml_spec() -> dict:
    import services.rag

    return services.rag.RAG.openapi_spec.asdict()


def body_schema(spec: dict, path: str) -> dict:
    return spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_request_schemas_state_what_the_service_refuses():
    spec = publish(bentoml_spec(), TIERS)
    rag = body_schema(spec, "/rag_query")
    assert rag["additionalProperties"] is False and rag["properties"]["tier"]["enum"] == [
        "auto", "cascade", "small", "large"]
    assert "pattern" in rag["properties"]["query"]
    purge = body_schema(spec, "/cache_purge")
    assert purge["additionalProperties"] is False and len(purge["anyOf"]) == 2
    assert spec["paths"]["/rag_query"]["post"]["requestBody"]["required"] is True


def test_error_responses_are_published_as_sent():
    spec = publish(bentoml_spec(), TIERS)
    responses = spec["paths"]["/rag_query"]["post"]["responses"]
    assert {"200", "400", "401", "403", "415", "429", "503"} <= set(responses)
    assert "text/event-stream" in responses["200"]["content"]
    assert "Retry-After" in responses["429"]["headers"]
    detail = spec["components"]["schemas"]["ValidationError"]["properties"]["detail"]
    assert detail["type"] == "array"  # BentoML sends a list of pydantic errors, not a string


def test_v1_and_the_playground_are_published_in_openapi_3_0():
    spec = publish(bentoml_spec(), TIERS)
    assert {"/v1/chat/completions", "/v1/models", "/v1/models/{model}", "/playground"} <= set(spec["paths"])
    chat = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["model"]["enum"] == ["ragroute", "ragroute-cascade", "small", "large"]
    assert chat["max_tokens"]["minimum"] == 96 and chat["temperature"]["enum"] == [0.0, None]
    text = json.dumps(spec)
    assert '"const"' not in text and '{"type": "null"}' not in text  # JSON Schema 2020 only


def test_the_ingestion_api_is_published_with_its_bodies_and_errors():
    spec = publish(bentoml_spec(), TIERS)
    ingest = {p: ops for p, ops in spec["paths"].items() if p.startswith("/ingest")}
    assert {(p, m) for p, ops in ingest.items() for m in ops} == {
        ("/ingest/collections", "post"), ("/ingest/collections/{name}", "delete"),
        ("/ingest/collections/{name}/documents", "post"), ("/ingest/collections/{name}/documents/delete", "post"),
        ("/ingest/jobs/{job_id}", "get")}
    upsert = ingest["/ingest/collections/{name}/documents"]["post"]
    assert {"202", "400", "401", "403", "404", "409", "413", "415"} <= set(upsert["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["UpsertBody"]["additionalProperties"] is False  # extra="forbid", as the API refuses
    document = schemas["DocumentIn"]
    assert document["additionalProperties"] is False and document["properties"]["text"]["minLength"] == 1
    assert schemas["Job"]["properties"]["status"]["enum"] == ["queued", "running", "succeeded", "failed"]
    assert '"const"' not in json.dumps(ingest) and '{"type": "null"}' not in json.dumps(schemas["Job"])


def test_a_body_declared_as_anything_but_json_is_told_apart():
    assert _is_json({"headers": []}) and _is_json({"headers": [(b"content-type", b"application/json; charset=utf-8")]})
    assert not _is_json({"headers": [(b"content-type", b"multipart/form-data")]})
    assert not _is_json({"headers": [(b"content-type", b"text/plain")]})


def test_a_collection_backend_is_offered_only_when_configured():
    def backend(spec):
        return spec["components"]["schemas"]["CreateBody"]["properties"]["backend"]

    assert backend(publish(bentoml_spec(), TIERS))["enum"] == ["faiss", None]
    assert backend(publish(bentoml_spec(), TIERS, ("faiss", "milvus")))["enum"] == ["faiss", "milvus", None]
