"""``POST /feedback``'s logic over a real Redis (the cache and the feedback records in it): a
"bad" verdict on a semantic hit is counted as a wrong hit and bars the entry; a "bad" exact hit
is deleted; tenants never reach each other's answers; Redis down refuses feedback, not queries.
Stages are fakes: what is under test is what a verdict changes, not the models."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from common.errors import NotFound
from pipelines.api.schema import RagRequest
from pipelines.breaker import Breaker
from pipelines.config import CacheConfig, RagConfig
from pipelines.query.cache import SemanticCache
from pipelines.query.cache.policy import ErrorBoundPolicy, band
from pipelines.query.cache.records import Partition
from pipelines.query.cache.redis_backend import RedisCache
from pipelines.query.cache.verify import HitVerifier
from pipelines.query.feedback import AlreadyRated, Feedback, FeedbackUnavailable, RedisFeedback
from pipelines.query.pipeline import QueryPipeline
from pipelines.query.prepare import options_id
from tests.fakes import FakeStages, unit
from tests.integration.test_pipeline_redis import GENEROUS

Q = "What does with do?"
REWORDED = "What does with do exactly?"  # cosine 0.9988 to Q: near-identical wording, scored by the cosine


class NeverSample(random.Random):
    def random(self) -> float:  # a would-be hit is served, never answered fresh to check it
        return 0.999


def setup(url: str, breaker: Breaker | None = None) -> tuple[QueryPipeline, Feedback, FakeStages]:
    breaker = breaker or Breaker(0.5)
    cfg = CacheConfig(redis_url=url, namespace=f"f{uuid.uuid4().hex[:8]}", retry_s=0.5)
    cache = SemanticCache(RedisCache(cfg, breaker=breaker), cfg.threshold, HitVerifier.load(),
                          ErrorBoundPolicy(0.02, rng=NeverSample()))
    feedback = Feedback(RedisFeedback(url, cfg.namespace, 0.5, breaker), cache)
    stages = FakeStages(vectors={Q: unit([1, 0, 0]), REWORDED: unit([1, 0.05, 0])})
    p = QueryPipeline(stages, cache, RagConfig(candidates=6, cache=cfg), fingerprint="fp", budget=GENEROUS,
                      feedback=feedback.store)
    return p, feedback, stages


def ask(p: QueryPipeline, query: str, tenant: str = "acme"):
    return asyncio.run(p.run(RagRequest(query=query, tenant=tenant), request_id=uuid.uuid4().hex[:12]))


def vouch_for_top_band(p: QueryPipeline, tenant: str) -> Partition:
    """400 right comparisons at score 0.95 for the tenant: its top band is served."""
    first = ask(p, Q, tenant)
    part = Partition(tenant, first.index_version, options_id("fp", "auto", 4, "default"))
    for _ in range(400):
        p.cache.backend.observe(part, "nothing", 9, 0.95, False, False)
    return part


def test_bad_verdict_on_a_semantic_hit_counts_wrong_and_bars_the_entry(redis_server):
    p, feedback, stages = setup(redis_server.url)
    part = vouch_for_top_band(p, "acme")
    hit = ask(p, REWORDED)
    assert hit.cache.kind == "semantic" and hit.cache.decision == "hit", hit.cache.verifier
    before = p.cache.backend.pool(part)

    out = feedback.give("acme", hit.request_id, "bad")

    assert out["answer"] == "semantic" and "wrong semantic hit" in out["effect"]
    after = p.cache.backend.pool(part)
    assert after.wrong[9] == before.wrong[9] + 1 and after.verified[9] == before.verified[9] + 1
    assert after.lookups == before.lookups  # the hit's lookup was counted when it was served
    generated = stages.calls.count("generate[large]")
    again = ask(p, REWORDED)
    assert not again.cache.hit and "judged wrong" in again.cache.verifier[0]
    assert stages.calls.count("generate[large]") == generated + 1  # answered fresh


def test_good_verdict_on_a_semantic_hit_counts_right(redis_server):
    p, feedback, _ = setup(redis_server.url)
    part = vouch_for_top_band(p, "acme")
    hit = ask(p, REWORDED)
    before = p.cache.backend.pool(part)
    assert "right semantic hit" in feedback.give("acme", f"chatcmpl-{hit.request_id}", "good")["effect"]
    after = p.cache.backend.pool(part)
    assert (after.verified[9], after.wrong[9]) == (before.verified[9] + 1, before.wrong[9])
    assert ask(p, REWORDED).cache.hit  # still served


def test_bad_verdict_deletes_an_exact_hit_and_a_cached_fresh_answer(redis_server):
    p, feedback, stages = setup(redis_server.url)
    fresh = ask(p, Q)
    exact = ask(p, Q)
    assert exact.cache.kind == "exact"
    assert feedback.give("acme", exact.request_id, "bad")["effect"] == "the cached answer was deleted"
    again = ask(p, Q)
    assert not again.cache.hit  # answered fresh, and cached again
    out = feedback.give("acme", again.request_id, "bad")
    assert "the cached answer was deleted" in out["effect"] and "label" in out["effect"]
    assert not ask(p, Q).cache.hit
    labels = feedback.store.labels("acme")
    assert [(x["query"], x["verdict"], x["request_id"]) for x in labels] == [(Q, "bad", again.request_id)]
    assert fresh.request_id not in {x["request_id"] for x in labels}  # never rated


def test_tenants_never_reach_each_others_answers(redis_server):
    p, feedback, _ = setup(redis_server.url)
    mine = ask(p, Q, tenant="acme")
    for other in ("globex", "Acme", "ACME"):  # names that differ only in case are other tenants
        with pytest.raises(NotFound):
            feedback.give(other, mine.request_id, "bad")
    assert ask(p, Q, tenant="acme").cache.kind == "exact"  # nothing changed
    assert feedback.give("acme", mine.request_id, "good")["verdict"] == "good"  # still unrated for its tenant
    with pytest.raises(NotFound):
        feedback.give("acme", "0123456789ab", "bad")


def test_one_verdict_per_answer(redis_server):
    p, feedback, _ = setup(redis_server.url)
    r = ask(p, Q)
    feedback.give("acme", r.request_id, "good")
    with pytest.raises(AlreadyRated) as exc:
        feedback.give("acme", r.request_id, "bad")
    assert exc.value.status == 409 and "'good'" in str(exc.value)


def test_redis_down_refuses_feedback_but_not_queries(tmp_path):
    from evals.redis_server import RedisServer

    with RedisServer(tmp_path / "r").start() as server:
        p, feedback, _ = setup(server.url)
        r = ask(p, Q)
        server.stop()
        with pytest.raises(FeedbackUnavailable) as exc:
            feedback.give("acme", r.request_id, "bad")
        assert exc.value.status == 503 and "unavailable" in str(exc.value)
        answered = ask(p, Q)  # the query goes on, uncached, and says so
        assert answered.answer and not answered.degraded and answered.cache.status == "unavailable"


def test_records_are_bounded_per_tenant(redis_server):
    import redis

    store = RedisFeedback(redis_server.url, f"b{uuid.uuid4().hex[:8]}", 0.5, Breaker(0.5), max_records=3)
    from pipelines.query.feedback import Answered

    for i in range(5):
        store.remember(Answered(request_id=f"{i:012x}", tenant="acme", query="q", kind="fresh", at=float(i)))
    store.remember(Answered(request_id=f"{9:012x}", tenant="globex", query="q", kind="fresh", at=1.0))
    with pytest.raises(NotFound):
        store.rate("acme", f"{0:012x}", "good")  # the oldest were dropped
    assert store.rate("acme", f"{4:012x}", "good").query == "q"
    assert store.rate("globex", f"{9:012x}", "good").tenant == "globex"  # another tenant's bound
    client = redis.Redis.from_url(redis_server.url)
    assert len(list(client.scan_iter(match=f"{store.prefix}r:*"))) == 4  # 3 + 1, the dropped ones deleted
    assert band(0.95) == 9
