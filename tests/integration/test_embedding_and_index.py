"""Real embedder, the real `ragroute index build` CLI, real FAISS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import ArtifactError
from index.store import IndexStore
from tests.conftest import FIXTURE_CORPUS, ROOT

CLI = [sys.executable, "-m", "pipelines.cli"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def test_embeddings_are_normalized_float32_of_model_dimension(embedder):
    vecs = embedder.encode(["What does the with statement do?", "How are tides caused?", "x"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    para, other = embedder.encode(["What does the with statement do exactly?", "Rust ownership rules"])
    assert float(vecs[0] @ para) > 0.95 > float(vecs[0] @ other)
    assert embedder.encode([]).shape == (0, 384)


@pytest.fixture(scope="module")
def fixture_index(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "fixture"
    result = cli("index", "build", "--source", str(FIXTURE_CORPUS), "--out", str(out), "--chunk-size", "300",
                 "--overlap", "40")
    assert "chunks from 4 documents" in result.stdout
    return out


def test_cli_builds_an_index_with_a_complete_manifest(fixture_index):
    manifest = json.loads((fixture_index / "manifest.json").read_text())
    assert manifest["embedding_model"] == "all-MiniLM-L6-v2" and manifest["dimension"] == 384
    assert manifest["metric"] == "cosine" and manifest["index_type"] == "flat"
    assert manifest["document_count"] == 4 and manifest["vector_count"] >= 4
    assert set(manifest["files"]) == {"index.faiss", "chunks.jsonl"}
    for key in ("corpus_hash", "built_at", "index_version", "chunk_size", "chunk_overlap", "source"):
        assert manifest[key] not in ("", None)


@pytest.mark.parametrize("question,doc", [
    ("How much pressure is used to brew espresso?", "espresso.md"),
    ("What causes the tides?", "tides.txt"),
    ("Who designed the Zorvik lighthouse?", "notes/lighthouse.md"),
    ("How many mutable borrows can a Rust value have?", "ownership.rst"),
])
def test_retrieval_finds_the_right_document(fixture_index, embedder, question, doc):
    store = IndexStore.load(fixture_index, embedding_model=embedder.model_id, dimension=embedder.dim)
    hits = store.search(embedder.encode([question])[0], 3)
    assert hits[0].chunk.doc_id == doc
    assert hits[0].chunk.metadata["path"] == doc and hits[0].chunk.text


def test_rebuilding_the_same_corpus_gives_the_same_version(fixture_index, tmp_path):
    cli("index", "build", "--source", str(FIXTURE_CORPUS), "--out", str(tmp_path / "again"), "--chunk-size", "300",
        "--overlap", "40", "--quiet")
    first = json.loads((fixture_index / "manifest.json").read_text())
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert first["index_version"] == again["index_version"] and first["corpus_hash"] == again["corpus_hash"]


def test_beir_corpus_and_hnsw(tmp_path, embedder):
    cli("index", "build", "--source", str(ROOT / "tests/fixtures/beir/corpus.jsonl"), "--out", str(tmp_path / "b"),
        "--index-type", "hnsw", "--quiet")
    store = IndexStore.load(tmp_path / "b", embedding_model=embedder.model_id)
    assert store.manifest.index_type == "hnsw" and store.manifest.document_count == 3  # the blank row is skipped
    assert store.search(embedder.encode(["How do plants make glucose?"])[0], 1)[0].chunk.doc_id == "d1"


def test_index_built_for_another_model_is_refused(fixture_index):
    with pytest.raises(ArtifactError, match="rebuild the index with `ragroute index build --model"):
        IndexStore.load(fixture_index, embedding_model="BAAI/bge-small-en-v1.5")


def test_cli_help_and_bad_arguments():
    assert "--chunk-size" in cli("index", "build", "--help").stdout
    bad = cli("index", "build", "--source", str(FIXTURE_CORPUS), "--out", "/tmp/x", "--chunk-size", "100",
              "--overlap", "100", check=False)
    assert bad.returncode != 0 and "lower --overlap" in bad.stderr
    missing = cli("index", "build", "--source", "/nonexistent", "--out", "/tmp/x", check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    no_out = cli("index", "build", "--source", str(FIXTURE_CORPUS), check=False)
    assert no_out.returncode != 0 and "--out" in no_out.stderr


def test_demo_index_is_built_once_and_reused(tmp_path, embedder):
    from pipelines.indexing.build import ensure_demo_index

    built = []

    def factory():
        built.append(1)
        return embedder

    out = ensure_demo_index(tmp_path / "demo", factory)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    ensure_demo_index(tmp_path / "demo", factory)
    assert built == [1] and (out / "manifest.json").stat().st_mtime_ns == stamp
    store = IndexStore.load(out, embedding_model=embedder.model_id)
    assert store.manifest.document_count == 79  # pydoc_data.topics
    hits = store.search(embedder.encode(["What does the with statement do?"])[0], 3)
    assert hits[0].chunk.doc_id == "pydoc:with"


def test_retrieval_service_refuses_a_mismatched_index_at_start_up(fixture_index, clean_env):
    from services.retrieval import Retrieval

    clean_env.setenv("RAGROUTE_INDEX_DIR", str(fixture_index))
    clean_env.setenv("RAGROUTE_EMBED_MODEL", "BAAI/bge-small-en-v1.5")
    with pytest.raises(ArtifactError, match="built with embedding model 'all-MiniLM-L6-v2'"):
        Retrieval()
    clean_env.setenv("RAGROUTE_EMBED_MODEL", "all-MiniLM-L6-v2")
    svc = Retrieval()
    assert svc.info()["index_version"] == json.loads((fixture_index / "manifest.json").read_text())["index_version"]


def test_embedding_service_query_api_gives_the_bulk_apis_vectors_for_concurrent_callers(clean_env):
    """``embed`` (the query path; calls that arrive together share a model run) and ``encode``
    (bulk, adaptive batching) return the same vectors, each caller its own rows."""
    import asyncio

    from services.embedding import Embedding

    svc = Embedding()
    texts = [["What does the with statement do?"], ["How are tides caused?", "x"], ["Rust ownership rules"]]

    async def together():
        return await asyncio.gather(*(svc.embed(t) for t in texts))

    outs = asyncio.run(together())
    for t, out in zip(texts, outs, strict=True):
        assert out.shape == (len(t), 384) and out.dtype == np.float32
        np.testing.assert_allclose(out, svc.embedder.encode(t), atol=1e-5)
    assert svc.batcher.runs < len(texts)  # the calls that queued behind the first shared a run
