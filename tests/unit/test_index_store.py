"""The index directory format with real FAISS on synthetic vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import ArtifactError, BadRequest
from common.records import Chunk
from index import store
from index.manifest import CHUNKS_FILE, INDEX_FILE, IndexManifest
from index.store import IndexStore


def build(tmp_path, n=50, dim=16, index_type="flat", model="m1"):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [Chunk(id=f"id{i}", doc_id=f"doc{i % 7}", title=f"t{i}", text=f"text {i}") for i in range(n)]
    manifest = store.write(tmp_path / "idx", chunks, vecs, embedding_model=model, index_type=index_type,
                           chunk_size=100, chunk_overlap=10, source="test")
    return manifest, vecs


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf", "ivf-sq8"])
def test_round_trip_and_search(tmp_path, index_type):
    manifest, vecs = build(tmp_path, index_type=index_type)
    assert (manifest.vector_count, manifest.dimension, manifest.document_count) == (50, 16, 7)
    loaded = IndexStore.load(tmp_path / "idx", embedding_model="m1", dimension=16)
    hits = loaded.search(vecs[17], 5)
    tolerance = 0.01 if index_type == "ivf-sq8" else 1e-4  # 8-bit codes: scores are approximate
    assert hits[0].chunk.id == "id17" and abs(hits[0].score - 1.0) < tolerance
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_same_content_same_version(tmp_path):
    a, _ = build(tmp_path)
    b, _ = build(tmp_path)
    c, _ = build(tmp_path, model="m2")
    assert a.index_version == b.index_version != c.index_version


def test_embedding_model_mismatch_is_refused(tmp_path):
    build(tmp_path)
    with pytest.raises(ArtifactError, match="built with embedding model 'm1'.*configured with 'other'"):
        IndexStore.load(tmp_path / "idx", embedding_model="other")
    with pytest.raises(ArtifactError, match="dimension 16"):
        IndexStore.load(tmp_path / "idx", embedding_model="m1", dimension=384)


@pytest.mark.parametrize("victim", [INDEX_FILE, CHUNKS_FILE])
def test_corrupt_files_are_refused(tmp_path, victim):
    build(tmp_path)
    with (tmp_path / "idx" / victim).open("ab") as f:
        f.write(b"garbage")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        IndexStore.load(tmp_path / "idx", embedding_model="m1")


def test_missing_or_invalid_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="ragroute index build"):
        IndexStore.load(tmp_path, embedding_model="m1")
    build(tmp_path)
    path = tmp_path / "idx" / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format_version 99"):
        IndexManifest.read(tmp_path / "idx")


def test_bad_query_vectors_are_client_errors(tmp_path):
    build(tmp_path)
    loaded = IndexStore.load(tmp_path / "idx", embedding_model="m1")
    with pytest.raises(BadRequest, match="dimension 3"):
        loaded.search([0.1, 0.2, 0.3], 5)
    with pytest.raises(BadRequest, match="NaN"):
        loaded.search([float("nan")] * 16, 5)


def test_rewrite_replaces_the_directory_atomically(tmp_path):
    build(tmp_path, n=50)
    build(tmp_path, n=20)
    assert IndexStore.load(tmp_path / "idx", embedding_model="m1").manifest.vector_count == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp dirs left behind


def test_lexical_search_ranks_keyword_matches(tmp_path):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(3, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [Chunk(id="a", doc_id="a", title="with", text="The with statement wraps a block in a context manager."),
              Chunk(id="b", doc_id="b", title="for", text="The for statement iterates over a sequence."),
              Chunk(id="c", doc_id="c", title="misc", text="Nothing relevant here.")]
    store.write(tmp_path / "lx", chunks, vecs, embedding_model="m", index_type="flat", chunk_size=100,
                chunk_overlap=0, source="t")
    loaded = IndexStore.load(tmp_path / "lx", embedding_model="m")
    hits = loaded.search_text("what does the with statement do", 5)
    assert [h.chunk.id for h in hits] == ["a", "b"]  # "c" shares no term: not returned
    assert hits[0].score > hits[1].score > 0 and hits[0].dense_score == 0.0
