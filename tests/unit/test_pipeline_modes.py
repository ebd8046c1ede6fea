"""rag_query modes with fake stages: auto (router, concurrent with retrieval), cascade (accept,
escalate, keep for lack of time, keep when the next tier fails; streamed), fixed tiers."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from common.errors import BadRequest
from pipelines.api.schema import RagRequest, RagResponse
from pipelines.config import CascadeConfig, RagConfig, TierConfig
from pipelines.config.budget import BudgetProfile
from pipelines.query.pipeline import QueryPipeline
from tests.fakes import FakeStages

CFG = RagConfig(candidates=6, default_tier="small", cascade=CascadeConfig("logprob_mean", -0.5, "test"))
TIERS = {"small": TierConfig("small", "fake", "s", 2048, 64, prefill_tok_s=1000, decode_tok_s=100),
         "large": TierConfig("large", "fake", "l", 2048, 64, prefill_tok_s=1000, decode_tok_s=100)}
GENEROUS = BudgetProfile("generous", {"cache": 1000, "embed": 1000, "retrieve": 1000, "rerank": 1000, "route": 1000,
                                      "generate": 5000, "safety": 100}, total_ms=10_000)


def pipeline(stages: FakeStages, budget: BudgetProfile = GENEROUS, **kw) -> QueryPipeline:
    return QueryPipeline(stages, None, kw.pop("cfg", CFG), budget=budget, tier_configs=TIERS, **kw)


def run(p: QueryPipeline, **req) -> RagResponse:
    return asyncio.run(p.run(RagRequest(query="what does with do", **req)))


def test_cascade_accepts_a_confident_small_answer():
    stages = FakeStages()
    stages.logprobs = {"small": -0.2}
    resp = run(pipeline(stages), tier="cascade")
    assert [c for c in stages.calls if c.startswith("generate")] == ["generate[small]"]
    assert "route" not in stages.calls  # a cascade needs no router
    assert resp.route.mode == "cascade" and resp.route.tier == "small" and resp.route.score is None
    [step] = resp.route.path
    assert step.tier == "small" and step.outcome == "accepted" and step.confidence == -0.2 and step.threshold == -0.5
    assert not resp.degraded and resp.usage.cost_usd == 2e-6


def test_cascade_escalates_an_unsure_small_answer_and_counts_both_costs():
    stages = FakeStages()
    stages.logprobs = {"small": -0.9, "large": -0.1}
    resp = run(pipeline(stages), tier="cascade")
    assert [c for c in stages.calls if c.startswith("generate")] == ["generate[small]", "generate[large]"]
    assert resp.route.tier == "large" and resp.route.model == "large-model"
    small, large = resp.route.path
    assert small.outcome == "escalated" and small.confidence == -0.9 and "-0.900 < threshold -0.500" in small.reason
    assert large.tier == "large" and large.outcome == "answered"
    assert resp.usage.cost_usd == pytest.approx(4e-6) and resp.usage.tokens_in == 20 and resp.usage.tokens_out == 6
    assert not resp.degraded


def test_cascade_on_logprob_min_uses_that_signal():
    stages = FakeStages()
    stages.logprobs = {"small": -0.3}  # the fake's min is mean - 1 = -1.3
    cfg = replace(CFG, cascade=CascadeConfig("logprob_min", -1.0, "test"))
    resp = run(pipeline(stages, cfg=cfg), tier="cascade")
    assert resp.route.path[0].outcome == "escalated" and resp.route.path[0].confidence == -1.3


def test_cascade_on_grounded_checks_the_answer_against_the_sources_it_was_given():
    """The grounded signal reads the reranked sources passed to generation: an answer made of
    their words is kept; one with words they do not contain escalates (no log-probabilities
    needed: this engine returns none)."""
    cfg = replace(CFG, cascade=CascadeConfig("grounded", 0.5, "test"))
    stages = FakeStages(answer="The text of chunk 3 [1].")  # the fake's sources: "text of chunk i."
    resp = run(pipeline(stages, cfg=cfg), tier="cascade")
    [step] = resp.route.path
    assert step.outcome == "accepted" and step.confidence == 1.0 and resp.route.tier == "small"
    stages = FakeStages(answer="Chunk 3 was written by Guido in 1991.")
    resp = run(pipeline(stages, cfg=cfg), tier="cascade")
    small, large = resp.route.path
    # content words: chunk, 3, written, guido, in, 1991; of them the sources have "chunk" and "3"
    assert small.outcome == "escalated" and small.confidence == pytest.approx(2 / 6, abs=1e-6)
    assert "grounded 0.333 < threshold 0.500" in small.reason
    assert resp.route.tier == "large" and large.outcome == "answered"


def test_cascade_on_coverage_keeps_a_quote_that_takes_up_the_question_and_escalates_one_that_does_not():
    """The coverage signal reads the question (the request's query) against the answer's first
    statement: a quote sharing the question's terms is kept, one about something else escalates
    and the reason names the terms it lacks."""
    cfg = replace(CFG, cascade=CascadeConfig("coverage", 0.75, "test"))

    def ask(answer: str) -> RagResponse:
        return asyncio.run(pipeline(FakeStages(answer=answer), cfg=cfg).run(
            RagRequest(query="What is the purpose of the with statement?", tier="cascade")))

    resp = ask("The purpose of the with statement is to wrap a block. [1] Unrelated statement. [2]")
    [step] = resp.route.path
    assert step.outcome == "accepted" and step.confidence == 1.0 and resp.route.tier == "small"
    assert "coverage 1.000 >= threshold 0.750 (every term of the question)" in step.reason
    resp = ask("The del statement deletes names. [1] Its purpose is clarity. [2]")  # only the first statement counts
    small, large = resp.route.path
    assert small.outcome == "escalated" and small.confidence == 0.5
    assert "coverage 0.500 < threshold 0.750 (missing purpos): escalated to large" in small.reason
    assert resp.route.tier == "large" and large.outcome == "answered"


def test_cascade_without_a_confidence_signal_escalates():
    stages = FakeStages()  # no logprobs from this engine
    resp = run(pipeline(stages), tier="cascade")
    assert resp.route.path[0].outcome == "escalated" and "no logprob_mean" in resp.route.path[0].reason


def test_cascade_keeps_the_small_answer_when_the_large_tier_would_not_fit_in_the_time_left():
    stages = FakeStages()
    stages.logprobs = {"small": -0.9}
    slow_large = {**TIERS, "large": replace(TIERS["large"], prefill_tok_s=1.0)}  # 10 prompt tokens -> ~10 s
    p = QueryPipeline(stages, None, CFG, budget=GENEROUS, tier_configs=slow_large)
    resp = asyncio.run(p.run(RagRequest(query="what does with do", tier="cascade")))
    assert [c for c in stages.calls if c.startswith("generate")] == ["generate[small]"]
    [step] = resp.route.path
    assert step.outcome == "kept" and "not escalated" in step.reason and "large needs" in step.reason
    assert resp.route.tier == "small" and any("cascade:" in w for w in resp.warnings)


def test_an_unsure_answer_kept_for_lack_of_time_is_not_cached_but_an_accepted_one_is():
    from pipelines.config import CacheConfig
    from pipelines.query.cache import InMemoryCache, SemanticCache

    stages = FakeStages(vectors={"what does with do": np.array([1.0, 0.0, 0.0], dtype=np.float32)},
                        answer="the text of chunk 5 [1]")
    stages.logprobs = {"small": -0.9}
    cache = SemanticCache(InMemoryCache(CacheConfig()), 0.95, None)
    slow_large = {**TIERS, "large": replace(TIERS["large"], prefill_tok_s=1.0)}
    p = QueryPipeline(stages, cache, CFG, budget=GENEROUS, tier_configs=slow_large)
    kept = asyncio.run(p.run(RagRequest(query="what does with do", tier="cascade")))
    assert kept.route.path[0].outcome == "kept" and cache.stats()["entries"] == 0
    stages.logprobs = {"small": -0.1}
    accepted = asyncio.run(p.run(RagRequest(query="what does with do", tier="cascade")))
    assert accepted.route.path[0].outcome == "accepted" and not accepted.cache.hit
    assert cache.stats()["entries"] == 1
    again = asyncio.run(p.run(RagRequest(query="what does with do", tier="cascade")))
    assert again.cache.hit and again.route.path[0].outcome == "accepted"


def test_cascade_keeps_the_small_answer_when_the_escalation_fails():
    stages = FakeStages(fail={"generate[large]"})
    stages.logprobs = {"small": -0.9}
    resp = run(pipeline(stages), tier="cascade")
    assert resp.route.tier == "small" and resp.answer == stages.answer
    small, large = resp.route.path
    assert small.outcome == "kept" and "large failed" in small.reason
    assert large.outcome == "failed" and "injected failure" in large.reason
    assert resp.degraded and resp.usage.cost_usd == 2e-6


def test_cascade_escalates_past_a_failed_small_tier():
    stages = FakeStages(fail={"generate[small]"})
    resp = run(pipeline(stages), tier="cascade")
    assert [s.outcome for s in resp.route.path] == ["failed", "answered"] and resp.route.tier == "large"
    assert resp.degraded


def test_cascade_needs_two_tiers():
    with pytest.raises(BadRequest, match="cascade needs at least two configured tiers"):
        run(QueryPipeline(FakeStages(), None, CFG, tiers=["small"]), tier="cascade")


def test_auto_and_fixed_modes_record_one_answered_step():
    stages = FakeStages()
    auto = run(pipeline(stages))
    assert auto.route.mode == "auto" and auto.route.score == 0.9 and [s.outcome for s in auto.route.path] == ["answered"]
    fixed = run(pipeline(stages), tier="small")
    assert fixed.route.mode == "fixed" and fixed.route.score is None and fixed.route.path[0].tier == "small"


def test_a_router_that_needs_no_retrieval_runs_concurrently_with_retrieval():
    """The fake retrieval waits for the router to start: run one after the other, this times out."""
    stages = FakeStages()
    stages.route_gate = asyncio.Event()
    original = stages.retrieve

    async def retrieve(vector, n, **kwargs):
        await asyncio.wait_for(stages.route_gate.wait(), 2.0)
        return await original(vector, n, **kwargs)

    stages.retrieve = retrieve
    resp = run(pipeline(stages, route_uses_retrieval=False))
    assert not resp.degraded and resp.route.tier == "large"
    assert not stages.route_features.retrieval_scores  # it did not wait for retrieval


def test_a_router_that_reads_retrieval_scores_runs_alongside_reranking():
    stages = FakeStages()
    stages.route_gate = asyncio.Event()
    original = stages.rerank

    async def rerank(query, candidates, top_k):
        await asyncio.wait_for(stages.route_gate.wait(), 2.0)
        return await original(query, candidates, top_k)

    stages.rerank = rerank
    resp = run(pipeline(stages))
    assert not resp.degraded
    assert list(stages.route_features.retrieval_scores) == [1.0, 0.9, 0.8, 0.7]  # best dense scores of retrieval


def test_streamed_cascade_sends_an_accepted_answer_whole_and_streams_an_escalation():
    async def collect(stages):
        return [e async for e in pipeline(stages).stream(RagRequest(query="what does with do", tier="cascade"))]

    confident = FakeStages(answer="one two three")
    confident.logprobs = {"small": -0.1}
    out = asyncio.run(collect(confident))
    assert [e["event"] for e in out] == ["meta", "token", "done"] and out[1]["text"] == "one two three"
    assert out[0]["route"]["mode"] == "cascade" and out[0]["route"]["path"][0]["outcome"] == "accepted"

    unsure = FakeStages(answer="one two three")
    unsure.logprobs = {"small": -2.0}
    out = asyncio.run(collect(unsure))
    assert [e["event"] for e in out] == ["meta", "token", "token", "token", "done"]
    assert out[0]["route"]["tier"] == "large" and out[0]["route"]["path"][0]["outcome"] == "escalated"
    done = out[-1]["response"]
    assert [s["outcome"] for s in done["route"]["path"]] == ["escalated", "answered"]
    assert done["usage"]["cost_usd"] == pytest.approx(3e-6)  # 2e-6 small (generate) + 1e-6 large (stream)


def test_streamed_cascade_falls_back_to_the_small_answer_when_the_escalation_fails():
    stages = FakeStages(answer="one two three", fail={"generate[large]"})
    stages.logprobs = {"small": -2.0}

    async def collect():
        return [e async for e in pipeline(stages).stream(RagRequest(query="what does with do", tier="cascade"))]

    out = asyncio.run(collect())
    assert [e["event"] for e in out] == ["meta", "token", "done"] and out[1]["text"] == "one two three"
    done = out[-1]["response"]
    assert [s["outcome"] for s in done["route"]["path"]] == ["kept", "failed"] and done["degraded"]


ROUTED = RagConfig(candidates=6, default_tier="small",
                   cascade=CascadeConfig("selfcheck", 1.0, "test", start="routed", route_threshold=0.6))


def test_routed_cascade_sends_a_question_the_router_scores_hard_straight_to_the_large_tier():
    stages = FakeStages()
    stages.route_score = 0.7
    resp = run(pipeline(stages, cfg=ROUTED), tier="cascade")
    assert stages.route_thresholds == [0.6]  # the cascade's own route threshold, not the router's
    assert [c for c in stages.calls if c.startswith("generate")] == ["generate[large]"]  # no small answer
    assert resp.route.mode == "cascade" and resp.route.tier == "large" and resp.route.score == 0.7
    assert resp.route.reason.startswith("cascade from large (routed start) over small -> large: escalate while "
                                        "selfcheck < 1.000")
    assert [(s.tier, s.outcome) for s in resp.route.path] == [("large", "answered")] and not resp.degraded


def test_routed_cascade_answers_an_easy_question_with_the_small_tier_and_checks_it():
    stages = FakeStages()
    stages.route_score = 0.3
    stages.answers = {"small": "It holds 12 * 3 = 36 litres [1].", "large": "It holds 12 * 3 = 36 litres [1]."}
    resp = run(pipeline(stages, cfg=ROUTED), tier="cascade")
    [step] = resp.route.path
    assert step.tier == "small" and step.outcome == "accepted" and step.confidence == 1.0
    assert "no problem found in 1 equation(s)" in step.reason and resp.route.score == 0.3

    stages = FakeStages()
    stages.route_score = 0.3
    stages.answers = {"small": "It holds 12 * 3 = 38 litres [1].", "large": "It holds 12 * 3 = 36 litres [1]."}
    resp = run(pipeline(stages, cfg=ROUTED), tier="cascade")
    small, large = resp.route.path
    assert small.outcome == "escalated" and "arithmetic: 12 * 3 = 38 (it is 36)" in small.reason
    assert large.tier == "large" and resp.answer == "It holds 12 * 3 = 36 litres [1]."


def test_routed_cascade_starts_at_the_cheapest_tier_when_the_router_is_down():
    stages = FakeStages(fail={"route"})
    resp = run(pipeline(stages, cfg=ROUTED), tier="cascade")
    assert resp.route.path[0].tier == "small" and resp.route.score is None
    assert resp.route.reason.startswith("router unavailable; cascade over small -> large")
    assert any("the cascade started at the cheapest tier" in w for w in resp.warnings)
    assert not resp.degraded  # the cascade answered as it would without a routed start


def test_routed_cascade_at_the_top_tier_falls_back_when_it_fails():
    stages = FakeStages(fail={"generate[large]"})
    stages.route_score = 0.9
    resp = run(pipeline(stages, cfg=ROUTED), tier="cascade")
    assert [(s.tier, s.outcome) for s in resp.route.path] == [("large", "failed"), ("small", "answered")]
    assert resp.route.tier == "small" and resp.degraded


def test_cheapest_start_cascade_does_not_ask_the_router():
    stages = FakeStages()
    run(pipeline(stages, cfg=replace(ROUTED, cascade=replace(ROUTED.cascade, start="cheapest"))), tier="cascade")
    assert "route" not in stages.calls


def test_streamed_routed_cascade_streams_the_large_answer_of_a_hard_question():
    stages = FakeStages(answer="one two three")
    stages.route_score = 0.9

    async def collect():
        return [e async for e in pipeline(stages, cfg=ROUTED).stream(RagRequest(query="q", tier="cascade"))]

    out = asyncio.run(collect())
    assert [e["event"] for e in out] == ["meta", "token", "token", "token", "done"]
    assert out[0]["route"]["tier"] == "large" and out[0]["route"]["score"] == 0.9
    assert [(s["tier"], s["outcome"]) for s in out[-1]["response"]["route"]["path"]] == [("large", "answered")]
