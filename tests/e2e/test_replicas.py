"""Two replicas of the whole service (two `bentoml serve` processes on two ports, same config, as
two machines behind a load balancer would run them) over one real Redis and one Milvus (Milvus
Lite's server, reached by URI): an answer cached through one is a hit through the other, a
document ingested through one is answered by the other (and its job polled through the other), API-key limits are counted once, and
killing one under load costs the other nothing; Milvus going down fails only what lives in it."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest

from evals.milvus_server import MilvusServer
from evals.redis_server import RedisServer
from evals.serving import service_processes, start, stop
from pipelines.api.access import add_key
from pipelines.config import EmbeddingConfig
from pipelines.indexing.build import ensure_demo_index
from pipelines.query.embed import SentenceTransformerEmbedder
from tests.e2e.conftest import GENEROUS_BUDGETS

TOKEN = "replicas-admin-token"
RATE = 6  # requests per minute of the rate-limited key
QUESTIONS = ["What does the with statement do?", "How do I define a function?", "What is a lambda expression?"]
FACT = ("The Zephyr cluster is patched every Thursday at 02:00 UTC by the platform team; "
        "patch windows are announced a week ahead in the ops channel.")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("replicas")
    keyfile = root / "keys.json"
    keys = {"acme": add_key(keyfile, "acme", "acme"),
            "limited": add_key(keyfile, "limited", "limited", rate=f"{RATE}/minute", tokens_per_day=1_000_000)}
    # The default collection: the same index folder on both (each machine ships the same one).
    index = ensure_demo_index(root / "demo-index", lambda: SentenceTransformerEmbedder(EmbeddingConfig()))
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(root / "redis").start())
        milvus = stack.enter_context(MilvusServer(root / "milvus").start())
        env = {"RAGROUTE_MODEL_CACHE": str(model_cache), "REDIS_URL": redis.url, "RAGROUTE_MILVUS_URI": milvus.uri,
               "RAGROUTE_VECTOR_STORE": "milvus", "RAGROUTE_INDEX_DIR": str(index), "RAGROUTE_ADMIN_TOKEN": TOKEN,
               "RAGROUTE_API_KEYS": str(keyfile), "RAGROUTE_MILVUS_TIMEOUT_S": "3", **GENEROUS_BUDGETS,
               # about sharing state, not grounding: a tiny model's weakly grounded answer (never
               # cached) must not decide whether a repeat is a hit. Safety has its own tests.
               "RAGROUTE_SAFETY_MIN_GROUNDING": "0"}
        with ThreadPoolExecutor(2) as pool:  # both start at once, as a scale-out would
            servers = list(pool.map(lambda name: start(root / name, env), ["a", "b"]))
        for server in servers:
            stack.callback(stop, server)
        yield servers, keys, milvus


def post(server, body: dict, key: str, timeout: float = 180) -> httpx.Response:
    return httpx.post(f"{server.url}/rag_query", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=timeout)


def ask(server, key: str, **body) -> dict:
    resp = post(server, {"top_k": 1, **body}, key)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_an_answer_cached_through_one_replica_is_a_hit_through_the_other(replicas):
    (a, b), keys, _ = replicas
    first = [ask(a, keys["acme"], query=q) for q in QUESTIONS]
    cacheable = [q for q, r in zip(QUESTIONS, first, strict=True) if not r["degraded"] and not r["cache"]["hit"]]
    assert cacheable, [r["warnings"] for r in first]
    repeats = [ask(b, keys["acme"], query=q) for q in cacheable]
    hits = [r["cache"]["kind"] for r in repeats]
    assert hits == ["exact"] * len(cacheable), hits  # cross-replica hit rate on repeated questions: 100%
    assert [r["answer"] for r in repeats] == [r["answer"] for r, q in zip(first, QUESTIONS, strict=True)
                                              if q in cacheable]


def test_a_document_ingested_through_one_replica_is_answered_by_the_other(replicas):
    (a, b), keys, _ = replicas
    auth = {"Authorization": f"Bearer {TOKEN}"}
    created = httpx.post(f"{a.url}/ingest/collections", json={"name": "ops-notes"}, headers=auth, timeout=60)
    assert created.status_code == 201 and created.json()["backend"] == "milvus", created.text
    job = httpx.post(f"{a.url}/ingest/collections/ops-notes/documents", headers=auth, timeout=60,
                     json={"documents": [{"id": "ops/zephyr.md", "title": "Zephyr patching", "text": FACT}]}).json()
    deadline = time.monotonic() + 240
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        # polled through the other replica: job records are shared through Redis
        job = httpx.get(f"{b.url}/ingest/jobs/{job['id']}", headers=auth, timeout=30).json()
    assert job["status"] == "succeeded", job
    answer = ask(b, keys["acme"], query="When is the Zephyr cluster patched?", collection="ops-notes")
    assert [s["doc_id"] for s in answer["sources"]] == ["ops/zephyr.md"], answer
    assert answer["index_version"] == job["result"]["version"]
    # the other replica lists it too, from Milvus
    listed = httpx.post(f"{b.url}/collections", json={}, timeout=30,
                        headers={"Authorization": f"Bearer {keys['acme']}"}).json()["collections"]
    listed = {c["name"]: c for c in listed}
    assert listed["ops-notes"]["backend"] == "milvus" and listed["ops-notes"]["vector_count"] >= 1


def test_an_api_key_s_rate_limit_is_counted_once_across_replicas(replicas):
    (a, b), keys, _ = replicas
    codes = [post(server, {"query": QUESTIONS[0], "top_k": 1}, keys["limited"]).status_code
             for server in [a, b] * ((RATE + 4) // 2)]
    assert codes == [200] * RATE + [429] * 4, codes


def test_killing_one_replica_under_load_costs_the_other_nothing(replicas):
    (a, b), keys, _ = replicas
    questions = [*QUESTIONS, "What does the yield statement do?", "How are exceptions raised?"]
    results: dict[str, list] = {"a": [], "b": []}
    stop_at = time.monotonic() + 25

    def load(name, server, offset):
        i = offset
        while time.monotonic() < stop_at:
            try:
                status = post(server, {"query": questions[i % len(questions)], "top_k": 1}, keys["acme"],
                              timeout=120).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            results[name].append(status)
            i += 1

    threads = [threading.Thread(target=load, args=(n, s, k)) for k, (n, s) in
               enumerate([("a", a), ("b", b), ("b", b), ("b", b)])]
    for t in threads:
        t.start()
    time.sleep(8)
    # the whole replica, as a machine failure would: the serve process and every worker under it
    # (BentoML starts each worker in its own process group, so a group kill would leave them serving)
    for _, proc in service_processes(a.proc.pid):
        os.kill(proc.pid, signal.SIGKILL)
    for t in threads:
        t.join()
    assert results["b"] and all(s == 200 for s in results["b"]), results["b"]
    assert any(s != 200 for s in results["a"])  # the killed one did stop answering
    assert ask(b, keys["acme"], query=QUESTIONS[0])["answer"]


def test_a_milvus_that_is_down_fails_only_the_collections_in_it(replicas):
    (_, b), keys, milvus = replicas
    milvus.stop()
    # an answer cached before still comes from the cache (the cache sits before retrieval)
    cached = ask(b, keys["acme"], query="When is the Zephyr cluster patched?", collection="ops-notes")
    assert cached["cache"]["kind"] == "exact"
    t0 = time.monotonic()
    resp = post(b, {"query": "Where are Zephyr patch windows announced?", "collection": "ops-notes", "top_k": 1},
                keys["acme"])
    assert resp.status_code == 503 and "Milvus" in resp.text, resp.text
    assert milvus.uri.split("://")[-1] not in resp.text and "127.0.0.1" not in resp.text  # no address leaves
    assert time.monotonic() - t0 < 30  # bounded by RAGROUTE_MILVUS_TIMEOUT_S, not hung
    fresh = ask(b, keys["acme"], query="How is a class attribute looked up?")  # not cached: retrieved from FAISS
    assert fresh["answer"] and not fresh["cache"]["hit"] and fresh["sources"]
