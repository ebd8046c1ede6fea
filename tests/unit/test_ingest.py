"""Managed collections: jobs write versions beside the served one and swap atomically
(pipelines/indexing/ingest.py), and the Retrieval side follows the swaps (index/collections.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import numpy as np
import pytest

from common.errors import BadRequest, NotFound
from index import collections as coll
from index.collections import Collections, current_folder
from index.store import IndexStore
from pipelines.indexing import jobs
from pipelines.indexing.ingest import ManagedCollections
from pipelines.indexing.jobs import Conflict, DeleteBody, DocumentIn, UpsertBody, parse
from tests.indexes import make_index


async def embed(texts):
    """Deterministic unit vectors (8-d) from each text's hash."""
    rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:32], dtype=np.uint8)[:8].astype(np.float32) + 1
            for t in texts]
    out = np.stack(rows)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def docs(*pairs):
    return [DocumentIn(id=i, title=i, text=t) for i, t in pairs]


@pytest.fixture
def managed(tmp_path):
    return ManagedCollections(tmp_path / "collections", embedding_model="m", chunk_size=100, overlap=0)


def run_job(managed, name, kind, payload):
    async def go():
        job = managed.submit(name, kind, payload, embed)
        await managed.wait()
        return managed.job(job.id)
    return asyncio.run(go())


def test_upsert_delete_and_every_swap_is_a_complete_version(managed):
    managed.create("handbook")
    first = run_job(managed, "handbook", "upsert", docs(("a", "alpha text"), ("b", "beta text")))
    assert first.status == "succeeded" and first.result["documents"] == 2 and first.result["swapped"]
    path = managed.root / "handbook"
    v1 = current_folder(path)
    assert v1.name == "v000001" and IndexStore.load(v1, embedding_model="m").manifest.document_count == 2

    second = run_job(managed, "handbook", "upsert", docs(("b", "beta rewritten"), ("c", "gamma")))
    assert second.result["changed_documents"] == ["b", "c"] and second.result["added_documents"] == ["c"]
    store = IndexStore.load(current_folder(path), embedding_model="m")
    assert {c.doc_id: c.text for c in store.chunks} == {"a": "alpha text", "b": "beta rewritten", "c": "gamma"}

    third = run_job(managed, "handbook", "delete", ["a", "zzz"])
    assert third.result["changed_documents"] == ["a"] and third.result["missing"] == ["zzz"]
    assert {c.doc_id for c in IndexStore.load(current_folder(path), embedding_model="m").chunks} == {"b", "c"}
    # old versions are collected: the served one and the one before it remain
    assert sorted(p.name for p in (path / "versions").iterdir()) == ["v000002", "v000003"]

    nothing = run_job(managed, "handbook", "delete", ["nope"])
    assert nothing.status == "succeeded" and not nothing.result["swapped"] and nothing.result["missing"] == ["nope"]
    emptied = run_job(managed, "handbook", "delete", ["b", "c"])
    assert emptied.status == "failed" and "empty" in emptied.error
    assert current_folder(path).name == "v000003"  # a failed job leaves the served version


def test_a_failing_embedder_fails_the_job_and_leaves_the_served_version(managed):
    managed.create("kb")
    run_job(managed, "kb", "upsert", docs(("a", "alpha")))

    async def broken(texts):
        raise ConnectionError("embedding service down")

    async def go():
        job = managed.submit("kb", "upsert", docs(("b", "beta")), broken)
        await managed.wait()
        return managed.job(job.id)
    job = asyncio.run(go())
    assert job.status == "failed" and "embedding service down" in job.error
    assert current_folder(managed.root / "kb").name == "v000001"
    assert not [p for p in (managed.root / "kb" / "versions").iterdir() if p.name.startswith(".")]


def test_two_jobs_on_one_collection_run_one_after_the_other(managed):
    managed.create("kb")

    async def go():
        a = managed.submit("kb", "upsert", docs(("a", "alpha")), embed)
        b = managed.submit("kb", "upsert", docs(("b", "beta")), embed)
        assert managed.job(b.id).status == "queued"
        await managed.wait()
        return managed.job(a.id), managed.job(b.id)
    a, b = asyncio.run(go())
    assert (a.status, b.status) == ("succeeded", "succeeded")
    assert a.result["folder"] == "v000001" and b.result["folder"] == "v000002" and b.result["documents"] == 2


def test_a_job_whose_process_died_reads_as_failed(managed):
    managed.create("kb")
    record = jobs.Job(id="0123456789abcdef", collection="kb", kind="upsert", status="running", pid=2**22 + 7)
    (managed.root / "kb" / "jobs" / "0123456789abcdef.json").write_text(record.model_dump_json())
    job = managed.job("0123456789abcdef")
    assert job.status == "failed" and "interrupted" in job.error
    with pytest.raises(NotFound):
        managed.job("fedcba9876543210")
    with pytest.raises(BadRequest):
        managed.job("../../etc/passwd")


def test_names_conflicts_and_read_only_folders(managed, tmp_path):
    with pytest.raises(BadRequest, match="collection"):
        managed.create("Bad Name")
    with pytest.raises(Conflict, match="read-only"):  # it exists, and is not written through the API
        managed.create("default")
    managed.create("kb")
    with pytest.raises(Conflict):
        managed.create("kb")
    with pytest.raises(NotFound, match="create it first"):
        managed.submit("nope", "upsert", docs(("a", "x")), embed)
    make_index(managed.root / "static", "static")
    with pytest.raises(Conflict, match="read-only"):
        managed.check("static")  # what the HTTP layer asks before reading a body
    with pytest.raises(NotFound, match="create it first"):
        managed.submit("static", "upsert", docs(("a", "x")), embed)
    assert managed.drop("kb") == {"name": "kb", "dropped": True}
    assert not (managed.root / "kb").exists()


def test_bodies_are_validated_field_by_field():
    with pytest.raises(BadRequest, match="documents.0.id"):
        parse(UpsertBody, json.dumps({"documents": [{"id": "bad id!", "text": "x"}]}).encode())
    with pytest.raises(BadRequest, match="documents.0.text"):
        parse(UpsertBody, json.dumps({"documents": [{"id": "a", "text": ""}]}).encode())
    with pytest.raises(BadRequest, match="documents.0.colour"):
        parse(UpsertBody, json.dumps({"documents": [{"id": "a", "text": "x", "colour": 1}]}).encode())
    with pytest.raises(BadRequest, match="ids"):
        parse(DeleteBody, b'{"ids": []}')
    with pytest.raises(BadRequest, match="body"):
        parse(DeleteBody, b"not json")


def test_the_retrieval_side_follows_swaps_without_blocking(managed, tmp_path, monkeypatch):
    monkeypatch.setattr(coll, "CHECK_S", 0.0)
    monkeypatch.setattr(coll, "RESCAN_S", 0.0)
    make_index(tmp_path / "default", "demo")
    managed.create("kb")
    served = Collections(IndexStore.load(tmp_path / "default", embedding_model="m"), managed.root,
                         embedding_model="m")
    with pytest.raises(NotFound):  # created but empty: not served yet
        served.get("kb")
    run_job(managed, "kb", "upsert", docs(("a", "alpha")))
    first = served.get("kb")
    assert {c.doc_id for c in first.chunks} == {"a"}
    run_job(managed, "kb", "upsert", docs(("b", "beta")))
    load = IndexStore.load

    def slow_load(*args, **kwargs):
        time.sleep(0.3)
        return load(*args, **kwargs)
    monkeypatch.setattr(coll.IndexStore, "load", slow_load)
    t0 = time.monotonic()
    old = served.get("kb")  # starts loading the new version in the background; serves the loaded one
    assert old is first and time.monotonic() - t0 < 0.2
    for _ in range(200):
        if served.get("kb") is not first:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert {c.doc_id for c in served.get("kb").chunks} == {"a", "b"}
    assert {c.doc_id for c in first.chunks} == {"a"}  # a search holding the old store still sees its version


def test_after_a_swap_on_done_gets_the_added_embeddings_and_its_answer_joins_the_result(managed):
    """The cache carries its answers from what on_done is given (services/rag.py: ingested)."""
    managed.create("handbook")
    seen = []

    async def on_done(job, result, added):
        seen.append((result["previous_version"], result["version"], added))
        return {"cache": {"kept": 3}}

    async def go(payload, kind="upsert", hook=on_done):
        job = managed.submit("handbook", kind, payload, embed, on_done=hook)
        await managed.wait()
        return managed.job(job.id)

    first = asyncio.run(go(docs(("a", "alpha text"), ("b", "beta text"))))
    second = asyncio.run(go(docs(("b", "beta rewritten"),)))
    assert second.result["cache"] == {"kept": 3} and second.result["previous_version"] == first.result["version"]
    assert seen[0][0] is None  # the first version has no previous one
    prev, new, added = seen[1]
    assert (prev, new) == (first.result["version"], second.result["version"])
    np.testing.assert_allclose(added, asyncio.run(embed(["b\nbeta rewritten"])))  # the one chunk added, as embedded
    deleted = asyncio.run(go(["a"], kind="delete"))
    assert seen[2][2].shape[0] == 0 and deleted.result["changed_documents"] == ["a"]
    asyncio.run(go(["zzz"], kind="delete"))  # nothing to delete: no swap, no call
    assert len(seen) == 3

    async def broken(job, result, added):
        raise RuntimeError("cache down")

    failing_hook = asyncio.run(go(docs(("c", "gamma"),), hook=broken))
    assert failing_hook.status == "succeeded" and failing_hook.result["swapped"]  # the swap stands
