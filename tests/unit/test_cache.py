from __future__ import annotations

import numpy as np

from pipelines.config import CacheConfig
from pipelines.query.cache import InMemoryCache
from tests.fakes import unit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(**kw) -> tuple[InMemoryCache, Clock]:
    clock = Clock()
    return InMemoryCache(CacheConfig(**{"threshold": 0.95, "ttl_s": 60, **kw}), clock=clock), clock


def test_exact_and_semantic_hits_and_threshold():
    cache, _ = make()
    cache.put("p", "k1", unit([1, 0]), {"answer": "A"})
    assert cache.get_exact("p", "k1").payload == {"answer": "A"}
    assert cache.get_exact("p", "k2") is None
    hit = cache.get_semantic("p", unit([1, 0.2]))  # cosine 0.981
    assert hit.kind == "semantic" and abs(hit.similarity - 0.9806) < 1e-3
    assert cache.get_semantic("p", unit([1, 0.4])) is None  # cosine 0.928 < 0.95


def test_partitions_are_isolated():
    cache, _ = make()
    cache.put("p1", "k", unit([1, 0]), {"answer": "A"})
    assert cache.get_exact("p2", "k") is None
    assert cache.get_semantic("p2", unit([1, 0])) is None


def test_entries_expire_after_ttl():
    cache, clock = make(ttl_s=60)
    cache.put("p", "k", unit([1, 0]), {"answer": "A"})
    clock.t += 59
    assert cache.get_exact("p", "k") is not None and cache.get_semantic("p", unit([1, 0])) is not None
    clock.t += 2
    assert cache.get_exact("p", "k") is None and cache.get_semantic("p", unit([1, 0])) is None


def test_size_is_bounded_oldest_first():
    cache, _ = make(max_entries=3)
    for i in range(5):
        cache.put("p", f"k{i}", unit([1, i]), {"i": i})
    assert len(cache) == 3
    assert cache.get_exact("p", "k0") is None and cache.get_exact("p", "k4").payload == {"i": 4}


def test_semantic_lookup_sees_new_entries():
    cache, _ = make()
    cache.put("p", "a", unit([0, 1]), {"answer": "A"})
    assert cache.get_semantic("p", unit([1, 0])) is None
    cache.put("p", "b", unit([1, 0]), {"answer": "B"})
    assert cache.get_semantic("p", np.asarray(unit([1, 0]))).payload == {"answer": "B"}
