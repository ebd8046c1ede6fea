"""Feedback's in-process store and what a verdict changes with the in-memory cache (the Redis
store and backend: tests/integration/test_feedback_redis.py)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from common.errors import NotFound
from pipelines.api.schema import FeedbackRequest, RagRequest
from pipelines.config import CacheConfig, RagConfig
from pipelines.query.cache import SemanticCache
from pipelines.query.cache.memory import InMemoryCache
from pipelines.query.feedback import AlreadyRated, Answered, Feedback, MemoryFeedback, request_key
from pipelines.query.pipeline import QueryPipeline
from tests.fakes import FakeStages, unit


def rec(i: int, tenant: str = "acme", at: float = 0.0) -> Answered:
    return Answered(request_id=f"{i:012x}", tenant=tenant, query=f"q{i}", kind="fresh", at=at)


def test_records_are_bounded_and_expire():
    now = [1000.0]
    store = MemoryFeedback(max_records=2, ttl_s=60, clock=lambda: now[0])
    for i in range(3):
        store.remember(rec(i, at=now[0]))
    with pytest.raises(NotFound):
        store.rate("acme", f"{0:012x}", "good")  # dropped: the oldest beyond the bound
    assert store.rate("acme", f"{1:012x}", "good").query == "q1"
    now[0] += 61
    with pytest.raises(NotFound, match="older than"):
        store.rate("acme", f"{2:012x}", "good")


def test_labels_are_bounded_per_tenant():
    store = MemoryFeedback(max_labels=2)
    for i in range(3):
        store.add_label("acme", {"i": i})
    store.add_label("globex", {"i": 9})
    assert store.labels("acme") == [{"i": 1}, {"i": 2}] and store.labels("globex") == [{"i": 9}]
    store.purge("acme")
    assert store.labels("acme") == [] and store.labels("globex") == [{"i": 9}]


def test_a_verdict_is_given_once_and_taken_back_when_acting_fails():
    class Broken:
        blocking = False
        policy = None

        def forget(self, part, qhash):
            raise ConnectionError("down")

    store = MemoryFeedback()
    store.remember(Answered(request_id="a" * 12, tenant="acme", query="q", kind="exact", qhash="h", at=1e12))
    with pytest.raises(Exception, match="the cache is unavailable; nothing was recorded") as exc:
        Feedback(store, Broken()).give("acme", "a" * 12, "bad")
    assert exc.value.status == 503
    Feedback(store, None).give("acme", "a" * 12, "bad")  # unrated again: the verdict can be given
    with pytest.raises(AlreadyRated):
        Feedback(store, None).give("acme", "a" * 12, "good")


def test_the_pipeline_keeps_a_record_of_every_answer_and_a_bad_one_is_forgotten():
    cfg = CacheConfig()
    cache = SemanticCache(InMemoryCache(cfg), cfg.threshold, None)
    store = MemoryFeedback()
    stages = FakeStages(vectors={"What does with do?": unit([1, 0, 0])})
    p = QueryPipeline(stages, cache, RagConfig(candidates=6, cache=cfg), fingerprint="fp", feedback=store)
    fresh = asyncio.run(p.run(RagRequest(query="What does with do?"), request_id="b" * 12))
    out = Feedback(store, cache).give("default", "chatcmpl-" + "b" * 12, "bad")
    assert out == {"request_id": "b" * 12, "verdict": "bad", "answer": "fresh",
                   "effect": "the cached answer was deleted; kept as a label for the router's calibration"}
    label = store.labels("default")[0]
    assert (label["query"], label["tier"], label["verdict"]) == ("What does with do?", fresh.route.tier, "bad")
    again = asyncio.run(p.run(RagRequest(query="What does with do?"), request_id="c" * 12))
    assert not again.cache.hit


def test_the_request_names_what_is_wrong():
    assert request_key("chatcmpl-0123456789ab") == "0123456789ab"
    FeedbackRequest(request_id="0123456789ab", verdict="good")
    for body, field in (({"request_id": "x", "verdict": "good"}, "request_id"),
                        ({"request_id": "0123456789ab", "verdict": "meh"}, "verdict"),
                        ({"request_id": "0123456789ab", "verdict": "good", "extra": 1}, "extra"),
                        ({"request_id": "0123456789ab", "verdict": "good", "tenant": "a b"}, "tenant")):
        with pytest.raises(ValidationError) as exc:
            FeedbackRequest(**body)
        assert exc.value.errors()[0]["loc"][0] == field


def test_a_record_of_another_version_is_read_or_refused_never_a_crash():
    import json

    data = {**json.loads(Answered(request_id="a" * 12, tenant="acme", query="q", kind="fresh").to_json()),
            "added_later": 1}
    assert Answered.from_json(json.dumps(data)).query == "q"
    for raw in ("{not json", '{"request_id": "x"}', "[]"):
        with pytest.raises(ValueError, match="unreadable"):
            Answered.from_json(raw)
