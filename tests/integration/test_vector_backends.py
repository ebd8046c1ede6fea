"""One retrieval contract, two backends: FAISS (index/store.py) and Milvus (index/milvus.py, a
real Milvus Lite server reached by URI), over the same chunks and real MiniLM embeddings; then
what only Milvus has to get right: versions swapped by alias, a Milvus that is down, collections
that several processes (replicas) write and serve."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import ArtifactError, BadRequest, NotFound, StageError
from index import store as faiss_store
from index.collections import Collections
from index.milvus import MilvusBackend, alias_of, version_of
from index.store import IndexStore
from pipelines.indexing.chunk import chunk_documents, embedding_text
from pipelines.indexing.ingest import ManagedCollections
from pipelines.indexing.jobs import DocumentIn
from pipelines.indexing.load import load_folder
from tests.conftest import FIXTURE_CORPUS

MODEL = "all-MiniLM-L6-v2"
QUESTIONS = ["How long should espresso be extracted?", "Who owns the payments service?",
             "When is high tide?", "grind size for espresso", "on-call rotation"]


@pytest.fixture(scope="module")
def corpus(embedder):
    chunks = list(chunk_documents(load_folder(FIXTURE_CORPUS), 300, 50))
    return chunks, embedder.encode([embedding_text(c) for c in chunks])


@pytest.fixture(scope="module")
def milvus(milvus_server):
    return MilvusBackend(milvus_server.uri, timeout_s=30.0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, corpus, milvus):
    chunks, vectors = corpus
    folder = tmp_path_factory.mktemp("faiss") / "idx"
    faiss_store.write(folder, chunks, vectors, embedding_model=MODEL, index_type="flat", chunk_size=300,
                      chunk_overlap=50, source="fixtures")
    milvus.create("contract")
    _, version = milvus.write_version("contract", chunks, vectors, embedding_model=MODEL, chunk_size=300,
                                      chunk_overlap=50)
    return {"faiss": IndexStore.load(folder, embedding_model=MODEL),
            "milvus": milvus.open(version, embedding_model=MODEL, dimension=vectors.shape[1])}


@pytest.fixture(params=["faiss", "milvus"])
def backend_store(request, stores):
    return stores[request.param]


# -- the contract, run against each backend -----------------------------------------------------
def test_dense_search_ranks_by_cosine(backend_store, corpus, embedder):
    chunks, vectors = corpus
    hits = backend_store.search(vectors[3], 5)
    assert hits[0].chunk.id == chunks[3].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    expected = sorted(range(len(chunks)), key=lambda i: -float(vectors[i] @ vectors[3]))[:5]
    assert [h.chunk.id for h in hits] == [chunks[i].id for i in expected]
    assert all(h.dense_score == h.score for h in hits)
    assert len(backend_store.search(vectors[0], 10_000)) == len(chunks)  # n past the collection: all of it


def test_hybrid_fuses_and_scores_every_hit_by_cosine(backend_store, corpus, embedder):
    chunks, vectors = corpus
    for question in QUESTIONS:
        q = embedder.encode([question])[0]
        hits = backend_store.search_hybrid(q, question, 5, fusion="score", weight=0.45, depth=20)
        assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        by_id = {c.id: i for i, c in enumerate(chunks)}
        for h in hits:  # lexical-only hits too carry their true cosine
            assert h.dense_score == pytest.approx(float(vectors[by_id[h.chunk.id]] @ q), abs=1e-4)


def test_lexical_search_finds_the_words(backend_store):
    hits = backend_store.search_text("espresso extraction", 3)
    assert hits and all(h.dense_score == 0.0 for h in hits)
    assert "espresso" in (hits[0].chunk.title + hits[0].chunk.text).lower()
    assert backend_store.search_text("zzzqqq", 3) == []


def test_bad_vectors_are_refused_naming_the_field(backend_store):
    with pytest.raises(BadRequest, match="vector: has dimension 3, this index expects 384"):
        backend_store.search([0.1, 0.2, 0.3], 5)
    with pytest.raises(BadRequest, match="NaN"):
        backend_store.search([float("nan")] * 384, 5)


def test_both_backends_return_the_same_results(stores, embedder):
    for question in QUESTIONS:
        q = embedder.encode([question])[0]
        dense = {name: [h.chunk.id for h in s.search(q, 10)] for name, s in stores.items()}
        assert dense["faiss"] == dense["milvus"], question
        hybrid = {name: [h.chunk.id for h in s.search_hybrid(q, question, 5, fusion="score", weight=0.45)]
                  for name, s in stores.items()}
        # Milvus's BM25 and bm25s differ in constants; the fused top-5 agree on these questions
        assert hybrid["faiss"][:3] == hybrid["milvus"][:3], question


def test_a_model_mismatch_is_refused_naming_both(tmp_path, milvus, stores):
    with pytest.raises(ArtifactError, match=r"built with embedding model 'all-MiniLM-L6-v2' .*configured with 'other'"):
        IndexStore.load(stores["faiss"].directory, embedding_model="other")
    with pytest.raises(ArtifactError, match=r"built with embedding model 'all-MiniLM-L6-v2' \(dimension 384\).*"
                                            r"configured with 'other'"):
        milvus.open(stores["milvus"].collection, embedding_model="other")
    with pytest.raises(ArtifactError, match="the embedder .* produces 768"):
        milvus.open(stores["milvus"].collection, embedding_model=MODEL, dimension=768)


# -- Milvus only ---------------------------------------------------------------------------------
def test_versions_swap_by_alias_and_the_previous_one_is_kept(milvus, corpus):
    chunks, vectors = corpus
    milvus.create("swaps")
    _, v1 = milvus.write_version("swaps", chunks[:4], vectors[:4], embedding_model=MODEL, chunk_size=300,
                                 chunk_overlap=50)
    old = milvus.open(v1, embedding_model=MODEL)
    _, v2 = milvus.write_version("swaps", chunks[:6], vectors[:6], embedding_model=MODEL, chunk_size=300,
                                 chunk_overlap=50)
    assert (v1, v2) == (version_of("swaps", 1), version_of("swaps", 2)) and milvus.served("swaps") == v2
    assert len(old.search(vectors[0], 100)) == 4  # a reader on v1 finishes on v1
    _, v3 = milvus.write_version("swaps", chunks[:2], vectors[:2], embedding_model=MODEL, chunk_size=300,
                                 chunk_overlap=50)
    assert milvus.versions()["swaps"] == [v2, v3]  # v1 collected: current and previous kept
    assert milvus.served("swaps") == v3 and alias_of("swaps") == "ragroute_swaps"
    milvus.drop("swaps")
    assert "swaps" not in milvus.versions() and milvus.served("swaps") is None


def test_a_milvus_that_is_down_is_a_503_within_the_timeout(milvus_server, stores, corpus):
    from evals.milvus_server import MilvusServer

    chunks, vectors = corpus
    dead = MilvusServer(milvus_server.workdir.parent / "dead").start()
    backend = MilvusBackend(dead.uri, timeout_s=1.0)
    backend.create("gone")
    _, version = backend.write_version("gone", chunks, vectors, embedding_model=MODEL, chunk_size=300,
                                       chunk_overlap=50)
    store = backend.open(version, embedding_model=MODEL)
    collections = Collections(stores["faiss"], None, embedding_model=MODEL, milvus=backend)
    assert collections.get("gone") is not None
    dead.stop()
    t0 = time.monotonic()
    with pytest.raises(StageError) as err:
        store.search(vectors[0], 5)
    assert err.value.status == 503 and str(err.value) == "retrieve stage failed: Milvus search failed"
    assert backend.uri in err.value.detail and backend.uri not in str(err.value)  # the URI is the log's
    assert time.monotonic() - t0 < 10
    collections.sync_milvus()  # logged, not raised: the folder collections keep serving
    assert collections.get("default").search(vectors[0], 1)[0].chunk.id == chunks[0].id
    collections.close()


def test_collections_follow_milvus_and_refuse_a_foreign_model(milvus, stores, corpus):
    chunks, vectors = corpus
    collections = Collections(stores["faiss"], None, embedding_model=MODEL, milvus=milvus)
    assert "contract" in collections.names()
    milvus.create("late")
    with pytest.raises(NotFound):
        collections.get("late")  # no documents yet: not served
    milvus.write_version("late", chunks[:3], vectors[:3], embedding_model=MODEL, chunk_size=300, chunk_overlap=50)
    collections.sync_milvus()
    assert collections.get("late").manifest.vector_count == 3
    assert {d["name"]: d["backend"] for d in collections.describe()}["late"] == "milvus"
    milvus.drop("late")
    collections.sync_milvus()
    with pytest.raises(NotFound):
        collections.get("late")
    milvus.create("foreign")
    milvus.write_version("foreign", chunks[:3], vectors[:3], embedding_model="other-model", chunk_size=300,
                         chunk_overlap=50)
    collections.sync_milvus()
    with pytest.raises(NotFound, match="refused: .*'other-model'.*'all-MiniLM-L6-v2'"):
        collections.get("foreign")
    milvus.drop("foreign")
    collections.close()


def test_two_replicas_ingest_into_one_milvus_collection(tmp_path, milvus, embedder):
    async def embed(texts):
        return embedder.encode(texts)

    a = ManagedCollections(tmp_path / "a", embedding_model=MODEL, milvus=milvus, default_backend="milvus")
    b = ManagedCollections(tmp_path / "b", embedding_model=MODEL, milvus=milvus)

    def run(managed, kind, payload):
        async def go():
            managed.check("shared")
            job = managed.submit("shared", kind, payload, embed)
            await managed.wait()
            return managed.job(job.id)
        return asyncio.run(go())

    assert a.create("shared") == {"name": "shared", "documents": 0, "backend": "milvus"}
    first = run(a, "upsert", [DocumentIn(id="kb/1", text="The release train ships every second Tuesday.")])
    assert first.status == "succeeded", first.error
    second = run(b, "upsert", [DocumentIn(id="kb/2", text="Hotfixes skip the train and ship at once.")])
    assert second.status == "succeeded" and second.result["documents"] == 2, second.error
    served = milvus.open(milvus.served("shared"), embedding_model=MODEL)
    assert {h.chunk.doc_id for h in served.search_text("train", 5)} == {"kb/1", "kb/2"}
    gone = run(a, "delete", ["kb/1"])
    assert gone.result["changed_documents"] == ["kb/1"]
    served = milvus.open(milvus.served("shared"), embedding_model=MODEL)
    assert [h.chunk.doc_id for h in served.search_text("train", 5)] == ["kb/2"]
    with pytest.raises(Exception, match="exists"):
        b.create("shared")
    assert b.drop("shared") == {"name": "shared", "dropped": True} and "shared" not in milvus.versions()


def test_the_cli_writes_a_collection_into_milvus(milvus_server, milvus, monkeypatch, tmp_path, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("RAGROUTE_MILVUS_URI", milvus_server.uri)
    monkeypatch.setenv("RAGROUTE_HOME", str(tmp_path))
    assert main(["index", "build", "--source", str(FIXTURE_CORPUS), "--collection", "cli-built", "--milvus",
                 "--quiet", "--chunk-size", "300", "--overlap", "50"]) == 0
    assert "collection cli-built (ragroute_cli_dbuilt_V000001)" in capsys.readouterr().out
    store = milvus.open(milvus.served("cli-built"), embedding_model=MODEL)
    assert store.manifest.document_count == len(list(load_folder(FIXTURE_CORPUS)))
    assert not (tmp_path / "collections" / "cli-built").exists()  # nothing written locally
    assert main(["index", "build", "--source", str(FIXTURE_CORPUS), "--collection", "cli-built", "--milvus",
                 "--quiet"]) == 0  # a rebuild is the next version
    assert milvus.served("cli-built") == version_of("cli-built", 2)
    milvus.drop("cli-built")
    with pytest.raises(SystemExit, match="give --collection"):
        main(["index", "build", "--source", str(FIXTURE_CORPUS), "--out", str(tmp_path / "x"), "--milvus"])


def test_job_records_in_redis_are_read_by_any_replica(tmp_path, milvus, redis_server, embedder):
    import json as _json

    import redis

    async def embed(texts):
        return embedder.encode(texts)

    a = ManagedCollections(tmp_path / "a", embedding_model=MODEL, milvus=milvus, default_backend="milvus",
                           redis_url=redis_server.url, namespace="jobs-test")
    b = ManagedCollections(tmp_path / "b", embedding_model=MODEL, milvus=milvus, redis_url=redis_server.url,
                           namespace="jobs-test")
    a.create("jobs")

    async def go():
        a.check("jobs")
        job = a.submit("jobs", "upsert", [DocumentIn(id="kb/1", text="Deploys freeze on Fridays.")], embed)
        await a.wait()
        return job.id
    job_id = asyncio.run(go())
    seen = b.job(job_id)  # b has no local record of it
    assert seen.status == "succeeded" and seen.result["documents"] == 1 and seen.host
    # a record left "running" by a replica that died (another host, silent for over STALE_S) reads as failed
    client = redis.Redis.from_url(redis_server.url)
    dead = seen.model_copy(update={"id": "00000000000000ab", "status": "running", "result": None, "host": "gone-host",
                                   "updated_at": time.time() - 120})
    client.set("jobs-test:jobs:00000000000000ab", dead.model_dump_json())
    judged = b.job("00000000000000ab")
    assert judged.status == "failed" and "no word from the process" in judged.error and "gone-host" in judged.error
    assert _json.loads(client.get("jobs-test:jobs:00000000000000ab"))["status"] == "running"  # reading changes nothing
    with pytest.raises(NotFound):
        b.job("00000000000000cd")
    # Redis down: saving a record degrades to this replica's own copy, never fails the job
    c = ManagedCollections(tmp_path / "c", embedding_model=MODEL, milvus=milvus, redis_url="redis://127.0.0.1:1/0")
    async def go_c():
        c.check("jobs")
        job = c.submit("jobs", "delete", ["kb/404"], embed)
        await c.wait()
        return c.job(job.id)
    assert asyncio.run(go_c()).status == "succeeded"
    milvus.drop("jobs")
