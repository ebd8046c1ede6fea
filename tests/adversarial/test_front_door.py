"""The front door under attack, against one real stack: `bentoml serve` with API keys, a real
Redis (cache, limits, quotas), the error-bounded cache's verifier policy (it serves paraphrases
at once, so a leak would show), and an admin token.

Each test names the bug it guards against (issue 37); each failed before its fix."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest
import redis

from evals.redis_server import RedisServer
from evals.serving import serving
from pipelines.api.access import add_key, hash_key
from pipelines.api.access import reservation as reservation_of
from pipelines.config import GenerationConfig
from tests.e2e.conftest import GENEROUS_BUDGETS

pytestmark = pytest.mark.e2e

TOKEN = "adversarial-admin-token-7f3a"
QUOTA = 6000  # tokens a day of the "frugal" key: a handful of answers
Q = "What does the pass statement do?"
CACHE_BUDGET_MS = 100  # the cpu profile's cache stage budget (pipelines/config/budget.py)


@pytest.fixture(scope="module")
def stack(e2e_home, model_cache):
    home = e2e_home("ragroute-adversarial-home")
    store = RedisServer(home / "redis").start()
    keyfile = home / "keys.json"
    keys = {t: add_key(keyfile, t, t) for t in ("acme", "Acme", "ACME")}
    keys["frugal"] = add_key(keyfile, "frugal", "frugal", tokens_per_day=QUOTA)
    keys["reader"] = add_key(keyfile, "reader", "reader", collections=["handbook"])
    env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "REDIS_URL": store.url, "RAGROUTE_ADMIN_TOKEN": TOKEN,
           "RAGROUTE_API_KEYS": str(keyfile), "RAGROUTE_CACHE_POLICY": "verifier", "RAGROUTE_CACHE_RETRY_S": "2",
           "RAGROUTE_SAFETY_MIN_GROUNDING": "0", **GENEROUS_BUDGETS,
           "RAGROUTE_BUDGET_CACHE_MS": str(CACHE_BUDGET_MS)}
    try:
        with serving(home, env) as server:
            server.keys = keys
            yield server, store
    finally:
        store.stop()


def ask(server, key: str, timeout: float = 120, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/rag_query", json={"top_k": 1, "tier": "small", **body},
                      headers={"Authorization": f"Bearer {server.keys[key]}"}, timeout=timeout)


def chat(server, key: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {server.keys[key]}"}, timeout=120, **kw)


# -- 1. tenants that differ only in case -----------------------------------------------------------
def test_tenants_differing_only_in_case_never_share_cached_answers(stack):
    server, _ = stack
    first = ask(server, "acme", query=Q).json()
    assert first["cache"]["status"] == "miss" and first["answer"]
    again = ask(server, "acme", query=Q).json()
    assert again["cache"]["hit"] and again["cache"]["kind"] == "exact"  # positive control: the cache serves acme
    # each asks once, so that the only entry that could answer it is acme's
    for other, query in (("ACME", Q), ("Acme", "What is the pass statement for?")):  # exact, and a rewording
        out = ask(server, other, query=query).json()
        assert not out["cache"]["hit"], (other, query, out["cache"])
        assert not any(Q in v for v in out["cache"]["verifier"]), out["cache"]["verifier"]
    again = ask(server, "acme", query="What is the pass statement for?").json()
    assert again["cache"]["hit"] and again["cache"]["kind"] == "semantic"  # the rewording does reach acme's own


# -- 2 and 3. token quotas: streams abandoned mid-answer, and concurrency -------------------------
def generated_tokens(server) -> int:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return int(sum(float(v) for v in re.findall(r"^ragroute_generation_tokens_total\{[^}]*\} (\S+)$", text, re.M)))


def charged(store, key: str) -> int:
    return int(redis.Redis.from_url(store.url).get(f"ragroute:limits:quota:{hash_key(key)[:16]}") or 0)


async def stream_three_chunks(server, key: str, question: str) -> int:
    """A /v1 stream the client closes after three chunks; its status."""
    body = {"model": "small", "stream": True, "messages": [{"role": "user", "content": question}],
            "ragroute": {"cache": "bypass", "top_k": 1}}
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as resp:
            if resp.status_code != 200:
                return resp.status_code
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data:")
                if seen >= 3:
                    break  # hang up mid-answer
            return 200


def test_streams_abandoned_mid_answer_are_charged_what_they_generated_and_the_quota_holds(stack):
    server, store = stack
    key = server.keys["frugal"]
    before = generated_tokens(server)
    questions = [f"What does the {w} statement do?" for w in
                 ("pass", "break", "continue", "return", "yield", "raise", "import", "global")] * 4

    async def burst():
        return await asyncio.gather(*(stream_three_chunks(server, key, q) for q in questions))

    statuses = asyncio.run(burst())
    admitted = statuses.count(200)
    assert admitted >= 2 and statuses.count(429) == 32 - admitted, statuses
    # The abandoned answers are finished out of sight (the engine is decoding them anyway) and
    # each is charged exactly what it cost, once it ends: charged = generated, to the token.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        spent = generated_tokens(server) - before
        if spent and charged(store, key) == spent:
            break
        time.sleep(1)
    assert spent > 100 * admitted and charged(store, key) == spent, (charged(store, key), spent)
    # then whole answers until the quota says no: past it by at most one answer's reservation
    answered = 0
    for i in range(20):
        resp = ask(server, "frugal", query=f"Question {i}: what does the del statement do?", cache="bypass")
        if resp.status_code == 429:
            assert resp.headers["Retry-After"].isdigit() and "quota" in resp.json()["error"]
            break
        assert resp.status_code == 200, resp.text
        answered += 1
    else:
        pytest.fail("the quota never ran out")
    bound = reservation_of(GenerationConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu"}).tiers.values())
    assert answered and charged(store, key) - QUOTA <= bound, (charged(store, key), bound)


# -- 4. body size ------------------------------------------------------------------------------------
def raw_post(server, path: str, headers: str, body: bytes) -> int:
    """The status of a hand-written request (chunked or lying about its length)."""
    url = urlparse(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n".encode())
        try:
            sock.sendall(body)
        except OSError:
            pass  # the server answered and closed before reading it all
        reply = sock.recv(65536).decode(errors="replace")
    return int(reply.split(" ", 2)[1])


def chunked(data: bytes, size: int = 65536) -> bytes:
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def test_every_endpoint_refuses_an_oversized_body_before_reading_it(stack):
    server, _ = stack
    big = json.dumps({"query": "x" * (2 << 20)}).encode()
    assert httpx.post(f"{server.url}/rag_query", content=big, timeout=30).status_code == 413  # before the key
    just_over = json.dumps({"query": "x" * ((1 << 20) + 1000)}).encode()  # little left unread when refused
    assert raw_post(server, "/rag_query", "Transfer-Encoding: chunked\r\n", chunked(just_over)) == 413
    assert raw_post(server, "/v1/chat/completions", "Transfer-Encoding: chunked\r\n", chunked(just_over)) == 413
    over = httpx.post(f"{server.url}/v1/chat/completions", content=big, timeout=30)
    assert over.status_code == 413 and over.json()["error"]["code"] == "request_too_large"
    assert httpx.post(f"{server.url}/cache_purge", content=big, timeout=30).status_code == 413
    ingest_over = b'{"documents": [{"id": "a", "title": "t", "text": "' + b"x" * ((32 << 20) + 1000) + b'"}]}'
    assert raw_post(server, "/ingest/collections/handbook/documents",
                    f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n", chunked(ingest_over)) == 413
    # an understated length is read as declared; the rest is never taken for a body
    assert raw_post(server, "/rag_query", "Content-Length: 20\r\n", big) in (400, 401)
    assert ask(server, "acme", query=Q).status_code == 200  # and the service is fine


# -- 5. collections per key -------------------------------------------------------------------------
def test_a_key_reads_only_its_collections_and_server_paths_never_leave(stack):
    server, _ = stack
    listed = httpx.post(f"{server.url}/collections", json={},
                        headers={"Authorization": f"Bearer {server.keys['acme']}"}, timeout=30).json()["collections"]
    assert [c["name"] for c in listed] == ["default"] and "source" not in listed[0]
    assert "/" not in json.dumps(listed)  # no server path
    mine = httpx.post(f"{server.url}/collections", json={},
                      headers={"Authorization": f"Bearer {server.keys['reader']}"}, timeout=30).json()
    assert mine == {"collections": []}
    refused = ask(server, "reader", query=Q)  # the default collection exists, but not for this key
    assert refused.status_code == 404 and refused.json()["error"].endswith("valid: handbook")  # only its own
    assert refused.json()["request_id"]
    v1 = chat(server, "reader", {"model": "ragroute", "messages": [{"role": "user", "content": Q}]})
    assert v1.status_code == 404 and v1.json()["error"]["message"].endswith("valid: handbook")


# -- 7. bad input that got through ------------------------------------------------------------------
def test_bad_input_that_used_to_get_through_is_a_400(stack):
    server, _ = stack
    nested = b'{"model": "ragroute", "messages": [], "stream_options": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = httpx.post(f"{server.url}/v1/chat/completions", content=nested, timeout=30,
                      headers={"Authorization": f"Bearer {server.keys['acme']}", "content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    nul = ask(server, "acme", query="What does\x00 pass do?")
    assert nul.status_code == 400 and "query" in resp.text + nul.text
    nul_v1 = chat(server, "acme", {"model": "ragroute", "messages": [{"role": "user", "content": "pass\x00?"}]})
    assert nul_v1.status_code == 400 and nul_v1.json()["error"]["param"] == "messages.[0].content"
    long_turn = chat(server, "acme", {"model": "ragroute", "messages": [
        {"role": "user", "content": "y" * 3000}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "And it?"}]})
    assert long_turn.status_code == 400 and long_turn.json()["error"]["param"] == "messages.[0].content"
    injected = chat(server, "acme", {"model": "nope\n2026-01-01 INFO forged log line", "messages": [
        {"role": "user", "content": Q}]})
    assert injected.status_code == 404
    assert not re.search(r"^2026-01-01 INFO forged", server.log_tail(400), re.M)  # escaped in the log


# -- 9. the admin token: guessing is slowed down ----------------------------------------------------
def test_repeated_wrong_admin_tokens_are_slowed_down(stack):
    server, _ = stack

    def stats(token: str) -> httpx.Response:
        return httpx.post(f"{server.url}/cache_stats", json={}, headers={"Authorization": f"Bearer {token}"},
                          timeout=30)

    assert stats(TOKEN).status_code == 200
    assert [stats(f"guess-{i}").status_code for i in range(5)] == [401] * 5
    throttled = stats(TOKEN)  # the guesser and the admin cannot be told apart for a minute
    assert throttled.status_code == 429 and "retry in" in throttled.json()["error"]


# -- 6. a paused Redis (last: it leaves the breaker cycling for a while) ----------------------------
def test_a_paused_redis_costs_each_request_at_most_the_cache_budget(stack):
    server, store = stack
    redis.Redis.from_url(store.url).execute_command("CLIENT", "PAUSE", 30_000, "ALL")
    try:
        first = ask(server, "frugal", query="What does the assert statement do?", cache="use").json()
        assert first["warnings"] and first["answer"]  # answered, saying what was skipped
        latencies, answers = [], []
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            unknown = ask(server, "frugal", query=Q, collection="nope")  # admitted, then a quick 404
            latencies.append(time.perf_counter() - t0)
            assert unknown.status_code == 404
            if len(answers) < 3:
                out = ask(server, "frugal", query=f"What does the {('for', 'while', 'try')[len(answers)]} "
                                               "statement do?").json()
                assert out["cache"]["status"] == "unavailable" and out["cache"]["hit"] is False
                assert any("limits: not checked" in w for w in out["warnings"]), out["warnings"]
                assert out["timings_ms"].get("cache", 0) <= CACHE_BUDGET_MS * 1.5, out["timings_ms"]
                answers.append(out)
    finally:
        redis.Redis.from_url(store.url).execute_command("CLIENT", "UNPAUSE")
    latencies.sort()
    # each pays at most the cache budget for Redis (probes included), plus the request's own ~10 ms
    assert latencies[-1] < (CACHE_BUDGET_MS + 150) / 1000, latencies
    assert latencies[len(latencies) // 2] < 0.1, latencies
    time.sleep(3)  # the next probe finds Redis back
    after = ask(server, "acme", query=Q).json()
    assert after["cache"]["hit"] and not any("not checked" in w for w in after["warnings"])
