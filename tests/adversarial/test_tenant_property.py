"""Property: whatever tenant names and questions, no tenant ever reads another's cached answer,
on both backends (in-process and a real Redis), through the same lookups the query path makes
(exact, then semantic with the verifier's candidates), and a purge of one tenant touches no other.

Names are drawn to collide: case variants, separators, prefixes and maximal (64-character) names
of the pattern the API accepts."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.api.schema import TENANT_PATTERN
from pipelines.config import CacheConfig
from pipelines.query.cache import InMemoryCache, Partition

pytestmark = pytest.mark.integration

BASES = ("acme", "globex", "a", "x" * 63)


@st.composite
def lookalike(draw) -> str:
    """A valid tenant name close to others: a base, its case flipped here and there, maybe a
    separator or a suffix, up to 64 characters."""
    base = draw(st.sampled_from(BASES))
    flips = draw(st.lists(st.booleans(), min_size=len(base), max_size=len(base)))
    name = "".join(c.upper() if f else c for c, f in zip(base, flips, strict=True))
    name += draw(st.sampled_from(["", "", ".", "-", "_", "0", "Z", "-" + "y" * 3]))
    return name[:64]


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(params=["memory", "redis"])
def backend_kind(request):
    if request.param == "redis":
        request.getfixturevalue("redis_server")
    return request.param


def make(kind: str, request) -> object:
    if kind == "memory":
        return InMemoryCache(CacheConfig())
    from pipelines.query.cache.redis_backend import RedisCache

    server = request.getfixturevalue("redis_server")
    return RedisCache(CacheConfig(redis_url=server.url, namespace=f"p{uuid.uuid4().hex[:8]}"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenants=st.lists(lookalike(), min_size=2, max_size=6, unique=True),
       questions=st.lists(st.integers(0, 5), min_size=1, max_size=4))
def test_no_tenant_ever_reads_another_tenants_answer(backend_kind, request, tenants, questions):
    import re

    assert all(re.fullmatch(TENANT_PATTERN, t) for t in tenants)
    b = make(backend_kind, request)
    # every tenant stores an answer to the same questions (same hash, same vector)
    for t in tenants:
        for q in set(questions):
            b.put(Partition(t, "v", "f"), f"q{q}", f"question {q}", vec(q), {"owner": t}, [f"doc-{q}"])
    reads = []
    for t in tenants:
        part = Partition(t, "v", "f")
        for q in set(questions):
            exact = b.get_exact(part, f"q{q}")
            found = b.candidates(part, vec(q), 50, 0.0)
            # positive control: each tenant finds its own answer, exactly and as the nearest candidate
            assert exact == {"owner": t} and found[0].payload == {"owner": t} and found[0].similarity > 0.99
            reads.append((t, exact["owner"]))
            reads.extend((t, c.payload["owner"]) for c in found)
    cross = [(reader, owner) for reader, owner in reads if reader != owner]
    assert cross == [], cross  # 0 cross-tenant reads
    victim, *others = tenants
    assert b.purge(tenant=victim) == len(set(questions))
    for t in others:
        assert all(b.get_exact(Partition(t, "v", "f"), f"q{q}") is not None for q in set(questions))
