"""The query pipeline with the Redis cache (a real server); stages are fakes because the
behaviour under test is the cache's, not the models'."""

from __future__ import annotations

import asyncio
import time
import uuid

from pipelines.api.schema import RagRequest
from pipelines.config import CacheConfig, RagConfig
from pipelines.config.budget import STAGES, BudgetProfile
from pipelines.query.cache import SemanticCache
from pipelines.query.cache.redis_backend import RedisCache
from pipelines.query.cache.verify import HitVerifier
from pipelines.query.pipeline import QueryPipeline
from tests.fakes import FakeStages, unit


GENEROUS = BudgetProfile("generous", {stage: 30_000.0 for stage in STAGES}, total_ms=120_000)


def pipeline_with(url: str, stages: FakeStages, **cfg) -> QueryPipeline:
    cache_cfg = CacheConfig(redis_url=url, namespace=f"p{uuid.uuid4().hex[:8]}", retry_s=0.5, **cfg)
    cache = SemanticCache(RedisCache(cache_cfg), cache_cfg.threshold, HitVerifier.load())
    # Generous budgets: these tests are about caching. Under the cpu profile a cache call has
    # 100 ms, and the first store after a (re)start also connects and creates the index, which
    # a busy machine can push past 100 ms (the cache is then bypassed: correct, but not the
    # behaviour under test here; budgets have their own tests).
    return QueryPipeline(stages, cache, RagConfig(candidates=6, cache=cache_cfg), fingerprint="fp", budget=GENEROUS)


def ask(p: QueryPipeline, query: str, **kw):
    return asyncio.run(p.run(RagRequest(query=query, **kw)))


def stages() -> FakeStages:
    return FakeStages(vectors={"What does with do?": unit([1, 0, 0]), "What does with do exactly?": unit([1, 0.05, 0])})


def test_exact_and_semantic_hits_through_redis(redis_server):
    p = pipeline_with(redis_server.url, stages())
    first = ask(p, "What does with do?")
    assert not first.cache.hit
    exact = ask(p, "what does WITH do")
    assert exact.cache.kind == "exact" and exact.answer == first.answer
    sem = ask(p, "What does with do exactly?")
    assert sem.cache.kind == "semantic" and sem.cache.similarity > 0.95 and "accepted" in sem.cache.verifier[0]


def test_degraded_answers_are_not_stored(redis_server):
    s = stages()
    s.fail = {"rerank"}
    p = pipeline_with(redis_server.url, s)
    assert ask(p, "What does with do?").degraded
    assert p.cache.stats()["entries"] == 0
    s.fail = set()
    assert not ask(p, "What does with do?").cache.hit  # nothing was cached from the degraded run
    assert ask(p, "What does with do?").cache.hit


def test_redis_killed_mid_run_then_back(tmp_path):
    from evals.redis_server import RedisServer

    with RedisServer(tmp_path / "r").start() as server:
        s = stages()
        p = pipeline_with(server.url, s)
        ask(p, "What does with do?")
        assert ask(p, "What does with do?").cache.hit

        server.stop()  # kill -9
        for _ in range(3):
            resp = ask(p, "What does with do?")
            assert resp.answer == "the text of the chunk [1]" and not resp.cache.hit and resp.cache.status == "unavailable"
            assert not resp.degraded and any("cache" in w for w in resp.warnings)
        assert s.calls.count("generate[large]") == 4  # every request was answered by the pipeline

        server.start()  # back, empty, on the same port
        time.sleep(0.6)  # past retry_s
        again = ask(p, "What does with do?")
        assert again.cache.status == "miss" and not again.warnings  # Redis is used again (and was empty)
        assert ask(p, "What does with do?").cache.kind == "exact"


def test_redis_killed_while_an_answer_streams(tmp_path):
    """Redis dies after the lookups, while the words stream: the answer completes (not
    degraded), the store that fails is reported and nothing breaks; back up, the cache works."""
    from evals.redis_server import RedisServer
    from pipelines.api.schema import RagResponse

    with RedisServer(tmp_path / "r").start() as server:
        s = stages()
        s.delays["token"] = 0.05  # the default answer, "the text of the chunk [1]", word by word
        p = pipeline_with(server.url, s)

        async def stream_killing_redis_after_meta():
            out = []
            async for event in p.stream(RagRequest(query="What does with do?")):
                out.append(event)
                if event["event"] == "meta":
                    server.stop()  # kill -9 between the lookups and the store
            return out

        events = asyncio.run(stream_killing_redis_after_meta())
        tokens = "".join(e["text"] for e in events if e["event"] == "token")
        done = RagResponse.model_validate(events[-1]["response"])
        assert events[0]["event"] == "meta" and events[0]["cache"]["status"] == "miss"
        assert tokens.strip() == done.answer == "the text of the chunk [1]" and not done.degraded
        assert done.cache.status == "unavailable" and "cache store failed; cache bypassed" in done.warnings

        server.start()
        time.sleep(0.6)  # past retry_s
        assert ask(p, "What does with do?").cache.status == "miss"  # nothing half-stored; Redis used again
        assert ask(p, "What does with do?").cache.kind == "exact"
