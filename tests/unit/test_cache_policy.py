"""The error-bounded cache policy: its statistics, its decisions and their reasons, the answer
comparison, and the pipeline learning from fresh answers (fake stages, in-memory backend)."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from pipelines.config import CacheConfig, RagConfig
from pipelines.query.cache import InMemoryCache, Partition, SemanticCache
from pipelines.query.cache.policy import (BANDS, EntryStats, ErrorBoundPolicy, PoolStats, answers_agree, band,
                                          interval, upper_bound)
from pipelines.api.schema import RagRequest
from pipelines.query.cache.verify import HitVerifier
from pipelines.query.pipeline import QueryPipeline
from tests.fakes import FakeStages, unit

P = Partition("acme", "v1", "fp")


class Rng(random.Random):
    """random() returns the given value: a verification sample iff value < the sample rate."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def pool(lookups: dict[int, int] | None = None, **bands: tuple[int, int]) -> PoolStats:
    """pool(b9=(n, wrong), ...): every lookup observed, unless ``lookups`` {band: count} says more."""
    verified, wrong = [0] * BANDS, [0] * BANDS
    for name, (n, w) in bands.items():
        verified[int(name[1:])], wrong[int(name[1:])] = n, w
    seen = list(verified)
    for b, n in (lookups or {}).items():
        seen[b] = n
    return PoolStats(tuple(verified), tuple(wrong), lookups=tuple(seen))


def test_the_upper_bound_is_clopper_pearsons():
    # 0 wrong in n: the one-sided 95% bound is 1 - 0.05^(1/n): 2% needs 149 clean observations
    assert upper_bound(0, 148) > 0.02 >= upper_bound(0, 149)
    assert upper_bound(0, 149) == pytest.approx(1 - 0.05 ** (1 / 149))
    assert upper_bound(0, 0) == 1.0 and upper_bound(5, 5) == 1.0
    assert upper_bound(2, 400) == pytest.approx(0.0157, abs=2e-4)
    low, high = interval(2, 400)
    assert low < 2 / 400 < high and interval(0, 10)[0] == 0.0


def test_scores_fall_in_ten_bands():
    assert [band(s) for s in (0.0, 0.09, 0.1, 0.55, 0.9, 0.999, 1.0)] == [0, 0, 1, 5, 9, 9, 9]


def test_without_evidence_a_candidate_is_answered_fresh_and_observed():
    d = ErrorBoundPolicy(0.02, rng=Rng(0.0)).decide(0.97, EntryStats(), PoolStats())
    assert d.action == "observe" and not d.sample
    assert d.reason.startswith("learning: tenant's candidates at P >= 0.9: 0 verified, 0 wrong (of 0 lookups); "
                               "bound 0.02 is met for nothing yet (entry verified 0 times, 0 wrong)")


def test_enough_clean_observations_at_or_above_the_score_serve_it():
    policy = ErrorBoundPolicy(0.02, rng=Rng(0.99))
    evidence = pool(b8=(100, 0), b9=(100, 0))
    hit = policy.decide(0.85, EntryStats(14, 0), evidence)
    assert hit.action == "hit"
    assert hit.reason == ("hit: tenant's candidates at P >= 0.8: 200 verified, 0 wrong, 100% of 200 lookups; wrong "
                          "hits <= 0.015 of lookups at 95% confidence <= bound 0.02 (entry verified 14 times, 0 wrong)")
    # served from the lowest band that vouches for itself and the bands above it (P >= 0.8 here)
    assert policy.decide(0.95, EntryStats(), evidence).action == "hit"
    assert policy.decide(0.95, EntryStats(), pool(b9=(100, 0))).action == "observe"  # 100 alone: bound 0.03
    unseen = policy.decide(0.75, EntryStats(), evidence)  # band 7: nothing seen there itself
    assert unseen.action == "observe" and "bound 0.02 is met for P >= 0.8" in unseen.reason
    # a wrong observation in band 7 keeps the threshold at 0.8; many clean ones lower it
    assert policy.decide(0.75, EntryStats(), pool(b7=(3, 1), b8=(100, 0), b9=(100, 0))).action == "observe"
    assert policy.decide(0.75, EntryStats(), pool(b7=(30, 0), b8=(100, 0), b9=(100, 0))).action == "hit"
    # a band carrying much of the traffic needs evidence of its own, however clean the bands above
    busy = pool(lookups={7: 800}, b7=(5, 0), b8=(300, 0), b9=(300, 0))
    assert busy.own_estimate(7) > 0.02 and policy.decide(0.75, EntryStats(), busy).action == "observe"
    assert evidence.serving_band(0.02) == 8 and PoolStats().serving_band(0.5) is None
    # a looser bound serves on less evidence; wrong observations raise the bound
    assert ErrorBoundPolicy(0.05, rng=Rng(0.99)).decide(0.95, EntryStats(), evidence).action == "hit"
    assert policy.decide(0.85, EntryStats(), pool(b8=(100, 3), b9=(100, 0))).action == "observe"


def test_the_bound_is_on_wrong_hits_over_lookups():
    # band 9 is wrong 5% of the time but carries a fifth of the lookups: ~1% of lookups at most
    mixed = pool(lookups={0: 4000}, b0=(10, 9), b9=(1000, 50))
    assert mixed.bound_at(9) == pytest.approx(1000 / 5000 * upper_bound(50, 1000))
    assert ErrorBoundPolicy(0.02, rng=Rng(0.99)).decide(0.95, EntryStats(), mixed).action == "hit"
    # a rare band still needs some evidence of its own before it is served
    rare = pool(lookups={0: 5000}, b9=(3, 0))
    assert rare.bound_at(9) < 0.02 and ErrorBoundPolicy(0.02, rng=Rng(0.99)).decide(0.95, EntryStats(), rare).action == "observe"
    assert ErrorBoundPolicy(0.02, rng=Rng(0.99)).decide(0.95, EntryStats(), pool(lookups={0: 5000}, b9=(10, 0))).action == "hit"
    # lookups with no candidate count as well (they cannot be wrong hits)
    others = PoolStats(mixed.verified, mixed.wrong, lookups=(0,) * 9 + (1000,), other_lookups=4000)
    assert others.bound_at(9) == pytest.approx(mixed.bound_at(9)) and others.total == 5000
    # the same wrong rate on all the traffic: not within 2%
    assert ErrorBoundPolicy(0.02, rng=Rng(0.99)).decide(0.95, EntryStats(), pool(b9=(1000, 50))).action == "observe"


def test_verification_samples_thin_out_as_confidence_grows():
    policy = ErrorBoundPolicy(0.02)
    barely = policy.sample_rate(upper_bound(0, 150))
    sure = policy.sample_rate(upper_bound(0, 3000))
    assert barely > 0.9 and sure == policy.min_sample_rate
    d = ErrorBoundPolicy(0.02, rng=Rng(0.5)).decide(0.95, EntryStats(), pool(b9=(150, 0)))
    assert d.action == "verify" and d.sample and d.reason.startswith("verification sample (rate 0.98)")
    assert ErrorBoundPolicy(0.02, rng=Rng(0.5)).decide(0.95, EntryStats(), pool(b9=(3000, 0))).action == "hit"


def test_an_entry_judged_wrong_is_not_served_at_or_below_that_score():
    policy = ErrorBoundPolicy(0.02, rng=Rng(0.99))
    evidence = pool(b8=(500, 0), b9=(500, 0))
    wrong_once = EntryStats(verified=3, wrong=1, wrong_max=0.88)
    d = policy.decide(0.86, wrong_once, evidence)
    assert d.action == "observe" and "judged wrong for a question scored 0.88 >= 0.86" in d.reason
    assert policy.decide(0.93, wrong_once, evidence).action == "hit"


def test_the_bound_is_validated_at_start_up():
    from common.errors import ConfigError

    assert CacheConfig.from_env({}).max_error == 0.02 and CacheConfig.from_env({}).policy == "error-bound"
    assert CacheConfig.from_env({"RAGROUTE_CACHE_MAX_ERROR": "0.5"}).max_error == 0.5
    for bad in ("0", "-0.1", "0.51", "1", "nan", "2%", "abc"):
        with pytest.raises(ConfigError, match=r"RAGROUTE_CACHE_MAX_ERROR=.* must be a number in \(0, 0.5\]"):
            CacheConfig.from_env({"RAGROUTE_CACHE_MAX_ERROR": bad})


def test_answers_agree_when_built_on_the_same_best_source_and_say_the_same():
    cached = {"answer": "x", "sources": [{"doc_id": "pydoc:with"}, {"doc_id": "pydoc:compound"}]}
    same = np.stack([unit([1, 0, 0]), unit([1, 0.2, 0])])
    other = np.stack([unit([1, 0, 0]), unit([0, 1, 0])])
    assert answers_agree(cached, ["pydoc:with", "pydoc:while"], same) == \
        (True, "same best source pydoc:with, answers' cosine 0.98 (agree at >= 0.70)")
    ok, why = answers_agree(cached, ["pydoc:with"], other)
    assert not ok and "answers' cosine 0.00" in why
    ok, why = answers_agree(cached, ["pydoc:compound", "pydoc:with"], same)  # sources overlap, not the best
    assert not ok and why == "another best source (pydoc:with vs pydoc:compound)"
    assert not answers_agree(cached, ["pydoc:with"], None)[0]  # not embedded: not vouched for


# -- SemanticCache with the policy -----------------------------------------------------------------

def policy_cache(rng: float = 0.99, verifier: HitVerifier | None = None) -> SemanticCache:
    return SemanticCache(InMemoryCache(CacheConfig()), 0.9, verifier, ErrorBoundPolicy(0.02, rng=Rng(rng)))


def test_the_cache_learns_from_observations_and_then_serves():
    cache = policy_cache()
    cache.put(P, "q1", "What does with do?", unit([1, 0]), {"answer": "A"}, ["d1"])
    first = cache.get_semantic(P, "What does with do exactly?", unit([1, 0.1]))  # cosine 0.995: score 0.995
    assert first.hit is None and first.observe is not None and first.observe.entry.qhash == "q1"
    assert first.verdicts[0].startswith("'What does with do?' (cosine 0.995) P(same question) 1.00; learning:")
    for _ in range(200):
        cache.observe(P, first.observe, wrong=False)
    second = cache.get_semantic(P, "What does with do exactly?", unit([1, 0.1]))
    assert second.hit is not None and second.hit.payload == {"answer": "A"} and second.observe is None
    assert "200 verified, 0 wrong" in second.verdicts[0] and "entry verified 200 times" in second.verdicts[0]
    stats = cache.stats()
    assert stats["policy"] == "error-bound" and stats["max_error"] == 0.02
    assert stats["tenants"]["acme"]["observations"] == 200 and stats["tenants"]["acme"]["serving_from_score"] == 0.9


def test_near_miss_rules_still_veto_whatever_the_statistics():
    cache = policy_cache(verifier=HitVerifier({"antonyms": 0.0, "negation": 0.0}, 0.9))
    cache.put(P, "q1", "How do I enable 2FA?", unit([1, 0]), {"answer": "enable"}, ["d1"])
    for _ in range(500):
        cache.backend.observe(P, "q1", 9, 0.99, wrong=False, sample=False)
    out = cache.get_semantic(P, "How do I disable 2FA?", unit([1, 0.05]))
    assert out.hit is None and out.observe is None  # vetoed: nothing to learn, nothing served
    assert "antonyms differ ('enable' vs 'disable')" in out.verdicts[0]
    assert cache.get_semantic(P, "How can I enable 2FA?", unit([1, 0.05])).hit is not None


def test_statistics_are_per_tenant():
    cache = policy_cache()
    other = Partition("globex", "v1", "fp")
    for part in (P, other):
        cache.put(part, "q1", "What does with do?", unit([1, 0]), {"answer": part.tenant}, ["d1"])
    for _ in range(200):
        cache.backend.observe(P, "q1", 9, 0.99, wrong=False, sample=False)
    assert cache.get_semantic(P, "What does with do exactly?", unit([1, 0.1])).hit.payload == {"answer": "acme"}
    theirs = cache.get_semantic(other, "What does with do exactly?", unit([1, 0.1]))
    assert theirs.hit is None and "0 verified" in theirs.verdicts[0]


# -- the pipeline learns -----------------------------------------------------------------------------

CFG = RagConfig(candidates=6, default_tier="small", cache=CacheConfig(threshold=0.9))


def ask(pipeline: QueryPipeline, query: str, tenant: str = "default"):
    return asyncio.run(pipeline.run(RagRequest(query=query, tenant=tenant)))


def test_a_not_yet_served_paraphrase_is_answered_fresh_and_compared():
    stages = FakeStages(vectors={"what does with do": unit([1, 0, 0]), "what does with do exactly": unit([1, 0.1, 0])})
    cache = policy_cache()
    pipeline = QueryPipeline(stages, cache, CFG)
    ask(pipeline, "what does with do")
    resp = ask(pipeline, "what does with do exactly")
    assert not resp.cache.hit and resp.cache.decision == "observe" and not resp.cache.verification_sample
    assert resp.cache.verifier[-1].startswith("compared with the cached answer: agrees (same best source d5")
    assert "embed_many" in stages.calls  # the two answers were embedded to compare them
    assert cache.stats()["tenants"]["default"]["observations"] == 1


def test_a_wrong_verification_sample_is_recorded_and_its_fresh_answer_serves_that_question():
    # two grounded answers (their words are in the fake chunks) that say different things
    stages = FakeStages(vectors={"what does with do": unit([1, 0, 0]), "what does with do exactly": unit([1, 0.1, 0]),
                                 "the text of the chunk": unit([1, 0, 0]), "chunk text": unit([0, 0, 1])})
    cache = policy_cache(rng=0.0)  # every would-be hit is a verification sample
    pipeline = QueryPipeline(stages, cache, CFG)
    stages.answer = "the text of the chunk [1]"
    ask(pipeline, "what does with do")
    # the tenant's evidence says band 9 is safe: the candidate is a would-be hit
    entry = cache.backend._entries[next(iter(cache.backend._entries))]
    for _ in range(200):
        cache.backend.observe(entry.part, entry.qhash, 9, 0.99, wrong=False, sample=False)
    stages.answer = "chunk text [1]"
    resp = ask(pipeline, "what does with do exactly")
    assert not resp.cache.hit and resp.cache.decision == "verify" and resp.cache.verification_sample
    assert resp.answer == "chunk text [1]" and "differs" in resp.cache.verifier[-1]
    assert entry.stats == EntryStats(201, 1, pytest.approx(0.995, abs=1e-3))
    tenant = cache.stats()["tenants"]["default"]
    assert tenant["verification_samples"] == 1 and tenant["verification_wrong"] == 1
    again = ask(pipeline, "what does with do exactly")  # its own fresh answer now, exactly
    assert again.cache.hit and again.cache.kind == "exact" and again.answer == "chunk text [1]"


def test_a_failed_statistics_update_keeps_the_fresh_answer_and_says_so():
    from pipelines.query.cache import CacheUnavailable

    class Down(InMemoryCache):
        def observe(self, *a, **kw):
            raise CacheUnavailable("Redis observe failed: ConnectionError")

    stages = FakeStages(vectors={"what does with do": unit([1, 0, 0]), "what does with do exactly": unit([1, 0.1, 0])})
    cache = SemanticCache(Down(CacheConfig()), 0.9, None, ErrorBoundPolicy(0.02, rng=Rng(0.99)))
    pipeline = QueryPipeline(stages, cache, CFG)
    ask(pipeline, "what does with do")
    resp = ask(pipeline, "what does with do exactly")
    assert resp.answer == "the text of the chunk [1]" and not resp.degraded
    assert resp.cache.status == "unavailable"
    assert "cache statistics update failed (dropped); the answer is fresh" in resp.warnings


def test_answers_that_cannot_be_embedded_are_not_compared():
    stages = FakeStages(vectors={"what does with do": unit([1, 0, 0]), "what does with do exactly": unit([1, 0.1, 0])})
    cache = policy_cache()
    pipeline = QueryPipeline(stages, cache, CFG)
    ask(pipeline, "what does with do")
    stages.fail = {"embed_many"}
    resp = ask(pipeline, "what does with do exactly")
    assert resp.cache.decision == "observe" and not resp.degraded
    assert resp.cache.verifier[-1] == "not compared with the cached answer (answers not embedded in time)"
    assert cache.stats()["tenants"]["default"]["observations"] == 0  # nothing recorded
    assert cache.stats()["tenants"]["default"]["lookups"] == 1  # the first ask found no candidate: counted
