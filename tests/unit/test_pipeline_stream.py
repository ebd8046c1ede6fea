"""Streaming pipeline with fake stages: event order, caching only of completed answers,
fallback before the first token, a cut stream flagged, and cached answers as one token."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import BadRequest
from pipelines.api.schema import RagRequest, RagResponse
from pipelines.config import CacheConfig, RagConfig
from pipelines.query.cache import InMemoryCache, SemanticCache
from pipelines.query.pipeline import QueryPipeline
from tests.fakes import FakeStages, unit

CFG = RagConfig(candidates=6, default_tier="small", cache=CacheConfig(threshold=0.95))
ANSWER = "the text of chunk 5 is the text of the chunk [1]"


def events(pipeline: QueryPipeline, **req) -> list[dict]:
    async def collect():
        return [e async for e in pipeline.stream(RagRequest(**req))]
    return asyncio.run(collect())


@pytest.fixture
def stages() -> FakeStages:
    return FakeStages(vectors={"what does with do": unit([1, 0, 0])}, answer=ANSWER)


def cache() -> SemanticCache:
    return SemanticCache(InMemoryCache(CFG.cache), CFG.cache.threshold, None)


def test_meta_comes_first_then_tokens_then_done(stages):
    out = events(QueryPipeline(stages, cache(), CFG), query="what does with do")
    kinds = [e["event"] for e in out]
    assert kinds[0] == "meta" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    assert len(kinds) - 2 == len(ANSWER.split(" "))  # one event per streamed delta
    meta, done = out[0], RagResponse.model_validate(out[-1]["response"])
    assert meta["route"]["tier"] == "large" and [s["id"] for s in meta["sources"]] == ["c5", "c4", "c3", "c2"]
    assert "".join(e["text"] for e in out[1:-1]) == ANSWER == done.answer
    assert done.usage.tokens_out == len(ANSWER.split(" ")) and done.usage.cost_usd == pytest.approx(1e-6)
    assert not done.degraded and done.safety.checked


def test_a_completed_stream_is_cached_and_then_served_as_one_token(stages):
    pipeline = QueryPipeline(stages, cache(), CFG)
    events(pipeline, query="what does with do")
    again = events(pipeline, query="what does with do")
    assert [e["event"] for e in again] == ["meta", "token", "done"]
    assert again[0]["cache"]["hit"] and again[1]["text"] == ANSWER
    assert stages.calls.count("generate[large]") == 1


def test_a_stream_cut_midway_is_flagged_and_never_cached(stages):
    stages.stream_fail_after = 3
    c = cache()
    out = events(QueryPipeline(stages, c, CFG), query="what does with do")
    done = RagResponse.model_validate(out[-1]["response"])
    streamed = "".join(e["text"] for e in out if e["event"] == "token")
    assert streamed == " ".join(ANSWER.split(" ")[:3]) == done.answer  # what the client saw
    assert done.degraded and any("incomplete" in w for w in done.warnings)
    assert stages.calls.count("generate[small]") == 0  # tokens were out: no fallback
    assert len(c.backend) == 0


def test_a_tier_failing_before_its_first_token_falls_back(stages):
    stages.fail = {"generate[large]"}
    out = events(QueryPipeline(stages, cache(), CFG), query="what does with do")
    done = RagResponse.model_validate(out[-1]["response"])
    assert done.route.tier == "small" and done.answer == ANSWER and done.degraded


def test_no_tier_in_time_streams_an_extractive_answer(stages):
    stages.fail = {"generate[large]", "generate[small]"}
    out = events(QueryPipeline(stages, cache(), CFG), query="what does with do")
    tokens = [e for e in out if e["event"] == "token"]
    done = RagResponse.model_validate(out[-1]["response"])
    assert len(tokens) == 1 and tokens[0]["text"] == done.answer and done.route.model == "extractive"


def test_a_stalled_stream_times_out_within_the_generate_budget(stages):
    from pipelines.config.budget import BudgetProfile

    stages.delays["token"] = 5.0
    budget = BudgetProfile("test", {"cache": 50, "embed": 50, "retrieve": 50, "rerank": 50, "route": 50,
                                    "generate": 300, "safety": 100}, total_ms=2000)
    out = events(QueryPipeline(stages, None, CFG, budget=budget), query="what does with do", tier="small")
    done = RagResponse.model_validate(out[-1]["response"])
    assert done.degraded and done.budget["generate"].outcome == "timeout"
    assert done.timings_ms["total"] < 1500


def test_a_stream_that_stalls_mid_answer_ends_there_at_the_deadline(stages):
    """The first words are out when the engine stalls: the deadline ends the answer there (the
    client keeps what it has, flagged incomplete), no fallback tier starts over, nothing is cached."""
    from pipelines.config.budget import BudgetProfile

    stages.answer = "one two three four five"
    stages.stream_stall_after = 2
    budget = BudgetProfile("test", {"cache": 50, "embed": 50, "retrieve": 50, "rerank": 50, "route": 50,
                                    "generate": 300, "safety": 100}, total_ms=5000)
    pipeline = QueryPipeline(stages, cache(), CFG, budget=budget)
    out = events(pipeline, query="what does with do", tier="large")
    tokens = [e["text"] for e in out if e["event"] == "token"]
    done = RagResponse.model_validate(out[-1]["response"])
    assert tokens == ["one", " two"] and done.answer == "one two"
    assert done.degraded and any("incomplete" in w and "exceeded its 300 ms budget" in w for w in done.warnings)
    assert done.budget["generate"].outcome == "timeout" and done.timings_ms["total"] < 2000
    assert [c for c in stages.calls if c.startswith("generate")] == ["generate[large]"]  # no fallback
    assert [(s.tier, s.outcome) for s in done.route.path] == [("large", "failed")]
    again = events(pipeline, query="what does with do", tier="large")
    assert not RagResponse.model_validate(again[-1]["response"]).cache.hit


def test_an_unconfigured_tier_is_a_bad_request(stages):
    with pytest.raises(BadRequest, match="'xl' is not a configured tier; valid: auto, cascade, small, large"):
        events(QueryPipeline(stages, None, CFG), query="q", tier="xl")


def test_a_streamed_answer_without_citations_ends_with_a_citation_token():
    stages = FakeStages(vectors={"what does with do": unit([1, 0, 0])}, answer="This is the text of chunk 5.")
    out = events(QueryPipeline(stages, cache(), CFG), query="what does with do")
    tokens = [e["text"] for e in out if e["event"] == "token"]
    done = RagResponse.model_validate(out[-1]["response"])
    assert tokens[-1] == " [1]" and "".join(tokens).strip() == done.answer == "This is the text of chunk 5. [1]"


def test_safety_replace_when_streaming_replaces_the_final_answer_and_says_so():
    """The words are out when the check runs: the client was shown them, but the response (and
    what a later request would get) is the extract of the best source, flagged, and not cached."""
    from pipelines.config.safety import SafetyConfig

    stages = FakeStages(vectors={"what does with do": unit([1, 0, 0])},
                        answer="Bananas grow on trees in tropical climates [1].")
    pipeline = QueryPipeline(stages, cache(), CFG, safety=SafetyConfig(action="replace"))
    out = events(pipeline, query="what does with do", tier="small")
    streamed = "".join(e["text"] for e in out if e["event"] == "token")
    done = RagResponse.model_validate(out[-1]["response"])
    assert streamed.startswith("Bananas grow")
    assert done.degraded and "safety: the generated answer was replaced by an extract of the best source" in done.warnings
    assert "Bananas" not in done.answer and done.answer and done.safety.problems
    again = RagResponse.model_validate(events(pipeline, query="what does with do", tier="small")[-1]["response"])
    assert not again.cache.hit
