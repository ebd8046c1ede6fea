"""Cache backends against the same contract: in-process, and Redis (a real server)."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from pipelines.config import CacheConfig
from pipelines.query.cache import CacheUnavailable, InMemoryCache, Partition
from pipelines.query.cache.policy import EntryStats, PoolStats
from tests.fakes import unit

P = Partition("acme", "idx-v1", "fp1")


@pytest.fixture(params=["memory", "redis"])
def make_backend(request):
    def make(**kw):
        if request.param == "memory":
            return InMemoryCache(CacheConfig(**kw))
        from pipelines.query.cache.redis_backend import RedisCache

        server = request.getfixturevalue("redis_server")
        return RedisCache(CacheConfig(redis_url=server.url, namespace=f"t{uuid.uuid4().hex[:8]}", **kw))

    return make


def vec(*xs: float) -> np.ndarray:
    v = np.zeros(384, dtype=np.float32)
    v[: len(xs)] = xs
    return unit(v)


def put(b, part, qhash, v, answer, docs=("doc-1",), query=None):
    b.put(part, qhash, query or f"question {qhash}", v, {"answer": answer}, list(docs))


def test_exact_and_semantic_lookups(make_backend):
    b = make_backend()
    put(b, P, "h1", vec(1, 0), "A", query="What does the with statement do?")
    assert b.get_exact(P, "h1") == {"answer": "A"} and b.get_exact(P, "h2") is None
    (cand,) = b.candidates(P, vec(1, 0.1), 3, 0.95)
    assert cand.query == "What does the with statement do?" and cand.payload == {"answer": "A"}
    assert abs(cand.similarity - 0.995) < 1e-3
    np.testing.assert_array_equal(cand.vector, vec(1, 0))  # the stored embedding, for the verifier
    assert b.candidates(P, vec(1, 1), 3, 0.95) == []  # cosine 0.71


def test_partitions_are_hard(make_backend):
    b = make_backend()
    put(b, P, "h1", vec(1, 0), "acme's answer")
    for other in (Partition("globex", "idx-v1", "fp1"), Partition("acme", "idx-v2", "fp1"),
                  Partition("acme", "idx-v1", "fp2")):
        assert b.get_exact(other, "h1") is None  # identical question, other tenant/index/settings
        assert b.candidates(other, vec(1, 0), 3, 0.5) == []
    put(b, Partition("globex", "idx-v1", "fp1"), "h1", vec(1, 0), "globex's answer")
    assert b.get_exact(P, "h1") == {"answer": "acme's answer"}
    assert [c.payload["answer"] for c in b.candidates(P, vec(1, 0), 3, 0.5)] == ["acme's answer"]


def test_tenant_names_with_tag_syntax_cannot_reach_other_tenants(make_backend):
    b = make_backend()
    put(b, Partition("a.b-c", "v", "f"), "h", vec(1, 0), "secret")
    for probe in ("a", "a.b", "b-c", "a.b-c*"):
        assert b.candidates(Partition(probe, "v", "f"), vec(1, 0), 3, 0.5) == []


# Tenant names the key file and the API accept ([A-Za-z0-9][A-Za-z0-9_.-]{0,63}) that look alike:
# case variants (RediSearch folds TAG values to lower case unless told not to), separators,
# prefixes, and names at the maximal length.
LOOKALIKES = ("acme", "Acme", "ACME", "aCmE", "acme.", "acme-", "acme_", "acme0", "acm", "a.cme", "a-cme", "a_cme",
              "x" * 64, "X" * 64, "x" * 63 + "X")


def test_tenants_differing_only_in_case_or_punctuation_never_read_each_other(make_backend):
    b = make_backend()
    for i, tenant in enumerate(LOOKALIKES):
        put(b, Partition(tenant, "v", "f"), "same-question", vec(1, 0), f"{tenant}'s answer", docs=(f"doc-{i}",))
    for tenant in LOOKALIKES:
        part = Partition(tenant, "v", "f")
        assert b.get_exact(part, "same-question") == {"answer": f"{tenant}'s answer"}
        found = b.candidates(part, vec(1, 0), 50, 0.0)
        assert [c.payload["answer"] for c in found] == [f"{tenant}'s answer"], tenant


def test_purging_a_tenant_leaves_its_lookalikes_alone(make_backend):
    b = make_backend()
    for tenant in LOOKALIKES:
        put(b, Partition(tenant, "v", "f"), "h", vec(1, 0), tenant)
        b.observe(Partition(tenant, "v", "f"), "h", 9, 0.95, wrong=False, sample=False)
    assert b.purge(tenant="Acme") == 1
    assert b.get_exact(Partition("Acme", "v", "f"), "h") is None and b.pool(Partition("Acme", "v", "f")) == PoolStats()
    for tenant in (t for t in LOOKALIKES if t != "Acme"):
        assert b.get_exact(Partition(tenant, "v", "f"), "h") == {"answer": tenant}, tenant
        assert b.pool(Partition(tenant, "v", "f")).verified[9] == 1, tenant
    assert set(b.pools()) == set(LOOKALIKES) - {"Acme"}
    assert b.pools("acme") == {"acme": b.pool(Partition("acme", "v", "f"))}


def test_ttl_expiry(make_backend):
    b = make_backend(ttl_s=1)
    put(b, P, "h1", vec(1, 0), "A")
    assert b.get_exact(P, "h1") is not None
    time.sleep(2.1)
    assert b.get_exact(P, "h1") is None and b.candidates(P, vec(1, 0), 3, 0.5) == []


def test_purge_by_document_and_by_tenant(make_backend):
    b = make_backend()
    globex = Partition("globex", "idx-v1", "fp1")
    put(b, P, "h1", vec(1, 0), "A", docs=("pydoc:with", "pydoc:try"))
    put(b, P, "h2", vec(0, 1), "B", docs=("pydoc:for",))
    put(b, globex, "h1", vec(1, 0), "C", docs=("pydoc:with",))
    assert b.purge(doc_ids=["pydoc:try"]) == 1
    assert b.get_exact(P, "h1") is None and b.get_exact(globex, "h1") == {"answer": "C"}
    assert b.purge(tenant="acme") == 1 and b.get_exact(P, "h2") is None
    assert b.purge(tenant="globex", doc_ids=["pydoc:nothing"]) == 0
    assert b.purge(doc_ids=["pydoc:with"]) == 1
    assert b.stats()["entries"] == 0


def test_size_is_bounded_oldest_first(make_backend):
    b = make_backend(max_entries=3)
    for i in range(5):
        put(b, P, f"h{i}", vec(1, i), str(i))
        time.sleep(0.01)
    assert b.get_exact(P, "h0") is None and b.get_exact(P, "h1") is None
    assert [b.get_exact(P, f"h{i}")["answer"] for i in (2, 3, 4)] == ["2", "3", "4"]
    assert b.stats()["entries"] == 3


def test_concurrent_writers_of_one_question_leave_a_whole_entry(make_backend):
    b = make_backend()
    answers = [f"answer from writer {i} " + "x" * 2000 for i in range(8)]
    errors = []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                b.put(P, "same", "same question", vec(1, 0), {"answer": answers[i], "writer": i}, [f"doc-{i}"])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entry = b.get_exact(P, "same")
    assert entry["answer"] == answers[entry["writer"]]  # one writer's payload, whole
    (cand,) = b.candidates(P, vec(1, 0), 3, 0.9)
    assert cand.payload == entry
    assert b.stats()["entries"] == 1


# -- the error-bounded policy's statistics ---------------------------------------------------------

def test_observations_update_the_entry_and_its_tenant_pool(make_backend):
    b = make_backend()
    put(b, P, "h1", vec(1, 0), "A")
    b.observe(P, "h1", 9, 0.95, wrong=False, sample=True)
    b.observe(P, "h1", 8, 0.83, wrong=True, sample=False)
    b.observe(P, "h1", 7, 0.71, wrong=True, sample=False)  # a lower wrong score leaves the boundary alone
    (cand,) = b.candidates(P, vec(1, 0), 3, 0.9)
    assert (cand.qhash, cand.stats) == ("h1", EntryStats(verified=3, wrong=2, wrong_max=0.83))
    b.count(P, 9)  # a served hit: a lookup, no observation
    b.count(P, None)  # a lookup with no candidate
    pool = b.pool(P)
    assert pool.verified[7:] == (1, 1, 1) and pool.wrong[7:] == (1, 1, 0) and pool.lookups[7:] == (1, 1, 2)
    assert pool.other_lookups == 1 and pool.total == 5
    assert (pool.samples, pool.samples_wrong) == (1, 0)
    # another index version of the same tenant and settings shares the pool (the documents changed,
    # not how question similarity predicts a right answer); other settings or tenants do not
    assert b.pool(Partition("acme", "idx-v2", "fp1")) == pool
    assert b.pool(Partition("acme", "idx-v1", "fp2")) == PoolStats()
    assert b.pool(Partition("globex", "idx-v1", "fp1")) == PoolStats()
    assert set(b.pools()) == {"acme"} and b.pools()["acme"] == pool
    assert b.pools("acme") == {"acme": pool} and b.pools("globex") == {}


def test_a_new_answer_starts_a_new_record_and_a_gone_entry_is_not_recreated(make_backend):
    b = make_backend()
    put(b, P, "h1", vec(1, 0), "A")
    b.observe(P, "h1", 8, 0.85, wrong=True, sample=True)
    put(b, P, "h1", vec(1, 0), "A, answered again")
    (cand,) = b.candidates(P, vec(1, 0), 3, 0.9)
    assert cand.stats == EntryStats()
    b.observe(P, "gone", 9, 0.9, wrong=False, sample=False)  # evicted meanwhile: only the pool counts it
    assert b.get_exact(P, "gone") is None and b.stats()["entries"] == 1
    assert b.pool(P).verified[8:] == (1, 1)


def test_tenants_never_share_statistics_and_purging_a_tenant_forgets_them(make_backend):
    b = make_backend()
    other = Partition("globex", "idx-v1", "fp1")
    put(b, P, "h1", vec(1, 0), "acme's")
    put(b, other, "h1", vec(1, 0), "globex's")
    for _ in range(3):
        b.observe(P, "h1", 9, 0.95, wrong=True, sample=False)
    (theirs,) = b.candidates(other, vec(1, 0), 3, 0.9)
    assert theirs.stats == EntryStats() and b.pool(other) == PoolStats()
    b.purge(tenant="acme")
    assert b.pool(P) == PoolStats() and set(b.pools()) == set()
    b.observe(other, "h1", 9, 0.95, wrong=False, sample=False)
    b.purge(doc_ids=["doc-1"])  # a document purge keeps what was learnt
    assert b.pool(other).verified[9] == 1


def test_concurrent_observers_never_lose_an_update(make_backend):
    b = make_backend()
    put(b, P, "h1", vec(1, 0), "A")
    errors = []

    def observe(i: int) -> None:
        try:
            for j in range(25):
                b.observe(P, "h1", 9, 0.9 + i / 100, wrong=j % 5 == 0, sample=j % 2 == 0)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=observe, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (cand,) = b.candidates(P, vec(1, 0), 3, 0.9)
    assert cand.stats == EntryStats(verified=200, wrong=40, wrong_max=0.97)
    pool = b.pool(P)
    assert (pool.verified[9], pool.wrong[9], pool.samples, pool.samples_wrong) == (200, 40, 104, 24)  # wrong samples: j = 0, 10, 20


# -- Redis only ------------------------------------------------------------------------------------

def test_redis_statistics_survive_a_restart_of_the_service(redis_server):
    from pipelines.query.cache.redis_backend import RedisCache

    cfg = CacheConfig(redis_url=redis_server.url, namespace=f"t{uuid.uuid4().hex[:8]}")
    first = RedisCache(cfg)
    put(first, P, "h1", vec(1, 0), "A")
    first.observe(P, "h1", 9, 0.93, wrong=True, sample=True)
    again = RedisCache(cfg)  # a new process: nothing held in memory
    (cand,) = again.candidates(P, vec(1, 0), 3, 0.9)
    assert cand.stats == EntryStats(1, 1, 0.93)
    assert again.pool(P).samples_wrong == 1


def test_redis_down_during_an_observation_drops_it_and_counts_it(tmp_path):
    from evals.redis_server import RedisServer
    from pipelines.query.cache.redis_backend import RedisCache

    with RedisServer(tmp_path / "r").start() as server:
        errors: list[str] = []
        b = RedisCache(CacheConfig(redis_url=server.url, retry_s=0.5, timeout_ms=200), on_error=errors.append)
        put(b, P, "h1", vec(1, 0), "A")
        b.observe(P, "h1", 9, 0.95, wrong=False, sample=False)
        server.stop()
        with pytest.raises(CacheUnavailable):
            b.observe(P, "h1", 9, 0.95, wrong=True, sample=True)
        assert errors == ["observe"]

def test_redis_down_fails_fast_then_recovers_after_restart(tmp_path):
    from evals.redis_server import RedisServer
    from pipelines.query.cache.redis_backend import RedisCache

    with RedisServer(tmp_path / "r").start() as server:
        errors: list[str] = []
        b = RedisCache(CacheConfig(redis_url=server.url, retry_s=0.5, timeout_ms=200), on_error=errors.append)
        put(b, P, "h1", vec(1, 0), "before")
        server.stop()
        t0 = time.perf_counter()
        with pytest.raises(CacheUnavailable):
            b.get_exact(P, "h1")
        with pytest.raises(CacheUnavailable):  # within retry_s: fails without touching the network
            b.candidates(P, vec(1, 0), 3, 0.5)
        assert time.perf_counter() - t0 < 1.0 and errors == ["get_exact"]
        server.start()  # same port, empty (no persistence)
        time.sleep(0.6)
        assert b.get_exact(P, "h1") is None  # the old data is gone with the old server
        put(b, P, "h2", vec(1, 0), "after")  # the index is created again on the new server
        assert [c.payload["answer"] for c in b.candidates(P, vec(1, 0), 3, 0.5)] == ["after"]


def test_redis_unreachable_at_start_does_not_block():
    from evals.serving import free_port
    from pipelines.query.cache.redis_backend import RedisCache

    b = RedisCache(CacheConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=100))
    t0 = time.perf_counter()
    with pytest.raises(CacheUnavailable):
        b.put(P, "h", "q", vec(1, 0), {"answer": "A"}, [])
    assert time.perf_counter() - t0 < 1.0


def test_a_version_change_carries_only_the_answers_it_cannot_have_changed(make_backend):
    """carry.py's rule on both backends: an answer citing a changed document is dropped, one
    whose question is nearer an added chunk than its farthest candidate (reach) is dropped, the
    rest move to the new version with their tenant and settings; other collections and other
    versions are left alone, and an answer already stored in the new version is not overwritten."""
    from pipelines.query.cache import VersionChange

    b = make_backend()
    old = Partition("acme", "idx-v1", "fp1", "handbook")
    new = Partition("acme", "idx-v2", "fp1", "handbook")
    other_coll = Partition("acme", "idx-v1", "fp9", "wiki")
    b.put(old, "cites-changed", "q1", vec(1, 0), {"answer": "1"}, ["doc-a"], 0.3)
    b.put(old, "near-added", "q2", vec(0, 1), {"answer": "2"}, ["doc-b"], 0.5)
    b.put(old, "unaffected", "q3", vec(0, 0, 1), {"answer": "3"}, ["doc-b"], 0.5)
    b.put(old, "no-reach", "q4", vec(0, 0, 0, 1), {"answer": "4"}, ["doc-b"])  # stored without a reach
    b.put(old, "taken", "q5", vec(0, 0, 1, 0.1), {"answer": "old 5"}, ["doc-b"], 0.5)
    b.put(new, "taken", "q5", vec(0, 0, 1, 0.1), {"answer": "fresh 5"}, ["doc-b"], 0.5)
    b.put(other_coll, "wiki", "q6", vec(1, 0), {"answer": "6"}, ["doc-a"], 0.3)
    added = np.stack([vec(0, 1, 0.1), vec(0.2, 0.2, 0, 0, 1)])  # cosine 0.99 with q2, 0.0 with q3
    carried = b.carry(VersionChange.of("handbook", "idx-v1", "idx-v2", ["doc-a"], added))

    assert (carried.kept, carried.dropped) == (2, 3)  # unaffected + taken (not overwritten); 1, 2, 4 dropped
    assert b.get_exact(new, "unaffected") == {"answer": "3"}
    assert b.get_exact(new, "taken") == {"answer": "fresh 5"}
    for gone in ("cites-changed", "near-added", "no-reach"):
        assert b.get_exact(new, gone) is None
    for moved in ("cites-changed", "near-added", "unaffected", "no-reach", "taken"):
        assert b.get_exact(old, moved) is None  # the old version's partition is emptied
    (cand,) = b.candidates(new, vec(0, 0, 1), 1, 0.99)
    assert cand.payload == {"answer": "3"}
    assert b.get_exact(other_coll, "wiki") == {"answer": "6"}  # another collection at the same version string
    assert b.get_exact(Partition("globex", "idx-v2", "fp1", "handbook"), "unaffected") is None  # tenant kept


def test_a_delete_only_change_keeps_every_answer_not_citing_a_deleted_document(make_backend):
    from pipelines.query.cache import VersionChange

    b = make_backend()
    old = Partition("acme", "idx-v1", "fp1", "handbook")
    b.put(old, "h1", "q1", vec(1, 0), {"answer": "1"}, ["doc-a", "doc-b"])
    b.put(old, "h2", "q2", vec(0, 1), {"answer": "2"}, ["doc-c"])  # no reach: no chunk added, so kept
    carried = b.carry(VersionChange.of("handbook", "idx-v1", "idx-v2", ["doc-b"]))
    assert (carried.kept, carried.dropped) == (1, 1)
    new = Partition("acme", "idx-v2", "fp1", "handbook")
    assert b.get_exact(new, "h2") == {"answer": "2"} and b.get_exact(new, "h1") is None
