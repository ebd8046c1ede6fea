"""rag_query through `bentoml serve` with the Redis cache (REDIS_URL), the admin API, and API keys:
two workers of the entry service (RAGROUTE_RAG_WORKERS=2) share the cache and the keys' limits."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from evals.redis_server import RedisServer
from evals.serving import serving
from pipelines.api.access import add_key
from tests.e2e.conftest import GENEROUS_BUDGETS

TOKEN = "e2e-admin-token-0123"
Q = "What does the with statement do?"
TENANTS = ("acme", "globex", "purge-me", "ops")
RATE = 6  # requests per minute of the rate-limited key


@pytest.fixture(scope="module")
def stack(e2e_home, model_cache):
    home = e2e_home("ragroute-redis-home")
    redis = RedisServer(home / "redis").start()
    keyfile = home / "keys.json"
    keys = {t: add_key(keyfile, t, t) for t in TENANTS}
    keys["limited"] = add_key(keyfile, "limited", "limited", rate=f"{RATE}/minute", tokens_per_day=1_000_000)
    keys["frugal"] = add_key(keyfile, "frugal", "frugal", tokens_per_day=10)
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "REDIS_URL": redis.url, "RAGROUTE_ADMIN_TOKEN": TOKEN,
           "RAGROUTE_CACHE_RETRY_S": "0.5", "RAGROUTE_API_KEYS": str(keyfile), "RAGROUTE_RAG_WORKERS": "2",
           **GENEROUS_BUDGETS,
           # These tests are about caching: a tiny model's weakly grounded answer (flagged by the
           # safety check, so never cached) must not decide them. Safety has its own tests.
           "RAGROUTE_SAFETY_MIN_GROUNDING": "0"}
    try:
        with serving(home, env) as server:
            server.keys = keys
            yield server, redis
    finally:
        redis.stop()


def post(server, body: dict, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/rag_query", json=body, headers=headers, timeout=120)


def ask(server, **body) -> dict:
    """As the tenant's own key (the tenant comes from it)."""
    resp = post(server, {"top_k": 1, **body}, server.keys[body["tenant"]])  # one source: a quick prompt
    assert resp.status_code == 200, resp.text
    return resp.json()


def admin(server, path: str, body=None, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}/{path}", json=body or {}, headers=headers, timeout=30)


def test_tenants_never_share_answers(stack):
    server, _ = stack
    a = ask(server, query=Q, tenant="acme")
    assert not a["cache"]["hit"]
    assert ask(server, query=Q, tenant="acme")["cache"]["kind"] == "exact"
    b = ask(server, query=Q, tenant="globex")  # the identical question, another tenant
    assert not b["cache"]["hit"] and "generate" in b["timings_ms"] and b["usage"]["tokens_out"] > 0  # answered afresh
    # The default error-bounded cache has seen nothing for globex yet: the paraphrase is answered
    # fresh, and its answer compared with the cached one (the first observation of the tenant).
    para = ask(server, query=Q + " exactly", tenant="globex")["cache"]
    assert not para["hit"] and para["decision"] == "observe" and not para["verification_sample"]
    assert "learning: tenant's candidates at P >= 0.9: 0 verified" in para["verifier"][0]
    assert para["verifier"][-1].startswith("compared with the cached answer:")
    stats = admin(server, "cache_stats").json()
    assert stats["backend"] == "redis" and stats["entries"] == 3 and stats["policy"] == "error-bound"
    globex, acme = stats["tenants"]["globex"], stats["tenants"]["acme"]
    assert (globex["observations"], globex["lookups"]) == (1, 2)  # the first ask found no candidate
    assert (acme["observations"], acme["lookups"]) == (0, 1)  # its second ask was an exact hit
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text  # labels come sorted by name
    seen = re.findall(r'ragroute_cache_observations\{outcome="(agree|wrong)",tenant="globex"\} (\S+)', metrics)
    assert sorted(float(v) for _, v in seen) == [0.0, 1.0], seen
    assert re.search(r'ragroute_cache_decisions_total\{decision="observe",tenant="globex"\} 1\.0', metrics)


def test_admin_purge_by_document_and_tenant(stack):
    server, _ = stack
    ask(server, query=Q, tenant="purge-me")
    assert admin(server, "cache_purge", {"doc_ids": ["pydoc:nothing-cites-this"]}).json() == {"deleted": 0}
    deleted = admin(server, "cache_purge", {"doc_ids": ["pydoc:with"], "tenant": "purge-me"}).json()["deleted"]
    assert deleted == 1
    assert not ask(server, query=Q, tenant="purge-me")["cache"]["hit"]
    assert admin(server, "cache_purge", {"tenant": "purge-me"}).json() == {"deleted": 1}


def test_admin_api_needs_the_token_and_valid_input(stack):
    server, _ = stack
    assert admin(server, "cache_purge", {"tenant": "acme"}, token=None).status_code == 401
    assert admin(server, "cache_purge", {"tenant": "acme"}, token="wrong").status_code == 401
    assert admin(server, "cache_stats", token="wrong").status_code == 401
    assert admin(server, "cache_stats", token=None).status_code == 401
    assert admin(server, "cache_stats").json()["backend"] == "redis"
    assert admin(server, "cache_purge", {}).status_code == 400
    bad = admin(server, "cache_purge", {"tenant": "a b"})
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["tenant"]


def test_redis_killed_mid_run_then_used_again(stack):
    server, redis = stack
    ask(server, query="How do I catch an exception?", tenant="ops")
    errors_before = cache_errors(server)
    redis.stop()
    down = [ask(server, query="How do I catch an exception?", tenant="ops") for _ in range(2)]
    for resp in down:
        assert resp["answer"] and resp["cache"]["status"] == "unavailable" and not resp["degraded"]
    purge = admin(server, "cache_purge", {"tenant": "ops"})  # the backend is down: said so, not a 500
    assert purge.status_code == 503 and "purge failed" in purge.json()["error"], purge.text
    redis.start()  # the same object: the fixture stops this one at the end
    time.sleep(1.0)
    first = ask(server, query="How do I catch an exception?", tenant="ops")
    assert first["cache"]["status"] == "miss"  # reachable again (and empty: no persistence)
    assert ask(server, query="How do I catch an exception?", tenant="ops")["cache"]["kind"] == "exact"
    assert cache_errors(server) > errors_before  # the lookups that found Redis down were counted


def cache_errors(server) -> float:
    """ragroute_cache_errors_total, summed over operations (and workers)."""
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^ragroute_cache_errors_total\{[^}]*\} (\S+)$", metrics, re.M))


def test_without_a_key_or_with_a_wrong_one_the_query_api_is_a_401(stack):
    server, _ = stack
    for key in (None, "rr-not-a-key"):
        resp = post(server, {"query": Q}, key)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["field"] == "authorization"


def test_a_key_cannot_name_another_tenant(stack):
    server, _ = stack
    resp = post(server, {"query": Q, "tenant": "globex"}, server.keys["acme"])
    assert resp.status_code == 403 and resp.json()["field"] == "tenant"
    # omitting the tenant answers in the key's own partition
    ask(server, query=Q, tenant="acme")
    own = post(server, {"query": Q, "top_k": 1}, server.keys["acme"]).json()
    assert own["cache"]["kind"] == "exact"


def test_the_rate_limit_is_shared_by_both_workers(stack):
    server, _ = stack
    key = server.keys["limited"]
    codes, retry = [], []
    for _ in range(RATE + 10):  # a new connection per request: the workers take turns accepting them
        resp = post(server, {"query": Q, "top_k": 1}, key)
        codes.append(resp.status_code)
        retry.append(resp.headers.get("retry-after"))
    assert codes == [200] * RATE + [429] * 10, codes
    assert all(1 <= int(r) <= 60 for r in retry[RATE:])
    # both workers refused some (so each saw the other's count, through Redis)
    pids = {line.split("[pid ")[1].split("]")[0] for line in server.log.read_text().splitlines()
            if "refused (429)" in line}
    assert len(pids) == 2, pids
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'ragroute_denied_total{status="429"}' in metrics and 'ragroute_tenant_requests_total{tenant="limited"}' in metrics


def test_the_openai_client_uses_its_api_key_and_the_key_s_quota(stack):
    server, _ = stack
    question = [{"role": "user", "content": Q}]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="rr-not-a-key", max_retries=0).models.list()
    acme = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.keys["acme"], max_retries=0, timeout=120)
    with pytest.raises(openai.PermissionDeniedError) as info:
        acme.chat.completions.create(model="ragroute", messages=question, extra_body={"ragroute": {"tenant": "ops"}})
    assert info.value.code == "tenant_not_allowed"
    frugal = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.keys["frugal"], max_retries=0, timeout=120)
    first = frugal.chat.completions.create(model="small", messages=question, extra_body={"ragroute": {"top_k": 1}})
    assert first.usage.total_tokens > 10 and first.model_extra["ragroute"]["cache"]["status"] == "miss"
    with pytest.raises(openai.RateLimitError) as info:  # the first answer used up the 10-token quota
        frugal.chat.completions.create(model="small", messages=question, extra_body={"ragroute": {"top_k": 1}})
    assert info.value.code == "insufficient_quota" and int(info.value.response.headers["retry-after"]) > 23 * 3600
