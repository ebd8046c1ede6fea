"""rag_query over HTTP against `bentoml serve` with every service in its own process."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import bentoml
import pytest

QUESTION = "What does the with statement do?"
PARAPHRASE = "What does the with statement do exactly?"  # cosine 0.988 with QUESTION (MiniLM)
STAGES = {"cache", "embed", "retrieve", "rerank", "route", "generate", "safety", "total"}


@pytest.fixture(scope="module")
def first(server):
    resp = server.post({"query": QUESTION})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_question_is_answered_from_the_with_help_topic(server, first):
    assert first["answer"].strip()
    assert first["sources"][0]["doc_id"] == "pydoc:with" and first["sources"][0]["title"] == "with"
    assert all({"id", "doc_id", "title", "snippet", "score"} <= set(s) for s in first["sources"])
    assert len(first["sources"]) == 4
    assert first["route"]["tier"] in ("small", "large") and first["route"]["model"]
    assert first["route"]["reason"].startswith("heuristic score")
    assert first["cache"] == {"hit": False, "kind": None, "similarity": None, "status": "miss", "verifier": []}
    assert set(first["timings_ms"]) == STAGES and first["timings_ms"]["total"] >= first["timings_ms"]["generate"]
    assert not first["degraded"] and first["usage"]["tokens_out"] > 0
    assert first["budget_profile"] == "cpu"
    assert first["safety"]["checked"] and first["safety"]["problems"] == [] and first["safety"]["grounding"] >= 0.5
    assert all(b["outcome"] == "ok" and b["used_ms"] <= b["budget_ms"] for b in first["budget"].values())
    # The demo index was built on first start under RAGROUTE_HOME, and the answer says which.
    manifest = json.loads((server.home / "indexes" / "demo" / "manifest.json").read_text())
    assert first["index_version"] == manifest["index_version"]


def test_asking_again_is_an_exact_cache_hit(server, first):
    again = server.post({"query": "  what does the WITH statement do  "}).json()
    assert again["cache"] == {"hit": True, "kind": "exact", "similarity": 1.0, "status": "hit", "verifier": []}
    assert again["answer"] == first["answer"] and again["sources"] == first["sources"]
    assert set(again["timings_ms"]) == {"cache", "total"}


def test_a_paraphrase_is_a_semantic_cache_hit(server, first):
    para = server.post({"query": PARAPHRASE}).json()
    assert para["cache"]["hit"] and para["cache"]["kind"] == "semantic" and para["cache"]["similarity"] >= 0.95
    assert para["cache"]["verifier"][0].startswith(f"{QUESTION!r}") and "accepted" in para["cache"]["verifier"][0]
    assert para["answer"] == first["answer"]
    assert set(para["timings_ms"]) == {"cache", "embed", "total"}


def test_bypass_and_explicit_tier_generate_afresh(server, first):
    resp = server.post({"query": QUESTION, "tier": "large", "top_k": 2, "cache": "bypass"}).json()
    assert not resp["cache"]["hit"] and resp["route"]["tier"] == "large" and resp["route"]["score"] is None
    assert resp["route"]["model"].startswith("Qwen2.5-Coder-0.5B") and len(resp["sources"]) == 2
    assert resp["answer"].strip()


@pytest.mark.parametrize("body,field", [
    ({"query": "   "}, "query"),
    ({"query": "x" * 2001}, "query"),
    ({"query": "q", "top_k": 0}, "top_k"),
    ({"query": "q", "top_k": 21}, "top_k"),
    ({"query": "q", "top_k": "four"}, "top_k"),
    ({"query": "q", "tier": "xl"}, "tier"),
    ({"query": "q", "cache": "maybe"}, "cache"),
    ({"query": "q", "tenant": "acme corp"}, "tenant"),
    ({"query": "q", "unknown": 1}, "unknown"),
    ({"query": ["a list"]}, "query"),
    ({"top_k": 3}, "query"),
])
def test_bad_input_is_a_400_naming_the_field(server, body, field):
    resp = server.post(body)
    assert resp.status_code == 400, resp.text
    assert [d["loc"][0] for d in resp.json()["detail"]] == [field]


def test_malformed_json_is_a_400(server):
    import httpx

    resp = httpx.post(f"{server.url}/rag_query", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400


def test_admin_api_is_disabled_without_a_token(server):
    import httpx

    resp = httpx.post(f"{server.url}/cache_purge", json={"tenant": "default"})
    assert resp.status_code == 403 and "RAGROUTE_ADMIN_TOKEN" in resp.json()["error"]


def test_python_client(server, first):
    with bentoml.SyncHTTPClient(server.url, timeout=120) as client:
        out = client.rag_query(query=QUESTION)
    assert out["cache"]["kind"] == "exact" and out["answer"] == first["answer"]


def test_burst_of_dependency_calls_loses_no_request(server, first):
    """300 requests, 32 at a time, each calling the Embedding service (semantic hits).

    bentoml 1.4.30+ recycles a caller's connection every 100 calls and fails in-flight
    requests with 500 unless RUNNER_CONNECTION is set on the callee (services/_common.py).
    """
    variants = [PARAPHRASE, "What exactly does the with statement do?", "So, what does the with statement do?",
                "What does the with statement actually do?"]

    def ask(i: int) -> tuple[int, str | None]:
        r = server.post({"query": variants[i % len(variants)]}, timeout=60)
        return r.status_code, r.json()["cache"]["kind"] if r.status_code == 200 else r.text

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(300)))
    failures = [r for r in results if r[0] != 200]
    assert failures == [], failures[:5]
    assert {kind for _, kind in results} == {"semantic"}
