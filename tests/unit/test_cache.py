from __future__ import annotations

import numpy as np

from pipelines.config import CacheConfig
from pipelines.query.cache import InMemoryCache, Partition, SemanticCache
from pipelines.query.cache.verify import HitVerifier, PairScorer, PairStack
from tests.fakes import unit

P = Partition("t1", "v1", "fp")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(**kw) -> tuple[InMemoryCache, Clock]:
    clock = Clock()
    return InMemoryCache(CacheConfig(**{"ttl_s": 60, **kw}), clock=clock), clock


def put(cache, part, key, vec, payload, docs=("d1",), query="q"):
    cache.put(part, key, query, unit(vec), payload, list(docs))


def test_fixed_ttl_expires_even_when_read():
    cache, clock = make(ttl_s=60)
    put(cache, P, "k", [1, 0], {"answer": "A"})
    clock.t += 59
    assert cache.get_exact(P, "k") == {"answer": "A"} and cache.candidates(P, unit([1, 0]), 3, 0.9)
    clock.t += 2
    assert cache.get_exact(P, "k") is None and cache.candidates(P, unit([1, 0]), 3, 0.9) == []


def test_sliding_ttl_is_extended_by_hits():
    cache, clock = make(ttl_s=60, sliding_ttl=True)
    put(cache, P, "k", [1, 0], {"answer": "A"})
    for _ in range(3):
        clock.t += 50
        assert cache.get_exact(P, "k") == {"answer": "A"}
    clock.t += 61
    assert cache.get_exact(P, "k") is None


def test_size_is_bounded_oldest_first():
    cache, _ = make(max_entries=3)
    for i in range(5):
        put(cache, P, f"k{i}", [1, i], {"i": i})
    assert len(cache) == 3
    assert cache.get_exact(P, "k0") is None and cache.get_exact(P, "k4") == {"i": 4}


def test_candidates_are_sorted_and_bounded():
    cache, _ = make()
    for i, v in enumerate(([1, 0.3], [1, 0], [1, 0.1], [0, 1])):
        put(cache, P, f"k{i}", v, {"i": i}, query=f"q{i}")
    got = cache.candidates(P, unit([1, 0]), 2, 0.9)
    assert [c.payload["i"] for c in got] == [1, 2] and got[0].similarity > got[1].similarity


def test_purge_by_tenant_and_by_document():
    cache, _ = make()
    other = Partition("t2", "v1", "fp")
    put(cache, P, "a", [1, 0], {"a": 1}, docs=("pydoc:with", "pydoc:try"))
    put(cache, P, "b", [0, 1], {"b": 1}, docs=("pydoc:for",))
    put(cache, other, "a", [1, 0], {"a": 2}, docs=("pydoc:with",))
    assert cache.purge(doc_ids=["pydoc:try"]) == 1
    assert cache.get_exact(P, "a") is None and cache.get_exact(other, "a") == {"a": 2}
    assert cache.purge(tenant="t1") == 1 and cache.get_exact(P, "b") is None
    assert cache.purge(tenant="t2", doc_ids=["pydoc:with"]) == 1 and len(cache) == 0


def semantic(verifier=True, threshold=0.9):
    backend, _ = make()
    v = HitVerifier({"numbers": 0.0, "negation": 0.0, "antonyms": 0.0}, 0.85) if verifier else None
    return SemanticCache(backend, threshold, v), backend


def test_semantic_hit_says_why_it_was_accepted():
    cache, backend = semantic()
    put(backend, P, "k", [1, 0], {"answer": "A"}, query="How do I enable 2FA?")
    out = cache.get_semantic(P, "How can I enable 2FA?", unit([1, 0.1]))
    assert out.hit.kind == "semantic" and out.hit.payload == {"answer": "A"}
    assert "accepted" in out.verdicts[0] and "How do I enable 2FA?" in out.verdicts[0]


def test_near_miss_is_rejected_with_the_reason_and_the_next_candidate_is_tried():
    cache, backend = semantic()
    put(backend, P, "k1", [1, 0], {"answer": "enable"}, query="How do I enable 2FA?")
    put(backend, P, "k2", [1, 0.2], {"answer": "disable"}, query="How can I turn off 2FA, i.e. disable it?")
    out = cache.get_semantic(P, "How do I disable 2FA?", unit([1, 0.05]))
    assert "rejected: antonyms differ ('enable' vs 'disable')" in out.verdicts[0]
    assert out.hit is not None and out.hit.payload == {"answer": "disable"}


def test_without_verifier_the_threshold_alone_decides():
    cache, backend = semantic(verifier=False)
    put(backend, P, "k", [1, 0], {"answer": "enable"}, query="How do I enable 2FA?")
    assert cache.get_semantic(P, "How do I disable 2FA?", unit([1, 0.1])).hit.payload == {"answer": "enable"}
    assert cache.get_semantic(P, "x", unit([1, 1])).hit is None  # cosine 0.71 < 0.9


def test_only_a_check_that_runs_the_pair_model_leaves_the_event_loop():
    from pipelines.query.cache import Candidate

    class Pair:
        def logits(self, pairs):
            return np.zeros(len(pairs))

    n = 11 + 2 * 2
    scorer = PairScorer(np.zeros(n), np.ones(n), np.ones(n), 0.0, 0.5)
    backend, _ = make()
    assert not SemanticCache(backend, 0.9, None).blocking  # the in-memory backend: inline

    def cand(query: str, similarity: float) -> Candidate:
        return Candidate(query, similarity, {}, unit([1, 0]))

    plain = SemanticCache(backend, 0.9, HitVerifier({}, 0.85, scorer))
    assert not plain.verify_blocks("how do I sort a list", [cand("how do I sort a list?", 0.9)])
    paired = SemanticCache(backend, 0.9, HitVerifier({}, 0.85, scorer, PairStack(Pair(), 1.0, 1.0, 0.0, 0.5,
                                                                                   sure_cosine=0.95)))
    assert paired.verify_blocks("how do I sort a list", [cand("how can a list be sorted", 0.9)])  # pair model
    assert not paired.verify_blocks("how do I sort a list", [cand("how do I sort a list?", 0.97)])  # near-identical
    assert not paired.verify_blocks("how do I sort a list", [])


