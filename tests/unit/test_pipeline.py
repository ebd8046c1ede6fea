"""Pipeline logic with fake stages: order, cache short-circuits, one embedding, fallbacks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from common.errors import NotFound
from pipelines.api.schema import RagRequest
from pipelines.config import CacheConfig, RagConfig
from pipelines.config.budget import BudgetProfile
from pipelines.query.cache import InMemoryCache, SemanticCache
from pipelines.query.pipeline import QueryPipeline
from tests.fakes import FakeStages, unit

CFG = RagConfig(candidates=6, default_tier="small", cache=CacheConfig(threshold=0.95))
BUDGET = BudgetProfile("test", {"cache": 50, "embed": 50, "retrieve": 50, "rerank": 50, "route": 50,
                                "generate": 300, "safety": 100}, total_ms=1000)


def run(pipeline: QueryPipeline, **req) -> object:
    return asyncio.run(pipeline.run(RagRequest(**req)))


@pytest.fixture
def stages() -> FakeStages:
    return FakeStages(vectors={
        "what does with do": unit([1, 0, 0]),
        "what does with do exactly": unit([1, 0.1, 0]),  # cosine 0.995
        "how do I raise": unit([0, 1, 0]),
    })


def memory_cache() -> SemanticCache:
    return SemanticCache(InMemoryCache(CFG.cache), CFG.cache.threshold, None)


@pytest.fixture
def pipeline(stages) -> QueryPipeline:
    return QueryPipeline(stages, memory_cache(), CFG)


def test_stages_run_in_order_and_every_stage_is_timed(pipeline, stages):
    resp = run(pipeline, query="what does with do")
    assert stages.calls == ["embed", "retrieve", "rerank", "route", "generate[large]"]
    assert set(resp.timings_ms) == {"cache", "embed", "retrieve", "rerank", "route", "generate", "safety", "total"}
    assert resp.answer == "the text of the chunk [1]" and not resp.cache.hit and not resp.degraded
    # The reranker's order (reversed candidates) is what the response reports.
    assert [s.id for s in resp.sources] == ["c5", "c4", "c3", "c2"]
    assert resp.route.tier == "large" and resp.route.model == "large-model"


def test_query_is_embedded_once_and_the_vector_reaches_the_router(pipeline, stages):
    run(pipeline, query="what does with do")
    assert stages.embedded == ["what does with do"]
    np.testing.assert_allclose(stages.route_features.query_vector, unit([1, 0, 0]))
    assert stages.route_features.retrieval_scores  # reranked sources' dense scores


def test_retrieval_gets_the_question_text_for_hybrid_search(pipeline, stages):
    run(pipeline, query="What does the walrus operator do?")
    assert stages.retrieve_queries == ["What does the walrus operator do?"]


def test_an_unknown_collection_is_a_404_naming_the_valid_ones_before_any_work(pipeline, stages):
    with pytest.raises(NotFound, match="'handbook' is not a collection; valid: default") as err:
        run(pipeline, query="q", collection="handbook")
    assert err.value.status == 404 and stages.embedded == []


def test_collections_are_searched_and_cached_apart(pipeline, stages):
    stages.collections.add("handbook")
    first = run(pipeline, query="what does with do", collection="handbook")
    assert first.collection == "handbook" and first.index_version == "v1-handbook"
    assert stages.retrieve_collections == ["handbook"]
    assert not run(pipeline, query="what does with do").cache.hit  # same question, default collection: a miss
    again = run(pipeline, query="what does with do", collection="handbook")
    assert again.cache.hit and again.collection == "handbook"


def test_exact_hit_short_circuits_before_embedding(pipeline, stages):
    first = run(pipeline, query="what does with do")
    stages.calls.clear()
    again = run(pipeline, query="  What does WITH do?  ")  # same after normalization
    assert stages.calls == []
    assert again.cache.hit and again.cache.kind == "exact" and again.answer == first.answer
    assert set(again.timings_ms) == {"cache", "total"}


def test_semantic_hit_skips_retrieval_and_generation(pipeline, stages):
    run(pipeline, query="what does with do")
    stages.calls.clear()
    resp = run(pipeline, query="what does with do exactly")
    assert stages.calls == ["embed"]
    assert resp.cache.hit and resp.cache.kind == "semantic" and resp.cache.similarity >= 0.95


def test_dissimilar_question_misses(pipeline, stages):
    run(pipeline, query="what does with do")
    resp = run(pipeline, query="how do I raise")
    assert not resp.cache.hit and "generate[large]" in stages.calls[-1]


def test_bypass_neither_reads_nor_writes(pipeline, stages):
    run(pipeline, query="what does with do", cache="bypass")
    resp = run(pipeline, query="what does with do")
    assert not resp.cache.hit
    stages.calls.clear()
    resp = run(pipeline, query="what does with do", cache="bypass")
    assert not resp.cache.hit and stages.calls[0] == "embed"


def test_request_settings_partition_the_cache(pipeline):
    run(pipeline, query="what does with do", top_k=4)
    assert run(pipeline, query="what does with do", top_k=4).cache.hit  # positive control: the same settings hit
    assert not run(pipeline, query="what does with do", top_k=2).cache.hit
    assert not run(pipeline, query="what does with do", tier="small").cache.hit
    assert run(pipeline, query="what does with do", top_k=2).cache.hit  # each setting has its own entry


def test_explicit_tier_skips_the_router(pipeline, stages):
    resp = run(pipeline, query="what does with do", tier="small")
    assert "route" not in stages.calls and resp.route.tier == "small" and resp.route.score is None
    assert "requested by the client" in resp.route.reason


def test_rerank_failure_falls_back_to_retrieval_order_and_is_not_cached(stages):
    stages.fail = {"rerank"}
    pipeline = QueryPipeline(stages, memory_cache(), CFG)
    resp = run(pipeline, query="what does with do")
    assert resp.degraded and any("rerank" in w for w in resp.warnings)
    assert [s.id for s in resp.sources] == ["c0", "c1", "c2", "c3"]
    assert not run(pipeline, query="what does with do").cache.hit


def test_router_failure_uses_default_tier(stages):
    stages.fail = {"route"}
    resp = run(QueryPipeline(stages, None, CFG), query="what does with do")
    assert resp.degraded and resp.route.tier == "small"


def test_large_tier_failure_falls_back_to_small(stages):
    stages.fail = {"generate[large]"}
    resp = run(QueryPipeline(stages, None, CFG), query="what does with do")
    assert resp.degraded and resp.route.tier == "small" and resp.answer == "the text of the chunk [1]"


def test_generation_failure_gives_a_flagged_extractive_answer_that_is_not_cached(stages):
    stages.fail = {"generate[large]", "generate[small]"}
    cache = memory_cache()
    resp = run(QueryPipeline(stages, cache, CFG), query="what does with do")
    assert resp.degraded and resp.route.model == "extractive"
    assert resp.answer.startswith("text of chunk 5") and resp.answer.endswith("[1]")
    assert len(cache.backend) == 0


def test_empty_model_answer_is_replaced_and_not_cached():
    stages = FakeStages(answer="")
    cache = memory_cache()
    resp = run(QueryPipeline(stages, cache, CFG), query="q")
    assert resp.degraded and resp.answer and len(cache.backend) == 0


def test_embedding_failure_falls_back_to_lexical_retrieval(stages):
    stages.fail = {"embed"}
    cache = memory_cache()
    resp = run(QueryPipeline(stages, cache, CFG), query="what does with do")
    assert "retrieve_text" in stages.calls and "retrieve" not in stages.calls
    assert resp.degraded and any("keyword (BM25)" in w for w in resp.warnings)
    assert resp.budget["embed"].outcome == "error" and resp.budget["retrieve"].outcome == "ok"
    assert stages.route_features.query_vector is None and len(cache.backend) == 0


def test_retrieval_failure_fails_the_request_with_a_stage_error(stages):
    from common.errors import StageError

    stages.fail = {"retrieve"}
    with pytest.raises(StageError) as info:
        run(QueryPipeline(stages, None, CFG), query="what does with do")
    assert info.value.status == 503 and info.value.stage == "retrieve"


def test_answer_from_another_index_version_is_not_cached(stages):
    stages.retrieved_version = "v2"  # the index changed between lookup and retrieval
    cache = memory_cache()
    resp = run(QueryPipeline(stages, cache, CFG), query="what does with do")
    assert resp.index_version == "v2" and len(cache.backend) == 0


def test_broken_cache_backend_is_bypassed(stages):
    class Broken:
        blocking = True

        def get_exact(self, *a):
            raise ConnectionError("down")

        candidates = put = purge = get_exact

    resp = run(QueryPipeline(stages, SemanticCache(Broken(), 0.95, None), CFG), query="what does with do")
    assert resp.answer == "the text of the chunk [1]" and not resp.cache.hit and resp.cache.status == "unavailable"
    assert any("cache" in w for w in resp.warnings) and not resp.degraded


def test_tenants_never_share_answers_even_for_identical_questions(stages):
    pipeline = QueryPipeline(stages, memory_cache(), CFG)
    a = run(pipeline, query="what does with do", tenant="acme")
    stages.answer = "globex text of the chunk [1]"
    b = run(pipeline, query="what does with do", tenant="globex")
    assert not b.cache.hit and b.answer == "globex text of the chunk [1]" != a.answer
    assert run(pipeline, query="what does with do", tenant="acme").answer == a.answer
    hit = run(pipeline, query="what does with do exactly", tenant="globex")
    assert hit.cache.hit and hit.answer == "globex text of the chunk [1]"


def test_refresh_skips_the_lookup_and_replaces_the_entry(stages):
    pipeline = QueryPipeline(stages, memory_cache(), CFG)
    run(pipeline, query="what does with do")
    stages.answer = "a newer text of the chunk [1]"
    fresh = run(pipeline, query="what does with do", cache="refresh")
    assert not fresh.cache.hit and fresh.cache.status == "refresh" and fresh.answer == stages.answer
    again = run(pipeline, query="what does with do")
    assert again.cache.hit and again.answer == "a newer text of the chunk [1]"


def test_cache_status_says_what_happened(pipeline):
    assert run(pipeline, query="what does with do").cache.status == "miss"
    assert run(pipeline, query="what does with do").cache.status == "hit"
    assert run(pipeline, query="what does with do", cache="bypass").cache.status == "bypass"
    assert run(QueryPipeline(FakeStages(), None, CFG), query="q").cache.status == "off"


def test_generation_settings_partition_the_cache(stages):
    cache = memory_cache()
    run(QueryPipeline(stages, cache, CFG, fingerprint="qwen-0.5b|prompt-v1"), query="what does with do")
    same = run(QueryPipeline(stages, cache, CFG, fingerprint="qwen-0.5b|prompt-v1"), query="what does with do")
    assert same.cache.hit  # positive control: the cache stored it, and serves the same settings
    other = run(QueryPipeline(stages, cache, CFG, fingerprint="qwen-1.5b|prompt-v1"), query="what does with do")
    assert not other.cache.hit


def test_verifier_rejection_is_reported_and_the_request_is_answered_afresh():
    from pipelines.query.cache.verify import HitVerifier

    stages = FakeStages(vectors={"How do I enable 2FA?": unit([1, 0, 0]), "How do I disable 2FA?": unit([1, 0.05, 0])})
    cache = SemanticCache(InMemoryCache(CFG.cache), 0.95, HitVerifier({"antonyms": 0.0}, 0.9))
    pipeline = QueryPipeline(stages, cache, CFG)
    run(pipeline, query="How do I enable 2FA?")
    resp = run(pipeline, query="How do I disable 2FA?")
    assert not resp.cache.hit and resp.cache.status == "miss"
    assert len(resp.cache.verifier) == 1 and "antonyms differ ('enable' vs 'disable')" in resp.cache.verifier[0]


def test_stored_entries_record_the_cited_documents(stages):
    cache = memory_cache()
    run(QueryPipeline(stages, cache, CFG), query="what does with do")
    assert cache.purge(doc_ids=["d3"]) == 1  # d3 was among the cited sources
    assert cache.purge(doc_ids=["d0"]) == 0


def budgeted(stages: FakeStages, budget: BudgetProfile = BUDGET) -> QueryPipeline:
    return QueryPipeline(stages, memory_cache(), CFG, budget=budget)


def test_every_stage_reports_budget_time_and_outcome(stages):
    resp = run(budgeted(stages), query="what does with do")
    assert set(resp.budget) == {"cache", "embed", "retrieve", "rerank", "route", "generate", "safety"}
    assert all(b.outcome == "ok" and b.used_ms <= b.budget_ms for b in resp.budget.values())
    assert resp.budget["rerank"].budget_ms == 50 and resp.budget_profile == "test"


def test_slow_stage_times_out_and_degrades(stages):
    stages.delays = {"rerank": 3.0}
    resp = run(budgeted(stages), query="what does with do")
    # cut at its 50 ms budget, not after the 3 s the stage takes (room for a loaded machine)
    assert resp.budget["rerank"].outcome == "timeout" and 45 <= resp.budget["rerank"].used_ms < 1000
    assert resp.degraded and [s.id for s in resp.sources] == ["c0", "c1", "c2", "c3"]


def test_generation_gets_what_is_left_minus_the_safety_reserve(stages):
    run(budgeted(stages), query="what does with do")
    # min(generate budget, left - safety), less the answer's way back (5% of it, at most 300 ms)
    assert stages.budgets == [pytest.approx(285, abs=1)]
    stages.budgets.clear()
    tight = BudgetProfile("tight", dict(BUDGET.stages_ms), total_ms=250)
    stages.delays = {"embed": 0.05}
    run(budgeted(stages, tight), query="how do I raise")
    assert stages.budgets[0] < 120  # 250 total - ~50 spent - 100 safety reserve


def test_slow_large_tier_falls_back_to_small_then_extractive(stages):
    stages.delays = {"generate[large]": 3.0, "generate[small]": 3.0}
    resp = run(budgeted(stages), query="what does with do")
    assert [c for c in stages.calls if c.startswith("generate")] == ["generate[large]", "generate[small]"]
    assert resp.degraded and resp.route.model == "extractive"
    assert resp.budget["generate"].outcome in ("timeout", "skipped")
    assert resp.timings_ms["total"] < 1000 + 900  # the 1 s total budget (not the 6 s both tiers take) + a margin


def test_no_time_left_for_generation_skips_it(stages):
    starved = BudgetProfile("starved", dict(BUDGET.stages_ms), total_ms=150)
    stages.delays = {"embed": 0.03, "retrieve": 0.03}  # ~60 ms spent; 100 ms reserved for safety
    resp = run(budgeted(stages, starved), query="what does with do")
    assert resp.budget["retrieve"].outcome == "ok"
    assert resp.budget["generate"].outcome == "skipped" and resp.route.model == "extractive"
    assert not any(c.startswith("generate") for c in stages.calls) and resp.degraded


def test_slow_cache_is_bypassed_within_its_budget(stages):
    import time as _time

    class Slow(InMemoryCache):
        blocking = True  # like Redis: network I/O, run off the event loop

        def get_exact(self, *a):
            _time.sleep(1.5)
            return None

    cache = SemanticCache(Slow(CFG.cache), 0.95, None)
    resp = run(QueryPipeline(stages, cache, CFG, budget=BUDGET), query="what does with do")
    assert resp.budget["cache"].outcome == "timeout" and resp.cache.status == "unavailable"
    assert resp.budget["cache"].used_ms < 900  # cut at its budget, not after 1.5 s
    assert not resp.degraded and resp.answer == "the text of the chunk [1]"  # and the answer is still given


def test_in_memory_lookups_stay_on_the_event_loop_and_only_the_pair_model_leaves_it(stages):
    """A thread hop per lookup queued behind others under load until the lookup ran out of
    budget and a cached question was answered from scratch: microsecond calls run inline."""
    import threading

    from pipelines.query.cache.verify import HitVerifier, PairScorer, PairStack

    seen: dict[str, set[str]] = {"exact": set(), "candidates": set(), "pair": set()}

    class Spy(InMemoryCache):
        def get_exact(self, *a):
            seen["exact"].add(threading.current_thread().name)
            return super().get_exact(*a)

        def candidates(self, *a):
            seen["candidates"].add(threading.current_thread().name)
            return super().candidates(*a)

    class Pair:
        def logits(self, pairs):
            seen["pair"].add(threading.current_thread().name)
            return np.full(len(pairs), 5.0)

    n = 11 + 2 * 3  # the fake stages' vectors have 3 dimensions
    verifier = HitVerifier({}, 0.9, PairScorer(np.zeros(n), np.ones(n), np.ones(n), 0.0, 0.5),
                           PairStack(Pair(), 0.0, 1.0, 0.0, 0.5, sure_cosine=0.999))
    pipeline = QueryPipeline(stages, SemanticCache(Spy(CFG.cache), 0.9, verifier), CFG)
    main = threading.current_thread().name
    run(pipeline, query="what does with do")
    run(pipeline, query="what does with do")  # exact hit
    assert seen["exact"] == {main} and seen["candidates"] == {main} and seen["pair"] == set()
    hit = run(pipeline, query="what does with do exactly")  # cosine 0.995 < 0.999: the pair model runs
    assert hit.cache.kind == "semantic"
    assert seen["pair"] and main not in seen["pair"]


def test_slow_retrieval_is_an_overrun_not_an_error(stages):
    stages.delays = {"retrieve": 0.12}  # budget 50 ms, but retrieval has no fallback
    resp = run(budgeted(stages), query="what does with do")
    rep = resp.budget["retrieve"]
    assert rep.outcome == "ok" and rep.overrun and rep.used_ms >= 120 and "over its 50 ms budget" in rep.detail
    assert resp.answer == "the text of the chunk [1]" and not resp.degraded


def test_safety_flags_an_ungrounded_answer_and_it_is_not_cached():
    stages = FakeStages(answer="Quantum flux capacitors resonate with tachyon beams [1] [7].")
    cache = memory_cache()
    resp = run(QueryPipeline(stages, cache, CFG), query="q")
    assert resp.safety.checked and resp.safety.grounding < 0.5 and not resp.degraded
    assert any("weakly grounded" in p for p in resp.safety.problems)
    assert any("cites sources that do not exist: [7]" in p for p in resp.safety.problems)
    assert resp.answer.startswith("Quantum") and len(cache.backend) == 0  # flagged: returned, never cached


def test_safety_replace_action_answers_from_the_best_source():
    from pipelines.config.safety import SafetyConfig

    stages = FakeStages(answer="You answer questions using only the numbered sources provided. Cite the sources.")
    resp = run(QueryPipeline(stages, None, CFG, safety=SafetyConfig(action="replace")), query="q")
    assert "repeats the system prompt" in " ".join(resp.safety.problems)
    assert resp.degraded and resp.answer.startswith("text of chunk")


def test_grounded_answer_passes_and_is_cached(pipeline):
    resp = run(pipeline, query="what does with do")
    assert resp.safety.checked and resp.safety.grounding == 1.0 and resp.safety.problems == []
    assert run(pipeline, query="what does with do").cache.hit


def test_an_answer_that_cites_nothing_gets_the_citation_of_the_source_supporting_it():
    stages = FakeStages(answer="This is the text of chunk 5.")
    resp = run(QueryPipeline(stages, None, CFG), query="what does with do")
    assert resp.sources[0].id == "c5"  # the fakes' reranked order: chunk 5 first
    assert resp.answer == "This is the text of chunk 5. [1]" and not resp.degraded
